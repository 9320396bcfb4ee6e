//! Logux over plain HTTP, without a WebSocket: `POST /v1/push` (see `docs/http.md`).
//!
//! A push request is one short-lived protocol-5 session: its body becomes a `connect` and a
//! `sync` frame, which go through the same connection state machine
//! ([`rhizome_core::Connection`]) and the same [`Pipeline`] as a WebSocket's. So an action
//! pushed over HTTP meets the same meta rules, authentication, access and resend hooks,
//! durability (answered only once committed) and at-most-once processing; a retried request
//! gets the same answers and processes nothing twice. The answers the pipeline queues for the
//! session are read back into the response.

use crate::hub::ConnIdentity;
use crate::outbox::Outbox;
use crate::pipeline::{Pipeline, PipelineParts};
use crate::pull_cursors::{Cursor, LogMark};
use crate::recent::Since;
use crate::shared::Shared;
use crate::writer::now_ms;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rhizome_core::{Connection, Context, Output, Position, Status, StoredEntry};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a push waits for the outcome of actions whose `process` is still running; those
/// not done by then are answered `accepted` (durable, outcome to come: push them again).
const OUTCOME_WAIT: Duration = Duration::from_secs(20);

/// How often a push looks up the outcome of an action processed elsewhere (a re-sent id whose
/// first copy is still being processed, or a failed `process`, whose undo goes to the log).
const OUTCOME_POLL: Duration = Duration::from_millis(50);

/// The body of `POST /v1/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    /// The client's node id, `<user>:<client>[:<tab>]`.
    node: String,
    /// The application's protocol version; the server's own when absent.
    #[serde(default)]
    subprotocol: Option<u64>,
    /// Logux headers, as a WebSocket client's `connect` carries them.
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    /// The actions, in the client's order.
    actions: Vec<PushedAction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushedAction {
    action: Value,
    meta: Value,
}

/// A refused request: its HTTP status and a machine-readable `error` (the Logux error types
/// where one applies) with a human-readable `message`.
pub(crate) fn refuse(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": error, "message": message.into()});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `POST /v1/push`: appends the actions durably, runs them through the pipeline and answers
/// each one's outcome, in the order pushed.
pub async fn push(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (token, body): (_, PushBody) = match read_request(&shared, request).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    if body.actions.iter().any(|a| {
        let kind = a.action.get("type").and_then(Value::as_str);
        matches!(kind, Some("logux/subscribe" | "logux/unsubscribe"))
    }) {
        let message = "subscriptions are not pushed over HTTP: a pull names the channels it follows";
        return refuse(StatusCode::BAD_REQUEST, "wrong-format", message);
    }
    let ids: Vec<(String, String)> = match body.actions.iter().map(|a| full_id(&a.meta)).collect() {
        Some(ids) => ids,
        None => {
            let message = "every meta needs an `id`: a full action id string \"<ms> <node> <seq>\"";
            return refuse(StatusCode::BAD_REQUEST, "wrong-format", message);
        }
    };
    let connect = connect_frame(&shared, body.node, token, body.subprotocol, body.headers);
    let session = Session::new(shared.clone(), peer);
    // In a task of its own: a client that hangs up drops this handler, not the session, whose
    // actions are then still processed (a retry learns their outcome), as when a WebSocket
    // drops with syncs in flight.
    let run = tokio::spawn(async move { session.run(&connect, body.actions, &ids).await });
    let outcome = match run.await {
        Ok(outcome) => outcome,
        Err(_) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", "the push failed; push it again")),
    };
    match outcome {
        Ok(results) => ok_json(&json!({"results": results})),
        Err(refusal) => refusal,
    }
}

/// A `200` with a JSON body.
pub(crate) fn ok_json(body: &Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The bearer token and the JSON body of a request, or the refusal of a bad one.
pub(crate) async fn read_request<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    request: Request,
) -> Result<(Option<String>, T), Response> {
    let Ok(token) = bearer(request.headers()) else {
        let message = "the Authorization header must be `Bearer <token>`";
        return Err(refuse(StatusCode::UNAUTHORIZED, "wrong-credentials", message));
    };
    let bytes = read_body(shared, request).await?;
    match serde_json::from_slice(&bytes) {
        Ok(body) => Ok((token, body)),
        Err(e) => Err(refuse(StatusCode::BAD_REQUEST, "wrong-format", e.to_string())),
    }
}

/// The distinct channel names of a request, sorted; refused beyond `pull_channels_max`.
// The error is the answer the handler returns at once, as for the async checks beside it.
#[allow(clippy::result_large_err)]
pub(crate) fn channel_names(shared: &Shared, mut names: Vec<String>) -> Result<Vec<String>, Response> {
    names.sort_unstable();
    names.dedup();
    let most = shared.limits.pull_channels_max;
    if names.len() > most {
        let message = format!("at most {most} distinct channels per request (pull_channels_max)");
        return Err(refuse(StatusCode::BAD_REQUEST, "too-many-channels", message));
    }
    Ok(names)
}

/// Authenticates a request as the `connect` of `node` with `token`, `subprotocol` and
/// `headers` would be: who the client is, or the refusal.
pub(crate) async fn authenticate(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    node: String,
    token: Option<String>,
    subprotocol: Option<u64>,
    headers: Option<Map<String, Value>>,
) -> Result<Context, Response> {
    let connect = connect_frame(shared, node, token, subprotocol, headers);
    let mut session = Session::new(shared.clone(), peer);
    session.authenticate(&connect).await?;
    session.context.take().ok_or_else(|| session.refusal())
}

/// The protocol-5 `connect` a request stands for: its node, token, subprotocol (the server's
/// own when absent) and Logux headers.
fn connect_frame(
    shared: &Shared,
    node: String,
    token: Option<String>,
    subprotocol: Option<u64>,
    headers: Option<Map<String, Value>>,
) -> String {
    let mut options = Map::new();
    if let Some(token) = token {
        options.insert("token".into(), Value::String(token));
    }
    options.insert("subprotocol".into(), subprotocol.unwrap_or(shared.config.subprotocol).into());
    if let Some(headers) = headers {
        options.insert("headers".into(), Value::Object(headers));
    }
    json!(["connect", rhizome_protocol::PROTOCOL, node, 0, options]).to_string()
}

/// An action of the server itself (a `load` result, an object's delta) as a pull answers it,
/// under a fresh server id.
fn server_action(shared: &Shared, json: &str) -> Value {
    let id = shared.next_server_id();
    let action: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    json!({"action": action, "meta": {"id": id.to_string(), "time": id.ms}})
}

/// The request's body: at most `frame_bytes_max` bytes, all of it within
/// `unauthenticated_timeout` (nobody is authenticated before it is read, so a client that
/// trickles a body holds nothing for long).
async fn read_body(shared: &Shared, request: Request) -> Result<axum::body::Bytes, Response> {
    let limit = shared.limits.frame_bytes_max;
    let read = axum::body::to_bytes(request.into_body(), limit);
    match tokio::time::timeout(shared.limits.unauthenticated_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => {
            let message = format!("the body is over frame_bytes_max ({limit} bytes) or was cut short");
            Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "too-large", message))
        }
        Err(_) => Err(refuse(StatusCode::REQUEST_TIMEOUT, "timeout", "the body did not arrive in time")),
    }
}

/// The token of an `Authorization: Bearer <token>` header, if any; `Err` for another scheme.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    match text.strip_prefix("Bearer ") {
        Some(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
        _ => Err(()),
    }
}

/// The actions as a protocol-5 `sync` frame of a session whose `baseTime` is `base_time`:
/// each meta's full `id` as `[ms - baseTime, node, seq]` and its `time` as `time - baseTime`.
/// Anything else in the meta goes as it is, for the protocol's checks.
fn sync_frame(actions: Vec<PushedAction>, base_time: i64) -> String {
    let mut frame = vec![json!("sync"), json!(1)];
    for PushedAction { action, mut meta } in actions {
        if let Some(id) = meta.get("id").and_then(Value::as_str).and_then(rhizome_protocol::ActionId::parse) {
            meta["id"] = json!([id.ms - base_time, id.node.as_str(), id.seq]);
        }
        if let Some(time) = meta.get("time").and_then(Value::as_i64) {
            meta["time"] = json!(time - base_time);
        }
        frame.push(action);
        frame.push(meta);
    }
    Value::Array(frame).to_string()
}

/// A meta's `id` when it is a full id string.
fn full_id(meta: &Value) -> Option<(String, String)> {
    let id = meta.get("id")?.as_str()?;
    // The log and the answers write ids in their canonical form ("01" is 1).
    rhizome_protocol::ActionId::parse(id).map(|parsed| (id.to_owned(), parsed.to_string()))
}

/// One push request's protocol session.
struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    outbox: Arc<Outbox>,
    /// Frames the connection state machine sent (an `error` before a refusal).
    sent: Vec<String>,
    /// The `baseTime` of the session, once authenticated.
    base_time: Option<i64>,
    /// Who the client is, once authenticated, as the application's hooks see it.
    context: Option<Context>,
}

impl Session {
    fn new(shared: Arc<Shared>, peer: SocketAddr) -> Session {
        // Answers only: the session is not registered with the hub, so no channel or
        // targeted delivery reaches this outbox.
        let outbox = Arc::new(Outbox::new(usize::MAX));
        Session { shared, peer, outbox, sent: Vec::new(), base_time: None, context: None }
    }

    /// Feeds the `connect` frame, then the actions as one `sync` frame, and returns each
    /// action's outcome, in `ids` order.
    async fn run(
        mut self,
        connect: &str,
        actions: Vec<PushedAction>,
        ids: &[(String, String)],
    ) -> Result<Vec<Value>, Response> {
        let (mut connection, mut pipeline) = self.authenticate(connect).await?;
        let Some(base_time) = self.base_time else {
            return Err(self.refusal());
        };
        let mut out = Vec::new();
        connection.on_frame(&sync_frame(actions, base_time), now_ms(), &mut out);
        self.handle(&mut connection, &mut pipeline, out).await?;
        let results = self.outcomes(ids).await;
        // Nothing reads it from now on: a re-sent id still in process elsewhere stops waiting.
        self.outbox.close(crate::outbox::Closed::Ended);
        Ok(results)
    }

    /// Feeds the `connect` frame to a fresh connection: the connection and the session's
    /// pipeline once authenticated (its `context` and `base_time` set), or the refusal.
    async fn authenticate(&mut self, connect: &str) -> Result<(Connection, Option<Pipeline>), Response> {
        let mut connection =
            Connection::new(self.shared.config.clone(), self.shared.limits.clone(), now_ms());
        let mut pipeline = None;
        let mut out = Vec::new();
        connection.on_frame(connect, now_ms(), &mut out);
        self.handle(&mut connection, &mut pipeline, out).await?;
        if pipeline.is_none() {
            return Err(self.refusal());
        }
        Ok((connection, pipeline))
    }

    /// Carries out the connection's outputs, as a WebSocket session does.
    async fn handle(
        &mut self,
        connection: &mut Connection,
        pipeline: &mut Option<Pipeline>,
        out: Vec<Output>,
    ) -> Result<(), Response> {
        let mut queue: std::collections::VecDeque<Output> = out.into();
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Send(frame) => self.sent.push(frame),
                Output::Authenticate(request) => {
                    let accepted = if self.shared.auth_blocked(self.peer.ip()) {
                        tracing::info!(peer = %self.peer, "HTTP push refused: too many failures");
                        false
                    } else {
                        let ok = self.shared.app.authenticator().authenticate(&request).await;
                        if !ok {
                            self.shared.auth_failed(self.peer.ip());
                        }
                        ok
                    };
                    let mut more = Vec::new();
                    let now = now_ms();
                    connection.auth_finished(self.shared.app.grant(&request, accepted), now, &mut more);
                    if accepted {
                        // The session's `baseTime`: ids and times of its `sync` are sent
                        // relative to it, as a WebSocket client's are.
                        self.base_time = Some(now);
                    }
                    queue.extend(more);
                }
                Output::Authenticated(identity) => {
                    if let Some(follow) = self.shared.upstream_follow.get() {
                        follow.follow_user(&self.shared, identity.user_id.as_ref()).await;
                    }
                    self.context = Some(Context {
                        user_id: identity.user_id.clone(),
                        client_id: identity.client_id.clone(),
                        node_id: identity.node_id.clone(),
                        subprotocol: identity.subprotocol,
                        headers: identity.headers.clone(),
                    });
                    let shared_identity = Arc::new(ConnIdentity {
                        node_id: identity.node_id,
                        client_id: identity.client_id,
                        user_id: identity.user_id,
                        codec: identity.codec,
                        peer: identity.role == rhizome_core::Role::Peer,
                    });
                    let parts = PipelineParts {
                        conn: self.shared.next_conn_id(),
                        identity: shared_identity,
                        subprotocol: identity.subprotocol,
                        headers: identity.headers,
                        outbox: self.outbox.clone(),
                    };
                    *pipeline = Some(Pipeline::new(self.shared.clone(), parts));
                }
                Output::Sync { added, actions } => {
                    let Some(pipeline) = pipeline.as_ref() else { continue };
                    let mut pending = pipeline.accept(added, actions).await;
                    let committed = std::future::poll_fn(|cx| pending.poll_committed(cx)).await;
                    let finished = match committed {
                        Ok(committed) => pipeline.finish(pending, committed).await,
                        Err(e) => Err(e),
                    };
                    if finished.is_err() {
                        // Nothing of the request is acknowledged: the client pushes it again.
                        return Err(refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "storage",
                            "the actions could not be stored; push them again",
                        ));
                    }
                }
                Output::Synced(_) | Output::Pong | Output::Ping => {}
                Output::Close(_) => return Err(self.refusal()),
            }
        }
        Ok(())
    }

    /// The response to a session the protocol refused, from the `error` frame it sent.
    fn refusal(&self) -> Response {
        let error = self.sent.iter().find_map(|frame| {
            let value: Value = serde_json::from_str(frame).ok()?;
            (value.get(0)? == "error").then_some(value)
        });
        let Some(error) = error else {
            return refuse(StatusCode::BAD_REQUEST, "wrong-format", "the request was refused");
        };
        let kind = error.get(1).and_then(Value::as_str).unwrap_or("wrong-format");
        let detail = error.get(2).map(Value::to_string).unwrap_or_default();
        let status = match kind {
            "wrong-credentials" => StatusCode::UNAUTHORIZED,
            "wrong-protocol" | "wrong-subprotocol" => StatusCode::BAD_REQUEST,
            "timeout" => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match kind {
            "wrong-credentials" => "the token does not authenticate this node".to_owned(),
            "wrong-subprotocol" => format!("this subprotocol is not supported: {detail}"),
            "wrong-protocol" => format!("this protocol is not supported: {detail}"),
            other => format!("{other} {detail}").trim().to_owned(),
        };
        refuse(status, kind, message)
    }

    /// Each id's outcome: its `logux/processed` or `logux/undo` from the outbox, else what
    /// the log records once it is decided, else `accepted` after [`OUTCOME_WAIT`].
    async fn outcomes(&self, ids: &[(String, String)]) -> Vec<Value> {
        // By canonical id: the answers and the log write ids that way.
        let mut answers: HashMap<String, Value> = HashMap::new();
        self.outbox.drain_each(|frame| read_answers(&frame, &mut answers));
        let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
        let mut pause = OUTCOME_POLL;
        loop {
            let missing: Vec<String> =
                ids.iter().map(|(_, id)| id).filter(|id| !answers.contains_key(*id)).cloned().collect();
            if missing.is_empty() {
                break;
            }
            // One read for all of them, off the runtime.
            let store = self.shared.store.clone();
            let found = rhizome_io::blocking(move || {
                missing.into_iter().map(|id| (store.status_of(&id).ok().flatten(), id)).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (status, id) in found {
                match status {
                    Some(Status::Processed) => {
                        answers.insert(id, json!({"status": "processed"}));
                    }
                    Some(Status::Undone(reason)) => {
                        answers.insert(id, json!({"status": "undone", "reason": reason}));
                    }
                    _ => {}
                }
            }
            if tokio::time::Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            self.outbox.drain_each(|frame| read_answers(&frame, &mut answers));
        }
        ids.iter()
            .map(|(sent, id)| {
                let mut result = answers.get(id).cloned().unwrap_or_else(|| json!({"status": "accepted"}));
                result["id"] = json!(sent);
                result
            })
            .collect()
    }
}

/// Records the `logux/processed` and `logux/undo` answers of a `sync` frame by action id
/// (the result's `id` is set by [`Session::outcomes`], as the client sent it).
fn read_answers(frame: &str, answers: &mut HashMap<String, Value>) {
    let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(frame) else { return };
    if parts.first().and_then(Value::as_str) != Some("sync") {
        return;
    }
    for action in parts.iter().skip(2).step_by(2) {
        let Some(id) = action.get("id").and_then(Value::as_str) else { continue };
        let result = match action.get("type").and_then(Value::as_str) {
            Some("logux/processed") => json!({"status": "processed"}),
            Some("logux/undo") => {
                let mut result = json!({"status": "undone", "undo": action});
                if let Some(reason) = action.get("reason") {
                    result["reason"] = reason.clone();
                }
                result
            }
            _ => continue,
        };
        answers.insert(id.to_owned(), result);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("peer", &self.peer).finish()
    }
}

/// The body of `POST /v1/pull`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullBody {
    node: String,
    #[serde(default)]
    subprotocol: Option<u64>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    /// The channels the client follows, each checked by its subscribe rules.
    #[serde(default)]
    channels: Vec<String>,
    /// Where the previous pull ended; absent on a client's first pull.
    #[serde(default)]
    cursor: Option<String>,
    /// Most actions wanted (at most the server's `pull_actions_max`).
    #[serde(default)]
    limit: Option<usize>,
    /// Seconds to hold the request open when there is nothing new (at most the server's
    /// `long_poll`); 0 or absent answers at once.
    #[serde(default)]
    wait: Option<f64>,
    /// Per channel, where it resumes instead of the cursor: a re-subscription's Logux
    /// `since`, or the channel's own cursor from an answer's `since`.
    #[serde(default)]
    since: HashMap<String, ChannelSince>,
    /// Per channel, its subscription id: `null` asks for one (the answer's `ids`), an id an
    /// answer gave is raised to where this pull starts the channel.
    #[serde(default)]
    ids: HashMap<String, Option<String>>,
}

/// Where a channel of a pull resumes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ChannelSince {
    /// The channel's own cursor, from an answer's `since`.
    Cursor(String),
    /// A re-subscription's Logux `since`: the id of what answered the subscription.
    Logux { id: String, time: Option<i64> },
}

/// The node part of the subscription ids a pull gives, followed by a random part: an id a
/// pull raises has it, so no other subscription's acknowledgement can be touched and a
/// guessed id names nothing.
const PULL_ID_NODE: &str = "server:pull:";

/// A new subscription id for a pull: a Logux id (`<ms> server:pull:<random> 0`) that the
/// real client keeps as its `since`.
fn new_subscription_id() -> String {
    // The OS-seeded generator in production: unguessable.
    let random = u128::from(rhizome_io::random_u64()) << 64 | u128::from(rhizome_io::random_u64());
    format!("{} {PULL_ID_NODE}{random:032x} 0", now_ms())
}

/// Whether `id` is a subscription id a pull gave.
fn is_subscription_id(id: &str) -> bool {
    id.split(' ').nth(1).is_some_and(|node| node.starts_with(PULL_ID_NODE))
}

/// `POST /v1/pull`: what the client has not seen yet on its channels and addressed to it, in
/// log order, from its cursor, at most a page; held open up to `wait` seconds when there is
/// nothing.
pub async fn pull(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // What a waiting long-poll holds is only what `answer_pull` needs: the request's body,
    // its session and connection state are dropped before it waits.
    // Boxed: its state (authentication, the access hooks) is large and lives only until the
    // poll starts waiting, while the waiting state is what thousands of idle polls hold.
    match Box::pin(prepare_pull(shared, peer, request)).await {
        Ok(pull) => answer_pull(pull).await,
        Err(refusal) => refusal,
    }
}

/// A checked pull: who asks, what it follows, from where, how much and until when.
struct PreparedPull {
    shared: Arc<Shared>,
    ctx: Context,
    channels: Vec<rhizome_protocol::Channel>,
    after: Option<Position>,
    /// Channels that resume from a position of their own instead of `after`.
    own: HashMap<String, Position>,
    /// The subscription ids given by this pull, by channel.
    issued: Map<String, Value>,
    page: usize,
    deadline: tokio::time::Instant,
    /// What the channels' `load` hooks gave on a first pull, sent first.
    loaded: Vec<String>,
}

/// Reads, authenticates and checks a pull request.
async fn prepare_pull(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request,
) -> Result<PreparedPull, Response> {
    let (token, body): (_, PullBody) = read_request(&shared, request).await?;
    let page = body.limit.unwrap_or(usize::MAX).clamp(1, shared.limits.pull_actions_max);
    let wait = match body.wait {
        None => Duration::ZERO,
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX).min(shared.limits.long_poll)
        }
        Some(_) => {
            return Err(refuse(StatusCode::BAD_REQUEST, "wrong-format", "`wait` must be seconds, 0 or more"));
        }
    };
    let ctx = authenticate(&shared, peer, body.node, token, body.subprotocol, body.headers).await?;
    let names = channel_names(&shared, body.channels)?;
    if let Some(stray) = body.since.keys().chain(body.ids.keys()).find(|c| names.binary_search(c).is_err()) {
        let message = format!("`since` and `ids` name channels of `channels`, not {stray}");
        return Err(refuse(StatusCode::BAD_REQUEST, "wrong-format", message));
    }
    let first = body.cursor.is_none();
    let mut channels = Vec::with_capacity(names.len());
    let mut loaded = Vec::new();
    for name in names {
        // A re-subscription runs the `load` hook, as a `logux/subscribe` with `since` does.
        let since = match body.since.get(&name) {
            Some(ChannelSince::Logux { id, time }) => Some(json!({"id": id, "time": time})),
            _ => None,
        };
        loaded.extend(may_follow(&shared, &ctx, &name, first || since.is_some(), since).await?);
        channels.push(rhizome_protocol::Channel::from(name));
    }
    let last = read(&shared, |store| store.last_position()).await?;
    let bad_cursor = || refuse(StatusCode::BAD_REQUEST, "bad-cursor", "a cursor is one a pull's answer gave");
    let mark = shared.pull_cursors.mark();
    // No cursor: from now on, as a subscription without `since` (objects come whole).
    let cursor = match body.cursor.as_deref() {
        None => None,
        Some(text) => Some(mark.parse(text).ok_or_else(bad_cursor)?),
    };
    let trust = CursorTrust::new(&shared, &ctx.node_id, mark, cursor, &body.since, last).await?;
    let after = cursor.map(|cursor| trust.position(cursor));
    if let Some(Cursor::Ours(position)) = cursor {
        record_confirmed(&shared, &ctx.node_id, position.min(last));
    }
    let own = resume_positions(&shared, body.since, trust).await?.ok_or_else(bad_cursor)?;
    // Each subscription id stands for where this pull starts its channel: the client holds
    // the channel through there (what a later `since` with the id resumes after).
    let start = |channel: &str| own.get(channel).copied().unwrap_or(after.unwrap_or(last));
    // An id is recorded with its client when it is given, and raised only by that client:
    // another's (a guessed id) is never moved, and no request creates rows of its choosing.
    let client = ctx.client_id.as_str();
    let mut new = Vec::new();
    let mut raised = Vec::new();
    let mut issued = Map::new();
    for (channel, id) in body.ids {
        match id {
            Some(id) if is_subscription_id(&id) => raised.push((id, start(&channel), client.to_owned())),
            Some(_) => {}
            None => {
                let id = new_subscription_id();
                new.push((id.clone(), start(&channel), client.to_owned()));
                issued.insert(channel, Value::String(id));
            }
        }
    }
    if !new.is_empty() {
        // Stored before the ids are given: a raise finds them.
        let batch = rhizome_store::WriteBatch { owned_acks: new, ..rhizome_store::WriteBatch::default() };
        if !matches!(shared.writer.write_unordered(batch).await.await, Ok(Ok(_))) {
            let message = "the subscription could not be recorded; pull again";
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", message));
        }
    }
    if !raised.is_empty() {
        let batch =
            rhizome_store::WriteBatch { resumed_acks: raised, ..rhizome_store::WriteBatch::default() };
        // Not waited for: a dropped or late write makes a later `since` with the id resume
        // from further back (duplicates), never skip anything.
        if !shared.writer.try_write_unordered(batch) {
            tracing::debug!("writer busy; a pull's subscription acknowledgements were not recorded");
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    Ok(PreparedPull { shared, ctx, channels, after, own, issued, page, deadline, loaded })
}

/// Where a pull's cursors resume (see [`crate::pull_cursors`]): one this server gave since it
/// started where it says, any other up to what the node confirmed here; never past the log's
/// end.
#[derive(Debug, Clone, Copy)]
struct CursorTrust {
    mark: LogMark,
    /// What the node confirmed here, when a cursor from elsewhere needs it.
    confirmed: Position,
    last: Position,
}

impl CursorTrust {
    /// Reads what `node` confirmed here if a cursor it brings (`cursor`, or a channel's in
    /// `since`) is from elsewhere.
    async fn new(
        shared: &Shared,
        node: &rhizome_protocol::NodeId,
        mark: LogMark,
        cursor: Option<Cursor>,
        since: &HashMap<String, ChannelSince>,
        last: Position,
    ) -> Result<CursorTrust, Response> {
        let foreign = |c: Option<Cursor>| matches!(c, Some(Cursor::Foreign(p)) if p > 0);
        let channel_cursors = since.values().filter_map(|s| match s {
            ChannelSince::Cursor(text) => mark.parse(text),
            ChannelSince::Logux { .. } => None,
        });
        let confirmed = if foreign(cursor) || channel_cursors.map(Some).any(foreign) {
            let of = node.to_string();
            read(shared, move |store| store.confirmed_by(&of)).await?
        } else {
            0
        };
        Ok(CursorTrust { mark, confirmed, last })
    }

    /// The position `cursor` resumes after.
    fn position(&self, cursor: Cursor) -> Position {
        match cursor {
            Cursor::Ours(position) => position.min(self.last),
            Cursor::Foreign(position) => position.min(self.confirmed).min(self.last),
        }
    }
}

/// Records that `node` confirmed `position` here (in `client_positions`, under the node id:
/// each tab pulls for itself), when a record is due (not waited for; a busy writer skips it,
/// and a later pull makes up for it).
fn record_confirmed(shared: &Shared, node: &rhizome_protocol::NodeId, position: Position) {
    let now = now_ms();
    let Some(position) = shared.pull_cursors.due(node, position, now) else { return };
    let batch = rhizome_store::WriteBatch {
        client_positions: vec![(node.to_string(), position)],
        ..rhizome_store::WriteBatch::default()
    };
    if shared.writer.try_write_unordered(batch) {
        shared.pull_cursors.recorded(node, position, now);
    }
}

/// The log position each channel of a pull's `since` resumes after, a channel's cursor as
/// `trust` has it; `None` for a channel cursor that is not one.
///
/// A Logux `since` resumes after the position its id stands for (a subscription id a pull
/// gave, a WebSocket subscription's `logux/processed`, or an action of the log). An id the
/// log does not know loses nothing: a CRDT object comes whole; a channel's actions come from
/// a safe margin before `since.time`, as over a WebSocket, or from the start of the log
/// without a time.
async fn resume_positions(
    shared: &Shared,
    since: HashMap<String, ChannelSince>,
    trust: CursorTrust,
) -> Result<Option<HashMap<String, Position>>, Response> {
    if since.is_empty() {
        return Ok(Some(HashMap::new()));
    }
    read(shared, move |store| {
        let mut own = HashMap::with_capacity(since.len());
        for (channel, since) in since {
            let position = match since {
                ChannelSince::Cursor(cursor) => match trust.mark.parse(&cursor) {
                    Some(cursor) => trust.position(cursor),
                    None => return Ok(None),
                },
                ChannelSince::Logux { id, time } => match store.position_of_id(&id)? {
                    Some(position) => position,
                    None if channel.starts_with(crate::pipeline::CRDT_CHANNEL_PREFIX) => 0,
                    None => match time {
                        Some(time) => store.position_before_time(
                            time.saturating_sub(crate::pipeline::SINCE_TIME_MARGIN_MS),
                        )?,
                        None => 0,
                    },
                },
            };
            own.insert(channel, position);
        }
        Ok(Some(own))
    })
    .await
}

/// Answers a checked pull: a page at once, or after waiting for a commit until its deadline.
async fn answer_pull(pull: PreparedPull) -> Response {
    let PreparedPull { shared, ctx, channels, after, mut own, issued, page, deadline, mut loaded } = pull;
    let mut committed = shared.committed.subscribe();
    let mut from = after;
    loop {
        let mut answer = match read_page(&shared, &ctx, &channels, from, &own, page).await {
            Ok(answer) => answer,
            Err(refusal) => return refusal,
        };
        // The `load` results of a first pull, then the objects' deltas, each its own server
        // action, before the log's entries.
        let server: Vec<Value> = std::mem::take(&mut loaded)
            .iter()
            .chain(&answer.objects)
            .map(|json| server_action(&shared, json))
            .collect();
        answer.actions.splice(0..0, server);
        let has_news = !answer.actions.is_empty() || !answer.since.is_empty() || !issued.is_empty();
        if has_news || tokio::time::Instant::now() >= deadline {
            return page_response(&shared, answer, &issued);
        }
        // Nothing yet (every channel is read through the cursor, `own` ones included): wait
        // for a commit that concerns this client (its channels or its targets), moving the
        // cursor past those that do not, then read again.
        own.clear();
        let mut through = answer.cursor;
        if shared.recent.waiting() >= shared.limits.connections_max {
            // As many polls wait as connections may be open: this one answers now.
            return page_response(&shared, answer, &issued);
        }
        let _waiting = shared.recent.wait();
        // A device that is waiting here gets what concerns it without a push wake-up.
        let _live = shared.wakeups.live(&ctx.client_id);
        loop {
            // At shutdown, a waiting poll answers at once: the client polls again elsewhere.
            let woke = tokio::select! {
                woke = tokio::time::timeout_at(deadline, committed.wait_for(|p| *p > through)) => {
                    matches!(woke, Ok(Ok(_)))
                }
                _ = shared.stopping() => false,
            };
            if !woke {
                answer.cursor = through;
                return page_response(&shared, answer, &issued);
            }
            match shared.recent.since(through, &channels, &ctx.node_id) {
                Since::Nothing(upto) if upto > through => through = upto,
                _ => break,
            }
        }
        from = Some(through);
    }
}

/// A pull's answer: `since` and `ids` only when there are some, so an answer without them is
/// as it always was. Its cursors carry this server's tag (see [`crate::pull_cursors`]).
fn page_response(shared: &Shared, page: Page, issued: &Map<String, Value>) -> Response {
    let mark = shared.pull_cursors.mark();
    let mut body = json!({"cursor": mark.format(page.cursor), "actions": page.actions, "more": page.more});
    if !page.since.is_empty() {
        let since: Map<String, Value> =
            page.since.into_iter().map(|(c, p)| (c, Value::String(mark.format(p)))).collect();
        body["since"] = Value::Object(since);
    }
    if !issued.is_empty() {
        body["ids"] = Value::Object(issued.clone());
    }
    ok_json(&body)
}

/// Whether the client of `ctx` may follow `name`: the channel's subscribe rules, as for a
/// `logux/subscribe`.
///
/// On a client's first pull (`first`), also the channel's `load` hook, as for a subscription:
/// returns the actions it gives (their JSON), sent before anything else.
pub(crate) async fn may_follow(
    shared: &Shared,
    ctx: &Context,
    name: &str,
    first: bool,
    since: Option<Value>,
) -> Result<Vec<String>, Response> {
    let Some((rules, params)) = shared.app.find_channel(name) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "wrongChannel", format!("no channel {name}")));
    };
    let rules = rules.clone();
    let mut subscribe = json!({"type": "logux/subscribe", "channel": name});
    if let Some(since) = since {
        subscribe["since"] = since;
    }
    let subscribe = subscribe.to_string();
    let Some(action) = rhizome_protocol::Action::from_json(&subscribe) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "wrongChannel", format!("no channel {name}")));
    };
    let id = shared.next_server_id();
    let meta = rhizome_core::Meta { time: id.ms, id, subprotocol: ctx.subprotocol };
    match rules.access(ctx, &params, &action, &meta).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "denied",
                format!("{name} is not readable by this user"),
            ))
        }
        Err(e) => return Err(refuse(StatusCode::FORBIDDEN, e.reason(), format!("{name}: {}", e.reason()))),
    }
    if !first {
        return Ok(Vec::new());
    }
    match rules.load(ctx, &params, &action, &meta).await {
        Ok(loaded) => Ok(loaded.iter().map(|a| a.json().to_string()).collect()),
        Err(e) => Err(refuse(StatusCode::FORBIDDEN, e.reason(), format!("{name}: {}", e.reason()))),
    }
}

/// Runs a read of the log off the async runtime.
async fn read<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&dyn rhizome_store::Store) -> Result<T, rhizome_store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store = shared.store.clone();
    match rhizome_io::blocking(move || f(&*store)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "an HTTP pull could not read the log");
            Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", "the log could not be read; pull again"))
        }
        Err(_) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "storage", "the read failed; pull again")),
    }
}

/// One page of a pull.
struct Page {
    /// The objects' deltas (JSON), server actions without a log position.
    objects: Vec<String>,
    /// The log's entries.
    actions: Vec<Value>,
    cursor: Position,
    /// The channels read through a position other than `cursor` (a re-subscription still
    /// catching up, or one ahead of the cursor), with that position.
    since: Vec<(String, Position)>,
    more: bool,
}

/// The actions after `after` (none given: from now on) that the client follows or that are
/// addressed to it, oldest first, at most `page`; the channels in `own` are read after their
/// own position instead. Returns the cursor the next pull goes on from, and the channels
/// whose position is still not the cursor's.
async fn read_page(
    shared: &Shared,
    ctx: &Context,
    channels: &[rhizome_protocol::Channel],
    after: Option<Position>,
    own: &HashMap<String, Position>,
    page: usize,
) -> Result<Page, Response> {
    let channels = channels.to_vec();
    let own = own.clone();
    let node = ctx.node_id.clone();
    let client = ctx.client_id.clone();
    read(shared, move |store| {
        let upto = store.last_position()?;
        let mut entries: Vec<StoredEntry> = Vec::new();
        // The lowest position up to which every source was read whole from its start.
        let mut complete = upto;
        let mut objects = Vec::new();
        let start = after.unwrap_or(upto);
        for channel in &channels {
            let from = own.get(channel.as_str()).copied();
            if let Some(key) = channel.as_str().strip_prefix(crate::pipeline::CRDT_CHANNEL_PREFIX) {
                // An object: one delta, the join of what was logged after the cursor or its
                // own position (the whole state without either), whatever snapshots cleaned
                // meanwhile.
                let read = store.catch_up_object(key, from.or(after).unwrap_or(0))?;
                if let Some(object) = read.object.filter(|o| !o.is_bottom()) {
                    objects.push(if read.whole {
                        rhizome_crdt::state_action(key, &object)
                    } else {
                        rhizome_crdt::delta_action(key, &object)
                    });
                }
                continue;
            }
            let read = store.read_channel(channel, from.unwrap_or(start), upto, page)?;
            if read.len() == page {
                complete = complete.min(read.last().map_or(upto, |e| e.added));
            }
            let author_excluded = read
                .into_iter()
                .filter(|e| e.id.client_id() != client && !e.routing.exclude_clients.contains(&client));
            entries.extend(author_excluded);
        }
        let (targeted, examined) = store.read_targeted(&node, start, upto, page)?;
        complete = complete.min(examined.max(start));
        entries.extend(targeted);
        entries.sort_by_key(|e| e.added);
        entries.dedup_by_key(|e| e.added);
        entries.retain(|e| e.added <= complete);
        // Every source holds all its entries up to `cut` in `entries`: `cut` is `complete`,
        // or the last entry of a full page.
        let cut = if entries.len() > page {
            entries.truncate(page);
            entries.last().map_or(complete, |e| e.added)
        } else {
            complete
        };
        // A source is read through `cut`, or through its start when that is further: the
        // cursor never goes back, and a channel resuming from elsewhere keeps its own place.
        let cursor = cut.max(start);
        let mut since = Vec::new();
        for channel in &channels {
            let name = channel.as_str();
            if name.starts_with(crate::pipeline::CRDT_CHANNEL_PREFIX) {
                continue;
            }
            if let Some(from) = own.get(name) {
                let through = cut.max(*from);
                if through != cursor {
                    since.push((name.to_owned(), through));
                }
            }
        }
        let lowest = since.iter().map(|(_, p)| *p).fold(cursor, Position::min);
        let more = lowest < upto;
        let mut actions = Vec::with_capacity(entries.len());
        for e in entries {
            let action: Value = serde_json::from_str(&e.action_json).unwrap_or(Value::Null);
            actions.push(
                json!({"action": action, "meta": {"id": e.id.to_string(), "time": e.time, "added": e.added}}),
            );
        }
        Ok(Page { objects, actions, cursor, since, more })
    })
    .await
}
