//! Delivering one poke: a Web Push request (RFC 8030), its payload encrypted for the
//! subscription (RFC 8291, `aes128gcm`, by `web-push-native`) and signed with the server's VAPID
//! key (RFC 8292); or a signed POST to the operator's webhook.
//!
//! The poke carries no data: `{"type":"rhizome/poke"}`. The device pulls what is new.

use super::{TargetSpec, WakeupOptions, Wakeups};
use crate::writer::now_ms;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use rhizome_core::wakeup::Delivery;
use rhizome_protocol::{ClientId, NodeId};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// What a Web Push poke decrypts to.
pub const POKE_PAYLOAD: &[u8] = br#"{"type":"rhizome/poke"}"#;

/// The `Topic` of every poke (RFC 8030, section 5.4): a push service holding an undelivered
/// poke for the device replaces it instead of queueing another.
const TOPIC: &str = "rhizome-poke";

/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
const VAPID_VALIDITY: Duration = Duration::from_secs(12 * 3600);

/// Where one device's pokes go, checked.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Web Push subscription.
    WebPush {
        endpoint: reqwest::Url,
        ua_public: p256::PublicKey,
        auth: web_push_native::Auth,
        /// When the subscription expires, ms since the epoch.
        expires_ms: Option<i64>,
    },
    /// A platform token for the operator's webhook.
    Webhook { token: String, platform: Option<String> },
}

impl Target {
    /// Checks a target: `Err((error, message))` for a bad one. `http:` endpoints and internal
    /// hosts are refused unless `insecure`; an expired subscription only when `registering`
    /// (a stored one that expired since is removed when its poke falls due).
    pub fn parse(
        spec: TargetSpec,
        insecure: bool,
        registering: bool,
    ) -> Result<Target, (&'static str, String)> {
        match spec {
            TargetSpec::Webpush { subscription } => {
                let endpoint = reqwest::Url::parse(&subscription.endpoint)
                    .map_err(|e| ("bad-target", format!("endpoint: {e}")))?;
                match endpoint.scheme() {
                    "https" => {}
                    "http" if insecure => {}
                    _ => return Err(("bad-target", "the endpoint must be an https URL".to_owned())),
                }
                let Some(host) = endpoint.host_str() else {
                    return Err(("bad-target", "the endpoint has no host".to_owned()));
                };
                if !insecure && is_internal_host(host) {
                    let message = "the endpoint is on a loopback, private or link-local address";
                    return Err(("bad-target", message.to_owned()));
                }
                let key = URL_SAFE_NO_PAD
                    .decode(subscription.keys.p256dh.trim_end_matches('='))
                    .map_err(|_| ("bad-target", "keys.p256dh is not base64url".to_owned()))?;
                let ua_public = p256::PublicKey::from_sec1_bytes(&key)
                    .map_err(|_| ("bad-target", "keys.p256dh is not a P-256 public key".to_owned()))?;
                let auth = URL_SAFE_NO_PAD
                    .decode(subscription.keys.auth.trim_end_matches('='))
                    .map_err(|_| ("bad-target", "keys.auth is not base64url".to_owned()))?;
                if auth.len() != 16 {
                    return Err(("bad-target", "keys.auth must be 16 bytes".to_owned()));
                }
                let expires_ms = subscription.expiration_time.filter(|t| t.is_finite()).map(|t| t as i64);
                if registering && expires_ms.is_some_and(|t| t <= now_ms()) {
                    return Err(("bad-target", "the subscription has expired".to_owned()));
                }
                let auth = web_push_native::Auth::clone_from_slice(&auth);
                Ok(Target::WebPush { endpoint, ua_public, auth, expires_ms })
            }
            TargetSpec::Webhook { token, platform } => {
                if token.is_empty() || token.len() > 4096 {
                    return Err(("bad-target", "token must be 1 to 4096 bytes".to_owned()));
                }
                Ok(Target::Webhook { token, platform })
            }
        }
    }
}

/// Whether `host` (a URL's host: a name, an IPv4 address or a bracketed IPv6 one) names the
/// server's own machine or network rather than a push service on the internet. A name that
/// resolves to such an address is not caught here.
fn is_internal_host(host: &str) -> bool {
    use std::net::IpAddr;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
        return false;
    };
    let v4_internal = |ip: std::net::Ipv4Addr| {
        let [a, b, ..] = ip.octets();
        ip.is_loopback()
            || ip.is_private()
            || ip.is_link_local()
            || ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
            || a == 0
            // Shared address space (RFC 6598), carrier-grade NAT.
            || (a == 100 && (64..128).contains(&b))
    };
    match ip {
        IpAddr::V4(v4) => v4_internal(v4),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local (fc00::/7) and link-local (fe80::/10).
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(v4_internal)
        }
    }
}

/// One poke to deliver.
#[derive(Debug)]
pub struct Poke {
    pub client: ClientId,
    pub node: NodeId,
    pub target: Target,
}

/// The server's VAPID key pair.
#[derive(Clone)]
pub struct Vapid {
    key: p256::ecdsa::SigningKey,
    /// The public key, uncompressed, base64url.
    public: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid").field("public", &self.public).finish_non_exhaustive()
    }
}

/// Name of the file, in the data directory, that keeps a VAPID key made by the server.
const VAPID_KEY_FILE: &str = "vapid-private-key";

impl Vapid {
    /// The key of `options`, or the one kept in `data_dir`, made and kept there the first time.
    pub fn load(options: &WakeupOptions, data_dir: &Path) -> Result<Vapid, String> {
        if let Some(text) = &options.vapid_key {
            return Vapid::from_base64(text).map_err(|e| format!("push.vapid_private_key: {e}"));
        }
        let path = data_dir.join(VAPID_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Vapid::from_base64(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let vapid = Vapid::generate();
        let text = URL_SAFE_NO_PAD.encode(vapid.key.to_bytes());
        write_private(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "made a VAPID key for Web Push");
        Ok(vapid)
    }

    /// A new random key.
    pub fn generate() -> Vapid {
        use rand::RngCore as _;
        loop {
            let mut bytes = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut bytes);
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&bytes) {
                return Vapid::from_key(key);
            }
        }
    }

    /// A key given as its 32-byte scalar, base64url.
    pub fn from_base64(text: &str) -> Result<Vapid, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim().trim_end_matches('='))
            .map_err(|_| "not base64url".to_owned())?;
        let key = p256::ecdsa::SigningKey::from_slice(&bytes)
            .map_err(|_| "not a P-256 private key (32 bytes)".to_owned())?;
        Ok(Vapid::from_key(key))
    }

    fn from_key(key: p256::ecdsa::SigningKey) -> Vapid {
        let point = key.verifying_key().to_encoded_point(false);
        let public = URL_SAFE_NO_PAD.encode(point.as_bytes());
        Vapid { key, public }
    }

    /// The public key (`applicationServerKey`), base64url of the uncompressed point.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header of a request to `endpoint` (RFC 8292): a JWT signed with
    /// ES256 whose `aud` is the endpoint's origin, and the public key.
    fn authorization(&self, endpoint: &reqwest::Url, subject: Option<&str>) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let exp = now_ms() / 1000 + VAPID_VALIDITY.as_secs() as i64;
        let mut claims = json!({"aud": endpoint.origin().ascii_serialization(), "exp": exp});
        if let Some(subject) = subject {
            claims["sub"] = json!(subject);
        }
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: p256::ecdsa::Signature = self.key.sign(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(signature.to_bytes());
        format!("vapid t={signing_input}.{signature}, k={}", self.public)
    }
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Delivers `poke`; how it went.
pub async fn send(http: &reqwest::Client, wakeups: &Wakeups, poke: &Poke) -> Delivery {
    let options = wakeups.options();
    let request = match &poke.target {
        Target::WebPush { expires_ms, .. } if expires_ms.is_some_and(|t| t <= now_ms()) => {
            return Delivery::Gone;
        }
        Target::WebPush { endpoint, ua_public, auth, .. } => {
            let body = match web_push_native::encrypt(POKE_PAYLOAD.to_vec(), ua_public, auth) {
                Ok(body) => body,
                Err(e) => {
                    tracing::warn!(client = %poke.client, error = %e, "a Web Push poke could not be encrypted");
                    return Delivery::Refused;
                }
            };
            let subject = options.vapid_subject.as_deref();
            http.post(endpoint.clone())
                .header("TTL", options.ttl.as_secs().to_string())
                .header("Topic", TOPIC)
                .header("Urgency", "normal")
                .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header(reqwest::header::AUTHORIZATION, wakeups.vapid.authorization(endpoint, subject))
                .body(body)
        }
        Target::Webhook { token, platform } => {
            let Some(webhook) = &options.webhook else {
                tracing::warn!(client = %poke.client, "a webhook target but no push.webhook_url; poke dropped");
                return Delivery::Refused;
            };
            let body = json!({
                "type": "rhizome/poke",
                "delivery": delivery_id(),
                "client": poke.client.as_str(),
                "node": poke.node.as_str(),
                "user": poke.node.user_id().map(|u| u.as_str().to_owned()),
                "token": token,
                "platform": platform,
                "time": now_ms(),
            })
            .to_string();
            let signature = webhook_signature(&webhook.secret, now_ms() / 1000, &body);
            http.post(&webhook.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Rhizome-Signature", signature)
                .body(body)
        }
    };
    match request.send().await {
        Ok(response) => outcome(&poke.client, response),
        Err(e) => {
            tracing::debug!(client = %poke.client, error = %e, "a poke could not be delivered; retrying");
            Delivery::Retry { after_ms: None }
        }
    }
}

/// What a push service's (or webhook's) answer means.
fn outcome(client: &ClientId, response: reqwest::Response) -> Delivery {
    let status = response.status();
    if status.is_success() {
        return Delivery::Sent;
    }
    match status.as_u16() {
        404 | 410 => Delivery::Gone,
        408 | 429 | 500..=599 => {
            let after_ms = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|secs| secs.clamp(0, 24 * 3600) * 1000);
            tracing::debug!(%client, %status, "a poke was refused for now; retrying");
            Delivery::Retry { after_ms }
        }
        _ => {
            tracing::warn!(%client, %status, "a poke was refused");
            Delivery::Refused
        }
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the receiver recomputes it with the
/// shared secret and refuses an old `t` (replays).
pub fn webhook_signature(secret: &str, unix_secs: i64, body: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("{unix_secs}.{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_secs},v1={hex}")
}

/// A unique id per delivery, for the webhook to drop a retried duplicate.
fn delivery_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_hosts_are_told_from_public_ones() {
        for host in [
            "localhost",
            "a.localhost",
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "[::1]",
            "[::]",
            "[fd00::1]",
            "[fe80::1]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_internal_host(host), "{host}");
        }
        for host in ["fcm.googleapis.com", "8.8.8.8", "100.128.0.1", "[2001:4860::8888]"] {
            assert!(!is_internal_host(host), "{host}");
        }
    }

    #[test]
    fn the_webhook_signature_is_the_hmac_of_time_and_body() {
        // Computed independently: `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`.
        let got = webhook_signature("secret", 1_700_000_000, "{}");
        assert_eq!(got, "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163");
    }
}
