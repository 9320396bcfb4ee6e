//! Test support: an in-process server on port 0 with a temporary log, JWTs, and a small
//! protocol-5 client over a real WebSocket in which every read has a timeout.

use anyhow::{anyhow, bail, Context as _, Result};
use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use rhizome_core::{ActionType, AuthRequest, Authenticator, Context, HookError, Meta};
use rhizome_core::{App, Limits};
use rhizome_protocol::backoff::Backoff;
use rhizome_protocol::Action;
use rhizome_server::config::FileConfig;
use rhizome_server::link::{LinkStatus, UpstreamOptions};
use rhizome_server::wakeup::WakeupOptions;
use rhizome_server::{Server, ServerOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single read may wait.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The HS256 secret of the test config.
pub const SECRET: &str = "interop-secret";

/// The rules of `interop/rhizome.toml`; each test appends its own `[limits]`.
const RULES: &str = r#"
[server]
subprotocol = 1
min_subprotocol = 1

[auth]
mode = "jwt"
jwt_secret = "interop-secret"
leeway_secs = 0

[[channel]]
pattern = "counter/:id"
subscribe = "everyone"
write = "everyone"

[[channel]]
pattern = "users/:user"
subscribe = ":user"
write = ":user"

[[channel]]
pattern = "news"
subscribe = "everyone"
write = "nobody"

[[action]]
type = "inc"
channel = "counter/{id}"

[[action]]
type = "post"
channel = "{channel}"

[[action]]
type = "dm"
user = "{to}"

[[channel]]
pattern = "crdt/private/:user/*"
subscribe = ":user"
write = ":user"

[[channel]]
pattern = "crdt/*"
subscribe = "everyone"
write = "everyone"

[[action]]
type = "crdt/*"
channel = "crdt/{key}"
"#;

/// Limits most tests run with: small enough that each limit is reachable from a test.
pub const DEFAULT_LIMITS: &str = r#"
frame_bytes_max = 65536
actions_per_sync_max = 100
unauthenticated_timeout_ms = 3000
auth_failure_window_ms = 1000
"#;

/// A running server and its data directory.
#[derive(Debug)]
pub struct TestServer {
    server: Option<Server>,
    /// An edge's link node id.
    link_node: Option<String>,
    _dir: TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TestServer {
    /// Starts a server with the test rules and `limits` (the body of a `[limits]` section).
    pub async fn start(limits: &str) -> Result<TestServer> {
        let text = format!("{RULES}\n[limits]\n{limits}\n");
        let file: FileConfig = toml::from_str(&text).context("test config")?;
        Self::with_app(file.app()?, file.limits.to_limits()?).await
    }

    /// Starts a server with the application `app` (rules written in Rust) and `limits`.
    pub async fn with_app(app: App, limits: Limits) -> Result<TestServer> {
        Self::start_in(tempfile::tempdir()?, app, limits, WakeupOptions::default()).await
    }

    /// Starts a server with the application `app`, `limits` and these push wake-ups.
    pub async fn with_app_and_wakeups(
        app: App,
        limits: Limits,
        wakeups: WakeupOptions,
    ) -> Result<TestServer> {
        Self::start_in(tempfile::tempdir()?, app, limits, wakeups).await
    }

    /// Starts a server with the test rules, [`DEFAULT_LIMITS`] and these push wake-ups.
    pub async fn with_wakeups(wakeups: WakeupOptions) -> Result<TestServer> {
        let (app, limits) = Self::default_rules()?;
        Self::start_in(tempfile::tempdir()?, app, limits, wakeups).await
    }

    /// Stops the server and starts it again on the same data directory (a new port), with the
    /// test rules, [`DEFAULT_LIMITS`] and `wakeups`.
    pub async fn restart(mut self, wakeups: WakeupOptions) -> Result<TestServer> {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let (app, limits) = Self::default_rules()?;
        Self::start_in(self._dir, app, limits, wakeups).await
    }

    /// Starts an edge of the server at `upstream` (a WebSocket URL) with the test rules and
    /// [`DEFAULT_LIMITS`]. Its link logs in as `edge:e<n>:link` (user `edge`, which the upstream
    /// must make a peer; `n` differs for each edge), retries within a second, and drops a link
    /// silent for a second.
    pub async fn edge_of(upstream: &str) -> Result<TestServer> {
        Self::edge_with(upstream, |_| {}).await
    }

    /// An edge of the server at `upstream` with the application `app` and default limits.
    pub async fn edge_with_app(upstream: &str, app: App) -> Result<TestServer> {
        let link = Some(link_to(upstream, "edge:app:link"));
        Self::start_edge_in(tempfile::tempdir()?, app, Limits::default(), WakeupOptions::default(), link)
            .await
    }

    /// [`TestServer::edge_of`] with link options changed by `tweak`.
    pub async fn edge_with(upstream: &str, tweak: impl FnOnce(&mut UpstreamOptions)) -> Result<TestServer> {
        static EDGES: AtomicU64 = AtomicU64::new(1);
        let node = format!("edge:e{}:link", EDGES.fetch_add(1, Ordering::Relaxed));
        let (app, limits) = Self::default_rules()?;
        let mut link = link_to(upstream, &node);
        tweak(&mut link);
        Self::start_edge_in(tempfile::tempdir()?, app, limits, WakeupOptions::default(), Some(link)).await
    }

    /// Starts an edge of the server at `upstream` as [`TestServer::edge_of`] does, with `limits`
    /// (the body of a `[limits]` section) and link options changed by `options`.
    pub async fn edge_with_limits(
        upstream: &str,
        limits: &str,
        options: impl FnOnce(&mut UpstreamOptions),
    ) -> Result<TestServer> {
        static EDGES: AtomicU64 = AtomicU64::new(1);
        let node = format!("edge:w{}:link", EDGES.fetch_add(1, Ordering::Relaxed));
        let text = format!("{RULES}\n[limits]\n{limits}\n");
        let file: FileConfig = toml::from_str(&text).context("test config")?;
        let mut link = link_to(upstream, &node);
        options(&mut link);
        let (app, limits) = (file.app()?, file.limits.to_limits()?);
        Self::start_edge_in(tempfile::tempdir()?, app, limits, WakeupOptions::default(), Some(link)).await
    }

    /// Stops a server and starts it again on the same data directory as an edge of `upstream`
    /// (its link `edge:moved:link`).
    pub async fn restart_as_edge_of(mut self, upstream: &str) -> Result<TestServer> {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let (app, limits) = Self::default_rules()?;
        let link = Some(link_to(upstream, "edge:moved:link"));
        Self::start_edge_in(self._dir, app, limits, WakeupOptions::default(), link).await
    }

    /// Stops an edge and starts it again on the same data directory, linked to `upstream`.
    pub async fn restart_edge(mut self, upstream: &str) -> Result<TestServer> {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let (app, limits) = Self::default_rules()?;
        let node = self.link_node.take().ok_or_else(|| anyhow!("not an edge"))?;
        let link = Some(link_to(upstream, &node));
        Self::start_edge_in(self._dir, app, limits, WakeupOptions::default(), link).await
    }

    /// The state of an edge's link.
    pub fn link_status(&self) -> Result<LinkStatus> {
        let server = self.server.as_ref().ok_or_else(|| anyhow!("server stopped"))?;
        server.link_status().ok_or_else(|| anyhow!("not an edge"))
    }

    /// Starts a server with the test rules and [`DEFAULT_LIMITS`], where the connections of
    /// `peers` (user ids) are peers (edge nodes' links).
    pub async fn with_peers(peers: &[&str]) -> Result<TestServer> {
        Self::with_peers_and_limits(peers, DEFAULT_LIMITS).await
    }

    /// Starts a server with the test rules and `limits` (the body of a `[limits]` section),
    /// where the connections of `peers` (user ids) are peers.
    pub async fn with_peers_and_limits(peers: &[&str], limits: &str) -> Result<TestServer> {
        let (app, limits) = Self::rules_with_peers(peers, limits)?;
        Self::with_app(app, limits).await
    }

    /// Starts a server with the test rules as `edit` changes them and [`DEFAULT_LIMITS`],
    /// where the connections of `peers` (user ids) are peers.
    pub async fn with_peers_and_rules(
        peers: &[&str],
        edit: impl FnOnce(&str) -> String,
    ) -> Result<TestServer> {
        let (app, limits) = Self::edited_rules_with_peers(peers, DEFAULT_LIMITS, edit)?;
        Self::with_app(app, limits).await
    }

    /// The test rules with `peers` and `limits`.
    pub fn rules_with_peers(peers: &[&str], limits: &str) -> Result<(App, Limits)> {
        Self::edited_rules_with_peers(peers, limits, str::to_owned)
    }

    /// The test rules as `edit` changes them, with `peers` and `limits`.
    pub fn edited_rules_with_peers(
        peers: &[&str],
        limits: &str,
        edit: impl FnOnce(&str) -> String,
    ) -> Result<(App, Limits)> {
        let list: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
        let rules = edit(RULES)
            .replace("leeway_secs = 0\n", &format!("leeway_secs = 0\npeers = [{}]\n", list.join(", ")));
        let text = format!("{rules}\n[limits]\n{limits}\n");
        let file: FileConfig = toml::from_str(&text).context("test config")?;
        Ok((file.app()?, file.limits.to_limits()?))
    }

    /// An edge of the server at `upstream` that is itself the upstream of edges (a region
    /// between the cloud and its sites): the links of user `edge` are peers here too.
    pub async fn region_of(upstream: &str) -> Result<TestServer> {
        Self::region_with(upstream, |_| {}).await
    }

    /// [`TestServer::region_of`] with link options changed by `tweak`.
    pub async fn region_with(upstream: &str, tweak: impl FnOnce(&mut UpstreamOptions)) -> Result<TestServer> {
        let (app, limits) = Self::rules_with_peers(&["edge"], DEFAULT_LIMITS)?;
        let mut link = link_to(upstream, "edge:region:link");
        tweak(&mut link);
        Self::start_edge_in(tempfile::tempdir()?, app, limits, WakeupOptions::default(), Some(link)).await
    }

    /// Restarts this server (not an edge) on its data directory and at its address, with the
    /// test rules as `edit` changes them, where the connections of `peers` are peers: its
    /// edges find it where it was.
    pub async fn restart_with_rules(
        mut self,
        peers: &[&str],
        edit: impl FnOnce(&str) -> String,
    ) -> Result<TestServer> {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let (app, limits) = Self::edited_rules_with_peers(peers, DEFAULT_LIMITS, edit)?;
        Self::start_at(self.addr, self._dir, app, limits, WakeupOptions::default(), None).await
    }

    /// [`TestServer::edge_of`] whose application `edit` changes (extra action types).
    pub async fn edge_with_app_edited(upstream: &str, edit: impl FnOnce(App) -> App) -> Result<TestServer> {
        let (app, limits) = Self::default_rules()?;
        let link = link_to(upstream, "edge:edited:link");
        Self::start_edge_in(tempfile::tempdir()?, edit(app), limits, WakeupOptions::default(), Some(link))
            .await
    }

    /// [`TestServer::region_of`] whose application `edit` changes (extra action types).
    pub async fn region_with_app(upstream: &str, edit: impl FnOnce(App) -> App) -> Result<TestServer> {
        let (app, limits) = Self::rules_with_peers(&["edge"], DEFAULT_LIMITS)?;
        let link = link_to(upstream, "edge:region:link");
        Self::start_edge_in(tempfile::tempdir()?, edit(app), limits, WakeupOptions::default(), Some(link))
            .await
    }

    /// The tests' rules (`RULES`) and [`DEFAULT_LIMITS`].
    pub fn default_rules() -> Result<(App, Limits)> {
        let text = format!("{RULES}\n[limits]\n{DEFAULT_LIMITS}\n");
        let file: FileConfig = toml::from_str(&text).context("test config")?;
        Ok((file.app()?, file.limits.to_limits()?))
    }

    /// The server's push wake-up counters.
    pub fn wakeup_stats(&self) -> rhizome_server::wakeup::WakeupStats {
        self.server.as_ref().map(Server::wakeup_stats).unwrap_or_default()
    }

    async fn start_in(dir: TempDir, app: App, limits: Limits, wakeups: WakeupOptions) -> Result<TestServer> {
        Self::start_edge_in(dir, app, limits, wakeups, None).await
    }

    async fn start_edge_in(
        dir: TempDir,
        app: App,
        limits: Limits,
        wakeups: WakeupOptions,
        upstream: Option<UpstreamOptions>,
    ) -> Result<TestServer> {
        Self::start_at("127.0.0.1:0".parse()?, dir, app, limits, wakeups, upstream).await
    }

    async fn start_at(
        listen: std::net::SocketAddr,
        dir: TempDir,
        app: App,
        limits: Limits,
        wakeups: WakeupOptions,
        upstream: Option<UpstreamOptions>,
    ) -> Result<TestServer> {
        let link_node = upstream.as_ref().map(|o| o.node.as_str().to_owned());
        let options = ServerOptions {
            listen,
            data_dir: dir.path().into(),
            subprotocol: 1,
            min_subprotocol: 1,
            development: false,
            limits,
            app,
            wakeups,
            upstream,
        };
        let server = Server::start(options).await?;
        let addr = server.local_addr();
        Ok(TestServer { server: Some(server), link_node, _dir: dir, addr })
    }

    /// Starts a server with [`DEFAULT_LIMITS`].
    pub async fn default() -> Result<TestServer> {
        Self::start(DEFAULT_LIMITS).await
    }

    /// Stops the server and waits for its connections to end.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Waits until the hub counts `n` connections. A closed connection stops being counted when
    /// the hub handles its `Unregister`, so whatever that queued to the writer is queued before
    /// any write requested after this returns.
    pub async fn wait_connections(&self, n: usize) -> Result<()> {
        let server = self.server.as_ref().ok_or_else(|| anyhow!("server stopped"))?;
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        loop {
            let stats = server.stats().await.ok_or_else(|| anyhow!("hub is gone"))?;
            if stats.connections == n {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} connections instead of {n} after {READ_TIMEOUT:?}", stats.connections);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until at least `n` connections are parked.
    pub async fn wait_parked(&self, n: usize) -> Result<()> {
        let server = self.server.as_ref().ok_or_else(|| anyhow!("server stopped"))?;
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        while server.parked_connections() < n {
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} parked connections instead of {n} after {READ_TIMEOUT:?}",
                    server.parked_connections()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.server.as_ref().map_or(0, Server::parked_connections)
    }

    /// Opens a socket without sending anything.
    pub async fn open(&self) -> Result<Client> {
        Client::open(self.addr).await
    }

    /// Opens a socket and authenticates `node` with a valid token.
    pub async fn login(&self, node: &str) -> Result<Client> {
        let mut c = self.open().await?;
        c.connect(node, &token(user_of(node))).await?;
        Ok(c)
    }

    /// The server's WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The name the dots of `node`'s CRDT operations carry when this server applies them: the
    /// node id on a server without an upstream, the edge's name for it on an edge.
    pub fn actor(&self, node: &str) -> String {
        let site = self.link_node.as_deref().map(|link| rhizome_protocol::NodeId::from(link).client_id());
        rhizome_core::actor::actor(&node.into(), site.as_ref()).to_string()
    }

    /// The server's SQLite log.
    pub fn db_path(&self) -> std::path::PathBuf {
        self._dir.path().join("rhizome.db")
    }

    /// Checks that the server still serves: a fresh client connects, sends an action and gets
    /// `logux/processed` for it.
    pub async fn assert_healthy(&self) -> Result<()> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let node = format!("healthy:h{n}:t");
        let mut c = self.login(&node).await.context("a fresh client could not connect")?;
        let id = c.send_action(json!({"type": "inc", "id": "health"})).await?;
        c.wait_processed(&id).await.context("a fresh client's action was not processed")?;
        c.close().await;
        Ok(())
    }
}

/// The link options of a test edge with the link's `node`: quick retries and a short timeout.
fn link_to(upstream: &str, node: &str) -> UpstreamOptions {
    let node = rhizome_protocol::NodeId::from(node);
    let mut options = UpstreamOptions::new(upstream, node, Some(token("edge")));
    options.backoff = Backoff { base: Duration::from_millis(20), max: Duration::from_millis(500) };
    options.ping_interval = Duration::from_millis(300);
    options.timeout = Duration::from_secs(1);
    // The tests' upstreams take at most 100 actions per `sync` (`DEFAULT_LIMITS`).
    options.sync_actions_max = 100;
    options
}

/// The user part of a node id.
pub fn user_of(node: &str) -> &str {
    node.split(':').next().unwrap_or(node)
}

/// Milliseconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn sign(secret: &str, sub: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
}

/// A valid HS256 token for `user`, good for an hour.
pub fn token(user: &str) -> String {
    sign(SECRET, user, now_secs() + 3600)
}

/// A token signed with another secret.
pub fn token_bad_signature(user: &str) -> String {
    sign("not-the-interop-secret", user, now_secs() + 3600)
}

/// A token that expired a minute ago.
pub fn token_expired(user: &str) -> String {
    sign(SECRET, user, now_secs() - 60)
}

/// What a read produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame.
    Text(String),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
    /// The stream ended without a close frame.
    End,
    /// The socket failed (e.g. reset by the peer).
    Error(String),
}

/// A raw protocol-5 client.
#[derive(Debug)]
pub struct Client {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Our node id, once `connect` was sent.
    pub node: String,
    /// The server's `baseTime` from `connected`.
    pub base_time: i64,
    /// The server's node id from `connected`.
    pub server_node: String,
    /// The `added` of our last `sync`.
    pub added: u64,
    next_ms: i64,
}

/// The `[action, meta]` pairs of a `sync` message (none for anything else).
pub fn sync_pairs(message: &Value) -> Vec<(Value, Value)> {
    match message.as_array() {
        Some(a) if a.first().and_then(Value::as_str) == Some("sync") => {
            a[2..].chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect()
        }
        _ => Vec::new(),
    }
}

/// The actions of a `sync` message.
pub fn sync_actions(message: &Value) -> Vec<Value> {
    sync_pairs(message).into_iter().map(|(a, _)| a).collect()
}

/// Whether `message` is a `sync` carrying an action of type `kind` with `id`.
pub fn has_answer(message: &Value, kind: &str, id: &str) -> bool {
    sync_actions(message).iter().any(|a| a["type"] == kind && a["id"] == id)
}

impl Client {
    /// Opens a socket to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<Client> {
        let url = format!("ws://{addr}/");
        let (ws, _) = tokio::time::timeout(READ_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| anyhow!("WebSocket upgrade timed out"))??;
        Ok(Client { ws, node: String::new(), base_time: 0, server_node: String::new(), added: 0, next_ms: 0 })
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: impl Into<String>) -> Result<()> {
        let text: String = text.into();
        self.ws.send(Message::text(text)).await.context("send")?;
        Ok(())
    }

    /// Sends a JSON message.
    pub async fn send_json(&mut self, message: &Value) -> Result<()> {
        self.send(message.to_string()).await
    }

    /// Sends `connect` without waiting for the answer.
    pub async fn send_connect(&mut self, node: &str, token: &str) -> Result<()> {
        self.node = node.to_owned();
        self.send_json(&json!(["connect", 5, node, 0, {"token": token, "subprotocol": 1}])).await
    }

    /// Sends `connect` and expects `connected`; records `baseTime`.
    pub async fn connect(&mut self, node: &str, token: &str) -> Result<()> {
        self.send_connect(node, token).await?;
        let answer = self.next_json().await?;
        self.on_connected(&answer)
    }

    /// Checks a `connected` answer and takes its `baseTime`.
    pub fn on_connected(&mut self, answer: &Value) -> Result<()> {
        let ok = answer[0] == "connected"
            && answer[1] == 5
            && answer[2].as_str().is_some_and(|s| s.starts_with("server:"))
            && answer[4] == json!({"subprotocol": 1});
        if !ok {
            bail!("expected connected, got {answer}");
        }
        let start = answer[3][0].as_i64().ok_or_else(|| anyhow!("no start in {answer}"))?;
        let base = answer[3][1].as_i64().ok_or_else(|| anyhow!("no baseTime in {answer}"))?;
        if start > base {
            bail!("start after baseTime in {answer}");
        }
        self.base_time = base;
        self.server_node = answer[2].as_str().unwrap_or_default().to_owned();
        // Our ids are created after baseTime and grow by one ms each, so they never repeat.
        self.next_ms = self.next_ms.max(base + 1);
        Ok(())
    }

    /// A fresh absolute id time for an action of ours.
    pub fn next_id_ms(&mut self) -> i64 {
        let ms = self.next_ms;
        self.next_ms += 1;
        ms
    }

    /// The full id of our action created at `ms` with sequence 0.
    pub fn full_id(&self, ms: i64) -> String {
        format!("{ms} {} 0", self.node)
    }

    /// The full id of a `sync` meta's `id` as the server compressed it for us: a number is a
    /// shift with the server's node and sequence 0, a pair adds the sequence, a triple names
    /// the node.
    pub fn decode_id(&self, id: &Value) -> Result<String> {
        let shift = |v: &Value| v.as_i64().map(|s| s + self.base_time);
        let decoded = match id {
            Value::Number(_) => shift(id).map(|ms| format!("{ms} {} 0", self.server_node)),
            Value::Array(a) => match a.as_slice() {
                [ms, seq] => {
                    shift(ms).zip(seq.as_u64()).map(|(ms, seq)| format!("{ms} {} {seq}", self.server_node))
                }
                [ms, node, seq] => shift(ms)
                    .zip(node.as_str())
                    .zip(seq.as_u64())
                    .map(|((ms, node), seq)| format!("{ms} {node} {seq}")),
                _ => None,
            },
            _ => None,
        };
        decoded.ok_or_else(|| anyhow!("not a compressed id: {id}"))
    }

    /// Sends one action with a fresh id in its own `sync`; returns the action's full id.
    pub async fn send_action(&mut self, action: Value) -> Result<String> {
        let ms = self.next_id_ms();
        self.send_action_at(action, ms).await
    }

    /// Sends one action whose id is `"<ms> <our node> 0"`; returns the full id.
    pub async fn send_action_at(&mut self, action: Value, ms: i64) -> Result<String> {
        let shift = ms - self.base_time;
        self.added += 1;
        self.send_json(&json!(["sync", self.added, action, {"id": shift, "time": shift}])).await?;
        Ok(self.full_id(ms))
    }

    /// The next event, or an error after [`READ_TIMEOUT`]. Pings and pongs of the WebSocket
    /// layer are skipped.
    pub async fn next_event(&mut self) -> Result<Event> {
        self.next_event_within(READ_TIMEOUT).await
    }

    /// The next event, or an error after `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {timeout:?}"))?;
            return Ok(match next {
                None => Event::End,
                Some(Err(e)) => Event::Error(e.to_string()),
                Some(Ok(Message::Text(t))) => Event::Text(t.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => Event::Close(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Binary(b))) => Event::Text(format!("<binary {} bytes>", b.len())),
                Some(Ok(_)) => continue,
            });
        }
    }

    /// The next text frame.
    pub async fn next_text(&mut self) -> Result<String> {
        match self.next_event().await? {
            Event::Text(t) => Ok(t),
            other => bail!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame, parsed.
    pub async fn next_json(&mut self) -> Result<Value> {
        let text = self.next_text().await?;
        serde_json::from_str(&text).with_context(|| format!("server sent invalid JSON: {text}"))
    }

    /// Reads messages until one satisfies `pred`; returns it.
    pub async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Result<Value> {
        loop {
            let m = self.next_json().await?;
            if pred(&m) {
                return Ok(m);
            }
        }
    }

    /// Reads messages until one satisfies `pred`, each within `timeout`; returns it.
    pub async fn until_within(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        loop {
            let m = match self.next_event_within(timeout).await? {
                Event::Text(t) => serde_json::from_str(&t).with_context(|| format!("invalid JSON: {t}"))?,
                other => bail!("expected a text frame, got {other:?}"),
            };
            if pred(&m) {
                return Ok(m);
            }
        }
    }

    /// Reads messages until one satisfies `pred`; returns every message read, that one last.
    pub async fn collect_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Result<Vec<Value>> {
        let mut seen = Vec::new();
        loop {
            let m = self.next_json().await?;
            let done = pred(&m);
            seen.push(m);
            if done {
                return Ok(seen);
            }
        }
    }

    /// Waits for `logux/processed` of `id`; fails on its `logux/undo`.
    pub async fn wait_processed(&mut self, id: &str) -> Result<()> {
        let m =
            self.until(|m| has_answer(m, "logux/processed", id) || has_answer(m, "logux/undo", id)).await?;
        if has_answer(&m, "logux/undo", id) {
            bail!("{id} was undone: {m}");
        }
        Ok(())
    }

    /// Waits for `logux/undo` of `id`; returns the undo action. Fails on `logux/processed`.
    pub async fn wait_undo(&mut self, id: &str) -> Result<Value> {
        let m =
            self.until(|m| has_answer(m, "logux/processed", id) || has_answer(m, "logux/undo", id)).await?;
        sync_actions(&m)
            .into_iter()
            .find(|a| a["type"] == "logux/undo" && a["id"] == id)
            .ok_or_else(|| anyhow!("{id} was processed, not undone: {m}"))
    }

    /// Subscribes to `channel` and waits for its `logux/processed`.
    pub async fn subscribe(&mut self, channel: &str) -> Result<()> {
        let id = self.send_action(json!({"type": "logux/subscribe", "channel": channel})).await?;
        self.wait_processed(&id).await
    }

    /// Expects the next text frame to be exactly `expected` (compared as JSON).
    pub async fn expect(&mut self, expected: &Value) -> Result<()> {
        let got = self.next_json().await?;
        if &got != expected {
            bail!("expected {expected}, got {got}");
        }
        Ok(())
    }

    /// Expects the server to close the socket next (no more text frames); returns the close
    /// code, `None` when the stream ended without a close frame.
    pub async fn expect_close(&mut self) -> Result<Option<u16>> {
        match self.next_event().await? {
            Event::Close(code) => Ok(code),
            Event::End | Event::Error(_) => Ok(None),
            Event::Text(t) => bail!("expected the socket to close, got {t}"),
        }
    }

    /// Expects exactly `["error", …]` equal to `expected`, then the close.
    pub async fn expect_error_and_close(&mut self, expected: &Value) -> Result<Option<u16>> {
        self.expect(expected).await?;
        self.expect_close().await
    }

    /// Closes our side politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// Lets everyone in.
pub struct Open;

#[async_trait]
impl Authenticator for Open {
    async fn authenticate(&self, _: &AuthRequest) -> bool {
        true
    }
}

/// `slow`: processing takes `delay` and counts each id.
pub struct Slow {
    pub delay: Duration,
    pub counts: Arc<Mutex<HashMap<String, u32>>>,
}

#[async_trait]
impl ActionType for Slow {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
    fn processes(&self) -> bool {
        true
    }
    async fn process(&self, _: &Context, _: &Action, meta: &Meta) -> Result<(), HookError> {
        tokio::time::sleep(self.delay).await;
        *self
            .counts
            .lock()
            .map_err(|_| HookError::Failed("poisoned".into()))?
            .entry(meta.id.text())
            .or_default() += 1;
        Ok(())
    }
}

/// The seeds a seeded test runs: the one in `$one` (to replay it), else the range in `$range`
/// (`<n>`: 0 to n−1, `<a>..<b>`: a to b−1), else `default`.
pub fn seeds_from_env(one: &str, range: &str, default: &[u64]) -> Vec<u64> {
    if let Some(seed) = std::env::var(one).ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let Ok(seeds) = std::env::var(range) else { return default.to_vec() };
    let (from, to) = seeds.split_once("..").unwrap_or(("0", &seeds));
    match (from.parse::<u64>(), to.parse::<u64>()) {
        (Ok(from), Ok(to)) => (from..to).collect(),
        _ => panic!("{range}={seeds}: expected <n> or <a>..<b>"),
    }
}
