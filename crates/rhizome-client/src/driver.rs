//! The background task: connects, runs one protocol 5 session at a time, and reconnects with
//! backoff. It is the only owner of the socket; the log is shared with the handle through
//! [`Shared`] (SQLite calls run off the runtime, through `rhizome_io::blocking`).

use crate::store::{Incoming, ReceivedDelta, Since, Subscription, Undone};
use crate::{ClientOptions, Event, Shared, State};
use futures_util::{FutureExt, SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rhizome_protocol::backoff::parse_retry_after;
use rhizome_protocol::message::{encode_connect, encode_error, encode_ping, encode_pong, encode_synced};
use rhizome_protocol::{parse, time_fix, ActionId, Codec, Message, NodeId, SyncBuilder, WireEntry, PROTOCOL};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

type Ws = rhizome_io::WebSocket;

/// Most frames already received that are handled (and stored) together.
const FRAMES_PER_BATCH_MAX: usize = 256;

/// Room for one action's meta and separators in a `sync` frame, in bytes.
pub(crate) const META_BYTES_MAX: usize = 128;

/// How long a polite close may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors after which reconnecting cannot help.
const FATAL_ERRORS: [&str; 3] = ["wrong-protocol", "wrong-subprotocol", "wrong-credentials"];

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The app closed the client.
    Stop,
    /// The app said the device is offline ([`crate::Client::set_online`]).
    Offline,
    /// The server refused us for good.
    Fatal(String),
    /// Try again after a delay.
    Retry {
        reason: String,
        /// The server's retry hint.
        hint: Option<Duration>,
        /// Whether the connection worked for a while: the server sent something after
        /// `connected`, or it stayed up for `backoff.max`. Resets the backoff; a server that
        /// accepts and drops at once (overloaded, shedding) keeps it growing.
        stable: bool,
    },
}

fn retry(reason: impl Into<String>) -> End {
    End::Retry { reason: reason.into(), hint: None, stable: false }
}

/// The `Retry-After` of a refused WebSocket upgrade (e.g. HTTP 503 or 429).
fn retry_hint(error: &WsError) -> Option<Duration> {
    match error {
        WsError::Http(response) => {
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
        }
        _ => None,
    }
}

/// A `sync` we sent and the server has not answered yet.
#[derive(Debug)]
enum Inflight {
    /// Queued actions with `added` in `lo..=hi`.
    Chunk { lo: i64, hi: i64, count: u64 },
    /// `logux/subscribe` actions (not queued; their answer updates the subscription).
    Subscribe,
}

/// A subscription message sent on this connection (not a queued action).
#[derive(Debug)]
enum Control {
    /// `logux/subscribe` to this channel: its answer gives the `since` to persist.
    Subscribe(String),
    /// `logux/unsubscribe`: its answer concerns nobody.
    Unsubscribe,
}

/// The state of one authenticated connection.
#[derive(Debug)]
struct Conn {
    codec: Codec,
    time_fix: i64,
    inflight: VecDeque<Inflight>,
    /// The highest `added` sent on this connection: the backlog continues after it.
    cursor: i64,
    /// Whether the queue may hold unsent actions after `cursor`.
    more_backlog: bool,
    /// Whether subscriptions not yet sent on this connection may exist.
    check_subscriptions: bool,
    /// `logux/subscribe` and `logux/unsubscribe` ids sent and not answered.
    controls: HashMap<String, Control>,
    /// Channels subscribed on this connection.
    subscribed: BTreeSet<String>,
    /// CRDT object channels to subscribe to again once their subscription in flight is
    /// answered: one of our operations on the object was processed after it was sent.
    stale: BTreeSet<String>,
    /// The highest `added` of ours the server confirmed (sent in `ping`/`pong`).
    acked_added: i64,
    ping_sent: bool,
    /// The highest `added` of the server's recorded in the log as received: a `ping` or
    /// `pong` that reports no more is not written (an idle device would commit, and fsync,
    /// at every ping otherwise).
    received: u64,
    last_rx: Instant,
    last_tx: Instant,
}

/// An event waiting for the log write that decides whether it is delivered.
enum Pending {
    /// The `n`th received action, delivered only if new.
    Action(usize, Value, ActionId, i64),
    /// An answer to a queued action, delivered only if it settled it (the first copy).
    Answer(Event, Answer),
    Other(Event),
}

/// Which answer of an [`Incoming`] a pending event is.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// The `n`th of `processed`.
    Processed(usize),
    /// The `n`th of `undone`.
    Undone(usize),
}

/// Received `sync` messages waiting to be stored together.
#[derive(Default)]
struct Batch {
    incoming: Incoming,
    pending: Vec<Pending>,
    /// The `added` of each `sync`, answered with `synced` once stored.
    answers: Vec<u64>,
    /// The highest `added` of ours confirmed by the `synced` messages in the batch.
    acked_hi: i64,
    /// How many of our actions those confirm.
    acked_count: u64,
}

impl Batch {
    /// Adds a `synced`: it confirms the oldest `sync` in flight, recorded with the batch.
    fn synced(&mut self, conn: &mut Conn, added: u64) {
        match conn.inflight.pop_front() {
            Some(Inflight::Chunk { lo, hi, count }) => {
                if added != hi.max(0) as u64 {
                    tracing::debug!(added, hi, "synced answers another added than the oldest sync's");
                }
                self.incoming.acked.push((lo, hi));
                self.acked_hi = self.acked_hi.max(hi);
                self.acked_count += count;
            }
            Some(Inflight::Subscribe) => {}
            None => tracing::debug!(added, "synced without a sync in flight"),
        }
    }

    fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.incoming.acked.is_empty()
    }

    /// Adds one `sync`: our answers (`logux/processed`, `logux/undo`) and others' actions.
    fn add(&mut self, conn: &mut Conn, added: u64, entries: Vec<WireEntry>) {
        self.answers.push(added);
        self.pending.reserve(entries.len());
        let incoming = &mut self.incoming;
        incoming.last_received = incoming.last_received.max(added);
        for entry in entries {
            let Some(id) = conn.codec.decode_id(&entry.meta.id) else {
                tracing::debug!(id = ?entry.meta.id, "an action with a bad id from the server; skipped");
                continue;
            };
            let time = conn.codec.decode_time(entry.meta.time) + conn.time_fix;
            let action = &entry.action;
            match action.kind() {
                "logux/processed" => {
                    let Some(target) = action.str_field("id") else { continue };
                    // Most answers are to queued actions, with no control in flight.
                    let control = if conn.controls.is_empty() { None } else { conn.controls.remove(target) };
                    match control {
                        Some(Control::Subscribe(channel)) => {
                            incoming.since.push((channel, Since { id: id.text(), time }));
                            continue;
                        }
                        Some(Control::Unsubscribe) => continue,
                        None => {}
                    }
                    if let Some(target) = ActionId::parse_known(target, &conn.codec.local) {
                        let n = incoming.processed.len();
                        incoming.processed.push(target.clone());
                        self.pending
                            .push(Pending::Answer(Event::Processed { id: target }, Answer::Processed(n)));
                    }
                }
                "logux/undo" => {
                    let Some(target) = action.str_field("id") else { continue };
                    let reason = action.str_field("reason").unwrap_or("error").to_owned();
                    let undone = action.fields().get("action").cloned().unwrap_or(Value::Null);
                    let mut control = false;
                    match conn.controls.remove(target) {
                        Some(Control::Subscribe(channel)) => {
                            tracing::warn!(%channel, %reason, "the server undid a subscription; forgetting it");
                            incoming.refused_channels.push(channel);
                            control = true;
                        }
                        Some(Control::Unsubscribe) => {
                            tracing::debug!(%reason, "the server undid an unsubscription");
                            continue;
                        }
                        None => {}
                    }
                    if let Some(target) = ActionId::parse_known(target, &conn.codec.local) {
                        let n = incoming.undone.len();
                        incoming.undone.push(Undone {
                            id: target.text(),
                            reason: reason.clone(),
                            action: undone.clone(),
                        });
                        let event = Event::Undone { id: target, reason, action: undone };
                        // A subscription was never queued: its undo is always reported.
                        self.pending.push(if control {
                            Pending::Other(event)
                        } else {
                            Pending::Answer(event, Answer::Undone(n))
                        });
                    }
                }
                kind => {
                    let n = incoming.actions.len();
                    if kind == rhizome_crdt::DELTA_TYPE {
                        match rhizome_crdt::parse_delta(action.fields()) {
                            Ok((key, delta)) => {
                                let replace = rhizome_crdt::replaces(action.fields());
                                incoming.deltas.push(ReceivedDelta {
                                    key: key.as_str().to_owned(),
                                    delta,
                                    replace,
                                })
                            }
                            Err(_) => {
                                tracing::debug!(id = %id, "a crdt/delta that does not decode; not joined")
                            }
                        }
                    }
                    incoming.actions.push((id.text(), time, action.json().to_string()));
                    self.pending.push(Pending::Action(n, Value::Object(action.fields().clone()), id, time));
                }
            }
        }
    }
}

/// `{"<node>": n, …}`, the `seen` of a CRDT subscription.
fn seen_json(vv: &rhizome_crdt::VersionVector) -> Value {
    Value::Object(vv.iter().map(|(node, n)| (node.to_string(), n.into())).collect())
}

impl Conn {
    /// Whether a `logux/subscribe` to `channel` is in flight on this connection.
    fn subscribing(&self, channel: &str) -> bool {
        self.controls.values().any(|c| matches!(c, Control::Subscribe(ch) if ch == channel))
    }
}

/// The background task.
#[derive(Debug)]
pub(crate) struct Driver {
    options: ClientOptions,
    shared: Arc<Shared>,
    node: NodeId,
    events: mpsc::Sender<Event>,
    state: watch::Sender<State>,
    control: watch::Receiver<Want>,
    rng: StdRng,
}

/// What the app wants of the connection, set by [`crate::Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Connected, reconnecting after drops.
    Online,
    /// No connection: the device has no network (actions still queue in the log).
    Offline,
    /// Closed for good.
    Stop,
}

/// Waits until the app no longer wants a connection: how the current one ends.
async fn leave(control: &mut watch::Receiver<Want>) -> End {
    loop {
        match *control.borrow_and_update() {
            Want::Online => {}
            Want::Offline => return End::Offline,
            Want::Stop => return End::Stop,
        }
        // The client's handle is gone: stopped.
        if control.changed().await.is_err() {
            return End::Stop;
        }
    }
}

impl Driver {
    pub(crate) fn new(
        options: ClientOptions,
        shared: Arc<Shared>,
        node: NodeId,
        events: mpsc::Sender<Event>,
        state: watch::Sender<State>,
        control: watch::Receiver<Want>,
    ) -> Driver {
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => rhizome_io::rng(),
        };
        Driver { options, shared, node, events, state, control, rng }
    }

    /// Connects and reconnects until stopped. Runs in the client's span (see `Client::open`).
    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        // The server's retry hint holds even if the device's network comes back meanwhile: a
        // server shedding load is not asked again before it said.
        let mut not_before: Option<Instant> = None;
        loop {
            if !self.wait_online().await {
                break;
            }
            if let Some(at) = not_before.take().filter(|at| *at > Instant::now()) {
                self.state.send_replace(State::Disconnected { retry_in: at - Instant::now() });
                match self.wait_until(at).await {
                    None => {}
                    Some(Want::Stop) => break,
                    Some(want) => {
                        not_before = Some(at);
                        if want == Want::Offline {
                            self.went_offline(&mut attempt).await;
                        }
                        continue;
                    }
                }
            }
            self.state.send_replace(State::Connecting);
            match self.connection().await {
                End::Stop => break,
                End::Offline => self.went_offline(&mut attempt).await,
                End::Fatal(reason) => {
                    tracing::warn!(%reason, "the server refused this client; not reconnecting");
                    self.emit(Event::Disconnected { reason, retry_in: None }).await;
                    break;
                }
                End::Retry { reason, hint, stable } => {
                    if stable {
                        attempt = 0;
                    }
                    let delay = self.options.backoff.delay(attempt, hint, &mut self.rng);
                    attempt = attempt.saturating_add(1);
                    not_before = hint.map(|hint| Instant::now() + hint.min(crate::RETRY_HINT_MAX));
                    tracing::debug!(%reason, ?delay, "disconnected");
                    self.state.send_replace(State::Disconnected { retry_in: delay });
                    self.emit(Event::Disconnected { reason, retry_in: Some(delay) }).await;
                    // A change of mind ends the wait: stopped, offline, or back online after
                    // being offline (a device whose network returned connects at once, though
                    // not before the server's hint).
                    match self.wait_until(Instant::now() + delay).await {
                        Some(Want::Stop) => break,
                        Some(Want::Offline) => self.went_offline(&mut attempt).await,
                        Some(Want::Online) | None => {}
                    }
                }
            }
        }
        self.state.send_replace(State::Stopped);
    }

    /// Waits until `at` or a change of what the app wants (returned).
    async fn wait_until(&mut self, at: Instant) -> Option<Want> {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => None,
            changed = self.control.changed() => match changed {
                Ok(()) => Some(*self.control.borrow_and_update()),
                // The client's handle is gone.
                Err(_) => Some(Want::Stop),
            },
        }
    }

    /// The app said the device is offline: reported at once (the state before the event, which
    /// may wait for room in the channel), and the next connection starts a fresh backoff.
    async fn went_offline(&mut self, attempt: &mut u32) {
        *attempt = 0;
        self.state.send_replace(State::Offline);
        self.emit(Event::Disconnected { reason: "offline".into(), retry_in: None }).await;
    }

    /// Waits while the app says the device is offline; `false` once the client is stopped.
    async fn wait_online(&mut self) -> bool {
        loop {
            match *self.control.borrow_and_update() {
                Want::Online => return true,
                Want::Stop => return false,
                Want::Offline => {}
            }
            self.state.send_replace(State::Offline);
            if self.control.changed().await.is_err() {
                return false;
            }
        }
    }

    async fn emit(&self, event: Event) {
        // A dropped receiver means the app does not want events; that is not an error.
        let _ = self.events.send(event).await;
    }

    /// One connection, from opening the socket to its end.
    async fn connection(&mut self) -> End {
        let open = tokio::time::timeout(self.options.timeout, rhizome_io::websocket(&self.options.url));
        let mut ws = tokio::select! {
            opened = open => match opened {
                Err(_) => return End::Retry { reason: "opening the socket timed out".into(), hint: None, stable: false },
                Ok(Err(e)) => return End::Retry { reason: e.to_string(), hint: retry_hint(&e), stable: false },
                Ok(Ok(ws)) => ws,
            },
            end = leave(&mut self.control) => return end,
        };
        let end = match self.handshake(&mut ws).await {
            Ok(conn) => self.session(&mut ws, conn).await,
            Err(end) => end,
        };
        if matches!(end, End::Stop | End::Offline) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
        }
        end
    }

    async fn send(&self, ws: &mut Ws, text: String) -> Result<(), End> {
        ws.send(WsMessage::text(text)).await.map_err(|e| retry(format!("sending: {e}")))
    }

    /// Sends `connect` and waits for `connected`.
    async fn handshake(&mut self, ws: &mut Ws) -> Result<Conn, End> {
        let not_connected = |reason: String| End::Retry { reason, hint: None, stable: false };
        let last_received =
            self.shared.with_store(|s| s.last_received()).await.map_err(|e| not_connected(e.to_string()))?;
        let sent_ms = self.shared.clock.now_ms();
        let connect = encode_connect(
            self.node.as_str(),
            last_received,
            self.options.token.as_deref(),
            self.options.subprotocol,
        );
        ws.send(WsMessage::text(connect)).await.map_err(|e| not_connected(e.to_string()))?;
        let deadline = Instant::now() + self.options.timeout;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, ws.next()) => next,
                end = leave(&mut self.control) => return Err(end),
            };
            let text = match next {
                Err(_) => return Err(not_connected("no answer to connect".into())),
                Ok(None) => return Err(not_connected("closed during the handshake".into())),
                Ok(Some(Err(e))) => return Err(not_connected(e.to_string())),
                Ok(Some(Ok(WsMessage::Text(text)))) => text,
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    return Err(not_connected(format!("closed during the handshake: {frame:?}")))
                }
                Ok(Some(Ok(_))) => continue,
            };
            match parse(text.as_str()) {
                Ok(Message::Connected { protocol, node_id, time: [start, end], .. }) => {
                    if protocol < PROTOCOL {
                        let options = json!({"supported": PROTOCOL, "used": protocol});
                        let _ =
                            ws.send(WsMessage::text(encode_error("wrong-protocol", Some(&options)))).await;
                        return Err(End::Fatal(format!("the server speaks protocol {protocol}")));
                    }
                    let Some(server) = NodeId::parse(&node_id) else {
                        return Err(not_connected(format!("bad server node id {node_id:?}")));
                    };
                    let fix = time_fix(sent_ms, self.shared.clock.now_ms(), start, end);
                    let codec = Codec { base_time: end, local: self.node.clone(), remote: server.clone() };
                    self.state.send_replace(State::Connected);
                    self.shared.count(|s| s.connections += 1);
                    self.emit(Event::Connected { server, time_fix: fix }).await;
                    let now = Instant::now();
                    return Ok(Conn {
                        codec,
                        time_fix: fix,
                        inflight: VecDeque::new(),
                        cursor: 0,
                        more_backlog: true,
                        check_subscriptions: true,
                        controls: HashMap::new(),
                        subscribed: BTreeSet::new(),
                        stale: BTreeSet::new(),
                        acked_added: 0,
                        ping_sent: false,
                        received: last_received,
                        last_rx: now,
                        last_tx: now,
                    });
                }
                Ok(Message::Error { kind, options }) => return Err(self.server_error(kind, options).await),
                Ok(_) => {} // `headers`, `debug`: nothing to do before `connected`.
                Err(e) => return Err(not_connected(format!("bad frame from the server: {e}"))),
            }
        }
    }

    async fn server_error(&self, kind: String, options: Option<Value>) -> End {
        let fatal = FATAL_ERRORS.contains(&kind.as_str());
        let reason = format!("server error {kind}");
        self.emit(Event::ServerError { kind, options }).await;
        if fatal {
            End::Fatal(reason)
        } else {
            retry(reason)
        }
    }

    /// Runs an authenticated connection until it ends.
    async fn session(&mut self, ws: &mut Ws, conn: Conn) -> End {
        let started = Instant::now();
        let mut answered = false;
        let end = self.session_loop(ws, conn, &mut answered).await;
        match end {
            End::Retry { reason, hint, .. } => {
                let stable = answered || started.elapsed() >= self.options.backoff.max;
                End::Retry { reason, hint, stable }
            }
            other => other,
        }
    }

    async fn session_loop(&mut self, ws: &mut Ws, mut conn: Conn, answered: &mut bool) -> End {
        enum Step {
            Leave(End),
            Frame(Option<Result<WsMessage, WsError>>),
            Wake,
            Deadline,
        }
        loop {
            if let Err(end) = self.fill(ws, &mut conn).await {
                return end;
            }
            let waiting = !conn.inflight.is_empty() || conn.ping_sent;
            let deadline = if waiting {
                conn.last_rx + self.options.timeout
            } else {
                conn.last_rx.max(conn.last_tx) + self.options.ping_interval
            };
            let step = tokio::select! {
                end = leave(&mut self.control) => Step::Leave(end),
                frame = ws.next() => Step::Frame(frame),
                _ = self.shared.wake.notified() => Step::Wake,
                _ = tokio::time::sleep_until(deadline) => Step::Deadline,
            };
            match step {
                Step::Leave(end) => return end,
                Step::Wake => {
                    conn.more_backlog = true;
                    conn.check_subscriptions = true;
                }
                Step::Deadline if waiting => return retry("timeout: the server did not answer"),
                Step::Deadline => {
                    if let Err(end) = self.send(ws, encode_ping(conn.acked_added.max(0) as u64)).await {
                        return end;
                    }
                    conn.ping_sent = true;
                    conn.last_tx = Instant::now();
                }
                Step::Frame(None) => return retry("the server closed the connection"),
                Step::Frame(Some(Err(e))) => return retry(e.to_string()),
                Step::Frame(Some(Ok(WsMessage::Close(frame)))) => {
                    return retry(format!("the server closed the connection: {frame:?}"))
                }
                Step::Frame(Some(Ok(WsMessage::Text(text)))) => {
                    conn.last_rx = Instant::now();
                    *answered = true;
                    // Take what else has already arrived, so it is stored in one transaction.
                    let mut texts = vec![text.as_str().to_owned()];
                    let mut after = None;
                    while texts.len() < FRAMES_PER_BATCH_MAX {
                        match ws.next().now_or_never() {
                            Some(Some(Ok(WsMessage::Text(t)))) => texts.push(t.as_str().to_owned()),
                            Some(Some(Ok(WsMessage::Close(frame)))) => {
                                after = Some(retry(format!("the server closed the connection: {frame:?}")));
                                break;
                            }
                            Some(Some(Ok(_))) => {}
                            Some(Some(Err(e))) => {
                                after = Some(retry(e.to_string()));
                                break;
                            }
                            Some(None) => {
                                after = Some(retry("the server closed the connection"));
                                break;
                            }
                            None => break,
                        }
                    }
                    if let Err(end) = self.on_frames(ws, &mut conn, texts).await {
                        return end;
                    }
                    if let Some(end) = after {
                        return end;
                    }
                }
                Step::Frame(Some(Ok(_))) => conn.last_rx = Instant::now(),
            }
        }
    }

    /// Brings the server's subscriptions on this connection in line with the log's
    /// (`logux/subscribe` with `since` for new ones, `logux/unsubscribe` for forgotten ones),
    /// then sends backlog chunks while the window has room.
    async fn fill(&mut self, ws: &mut Ws, conn: &mut Conn) -> Result<(), End> {
        let store_failed = |e: crate::ClientError| retry(format!("local log: {e}"));
        if conn.check_subscriptions && conn.inflight.len() < self.options.inflight_syncs_max {
            conn.check_subscriptions = false;
            let subscriptions = self.shared.with_store(|s| s.subscriptions()).await.map_err(store_failed)?;
            let wanted: HashSet<&str> = subscriptions.iter().map(|s| s.channel.as_str()).collect();
            let gone: Vec<String> =
                conn.subscribed.iter().filter(|c| !wanted.contains(c.as_str())).cloned().collect();
            let new: Vec<_> =
                subscriptions.iter().filter(|s| !conn.subscribed.contains(&s.channel)).cloned().collect();
            self.send_subscriptions(ws, conn, gone, new).await?;
        }
        let chunk_max = self.options.sync_actions_max;
        let fold = self.options.fold_crdt;
        while conn.more_backlog && conn.inflight.len() < self.options.inflight_syncs_max {
            let after = conn.cursor;
            let next = self
                .shared
                .with_store(move |s| s.next_chunk(after, chunk_max, fold))
                .await
                .map_err(store_failed)?;
            if next.read < chunk_max {
                conn.more_backlog = false;
            }
            for (id, into) in next.folded {
                self.emit(Event::Folded { id, into }).await;
            }
            let chunk = next.rows;
            let Some(first) = chunk.first() else { break };
            let lo = first.added;
            // Up to `sync_bytes_max` per frame (an action is never larger, see `add_many`);
            // the rest of the chunk is read again for the next frame.
            let mut frame = SyncBuilder::new();
            let mut hi = lo;
            for q in &chunk {
                if !frame.is_empty()
                    && frame.bytes() + q.action.len() + META_BYTES_MAX > self.options.sync_bytes_max
                {
                    conn.more_backlog = true;
                    break;
                }
                frame.push(&conn.codec, &q.action, &q.id, q.time - conn.time_fix, None);
                hi = q.added;
            }
            let count = frame.len() as u64;
            self.send(ws, frame.finish(hi.max(0) as u64)).await?;
            conn.inflight.push_back(Inflight::Chunk { lo, hi, count });
            conn.cursor = hi;
            conn.last_tx = Instant::now();
            self.shared.count(|s| {
                s.actions_sent += count;
                s.syncs_sent += 1;
            });
        }
        Ok(())
    }

    /// Sends `logux/unsubscribe` for `gone` and `logux/subscribe` for `new` (with `since`, and
    /// with `seen` for a CRDT object this client holds a copy of) in one `sync`.
    async fn send_subscriptions(
        &mut self,
        ws: &mut Ws,
        conn: &mut Conn,
        gone: Vec<String>,
        new: Vec<Subscription>,
    ) -> Result<(), End> {
        if new.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let store_failed = |e: crate::ClientError| retry(format!("local log: {e}"));
        let now = self.shared.clock.now_ms();
        let count = new.len() + gone.len();
        let keys: Vec<Option<String>> =
            new.iter().map(|s| s.channel.strip_prefix(crate::CRDT_PREFIX).map(str::to_owned)).collect();
        let (ids, seen) = self
            .shared
            .with_store(move |s| {
                let ids = (0..count).map(|_| s.fresh_id(now)).collect::<Result<Vec<_>, _>>()?;
                let seen = keys
                    .iter()
                    .map(|key| match key {
                        Some(key) => s.seen(key),
                        None => Ok(None),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((ids, seen))
            })
            .await
            .map_err(store_failed)?;
        let mut ids = ids.into_iter();
        let mut frame = SyncBuilder::new();
        // Unsubscriptions first: an unsubscribe and a new subscribe of one channel
        // between two fills leave the server subscribed, as they leave the log.
        for (channel, id) in gone.into_iter().zip(ids.by_ref()) {
            let action = json!({"type": "logux/unsubscribe", "channel": channel});
            frame.push(&conn.codec, &action.to_string(), &id, id.ms - conn.time_fix, None);
            conn.controls.insert(id.text(), Control::Unsubscribe);
            conn.subscribed.remove(&channel);
        }
        for ((sub, id), seen) in new.into_iter().zip(ids).zip(seen) {
            let mut action = json!({"type": "logux/subscribe", "channel": sub.channel});
            if let Some(Since { id, time }) = &sub.since {
                action["since"] = json!({"id": id, "time": time});
            }
            // Only what the copy lacks comes back (the server sends the whole object without).
            if let Some(seen) = &seen {
                action["seen"] = seen_json(seen);
            }
            frame.push(&conn.codec, &action.to_string(), &id, id.ms - conn.time_fix, None);
            conn.controls.insert(id.text(), Control::Subscribe(sub.channel.clone()));
            conn.subscribed.insert(sub.channel);
        }
        self.send(ws, frame.finish(conn.cursor.max(0) as u64)).await?;
        conn.inflight.push_back(Inflight::Subscribe);
        conn.last_tx = Instant::now();
        Ok(())
    }

    /// Subscribes again to the objects of our CRDT operations the server processed, so the
    /// copies get their effect: the server sends an author no delta of its own operations.
    /// At most one subscription per channel is in flight; an operation processed while one is
    /// marks the channel, subscribed again when that one is answered.
    async fn refresh_objects(
        &mut self,
        ws: &mut Ws,
        conn: &mut Conn,
        processed_objects: Vec<String>,
        answered: Vec<String>,
    ) -> Result<(), End> {
        let mut again: Vec<String> = Vec::new();
        for key in processed_objects {
            let channel = format!("{}{key}", crate::CRDT_PREFIX);
            if !conn.subscribed.contains(&channel) {
                continue;
            }
            if conn.subscribing(&channel) {
                conn.stale.insert(channel);
            } else if !again.contains(&channel) {
                again.push(channel);
            }
        }
        for channel in answered {
            if conn.stale.contains(&channel) && !conn.subscribing(&channel) {
                conn.stale.remove(&channel);
                if conn.subscribed.contains(&channel) && !again.contains(&channel) {
                    again.push(channel);
                }
            }
        }
        if again.is_empty() {
            return Ok(());
        }
        // With their `since`: with it the server knows the copy is newer than any correction
        // of the object before it, and sends only what `seen` lacks (docs/crdt.md).
        let kept = self
            .shared
            .with_store(|s| s.subscriptions())
            .await
            .map_err(|e| retry(format!("local log: {e}")))?;
        let new = again
            .into_iter()
            .map(|channel| {
                let since = kept.iter().find(|s| s.channel == channel).and_then(|s| s.since.clone());
                Subscription { channel, since }
            })
            .collect();
        self.send_subscriptions(ws, conn, Vec::new(), new).await
    }

    /// Handles frames that arrived together. Consecutive `sync` messages are stored in one
    /// transaction (one fsync for many server frames), then answered with `synced` each.
    async fn on_frames(&mut self, ws: &mut Ws, conn: &mut Conn, texts: Vec<String>) -> Result<(), End> {
        let mut batch = Batch::default();
        for text in texts {
            match parse(&text) {
                Ok(Message::Sync { added, entries }) => batch.add(conn, added, entries),
                // Stored with the batch's other changes, in one transaction.
                Ok(Message::Synced(added)) => batch.synced(conn, added),
                Ok(other) => {
                    self.flush(ws, conn, std::mem::take(&mut batch)).await?;
                    self.on_message(ws, conn, other).await?;
                }
                Err(e) => return Err(retry(format!("bad frame from the server: {e}"))),
            }
        }
        self.flush(ws, conn, batch).await
    }

    /// Stores a batch of received `sync`s, answers them and reports them to the app.
    async fn flush(&mut self, ws: &mut Ws, conn: &mut Conn, batch: Batch) -> Result<(), End> {
        if batch.is_empty() {
            return Ok(());
        }
        let Batch { incoming, pending, answers, acked_hi, acked_count } = batch;
        let last_received = incoming.last_received;
        let received = incoming.actions.len() as u64;
        self.shared.count(|s| s.actions_received += received);
        let answered: Vec<String> = incoming.since.iter().map(|(channel, _)| channel.clone()).collect();
        let crate::store::Applied { fresh, processed_settled, undone_settled, undone_new, processed_objects } =
            self.shared
                .with_store(move |s| s.apply(&incoming))
                .await
                .map_err(|e| retry(format!("local log: {e}")))?;
        conn.received = conn.received.max(last_received);
        conn.acked_added = conn.acked_added.max(acked_hi);
        if acked_count > 0 {
            self.shared.count(|s| s.actions_acked += acked_count);
        }
        // Stored: now the server may forget them for us.
        if !answers.is_empty() {
            // Queued first and written together: one write for the batch's answers.
            for added in answers {
                ws.feed(WsMessage::text(encode_synced(added)))
                    .await
                    .map_err(|e| retry(format!("sending: {e}")))?;
            }
            ws.flush().await.map_err(|e| retry(format!("sending: {e}")))?;
            conn.last_tx = Instant::now();
        }
        if !processed_objects.is_empty() || !conn.stale.is_empty() {
            self.refresh_objects(ws, conn, processed_objects, answered).await?;
        }
        for p in pending {
            match p {
                Pending::Action(n, action, id, time) => {
                    if fresh.get(n).copied().unwrap_or(false) {
                        self.emit(Event::Action { action, id, time }).await;
                    }
                }
                // An answer is reported once: when it settles a queued action, or, for an undo,
                // when it is the first for its id (an edge's upstream may refuse an action the
                // edge processed already).
                Pending::Answer(event, answer) => {
                    let settles = match answer {
                        Answer::Processed(n) => processed_settled.get(n).copied(),
                        Answer::Undone(n) => {
                            let ours =
                                matches!(&event, Event::Undone { id, .. } if id.node == conn.codec.local);
                            let new = ours && undone_new.get(n).copied().unwrap_or(false);
                            Some(undone_settled.get(n).copied().unwrap_or(false) || new)
                        }
                    };
                    if settles.unwrap_or(false) {
                        self.emit(event).await;
                    }
                }
                Pending::Other(event) => self.emit(event).await,
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, ws: &mut Ws, conn: &mut Conn, message: Message) -> Result<(), End> {
        match message {
            Message::Ping(added) => {
                self.record_received(conn, added).await?;
                self.send(ws, encode_pong(conn.acked_added.max(0) as u64)).await?;
                conn.last_tx = Instant::now();
            }
            Message::Pong(added) => {
                conn.ping_sent = false;
                self.record_received(conn, added).await?;
            }
            Message::Error { kind, options } => return Err(self.server_error(kind, options).await),
            Message::Debug(text) => tracing::warn!(%text, "debug error from the server"),
            _ => {}
        }
        Ok(())
    }

    /// Records the `added` of a server `ping`/`pong`: the server has sent us everything
    /// addressed to us up to it.
    async fn record_received(&self, conn: &mut Conn, added: u64) -> Result<(), End> {
        if added <= conn.received {
            return Ok(());
        }
        let incoming = Incoming { last_received: added, ..Incoming::default() };
        self.shared
            .with_store(move |s| s.apply(&incoming).map(|_| ()))
            .await
            .map_err(|e| retry(format!("local log: {e}")))?;
        conn.received = added;
        Ok(())
    }
}
