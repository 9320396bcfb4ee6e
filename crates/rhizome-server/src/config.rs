//! The config file (TOML) of the `rhizome` binary. Every section is optional.

use crate::jwt::{JwtAuth, OpenAuth};
use crate::link::UpstreamOptions;
use crate::rules::{build_app, ActionRule, ChannelRule};
use crate::wakeup::{WakeupOptions, WebhookOptions};
use rhizome_core::wakeup::ScheduleOptions;
use rhizome_core::{App, Limits};
use rhizome_protocol::{NodeId, UserId};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors in the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`
    #[serde(default)]
    pub server: ServerSection,
    /// `[auth]`
    #[serde(default)]
    pub auth: AuthSection,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[push]`
    #[serde(default)]
    pub push: PushSection,
    /// `[upstream]`: makes this server an edge of another (docs/edge.md).
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// `[[channel]]`
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelRule>,
    /// `[[action]]`
    #[serde(default, rename = "action")]
    pub actions: Vec<ActionRule>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on (`127.0.0.1:31337`).
    pub listen: Option<String>,
    /// Data directory (`./rhizome-data`).
    pub data_dir: Option<PathBuf>,
    /// Our subprotocol (1).
    pub subprotocol: Option<u64>,
    /// Lowest client subprotocol accepted (0).
    pub min_subprotocol: Option<u64>,
    /// Send `headers {env: "development"}` and `debug` frames (false).
    pub development: Option<bool>,
    /// Threads that run connections (one less than the CPUs, at least one).
    pub workers: Option<usize>,
}

/// How clients authenticate.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everybody is let in (development).
    #[default]
    Open,
    /// A JWT in `connect`'s token.
    Jwt,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `open` or `jwt`.
    #[serde(default)]
    pub mode: AuthMode,
    /// HS256 secret.
    pub jwt_secret: Option<String>,
    /// Name of an environment variable holding the HS256 secret.
    pub jwt_secret_env: Option<String>,
    /// RS256 public key file (PEM), relative to the config file.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Clock leeway for `exp`, in seconds (5).
    pub leeway_secs: Option<u64>,
    /// Users whose connections are peers: edge nodes' links, which relay their clients'
    /// actions, each checked by the rules as its author's (docs/edge.md). Needs `mode = "jwt"`:
    /// in open mode anyone could claim such a user id.
    #[serde(default)]
    pub peers: Vec<String>,
}

/// `[limits]`: see [`Limits`] for each meaning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitsSection {
    pub frame_bytes_max: Option<usize>,
    pub actions_per_sync_max: Option<usize>,
    pub connections_max: Option<usize>,
    pub unauthenticated_timeout_ms: Option<u64>,
    pub pre_auth_messages_max: Option<usize>,
    pub outbound_queue_bytes_max: Option<usize>,
    pub inflight_syncs_max: Option<usize>,
    pub backlog_readers_max: Option<usize>,
    pub catch_up_chunk_actions: Option<usize>,
    pub pull_actions_max: Option<usize>,
    pub pull_channels_max: Option<usize>,
    pub long_poll_ms: Option<u64>,
    pub auth_failures_max: Option<usize>,
    pub auth_failure_window_ms: Option<u64>,
    pub ping_interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub park_after_ms: Option<u64>,
}

impl LimitsSection {
    /// The limits, defaults filled in.
    pub fn to_limits(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let ms = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
        let limits = Limits {
            frame_bytes_max: self.frame_bytes_max.unwrap_or(d.frame_bytes_max),
            actions_per_sync_max: self.actions_per_sync_max.unwrap_or(d.actions_per_sync_max),
            connections_max: self.connections_max.unwrap_or(d.connections_max),
            unauthenticated_timeout: ms(self.unauthenticated_timeout_ms, d.unauthenticated_timeout),
            pre_auth_messages_max: self.pre_auth_messages_max.unwrap_or(d.pre_auth_messages_max),
            outbound_queue_bytes_max: self.outbound_queue_bytes_max.unwrap_or(d.outbound_queue_bytes_max),
            inflight_syncs_max: self.inflight_syncs_max.unwrap_or(d.inflight_syncs_max),
            backlog_readers_max: self.backlog_readers_max.unwrap_or(d.backlog_readers_max),
            catch_up_chunk_actions: self.catch_up_chunk_actions.unwrap_or(d.catch_up_chunk_actions),
            pull_actions_max: self.pull_actions_max.unwrap_or(d.pull_actions_max),
            pull_channels_max: self.pull_channels_max.unwrap_or(d.pull_channels_max),
            long_poll: ms(self.long_poll_ms, d.long_poll),
            auth_failures_max: self.auth_failures_max.unwrap_or(d.auth_failures_max),
            auth_failure_window: ms(self.auth_failure_window_ms, d.auth_failure_window),
            ping_interval: ms(self.ping_interval_ms, d.ping_interval),
            timeout: ms(self.timeout_ms, d.timeout),
            write_timeout: ms(self.write_timeout_ms, d.write_timeout),
            park_after: ms(self.park_after_ms, d.park_after),
        };
        let positive = [
            ("frame_bytes_max", limits.frame_bytes_max),
            ("actions_per_sync_max", limits.actions_per_sync_max),
            ("connections_max", limits.connections_max),
            ("outbound_queue_bytes_max", limits.outbound_queue_bytes_max),
            ("inflight_syncs_max", limits.inflight_syncs_max),
            ("backlog_readers_max", limits.backlog_readers_max),
            ("catch_up_chunk_actions", limits.catch_up_chunk_actions),
            ("pull_actions_max", limits.pull_actions_max),
            ("pull_channels_max", limits.pull_channels_max),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("limits.{name} must be positive")));
        }
        Ok(limits)
    }
}

/// `[upstream]`: the node this server is an edge of (see [`UpstreamOptions`]). Without `url`
/// the server is not an edge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// The upstream's WebSocket URL, `ws://…` or `wss://…`.
    pub url: Option<String>,
    /// The link's node id, `<peer user>:<edge name>:link`.
    pub node: Option<String>,
    /// The link's token.
    pub token: Option<String>,
    /// Name of an environment variable holding the link's token.
    pub token_env: Option<String>,
    /// `sync`s in flight at most (8).
    pub window: Option<usize>,
    /// Actions in one `sync` at most (1000); at most the upstream's `actions_per_sync_max`.
    pub sync_actions_max: Option<usize>,
    /// Bytes of actions in one `sync` at most (262144); below the upstream's `frame_bytes_max`.
    pub sync_bytes_max: Option<usize>,
    /// Entries waiting to go upstream at most (1000000); past it client actions are refused
    /// with `logux/undo` reason `outboxFull`.
    pub outbox_max: Option<u64>,
    /// Bytes of actions waiting to go upstream at most (1073741824), likewise.
    pub outbox_bytes_max: Option<u64>,
    /// Sends each author's deltas of one CRDT object within a `sync` as one (true).
    pub fold_crdt: Option<bool>,
    /// Channels followed upstream at most (100000).
    pub channels_max: Option<usize>,
    /// A token that `GET /v1/edge/status` then requires (`Authorization: Bearer <token>`).
    pub status_token: Option<String>,
    /// Name of an environment variable holding it.
    pub status_token_env: Option<String>,
}

impl UpstreamSection {
    /// The link's options, or `None` for a server that is not an edge. `url`, `node` and
    /// `token` given here (from the command line) override the file's.
    pub fn to_options(
        &self,
        url: Option<String>,
        node: Option<String>,
        token: Option<String>,
    ) -> Result<Option<UpstreamOptions>, ConfigError> {
        let Some(url) = url.or_else(|| self.url.clone()) else {
            if node.is_some() || token.is_some() || self.node.is_some() {
                return Err(ConfigError::Invalid(
                    "the upstream's node or token is given without its url".into(),
                ));
            }
            return Ok(None);
        };
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ConfigError::Invalid(format!("upstream.url {url:?} must be ws:// or wss://")));
        }
        let node = node.or_else(|| self.node.clone()).ok_or_else(|| {
            ConfigError::Invalid("an upstream needs the link's node id (upstream.node)".into())
        })?;
        let node = match NodeId::parse(&node) {
            Some(id) if id.user_id().is_some() => id,
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "upstream.node {node:?} must be a node id of a user, such as \"edge:site1:link\""
                )))
            }
        };
        if let Err(e) = rhizome_core::actor::site(&node.client_id()) {
            return Err(ConfigError::Invalid(format!("upstream.node {node}: {e}")));
        }
        let token = match token {
            Some(t) => Some(t),
            None => secret(&self.token, &self.token_env)?,
        };
        let mut options = UpstreamOptions::new(url, node, token);
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::Invalid(format!("upstream.{name} must be at least 1"))),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        options.window = positive("window", self.window, options.window)?;
        options.sync_actions_max =
            positive("sync_actions_max", self.sync_actions_max, options.sync_actions_max)?;
        options.sync_bytes_max = positive("sync_bytes_max", self.sync_bytes_max, options.sync_bytes_max)?;
        options.outbox_max = self.outbox_max.unwrap_or(options.outbox_max);
        options.outbox_bytes_max = self.outbox_bytes_max.unwrap_or(options.outbox_bytes_max);
        options.fold_crdt = self.fold_crdt.unwrap_or(options.fold_crdt);
        options.channels_max = self.channels_max.unwrap_or(options.channels_max);
        options.status_token = secret(&self.status_token, &self.status_token_env)?;
        if options.status_token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::Invalid("upstream.status_token must be at least 16 bytes".into()));
        }
        Ok(Some(options))
    }
}

/// A secret given in the file (`value`), else in the environment variable named `var`.
fn secret(value: &Option<String>, var: &Option<String>) -> Result<Option<String>, ConfigError> {
    match (value, var) {
        (Some(value), _) => Ok(Some(value.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| ConfigError::Invalid(format!("environment variable {var} is not set"))),
        (None, None) => Ok(None),
    }
}

/// `[push]`: push wake-ups (see [`WakeupOptions`] for each meaning).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSection {
    /// Least time between two pokes of one device (30000).
    pub interval_ms: Option<u64>,
    /// Retries of a failed poke (8).
    pub retries_max: Option<u32>,
    /// First retry's wait, doubling after (1000).
    pub backoff_first_ms: Option<u64>,
    /// Longest wait between retries (600000).
    pub backoff_max_ms: Option<u64>,
    /// How long a push service keeps an undelivered poke, seconds (86400).
    pub ttl_secs: Option<u64>,
    /// The VAPID private key: its 32-byte scalar, base64url.
    pub vapid_private_key: Option<String>,
    /// Name of an environment variable holding the VAPID private key.
    pub vapid_private_key_env: Option<String>,
    /// The VAPID contact, `mailto:` or `https:`.
    pub vapid_subject: Option<String>,
    /// The operator's webhook URL.
    pub webhook_url: Option<String>,
    /// The webhook's HMAC secret.
    pub webhook_secret: Option<String>,
    /// Name of an environment variable holding the webhook's HMAC secret.
    pub webhook_secret_env: Option<String>,
    /// Accept `http:` endpoints and webhook URLs (false).
    pub allow_insecure_endpoints: Option<bool>,
    /// Registered devices per user at most (32).
    pub targets_per_user_max: Option<usize>,
    /// Pokes delivered at once at most (64).
    pub sends_max: Option<usize>,
    /// Longest one delivery may take (10000).
    pub send_timeout_ms: Option<u64>,
}

impl PushSection {
    /// The wake-up options, defaults filled in.
    pub fn to_options(&self) -> Result<WakeupOptions, ConfigError> {
        let d = WakeupOptions::default();
        let env = |name: &str| {
            std::env::var(name)
                .map_err(|_| ConfigError::Invalid(format!("environment variable {name} is not set")))
        };
        let ms = |v: Option<u64>, default: i64| v.map_or(default, |v| v.min(i64::MAX as u64) as i64);
        let vapid_key = match (&self.vapid_private_key, &self.vapid_private_key_env) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(var)) => Some(env(var)?),
            (None, None) => None,
        };
        let webhook = match &self.webhook_url {
            None => None,
            Some(url) => {
                let secret = match (&self.webhook_secret, &self.webhook_secret_env) {
                    (Some(s), _) => s.clone(),
                    (None, Some(var)) => env(var)?,
                    (None, None) => {
                        return Err(ConfigError::Invalid(
                            "push.webhook_url needs webhook_secret or webhook_secret_env".into(),
                        ))
                    }
                };
                if secret.len() < 16 {
                    return Err(ConfigError::Invalid("push.webhook_secret must be at least 16 bytes".into()));
                }
                let insecure = self.allow_insecure_endpoints.unwrap_or(false);
                if !(url.starts_with("https://") || insecure && url.starts_with("http://")) {
                    return Err(ConfigError::Invalid(
                        "push.webhook_url must be https (or http with allow_insecure_endpoints)".into(),
                    ));
                }
                Some(WebhookOptions { url: url.clone(), secret })
            }
        };
        let options = WakeupOptions {
            schedule: ScheduleOptions {
                interval_ms: ms(self.interval_ms, d.schedule.interval_ms),
                retries_max: self.retries_max.unwrap_or(d.schedule.retries_max),
                backoff_first_ms: ms(self.backoff_first_ms, d.schedule.backoff_first_ms),
                backoff_max_ms: ms(self.backoff_max_ms, d.schedule.backoff_max_ms),
            },
            ttl: self.ttl_secs.map_or(d.ttl, Duration::from_secs),
            vapid_key,
            vapid_subject: self.vapid_subject.clone(),
            webhook,
            allow_insecure_endpoints: self.allow_insecure_endpoints.unwrap_or(false),
            targets_per_user_max: self.targets_per_user_max.unwrap_or(d.targets_per_user_max),
            sends_max: self.sends_max.unwrap_or(d.sends_max),
            send_timeout: self.send_timeout_ms.map_or(d.send_timeout, Duration::from_millis),
        };
        if let Some(subject) = &options.vapid_subject {
            if !(subject.starts_with("mailto:") || subject.starts_with("https:")) {
                return Err(ConfigError::Invalid(
                    "push.vapid_subject must be a mailto: or https: URI".into(),
                ));
            }
        }
        if options.sends_max == 0
            || options.targets_per_user_max == 0
            || options.schedule.backoff_first_ms == 0
        {
            return Err(ConfigError::Invalid(
                "push.sends_max, targets_per_user_max and backoff_first_ms must be positive".into(),
            ));
        }
        Ok(options)
    }
}

impl FileConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config: FileConfig = toml::from_str(&text)?;
        if let (Some(key), Some(dir)) = (&config.auth.jwt_public_key_file, path.parent()) {
            config.auth.jwt_public_key_file = Some(dir.join(key));
        }
        Ok(config)
    }

    /// The application: authenticator plus rules.
    pub fn app(&self) -> Result<App, ConfigError> {
        let leeway = self.auth.leeway_secs.unwrap_or(5);
        let app = match self.auth.mode {
            AuthMode::Open => build_app(OpenAuth, &self.channels, &self.actions),
            AuthMode::Jwt => {
                let auth = if let Some(file) = &self.auth.jwt_public_key_file {
                    let pem = std::fs::read(file)
                        .map_err(|source| ConfigError::Read { path: file.clone(), source })?;
                    JwtAuth::rs256(&pem, leeway)
                        .map_err(|e| ConfigError::Invalid(format!("jwt public key: {e}")))?
                } else {
                    let secret =
                        match (&self.auth.jwt_secret, &self.auth.jwt_secret_env) {
                            (Some(s), _) => s.clone(),
                            (None, Some(var)) => std::env::var(var).map_err(|_| {
                                ConfigError::Invalid(format!("environment variable {var} is not set"))
                            })?,
                            (None, None) => return Err(ConfigError::Invalid(
                                "auth.mode = \"jwt\" needs jwt_secret, jwt_secret_env or jwt_public_key_file"
                                    .into(),
                            )),
                        };
                    if secret.len() < 8 {
                        return Err(ConfigError::Invalid("the JWT secret must be at least 8 bytes".into()));
                    }
                    JwtAuth::hs256(secret.as_bytes(), leeway)
                };
                build_app(auth, &self.channels, &self.actions)
            }
        };
        let mut app = app.map_err(ConfigError::Invalid)?;
        if !self.auth.peers.is_empty() && self.auth.mode != AuthMode::Jwt {
            return Err(ConfigError::Invalid("auth.peers needs auth.mode = \"jwt\"".into()));
        }
        for user in &self.auth.peers {
            // A user id is what a node id holds before its first `:`; `server` is no client's.
            let valid = NodeId::parse(user).is_some_and(|node| node.user_id().is_none());
            if !valid || user == "server" {
                return Err(ConfigError::Invalid(format!(
                    "auth.peers: {user:?} is not a user id (the part of a node id before its first \":\", \
                     not \"server\")"
                )));
            }
            app = app.peer(UserId::from(user.as_str()));
        }
        Ok(app)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_need_jwt_authentication() {
        let open: FileConfig = toml::from_str("[auth]\nmode = \"open\"\npeers = [\"edge\"]\n").unwrap();
        let error = open.app().unwrap_err().to_string();
        assert!(error.contains("auth.peers needs auth.mode"), "{error}");
        let jwt: FileConfig =
            toml::from_str("[auth]\nmode = \"jwt\"\njwt_secret = \"12345678\"\npeers = [\"edge\"]\n")
                .unwrap();
        assert!(jwt.app().is_ok());
    }

    fn upstream(text: &str) -> Result<Option<UpstreamOptions>, String> {
        let config: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.upstream.to_options(None, None, None).map_err(|e| e.to_string())
    }

    #[test]
    fn an_upstream_needs_a_websocket_url_and_a_users_node_id() {
        assert!(upstream("").unwrap().is_none(), "no [upstream]: not an edge");
        let ok = upstream("[upstream]\nurl = \"wss://cloud.example/\"\nnode = \"edge:s1:link\"\ntoken = \"t\"\nwindow = 4\n")
            .unwrap()
            .expect("an edge");
        assert_eq!(
            (ok.url.as_str(), ok.node.as_str(), ok.token.as_deref(), ok.window),
            ("wss://cloud.example/", "edge:s1:link", Some("t"), 4)
        );
        for (text, expected) in [
            ("[upstream]\nnode = \"edge:s1:link\"\n", "without its url"),
            ("[upstream]\nurl = \"http://c/\"\nnode = \"edge:s1:link\"\n", "must be ws:// or wss://"),
            ("[upstream]\nurl = \"ws://c/\"\n", "needs the link's node id"),
            ("[upstream]\nurl = \"ws://c/\"\nnode = \"edge\"\n", "must be a node id of a user"),
            ("[upstream]\nurl = \"ws://c/\"\nnode = \"edge:s~1:link\"\n", "may hold only ASCII letters"),
            ("[upstream]\nurl = \"ws://c/\"\nnode = \"edge:s1:link\"\nwindow = 0\n", "at least 1"),
            ("[upstream]\nurl = \"ws://c/\"\nnode = \"edge:s1:link\"\ntoken_env = \"RHIZOME_TEST_UNSET_TOKEN\"\n", "is not set"),
            ("[upstream]\nurl = \"ws://c/\"\nnode = \"edge:s1:link\"\nwindoww = 2\n", "unknown field"),
            ("[upstream]\nurl = \"ws://c/\"\nnode = \"edge:s1:link\"\nstatus_token = \"short\"\n", "at least 16 bytes"),
        ] {
            let error = upstream(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn the_command_line_overrides_the_files_upstream() {
        let config: FileConfig =
            toml::from_str("[upstream]\nurl = \"ws://file/\"\nnode = \"edge:s1:link\"\ntoken = \"file\"\n")
                .unwrap();
        let options = config
            .upstream
            .to_options(Some("ws://cli/".into()), Some("edge:s2:link".into()), Some("cli".into()))
            .unwrap()
            .expect("an edge");
        assert_eq!(
            (options.url.as_str(), options.node.as_str(), options.token.as_deref()),
            ("ws://cli/", "edge:s2:link", Some("cli"))
        );
    }

    #[test]
    fn peers_are_user_ids() {
        for bad in ["", "edge:e1", "edge:e1:link", "ed ge", "server"] {
            let text = format!("[auth]\nmode = \"jwt\"\njwt_secret = \"12345678\"\npeers = [{bad:?}]\n");
            let config: FileConfig = toml::from_str(&text).unwrap();
            let error = config.app().unwrap_err().to_string();
            assert!(error.contains("is not a user id"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../examples/rhizome.toml");
        let config: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(config.auth.mode, AuthMode::Jwt);
        assert!(config.channels.len() >= 3);
        config.limits.to_limits().unwrap();
        config.push.to_options().unwrap();
        std::env::set_var("RHIZOME_JWT_SECRET", "example-secret");
        config.app().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<FileConfig>("[server]\nlisten_on = \"x\"").is_err());
        let zero: FileConfig = toml::from_str("[limits]\nframe_bytes_max = 0").unwrap();
        assert!(zero.limits.to_limits().is_err());
    }
}
