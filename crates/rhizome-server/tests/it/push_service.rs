//! Stand-ins for what pokes are delivered to, checking what the real ones check.
//!
//! [`PushService`] is a Web Push service (RFC 8030) on a real socket. It holds each
//! subscription's private key and auth secret, as a browser does, and for every push:
//! verifies the VAPID token (RFC 8292) with an ES256 implementation other than the server's
//! (`jsonwebtoken`, on ring): signature, `aud` = the endpoint's origin, `exp` in the next
//! 24 hours, a `mailto:`/`https:` `sub`, and the key `k` being the server's; then decrypts the
//! `aes128gcm` payload (RFC 8291, written here from the RFC, section 3.4 and RFC 8188). A push
//! that fails any check is refused as a real service refuses it (401, 403, 400) and recorded as
//! a rejection.
//!
//! [`Webhook`] is an operator's gateway: it checks `Rhizome-Signature` (HMAC-SHA256 of
//! `"<t>.<body>"`, recomputed here) and the time `t`.

use aes_gcm::aead::{Aead, KeyInit};
use anyhow::{anyhow, bail, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One push the service accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// The decrypted payload.
    pub payload: Vec<u8>,
    /// Its `TTL`, `Topic` and `Urgency` headers.
    pub ttl: Option<String>,
    pub topic: Option<String>,
    pub urgency: Option<String>,
    /// The VAPID claims.
    pub claims: Value,
}

/// A scripted answer: a status and, maybe, a `Retry-After` in seconds.
pub type Reply = (u16, Option<u64>);

struct Sub {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

#[derive(Default)]
struct ServiceState {
    subs: HashMap<String, Sub>,
    /// The server's VAPID public key, once known.
    vapid: Option<String>,
    /// Pushes accepted, per subscription.
    received: HashMap<String, Vec<Received>>,
    /// Pushes refused by a check, and why.
    rejected: Vec<String>,
    /// Requests per subscription, whatever the answer.
    requests: HashMap<String, Vec<Instant>>,
    /// Answers to give before the default 201, per subscription.
    replies: HashMap<String, VecDeque<Reply>>,
}

/// A Web Push service.
#[derive(Clone)]
pub struct PushService {
    pub addr: SocketAddr,
    state: Arc<Mutex<ServiceState>>,
}

impl PushService {
    pub async fn start() -> Result<PushService> {
        let state = Arc::new(Mutex::new(ServiceState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route("/push/{name}", post(push)).with_state((state.clone(), addr));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(PushService { addr, state })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServiceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VAPID public key pushes must carry (the server's `applicationServerKey`).
    pub fn expect_vapid(&self, key: &str) {
        self.lock().vapid = Some(key.to_owned());
    }

    /// A new subscription named `name`, as a browser's `PushSubscription.toJSON()`.
    pub fn subscribe(&self, name: &str) -> Value {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let mut auth = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
        let public = secret.public_key().as_affine().to_encoded_point(false);
        let subscription = json!({
            "endpoint": format!("http://{}/push/{name}", self.addr),
            "expirationTime": null,
            "keys": {"p256dh": URL_SAFE_NO_PAD.encode(public.as_bytes()), "auth": URL_SAFE_NO_PAD.encode(auth)},
        });
        self.lock().subs.insert(name.to_owned(), Sub { secret, auth });
        subscription
    }

    /// Answers the next pushes to `name` with `replies`, then 201 again.
    pub fn reply_with(&self, name: &str, replies: &[Reply]) {
        self.lock().replies.entry(name.to_owned()).or_default().extend(replies.iter().copied());
    }

    pub fn received(&self, name: &str) -> Vec<Received> {
        self.lock().received.get(name).cloned().unwrap_or_default()
    }

    pub fn requests(&self, name: &str) -> Vec<Instant> {
        self.lock().requests.get(name).cloned().unwrap_or_default()
    }

    pub fn rejected(&self) -> Vec<String> {
        self.lock().rejected.clone()
    }

    /// Waits until `name` has had `n` requests (whatever their answer).
    pub async fn wait_requests(&self, name: &str, n: usize, within: Duration) -> Result<Vec<Instant>> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.requests(name);
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                bail!("{} requests to {name} instead of {n}; rejected: {:?}", got.len(), self.rejected());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

type ServiceShared = (Arc<Mutex<ServiceState>>, SocketAddr);

async fn push(
    State((state, addr)): State<ServiceShared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.requests.entry(name.clone()).or_default().push(Instant::now());
    let Some(sub) = s.subs.get(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let checked =
        check_vapid(header("authorization").as_deref(), s.vapid.as_deref(), addr).and_then(|claims| {
            if header("content-encoding").as_deref() != Some("aes128gcm") {
                return Err((StatusCode::BAD_REQUEST, "Content-Encoding is not aes128gcm".to_owned()));
            }
            if header("ttl").and_then(|t| t.parse::<u64>().ok()).is_none() {
                return Err((StatusCode::BAD_REQUEST, "no numeric TTL header".to_owned()));
            }
            let payload = decrypt(&body, &sub.secret, &sub.auth)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("payload: {e}")))?;
            Ok((claims, payload))
        });
    let (claims, payload) = match checked {
        Ok(ok) => ok,
        Err((status, why)) => {
            s.rejected.push(format!("{name}: {why}"));
            return status.into_response();
        }
    };
    if let Some((status, retry_after)) = s.replies.get_mut(&name).and_then(VecDeque::pop_front) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return match retry_after {
            Some(secs) => (status, [("retry-after", secs.to_string())]).into_response(),
            None => status.into_response(),
        };
    }
    let received =
        Received { payload, ttl: header("ttl"), topic: header("topic"), urgency: header("urgency"), claims };
    s.received.entry(name).or_default().push(received);
    StatusCode::CREATED.into_response()
}

/// Checks an `Authorization: vapid t=<jwt>, k=<key>` header as RFC 8292 says a push service
/// does; the token's claims.
fn check_vapid(
    authorization: Option<&str>,
    expected_key: Option<&str>,
    addr: SocketAddr,
) -> Result<Value, (StatusCode, String)> {
    let unauthorized = |why: &str| (StatusCode::UNAUTHORIZED, why.to_owned());
    let value = authorization.ok_or_else(|| unauthorized("no Authorization"))?;
    let params = value.strip_prefix("vapid ").ok_or_else(|| unauthorized("not the vapid scheme"))?;
    let mut token = None;
    let mut key = None;
    for part in params.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.to_owned()),
            Some(("k", v)) => key = Some(v.to_owned()),
            _ => return Err(unauthorized("an unknown vapid parameter")),
        }
    }
    let (token, key) = token.zip(key).ok_or_else(|| unauthorized("t or k missing"))?;
    if expected_key != Some(key.as_str()) {
        return Err((StatusCode::FORBIDDEN, "k is not the key the subscription was made with".into()));
    }
    let point = URL_SAFE_NO_PAD.decode(&key).map_err(|_| unauthorized("k is not base64url"))?;
    if point.len() != 65 || point[0] != 4 {
        return Err(unauthorized("k is not an uncompressed P-256 point"));
    }
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .map_err(|e| unauthorized(&format!("k: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[format!("http://{addr}")]);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "aud"]);
    let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation)
        .map_err(|e| unauthorized(&format!("token: {e}")))?;
    let claims = data.claims;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    if exp > now + 24 * 3600 {
        return Err(unauthorized("exp is more than 24 hours ahead"));
    }
    let sub = claims["sub"].as_str().unwrap_or("");
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(unauthorized("sub is not a mailto: or https: contact"));
    }
    Ok(claims)
}

/// Decrypts an `aes128gcm` Web Push message (RFC 8291, RFC 8188) for the user agent holding
/// `ua_secret` and `auth`.
fn decrypt(body: &[u8], ua_secret: &p256::SecretKey, auth: &[u8; 16]) -> Result<Vec<u8>> {
    use hkdf::Hkdf;
    use sha2::Sha256;
    // The header: salt (16), record size (4), key id length (1), key id (the sender's key).
    if body.len() < 21 {
        bail!("shorter than its header");
    }
    let salt = &body[..16];
    let record_size = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let id_len = body[20] as usize;
    if id_len != 65 || body.len() < 21 + id_len {
        bail!("the key id is not an uncompressed P-256 point");
    }
    let as_public = p256::PublicKey::from_sec1_bytes(&body[21..21 + id_len])?;
    let ciphertext = &body[21 + id_len..];
    if ciphertext.len() > record_size || ciphertext.len() < 17 {
        bail!("not one record of at most {record_size} bytes");
    }
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_public.as_affine());
    let ua_public = ua_secret.public_key().as_affine().to_encoded_point(false);
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(&body[21..21 + id_len]);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| anyhow!("hkdf"))?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).map_err(|_| anyhow!("hkdf"))?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|_| anyhow!("hkdf"))?;
    let cipher = aes_gcm::Aes128Gcm::new_from_slice(&cek)?;
    let mut plain = cipher
        .decrypt(aes_gcm::Nonce::from_slice(&nonce), ciphertext)
        .map_err(|_| anyhow!("the record does not decrypt"))?;
    // The last record ends with the delimiter 2, then zero padding.
    while plain.last() == Some(&0) {
        plain.pop();
    }
    if plain.pop() != Some(2) {
        bail!("no last-record delimiter");
    }
    Ok(plain)
}

#[derive(Default)]
struct HookState {
    secret: String,
    received: Vec<Value>,
    rejected: Vec<String>,
    replies: VecDeque<u16>,
}

/// An operator's webhook gateway.
#[derive(Clone)]
pub struct Webhook {
    pub addr: SocketAddr,
    state: Arc<Mutex<HookState>>,
}

impl Webhook {
    pub async fn start(secret: &str) -> Result<Webhook> {
        let state = Arc::new(Mutex::new(HookState { secret: secret.to_owned(), ..HookState::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route("/hook", post(hook)).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Webhook { addr, state })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HookState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn received(&self) -> Vec<Value> {
        self.lock().received.clone()
    }

    pub fn rejected(&self) -> Vec<String> {
        self.lock().rejected.clone()
    }

    pub fn reply_with(&self, statuses: &[u16]) {
        self.lock().replies.extend(statuses.iter().copied());
    }

    pub async fn wait_received(&self, n: usize, within: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                bail!("{} pokes at the webhook instead of {n}; rejected: {:?}", got.len(), self.rejected());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn hook(State(state): State<Arc<Mutex<HookState>>>, headers: HeaderMap, body: Bytes) -> Response {
    use hmac::Mac;
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let signature = headers.get("rhizome-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut t = None;
    let mut v1 = None;
    for part in signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (Some(t), Some(v1)) = (t, v1) else {
        s.rejected.push(format!("no signature: {signature:?}"));
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if (now - t).abs() > 300 {
        s.rejected.push("a stale signature".into());
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(s.secret.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    if expected != v1 {
        s.rejected.push("a wrong signature".into());
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        s.rejected.push("not JSON".into());
        return StatusCode::BAD_REQUEST.into_response();
    };
    if let Some(status) = s.replies.pop_front() {
        return StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR).into_response();
    }
    s.received.push(value);
    StatusCode::OK.into_response()
}
