//! An edge's link to its upstream (docs/edge.md): one protocol 5 connection to another Rhizome
//! node, on which this server is a client with the *peer* role, reconnected with backoff for as
//! long as the server runs.
//!
//! Up: the outbox is this server's own log. The link reads it from the durable cursor
//! [`UPSTREAM_SENT`] in chunks, relays its clients' actions with their own ids (CRDT operations
//! as the deltas this store made of them), a window of `sync`s in flight, and raises the cursor
//! when the upstream answers `synced`. [`rhizome_core::uplink`] decides what goes and how far
//! the cursor may rise; this module does the I/O.
//!
//! Down: every channel a client subscribes to here is followed upstream for good (kept in
//! `upstream_channels`, subscribed again on each connection with the `since` of its last
//! answer). What the upstream sends is appended to this log with its ids, routed by this
//! server's rules as its author's, marked as received (never sent back up), and only then
//! confirmed with `synced`, so a drop or a crash loses nothing: the upstream sends it again.
//! CRDT deltas are joined into this server's objects in the same transaction.

use crate::shared::Shared;
use crate::writer::now_ms;
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use rhizome_core::routing::USER_CHANNEL_PREFIX;
use rhizome_core::uplink::{forward, Forward, Uplink};
use rhizome_core::{Context, Meta, NewEntry, Position, Routing, Status, StoredEntry};
use rhizome_protocol::backoff::{parse_retry_after, Backoff};
use rhizome_protocol::message::{encode_connect, encode_ping, encode_pong, encode_synced};
use rhizome_protocol::{
    parse, time_fix, Action, ActionId, Channel, Codec, IdGenerator, Message, NodeId, SyncBuilder, WireEntry,
    PROTOCOL,
};
use rhizome_store::{Append, OutboxSize, UpstreamChannel, WriteBatch, UPSTREAM_RECEIVED, UPSTREAM_SENT};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

type Ws = rhizome_io::WebSocket;

/// How to reach the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Its WebSocket URL (`ws://…` or `wss://…`).
    pub url: String,
    /// The token the link authenticates with (a JWT whose user is a peer upstream).
    pub token: Option<String>,
    /// The link's node id, `<peer user>:<edge name>:link`.
    pub node: NodeId,
    /// Most `sync`s sent and not yet answered.
    pub window: usize,
    /// Most actions in one `sync`.
    pub sync_actions_max: usize,
    /// Most bytes of actions in one `sync` (one larger action goes alone).
    pub sync_bytes_max: usize,
    /// Delays between connection attempts.
    pub backoff: Backoff,
    /// How long the upstream may stay silent (handshake, or a `ping` unanswered) before the
    /// link drops the connection and connects again.
    pub timeout: Duration,
    /// A quiet link sends `ping` after this long, so a dead connection is noticed.
    pub ping_interval: Duration,
    /// Most entries waiting to go upstream: past it, client actions are refused with
    /// `logux/undo` reason `outboxFull` until the link catches up (checked against a measure
    /// at most [`OUTBOX_MEASURE_INTERVAL`] old).
    pub outbox_max: u64,
    /// Most bytes of actions waiting to go upstream, likewise.
    pub outbox_bytes_max: u64,
    /// Most channels followed upstream: a channel first subscribed to past it is served from
    /// the edge's log alone.
    pub channels_max: usize,
    /// Sends each author's deltas of one CRDT object within a `sync` as one delta (their ids
    /// but the last are then not in the upstream's log; their authors are still told of each
    /// by its own id, in `rhizome/committed` or `logux/undo`).
    pub fold_crdt: bool,
    /// When set, `GET /v1/edge/status` answers only a request with `Authorization: Bearer
    /// <it>` (401 otherwise).
    pub status_token: Option<String>,
}

impl UpstreamOptions {
    /// Options with the defaults for everything but where and who.
    pub fn new(url: impl Into<String>, node: NodeId, token: Option<String>) -> UpstreamOptions {
        UpstreamOptions {
            url: url.into(),
            token,
            node,
            window: 8,
            sync_actions_max: 1000,
            sync_bytes_max: 256 << 10,
            backoff: Backoff::default(),
            timeout: Duration::from_secs(20),
            ping_interval: Duration::from_secs(10),
            outbox_max: 1_000_000,
            outbox_bytes_max: 1 << 30,
            channels_max: 100_000,
            fold_crdt: true,
            status_token: None,
        }
    }
}

/// What the link is doing, for the status endpoint and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Since when the current connection is up (server clock, ms); `None` while disconnected.
    pub connected_since_ms: Option<i64>,
    /// The upstream cursor: every entry to send at or below it is committed upstream, and its
    /// answer is stored here.
    pub confirmed: Position,
    /// Connections that completed the handshake.
    pub connections: u64,
    /// Actions sent upstream (again after a drop counts again).
    pub actions_sent: u64,
    /// Actions sent on this connection whose answer is not stored yet (the cursor waits for
    /// the oldest).
    pub awaiting_answers: usize,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
    /// What waits to go upstream, as last measured.
    pub outbox: OutboxSize,
    /// When it was measured (server clock, ms); it is measured again within a second of a
    /// change, so an old measure means nothing changed since.
    pub outbox_measured_ms: i64,
    /// Whether the outbox is at its limit (client actions are refused).
    pub outbox_full: bool,
    /// The highest `added` of the upstream's stored here.
    pub received: u64,
    /// Channels followed upstream.
    pub channels: usize,
}

/// How often the outbox is measured at most (it is measured after a change only).
pub const OUTBOX_MEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// Measures the outbox until the server stops, and sets whether it is full: at start, then
/// within [`OUTBOX_MEASURE_INTERVAL`] of each change (a commit, the upstream cursor moving). The
/// measure is a scan of the outbox, so an idle edge, or one cut off for weeks with nothing new,
/// neither scans nor wakes.
pub(crate) async fn measure_outbox(shared: Arc<Shared>, options: UpstreamOptions) {
    let Some(status) = shared.link_status.get().cloned() else { return };
    let mut committed = shared.committed.subscribe();
    let mut measured: Option<(Position, Position)> = None;
    loop {
        let confirmed = status.lock().unwrap_or_else(|p| p.into_inner()).confirmed;
        let last = *committed.borrow_and_update();
        if measured != Some((confirmed, last)) {
            let store = shared.store.clone();
            match rhizome_io::blocking(move || store.outbox(confirmed)).await {
                Ok(Ok(outbox)) => {
                    measured = Some((confirmed, last));
                    let full =
                        outbox.entries >= options.outbox_max || outbox.bytes >= options.outbox_bytes_max;
                    let was = shared.outbox_full.swap(full, std::sync::atomic::Ordering::Relaxed);
                    if full != was {
                        tracing::warn!(
                            entries = outbox.entries,
                            bytes = outbox.bytes,
                            full,
                            "edge outbox limit"
                        );
                    }
                    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                    s.outbox = outbox;
                    s.outbox_measured_ms = now_ms();
                    s.outbox_full = full;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "measuring the edge outbox failed");
                    measured = None;
                }
                Err(_) => return,
            }
            // At most one scan per interval, however busy the log.
            tokio::select! {
                () = tokio::time::sleep(OUTBOX_MEASURE_INTERVAL) => {}
                () = shared.stopping() => return,
            }
            if measured.is_none() {
                // It failed: try again after the pause, change or not.
                continue;
            }
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            () = shared.outbox_moved.notified() => {}
            () = shared.stopping() => return,
        }
    }
}

/// `GET /v1/edge/status`: the edge's link and outbox, as JSON (404 on a server that is not an
/// edge). See docs/edge.md.
pub(crate) async fn status_endpoint(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(status) = shared.link_status.get() else {
        return (axum::http::StatusCode::NOT_FOUND, "not an edge\n").into_response();
    };
    if let Some(token) = shared.status_token.get() {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
        if !given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
            let challenge = [(axum::http::header::WWW_AUTHENTICATE, "Bearer")];
            return (axum::http::StatusCode::UNAUTHORIZED, challenge, "the status needs its token\n")
                .into_response();
        }
    }
    let s = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let now = now_ms();
    let body = serde_json::json!({
        "connected": s.connected_since_ms.is_some(),
        "connectedSince": s.connected_since_ms,
        "connections": s.connections,
        "lastError": s.last_error,
        "upstreamSent": s.confirmed,
        "upstreamReceived": s.received,
        "channels": s.channels,
        "actionsSent": s.actions_sent,
        "awaitingAnswers": s.awaiting_answers,
        "outbox": {
            "entries": s.outbox.entries,
            "bytes": s.outbox.bytes,
            "oldestAgeMs": s.outbox.oldest_ms.map(|t| (now - t).max(0)),
            "full": s.outbox_full,
            "measuredAgoMs": now - s.outbox_measured_ms,
        },
    });
    axum::Json(body).into_response()
}

/// Whether `given` is `secret`, in a time that depends on their lengths only.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len() && given.iter().zip(secret).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// How long the link waits before reading again an action whose `process` has not finished.
const WAITING_POLL: Duration = Duration::from_millis(20);

/// Errors after which connecting again cannot help until the configuration changes; the link
/// still tries, at the longest backoff, so an upstream fixed meanwhile is picked up.
const FATAL_ERRORS: [&str; 3] = ["wrong-protocol", "wrong-subprotocol", "wrong-credentials"];

/// Room for one id in a `folded` meta (`[ms,seq],`), in bytes.
const FOLDED_ID_BYTES: usize = 24;

/// Room for one action's meta and separators in a `sync` frame, in bytes.
const META_BYTES_MAX: usize = 384;

/// The action telling an author's client that the upstream committed its actions `ids`
/// (docs/edge.md): `{"type": "rhizome/committed", "ids": [...]}`.
pub const COMMITTED_TYPE: &str = "rhizome/committed";

/// The action with which the link asks its upstream for the state of a CRDT object, and with
/// which the upstream answers (docs/edge.md, correcting an object).
pub const STATE_TYPE: &str = "rhizome/state";

/// The reason of the `logux/undo` an edge answers a [`STATE_TYPE`] request with while it
/// must correct that object itself (its state may hold an operation its upstream refused).
pub const UPSTREAM_CORRECTING: &str = "correcting";

/// The upstream's answer to an action this edge relayed.
struct RelayAnswer {
    target: ActionId,
    /// The `logux/undo` action, or `None` for `logux/processed`.
    undo: Option<Action>,
    /// The cloud committed it already: the upstream's `rhizome/committed` named the fold it
    /// went in before this answer came (see [`Link::named_early`]).
    committed: bool,
}

/// An upstream's `rhizome/committed` as this edge passes it on (see [`Link::expand_folds`]).
#[derive(Default)]
struct Expanded {
    /// The notice, each fold named by the ids in it.
    json: Arc<str>,
    /// The folds it named, by the id each went under.
    folds: Vec<String>,
    /// The ids it named that are no fold known here.
    others: Vec<String>,
    /// The positions here of what it named that this edge logged.
    positions: Vec<Position>,
}

/// Ids kept in [`Link::named_early`] at most: past it, the set starts over.
const NAMED_EARLY_MAX: usize = 100_000;

/// The slowest an upstream may take a frame once the link's timeout passed, in bytes per
/// millisecond (256 KB/s): a large action on a slow line is not taken for a hung upstream.
const SEND_BYTES_PER_MS_MIN: u64 = 256;

/// `sync`s received from the upstream stored in one write at most.
const RECEIVED_SYNCS_PER_WRITE_MAX: usize = 64;

/// Folded deltas whose answer is awaited, at most (see [`UpstreamOptions::fold_crdt`]).
const FOLDED_KEPT_MAX: usize = 100_000;

/// `logux/subscribe` actions in one `sync` at most.
const SUBSCRIBES_PER_SYNC_MAX: usize = 100;

/// How a connection ended.
#[derive(Debug)]
struct End {
    reason: String,
    /// The upstream's retry hint (`Retry-After` of a refused upgrade).
    hint: Option<Duration>,
    /// The connection worked (it confirmed something, or lasted as long as the longest
    /// backoff): the backoff starts over.
    stable: bool,
    fatal: bool,
}

impl End {
    fn retry(reason: impl Into<String>) -> End {
        End { reason: reason.into(), hint: None, stable: false, fatal: false }
    }
}

/// The channels an edge follows upstream, as the subscriptions of its clients add them: each
/// is recorded in the log before the subscription is answered (so a crash cannot forget it),
/// then handed to the link, which subscribes upstream.
#[derive(Debug)]
pub struct Follow {
    known: Mutex<HashSet<String>>,
    /// Channels followed at most ([`UpstreamOptions::channels_max`]).
    max: usize,
    link: tokio::sync::mpsc::UnboundedSender<UpstreamChannel>,
}

impl Follow {
    /// The channels followed so far (from the log), and the link's end.
    pub(crate) fn new(
        followed: Vec<UpstreamChannel>,
        max: usize,
    ) -> (Follow, tokio::sync::mpsc::UnboundedReceiver<UpstreamChannel>) {
        let (link, rx) = tokio::sync::mpsc::unbounded_channel();
        let known = followed.into_iter().map(|c| c.channel).collect();
        (Follow { known: Mutex::new(known), max, link }, rx)
    }

    /// Follows `channel` from now on, if it is not followed yet.
    pub(crate) async fn follow(&self, writer: &crate::writer::WriteQueue, channel: &str) -> Result<(), ()> {
        {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.contains(channel) {
                return Ok(());
            }
            if known.len() >= self.max {
                // Served from the edge's log alone; what the upstream gets on it does not come
                // down. Bounded so that subscriptions cannot grow the upstream's work without end.
                tracing::warn!(
                    channel,
                    max = self.max,
                    "the edge follows its most channels upstream already"
                );
                return Ok(());
            }
        }
        // What is addressed to a user comes from the start of the upstream's log, as it does
        // to a new device connecting there (docs/edge.md).
        let since_time = if channel.starts_with(USER_CHANNEL_PREFIX) { 0 } else { now_ms() };
        let followed = UpstreamChannel { channel: channel.to_owned(), since_id: None, since_time };
        let upstream_channels = vec![followed.clone()];
        let batch = WriteBatch { upstream_channels, ..WriteBatch::default() };
        if !matches!(writer.write_unordered(batch).await.await, Ok(Ok(_))) {
            return Err(());
        }
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(channel.to_owned());
        // With the time it was recorded with: the link may be down for a while, and a `since`
        // from when it is handed the channel would skip what the upstream got meanwhile.
        let _ = self.link.send(followed);
        Ok(())
    }
}

impl Follow {
    /// Follows upstream what is addressed to the user of a client that connected here, if it
    /// is not followed yet (docs/edge.md). A peer's user (a site's link, in a chain) is not
    /// followed: its link follows its own clients' users.
    pub(crate) async fn follow_user(&self, shared: &Shared, user: Option<&rhizome_protocol::UserId>) {
        let Some(user) = user else { return };
        if shared.app.is_peer(user) {
            return;
        }
        let channel = format!("{USER_CHANNEL_PREFIX}{user}");
        if self.follow(&shared.writer, &channel).await.is_err() {
            // Recorded at the user's next connection; meanwhile its entries at the upstream
            // wait there.
            tracing::warn!(%user, "following a user upstream could not be recorded");
        }
    }
}

/// What the link keeps in the log between runs.
struct Durable {
    confirmed: Position,
    received: u64,
    channels: Vec<UpstreamChannel>,
    resets: Vec<String>,
}

fn read_durable(store: &dyn rhizome_store::Store) -> Result<Durable, rhizome_store::StoreError> {
    Ok(Durable {
        confirmed: store.cursor(UPSTREAM_SENT)?.unwrap_or(0),
        received: store.cursor(UPSTREAM_RECEIVED)?.unwrap_or(0),
        channels: store.upstream_channels()?,
        resets: store.objects_to_reset()?,
    })
}

/// Runs the link until the server stops. `follow` receives the channels the edge's clients
/// subscribe to.
pub(crate) async fn run(
    shared: Arc<Shared>,
    options: UpstreamOptions,
    status: Arc<Mutex<LinkStatus>>,
    follow: tokio::sync::mpsc::UnboundedReceiver<UpstreamChannel>,
) {
    let store = shared.store.clone();
    let durable = match rhizome_io::blocking(move || read_durable(&*store)).await {
        Ok(Ok(durable)) => durable,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the upstream cursors could not be read; the link does not start");
            return;
        }
        Err(_) => return,
    };
    let confirmed = durable.confirmed;
    let mut link = Link {
        shared: shared.clone(),
        uplink: Uplink::new(confirmed, options.window),
        ids: IdGenerator::new(options.node.clone()),
        options,
        status,
        received: durable.received,
        channels: durable.channels.into_iter().map(|c| (c.channel, (c.since_id, c.since_time))).collect(),
        follow,
        folded: HashMap::new(),
        folds_writing: HashMap::new(),
        named_early: HashSet::new(),
        upstream_relays: false,
        awaiting: HashMap::new(),
        resets: durable.resets.into_iter().map(|key| (key, 0)).collect(),
        cursor_write: None,
        cursor_written: confirmed,
    };
    let (received, channels) = (link.received, link.channels.len());
    link.set_status(|s| {
        s.confirmed = confirmed;
        s.received = received;
        s.channels = channels;
    });
    // The outbox may have been measured from cursor 0 before the durable cursor was read.
    shared.outbox_moved.notify_one();
    let mut rng = rhizome_io::rng();
    let mut attempt = 0u32;
    loop {
        let end = tokio::select! {
            end = link.connection() => end,
            () = shared.stopping() => break,
        };
        link.set_status(|s| {
            s.connected_since_ms = None;
            s.last_error = Some(end.reason.clone());
        });
        if end.stable {
            attempt = 0;
        }
        let mut delay = link.options.backoff.delay(attempt, end.hint, &mut rng);
        if end.fatal {
            tracing::error!(reason = %end.reason, url = %link.options.url, "the upstream refused the link");
            delay = delay.max(link.options.backoff.max);
        } else {
            tracing::info!(reason = %end.reason, retry_in_ms = delay.as_millis() as u64, "upstream link down");
        }
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stopping() => break,
        }
    }
    // The last confirmation, if one is not written yet (a restart would only send it again).
    link.write_cursor().await;
}

struct Link {
    shared: Arc<Shared>,
    options: UpstreamOptions,
    status: Arc<Mutex<LinkStatus>>,
    uplink: Uplink,
    /// Ids of the link's own actions (its subscriptions).
    ids: IdGenerator,
    /// The highest `added` received from the upstream and stored (the `synced` of our next
    /// `connect`).
    received: u64,
    /// The channels followed upstream, with the `since` of their next subscription (see
    /// [`UpstreamChannel`]).
    channels: BTreeMap<String, (Option<String>, i64)>,
    /// Channels the edge's clients subscribe to.
    follow: tokio::sync::mpsc::UnboundedReceiver<UpstreamChannel>,
    /// Deltas sent folded: the id each went under, and the ids folded into it, whose authors
    /// get the upstream's answer to it (see [`UpstreamOptions::fold_crdt`]), with the
    /// positions of all, recorded once the upstream accepts it (an undo may follow, in a
    /// chain, see [`rhizome_store::Store::fold_of`]).
    folded: HashMap<ActionId, (Vec<ActionId>, Vec<Position>)>,
    /// Folds the upstream accepted whose record (`relay_folds`) is in a write not committed
    /// yet: the ids in each, by the id it went under, for the upstream's `rhizome/committed`
    /// that may come before the write commits (see [`Link::expand_folds`]).
    folds_writing: HashMap<ActionId, Vec<ActionId>>,
    /// Ids that the upstream's `rhizome/committed` named and that were no fold known here: one
    /// may be a fold whose `logux/processed` is still to come (see [`RelayAnswer::committed`]).
    named_early: HashSet<ActionId>,
    /// The upstream of the last connection relays further (see [`Session::upstream_relays`]).
    upstream_relays: bool,
    /// The actions sent on this connection and not answered yet: the id each went under, and
    /// the lowest position it carries (see [`Uplink::answered`]).
    awaiting: HashMap<ActionId, Position>,
    /// CRDT objects to correct: the upstream refused one of their deltas (see
    /// [`rhizome_store::ObjectReset`]); each is asked for on every connection until done.
    /// With the number of undos of the object's deltas so far: a correction written before
    /// the last of them may have kept what it refused, and is not the end of it.
    resets: BTreeMap<String, u64>,
    /// The cursor write in flight, if any, and the position it writes.
    cursor_write:
        Option<(oneshot::Receiver<Result<rhizome_store::Committed, crate::writer::WriteFailed>>, Position)>,
    /// The last cursor position written (or being written).
    cursor_written: Position,
}

/// One open connection.
struct Session {
    ws: Ws,
    codec: Codec,
    time_fix: i64,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    /// `logux/subscribe` ids sent and not answered, with their channel.
    subscribing: HashMap<String, String>,
    /// Channels subscribed on this connection (or being subscribed).
    subscribed: HashSet<String>,
    /// Writes of what the upstream sent, in the order sent: each one's `sync`s are confirmed
    /// when it commits, so the link goes on relaying meanwhile.
    storing: VecDeque<Stored>,
    /// The upstream's subprotocol (from `connected`): that of its actions that name none.
    subprotocol: Option<u64>,
    /// The upstream relays what it takes to an upstream of its own (`"relays": true` in
    /// `connected`): its `logux/processed` is not the cloud's commit, and the authors here
    /// learn of that from the `rhizome/committed` it passes down (docs/edge.md).
    upstream_relays: bool,
    /// Objects whose state was asked for on this connection, with the `own_after` and
    /// `upstream_after` of their correction.
    state_requests: HashMap<String, (Position, Position)>,
    /// Ids of those requests, whose answers are not relayed actions', with their object's key.
    requests: HashMap<String, String>,
    /// Objects the upstream is correcting itself (it answered their request with
    /// [`UPSTREAM_CORRECTING`]): asked again at `ask_again_at`, or once the upstream sends a
    /// whole state of one.
    upstream_correcting: HashSet<String>,
    /// When to ask again for the state of `upstream_correcting`'s objects: a ping interval
    /// after the first such answer.
    ask_again_at: Option<Instant>,
    /// The cursor when an action the upstream confirmed was first seen waiting for its answer,
    /// and when (see [`Link::answers_overdue`]).
    answer_wait: Option<(Position, Instant)>,
    /// A write of what the upstream sent failed: what later writes took does not count (the
    /// upstream sends it all again from the failed one).
    write_failed: bool,
}

/// A write of received `sync`s in flight.
struct Stored {
    commit: oneshot::Receiver<Result<rhizome_store::Committed, crate::writer::WriteFailed>>,
    /// The `added` of each `sync` it holds, to confirm.
    added: Vec<u64>,
    /// The highest of them (or of earlier ones).
    highest: u64,
    /// Subscriptions it answered: their `since`, taken once it commits.
    since: Vec<UpstreamChannel>,
    /// Corrections of objects it does, each with the undos of the object it counts.
    resets: Vec<(String, u64)>,
    /// The folds it records (`relay_folds`), by the id each went under.
    folds: Vec<ActionId>,
    /// The actions this edge sent whose answers it holds, by the position each was sent at
    /// ([`Uplink::answered`] once it commits).
    answered: Vec<Position>,
}

/// How many link timeouts an action the upstream confirmed may wait for its answer, the
/// cursor not rising, before the connection starts again (see [`Link::answers_overdue`]).
const ANSWER_WAIT_TIMEOUTS: u32 = 3;

/// Writes of received `sync`s in flight at most: past it the link waits for the oldest.
const STORING_MAX: usize = 8;

impl Session {
    /// Sends `text`, giving up after `timeout` (more for a large frame): an upstream that stops
    /// reading (a hung process, a host whose kernel still acknowledges with a zero window)
    /// would otherwise block the link in this write for good, its `ping` never sent.
    async fn send(&mut self, text: String, timeout: Duration) -> Result<(), End> {
        let timeout = timeout + Duration::from_millis(text.len() as u64 / SEND_BYTES_PER_MS_MIN);
        match tokio::time::timeout(timeout, self.ws.send(WsMessage::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::retry(format!("sending: {e}"))),
            Err(_) => Err(End::retry("sending timed out: the upstream does not read")),
        }
    }
}

impl Link {
    fn set_status(&self, f: impl FnOnce(&mut LinkStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Connects, runs the session, and says how it ended.
    async fn connection(&mut self) -> End {
        let connecting = rhizome_io::websocket(&self.options.url);
        let ws = match tokio::time::timeout(self.options.timeout, connecting).await {
            Err(_) => return End::retry("connecting timed out"),
            Ok(Err(e)) => {
                let hint = retry_hint(&e);
                return End { reason: format!("connecting: {e}"), hint, stable: false, fatal: false };
            }
            Ok(Ok(ws)) => ws,
        };
        let mut session = match self.handshake(ws).await {
            Ok(session) => session,
            Err(end) => return end,
        };
        self.uplink.connected();
        self.upstream_relays = session.upstream_relays;
        // What was not answered is sent again, and answered under the ids it goes under then.
        self.awaiting.clear();
        self.folded.clear();
        // Those of writes that failed: sent again, and accepted again, on this connection.
        self.folds_writing.clear();
        self.set_status(|s| {
            s.connected_since_ms = Some(now_ms());
            s.connections += 1;
            s.awaiting_answers = 0;
        });
        tracing::info!(url = %self.options.url, from = self.uplink.confirmed(), "upstream link up");
        let (started, confirmed) = (Instant::now(), self.uplink.confirmed());
        let mut end = self.session(&mut session).await;
        self.took_after_end(&mut session).await;
        // Not merely the handshake: an upstream that ends every connection at once (an error
        // for the first `sync`, a limit lower than ours) would be reconnected to without
        // delay, for good.
        end.stable = self.uplink.confirmed() > confirmed || started.elapsed() >= self.options.backoff.max;
        let _ = tokio::time::timeout(Duration::from_secs(1), session.ws.close(None)).await;
        end
    }

    /// Sends `connect` and waits for `connected`.
    async fn handshake(&mut self, mut ws: Ws) -> Result<Session, End> {
        let sent_ms = now_ms();
        let connect = encode_connect(
            self.options.node.as_str(),
            self.received,
            self.options.token.as_deref(),
            self.shared.config.subprotocol,
        );
        let deadline = Instant::now() + self.options.timeout;
        match tokio::time::timeout_at(deadline, ws.send(WsMessage::text(connect))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(End::retry(format!("sending connect: {e}"))),
            Err(_) => return Err(End::retry("sending connect timed out")),
        }
        loop {
            let text = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(End::retry("no answer to connect")),
                Ok(None) => return Err(End::retry("closed during the handshake")),
                Ok(Some(Err(e))) => return Err(End::retry(format!("handshake: {e}"))),
                Ok(Some(Ok(WsMessage::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
            };
            match parse(text.as_str()) {
                Ok(Message::Connected { protocol, node_id, time: [start, end], options }) => {
                    if protocol < PROTOCOL {
                        return Err(End {
                            fatal: true,
                            ..End::retry(format!("upstream speaks protocol {protocol}"))
                        });
                    }
                    let Some(remote) = NodeId::parse(&node_id) else {
                        return Err(End::retry(format!("bad upstream node id {node_id:?}")));
                    };
                    let codec = Codec { base_time: end, local: self.options.node.clone(), remote };
                    let fix = time_fix(sent_ms, now_ms(), start, end);
                    return Ok(Session {
                        ws,
                        codec,
                        time_fix: fix,
                        last_rx: Instant::now(),
                        ping_sent: None,
                        subscribing: HashMap::new(),
                        subscribed: HashSet::new(),
                        storing: VecDeque::new(),
                        state_requests: HashMap::new(),
                        requests: HashMap::new(),
                        upstream_correcting: HashSet::new(),
                        ask_again_at: None,
                        answer_wait: None,
                        write_failed: false,
                        subprotocol: options.get("subprotocol").and_then(serde_json::Value::as_u64),
                        upstream_relays: options.get("relays") == Some(&serde_json::Value::Bool(true)),
                    });
                }
                Ok(Message::Error { kind, .. }) => {
                    let fatal = FATAL_ERRORS.contains(&kind.as_str());
                    return Err(End { fatal, ..End::retry(format!("upstream error {kind}")) });
                }
                Ok(_) => {}
                Err(e) => return Err(End::retry(format!("bad frame from the upstream: {e}"))),
            }
        }
    }

    /// Runs an authenticated connection until it ends.
    async fn session(&mut self, session: &mut Session) -> End {
        let mut committed = self.shared.committed.subscribe();
        let all: Vec<String> = self.channels.keys().cloned().collect();
        if let Err(end) = self.subscribe(session, all).await {
            return end;
        }
        if let Err(end) = self.request_states(session).await {
            return end;
        }
        loop {
            let waiting = match self.fill(session).await {
                Ok(waiting) => waiting,
                Err(end) => return end,
            };
            let ping_at = match session.ping_sent {
                Some(sent) => sent + self.options.timeout,
                None => session.last_rx + self.options.ping_interval,
            };
            let ask_again_at = session.ask_again_at;
            let cursor_written = async {
                match &mut self.cursor_write {
                    Some((rx, _)) => rx.await.is_ok_and(|r| r.is_ok()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = session.ws.next() => {
                    session.last_rx = Instant::now();
                    session.ping_sent = None;
                    let text = match frame {
                        None => return End::retry("the upstream closed the connection"),
                        Some(Err(e)) => return End::retry(format!("reading: {e}")),
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Close(frame))) => return End::retry(format!("closed by the upstream: {frame:?}")),
                        Some(Ok(_)) => continue,
                    };
                    if let Err(end) = self.received(session, text.as_str()).await {
                        return end;
                    }
                }
                Some(channel) = self.follow.recv() => {
                    let mut new = vec![channel];
                    while let Ok(more) = self.follow.try_recv() {
                        new.push(more);
                    }
                    if let Err(end) = self.follow_channels(session, new).await {
                        return end;
                    }
                }
                changed = committed.changed() => {
                    if changed.is_err() {
                        return End::retry("the server is stopping");
                    }
                }
                () = tokio::time::sleep(WAITING_POLL), if waiting => {}
                result = async { (&mut session.storing.front_mut().expect("one in flight").commit).await },
                    if !session.storing.is_empty() =>
                {
                    let Some(oldest) = session.storing.pop_front() else { continue };
                    if let Err(end) = self.stored(session, oldest, result).await {
                        return end;
                    }
                }
                ok = cursor_written => {
                    let written = self.cursor_write.take().map_or(0, |(_, p)| p);
                    if !ok {
                        // Tried again when the cursor rises next; a restart meanwhile sends
                        // the confirmed entries again, which the upstream answers as duplicates.
                        tracing::warn!(position = written, "the upstream cursor could not be written");
                    }
                    self.start_cursor_write().await;
                }
                () = tokio::time::sleep_until(ask_again_at.unwrap_or(ping_at)), if ask_again_at.is_some() => {
                    session.ask_again_at = None;
                    session.upstream_correcting.clear();
                    if let Err(end) = self.request_states(session).await {
                        return end;
                    }
                }
                () = tokio::time::sleep_until(ping_at) => {
                    if session.ping_sent.is_some() {
                        return End::retry("the upstream did not answer ping");
                    }
                    if self.answers_overdue(session) {
                        // Sent again on the next connection, where the upstream answers it
                        // with what it recorded.
                        return End::retry("the upstream did not answer an action it confirmed");
                    }
                    if let Err(end) = session.send(encode_ping(self.received), self.options.timeout).await {
                        return end;
                    }
                    session.ping_sent = Some(Instant::now());
                }
            }
        }
    }

    /// Follows `channels` upstream from now on (the log has them already, see [`Follow`]), from
    /// when each was first followed.
    async fn follow_channels(
        &mut self,
        session: &mut Session,
        channels: Vec<UpstreamChannel>,
    ) -> Result<(), End> {
        let mut names = Vec::with_capacity(channels.len());
        for UpstreamChannel { channel, since_id, since_time } in channels {
            self.channels.entry(channel.clone()).or_insert((since_id, since_time));
            names.push(channel);
        }
        let count = self.channels.len();
        self.set_status(|s| s.channels = count);
        self.subscribe(session, names).await
    }

    /// Sends `logux/subscribe` for those of `channels` not subscribed on this connection, with
    /// their `since`, in `sync`s whose `added` is 0 (they carry none of our log's entries).
    async fn subscribe(&mut self, session: &mut Session, channels: Vec<String>) -> Result<(), End> {
        let channels: Vec<String> =
            channels.into_iter().filter(|c| !session.subscribed.contains(c)).collect();
        for chunk in channels.chunks(SUBSCRIBES_PER_SYNC_MAX) {
            let mut frame = SyncBuilder::new();
            for channel in chunk {
                let mut action = serde_json::Map::new();
                action.insert("type".into(), "logux/subscribe".into());
                action.insert("channel".into(), channel.as_str().into());
                // Without an answer's id yet, from the time the channel was first followed: the
                // upstream does not know the id "" and goes by the time.
                if let Some((id, time)) = self.channels.get(channel) {
                    let id = id.as_deref().unwrap_or("");
                    let since = serde_json::json!({"id": id, "time": time - session.time_fix});
                    action.insert("since".into(), since);
                }
                let id = self.ids.next(now_ms());
                let json = serde_json::Value::Object(action).to_string();
                frame.push(&session.codec, &json, &id, id.ms - session.time_fix, None);
                session.subscribing.insert(id.text(), channel.clone());
                session.subscribed.insert(channel.clone());
            }
            let frame = frame.finish(0);
            session.send(frame, self.options.timeout).await?;
        }
        Ok(())
    }

    /// Handles one frame from the upstream, and the `sync`s already received after it.
    async fn received(&mut self, session: &mut Session, text: &str) -> Result<(), End> {
        let mut syncs = Vec::new();
        let mut ended = None;
        if let Some(sync) = self.frame(session, text).await? {
            syncs.push(sync);
            // More `sync`s already here (a catch-up): stored in the same write.
            while syncs.len() < RECEIVED_SYNCS_PER_WRITE_MAX {
                let Some(next) = session.ws.next().now_or_never() else { break };
                let text = match next {
                    // What came before the end is stored all the same (an upstream that
                    // answered, then went: its answers may not come again).
                    None => {
                        ended = Some(End::retry("the upstream closed the connection"));
                        break;
                    }
                    Some(Err(e)) => {
                        ended = Some(End::retry(format!("reading: {e}")));
                        break;
                    }
                    Some(Ok(WsMessage::Text(text))) => text,
                    Some(Ok(_)) => continue,
                };
                match self.frame(session, text.as_str()).await {
                    Ok(Some(sync)) => syncs.push(sync),
                    Ok(None) => {}
                    Err(end) => {
                        ended = Some(end);
                        break;
                    }
                }
            }
        }
        if !syncs.is_empty() {
            if let Err(end) = self.store_received(session, syncs).await {
                // Why the connection ended first (a fatal error from the upstream stays fatal).
                return Err(ended.unwrap_or(end));
            }
        }
        ended.map_or(Ok(()), Err)
    }

    /// Stores what `syncs` from the upstream carry, then confirms each with `synced`.
    async fn store_received(
        &mut self,
        session: &mut Session,
        syncs: Vec<(u64, Vec<WireEntry>)>,
    ) -> Result<(), End> {
        let mut batch = WriteBatch::default();
        let mut answers = Vec::new();
        let mut highest = self.received;
        for (added, entries) in &syncs {
            highest = highest.max(*added);
            for entry in entries {
                self.received_entry(session, entry, &mut batch, &mut answers).await;
            }
        }
        let answered = answers.iter().filter_map(|a| self.awaiting.remove(&a.target)).collect();
        if !answers.is_empty() {
            self.relay_answers(answers, &mut batch, session.upstream_relays).await?;
        }
        let folds = batch.relay_folds.iter().filter_map(|(id, _)| ActionId::parse(id)).collect();
        batch.cursors.push((UPSTREAM_RECEIVED.to_owned(), highest));
        let since = batch.upstream_channels.clone();
        let newly_refused = !batch.objects_to_reset.is_empty();
        for key in &batch.objects_to_reset {
            *self.resets.entry(key.clone()).or_default() += 1;
        }
        // A correction sees the undos of its own write (status changes go first).
        let resets = batch
            .object_resets
            .iter()
            .map(|r| (r.key.clone(), self.resets.get(&r.key).copied().unwrap_or(0)))
            .collect();
        let commit = self.shared.writer.write_unordered(batch).await;
        let added = syncs.iter().map(|(added, _)| *added).collect();
        session.storing.push_back(Stored { commit, added, highest, since, resets, answered, folds });
        if newly_refused {
            // Asked after the write that marks the refused deltas undone: the correction's
            // write comes after it.
            self.request_states(session).await?;
        }
        while session.storing.len() > STORING_MAX {
            let Some(mut oldest) = session.storing.pop_front() else { break };
            let result = (&mut oldest.commit).await;
            self.stored(session, oldest, result).await?;
        }
        Ok(())
    }

    /// A write of received `sync`s ended: once committed, its `sync`s are confirmed with
    /// `synced` (in the order received, as the writes commit in order) and the subscriptions
    /// it answered resume from their new `since`; a failed write ends the connection, and the
    /// upstream sends it all again.
    async fn stored(
        &mut self,
        session: &mut Session,
        stored: Stored,
        result: Result<
            Result<rhizome_store::Committed, crate::writer::WriteFailed>,
            oneshot::error::RecvError,
        >,
    ) -> Result<(), End> {
        let Ok(Ok(committed)) = result else {
            session.write_failed = true;
            return Err(End::retry("what the upstream sent could not be written"));
        };
        let (added, corrected) = self.took(stored, &committed).await;
        if corrected {
            // Those not done are asked for again.
            self.request_states(session).await?;
        }
        for added in added {
            session.send(encode_synced(added), self.options.timeout).await?;
        }
        Ok(())
    }

    /// What a committed write of received `sync`s changes here, whether or not the connection
    /// is still open: the subscriptions' `since`, what was received, the corrections done, and
    /// the cursor, for the answers it holds. Returns the `added` of its `sync`s, to confirm, and
    /// whether it held corrections.
    async fn took(&mut self, stored: Stored, committed: &rhizome_store::Committed) -> (Vec<u64>, bool) {
        let mut corrected = !stored.resets.is_empty();
        for key in &committed.resets_incomplete {
            // A whole state from the upstream that could not replace the object (marked to
            // correct in the same write).
            if !stored.resets.iter().any(|(k, _)| k == key) {
                *self.resets.entry(key.clone()).or_default() += 1;
                corrected = true;
            }
        }
        for (key, undos) in stored.resets {
            if !committed.resets_incomplete.contains(&key) && self.resets.get(&key) == Some(&undos) {
                self.resets.remove(&key);
            }
        }
        for id in &stored.folds {
            self.folds_writing.remove(id);
        }
        for UpstreamChannel { channel, since_id, since_time } in stored.since {
            self.channels.insert(channel, (since_id, since_time));
        }
        self.received = self.received.max(stored.highest);
        let received = self.received;
        self.set_status(|s| s.received = received);
        let rose = stored.answered.into_iter().filter_map(|p| self.uplink.answered(p)).last();
        let awaiting = self.uplink.unanswered();
        self.set_status(|s| s.awaiting_answers = awaiting);
        if let Some(confirmed) = rose {
            self.set_status(|s| s.confirmed = confirmed);
            self.shared.outbox_moved.notify_one();
            self.start_cursor_write().await;
        }
        (stored.added, corrected)
    }

    /// After a connection ended: the writes of what it received still in flight are waited for
    /// (each for at most the link's timeout), and what each committed counts (see
    /// [`Link::took`]); an upstream that answered and went at once may not send those answers
    /// again.
    async fn took_after_end(&mut self, session: &mut Session) {
        if session.write_failed {
            return;
        }
        while let Some(mut stored) = session.storing.pop_front() {
            match tokio::time::timeout(self.options.timeout, &mut stored.commit).await {
                Ok(Ok(Ok(committed))) => {
                    self.took(stored, &committed).await;
                }
                _ => return,
            }
        }
    }

    /// Whether an action the upstream confirmed has waited for its answer, with the cursor
    /// not rising, for [`ANSWER_WAIT_TIMEOUTS`] timeouts: an upstream that is alive answers at
    /// once, or when its `process` ends; one that lost the answer (it could not read its log)
    /// would hold the cursor, and the outbox, for good.
    fn answers_overdue(&self, session: &mut Session) -> bool {
        if !self.uplink.awaits_answer() {
            session.answer_wait = None;
            return false;
        }
        let cursor = self.uplink.confirmed();
        match session.answer_wait {
            Some((at, since)) if at == cursor => {
                since.elapsed() >= self.options.timeout * ANSWER_WAIT_TIMEOUTS
            }
            _ => {
                session.answer_wait = Some((cursor, Instant::now()));
                false
            }
        }
    }

    /// Asks the upstream for the state of each object to correct not asked for on this
    /// connection yet, taking the positions its correction starts from now (see
    /// [`rhizome_store::ObjectReset`]): every delta the upstream confirmed by now is in the state
    /// it reads once it gets the request, and every delta it sent before too.
    async fn request_states(&mut self, session: &mut Session) -> Result<(), End> {
        let keys: Vec<String> = self
            .resets
            .keys()
            .filter(|k| !session.state_requests.contains_key(*k) && !session.upstream_correcting.contains(*k))
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let own_after = self.uplink.confirmed();
        let upstream_after = *self.shared.committed.borrow();
        for chunk in keys.chunks(SUBSCRIBES_PER_SYNC_MAX) {
            let mut frame = SyncBuilder::new();
            for key in chunk {
                let json = serde_json::json!({"type": STATE_TYPE, "key": key}).to_string();
                let id = self.ids.next(now_ms());
                frame.push(&session.codec, &json, &id, id.ms - session.time_fix, None);
                session.requests.insert(id.text(), key.clone());
                session.state_requests.insert(key.clone(), (own_after, upstream_after));
            }
            session.send(frame.finish(0), self.options.timeout).await?;
        }
        Ok(())
    }

    /// The correction of the object at `key` with the upstream's state `action` (a
    /// [`STATE_TYPE`] answer), added to `batch`; nothing when it was not asked for on this
    /// connection.
    fn state_received(&mut self, session: &mut Session, action: &Action, batch: &mut WriteBatch) {
        let Some(key) = action.str_field("key") else { return };
        let Some((own_after, upstream_after)) = session.state_requests.remove(key) else { return };
        let upstream = if action.fields().contains_key("delta") {
            match rhizome_crdt::parse_delta(action.fields()) {
                Ok((_, state)) => Some(state),
                Err(e) => {
                    // Asked again on the next connection.
                    tracing::warn!(key, error = %e, "the upstream's state of an object does not decode");
                    return;
                }
            }
        } else {
            None
        };
        let channel = Channel::from(format!("crdt/{key}"));
        let entry = self.server_entry(Arc::from("{}"), Routing::channel(channel));
        batch.object_resets.push(rhizome_store::ObjectReset {
            key: key.to_owned(),
            upstream,
            own_after,
            upstream_after,
            entry,
        });
    }

    /// Adds what one received action means to `batch`: an entry to append, or the `since` of
    /// a subscription it answers.
    async fn received_entry(
        &mut self,
        session: &mut Session,
        entry: &WireEntry,
        batch: &mut WriteBatch,
        answers: &mut Vec<RelayAnswer>,
    ) {
        let Some(id) = session.codec.decode_id(&entry.meta.id) else {
            tracing::debug!(id = ?entry.meta.id, "an action with a bad id from the upstream; skipped");
            return;
        };
        let time = session.codec.decode_time(entry.meta.time) + session.time_fix;
        let action = &entry.action;
        let kind = action.kind();
        match kind {
            "logux/processed" | "logux/undo" => {
                let Some(target) = action.str_field("id") else { return };
                if let Some(key) = session.requests.remove(target) {
                    let reason = action.str_field("reason");
                    if kind == "logux/undo" && reason == Some(UPSTREAM_CORRECTING) {
                        // Its state may hold what its own upstream refused: asked again later.
                        tracing::debug!(key, "the upstream is correcting an object too");
                        session.state_requests.remove(&key);
                        session.upstream_correcting.insert(key);
                        let later = Instant::now() + self.options.ping_interval;
                        session.ask_again_at.get_or_insert(later);
                    } else if kind == "logux/undo" {
                        // Asked again on the next connection.
                        tracing::warn!(?reason, key, "the upstream refused a state request");
                    }
                    return;
                }
                let Some(channel) = session.subscribing.remove(target) else {
                    // The upstream's answer to an action this edge relayed.
                    if let Some(target) = rhizome_protocol::ActionId::parse(target) {
                        let undo = (kind == "logux/undo").then(|| action.clone());
                        // The ids folded into it share its answer. The cloud's commit may have
                        // been passed down first, naming only the fold's id (the upstream's
                        // answers to a `sync` wait for all of its actions; or this edge forgot
                        // the fold after a drop): the others are told now, and no record kept.
                        let committed = undo.is_none() && self.named_early.remove(&target);
                        if let Some((others, positions)) = self.folded.remove(&target) {
                            for other in &others {
                                answers.push(RelayAnswer {
                                    target: other.clone(),
                                    undo: undo.clone(),
                                    committed,
                                });
                            }
                            // The cloud committed all of it: its counter operations are final.
                            if committed {
                                batch.counter_ops_done.extend(positions.iter().copied());
                            }
                            // Kept while the upstream's own upstream may still refuse it.
                            if undo.is_none() && session.upstream_relays && !committed {
                                batch.relay_folds.push((target.text(), positions));
                                let mut ids = others;
                                ids.push(target.clone());
                                self.folds_writing.insert(target.clone(), ids);
                            }
                        }
                        answers.push(RelayAnswer { target, undo, committed: false });
                    }
                    return;
                };
                if kind == "logux/undo" {
                    let reason = action.str_field("reason").unwrap_or("?");
                    tracing::warn!(%channel, reason, "the upstream refused a subscription");
                    session.subscribed.remove(&channel);
                    return;
                }
                // Taken as the channel's `since` once this write commits (`Stored`).
                batch.upstream_channels.push(UpstreamChannel {
                    channel,
                    since_id: Some(id.text()),
                    since_time: time,
                });
                return;
            }
            k if k.starts_with("logux/") => return,
            // The upstream's own answer only (anyone's action could have this type there).
            STATE_TYPE if id.node == session.codec.remote => {
                return self.state_received(session, action, batch)
            }
            STATE_TYPE => return,
            _ => {}
        }
        let subprotocol =
            entry.meta.subprotocol.or(session.subprotocol).unwrap_or(self.shared.config.subprotocol);
        let meta = Meta { id: id.clone(), time, subprotocol };
        let mut routing = self.routing(action, &meta).await;
        // Whom the upstream addressed it to (entries for users, clients or nodes, which this
        // server's rules cannot always work out, such as a server's own).
        if let Some(targets) = &entry.meta.targets {
            routing.add_wire_targets(targets);
        }
        let delta = if kind == rhizome_crdt::DELTA_TYPE {
            match rhizome_crdt::parse_delta(action.fields()) {
                Ok((key, delta)) => {
                    let channel = Channel::from(format!("crdt/{}", key.as_str()));
                    if !routing.channels.contains(&channel) {
                        routing.channels.push(channel);
                    }
                    Some((key, delta))
                }
                Err(e) => {
                    // Not stored: this edge's clients would be sent a delta none can join.
                    tracing::warn!(id = %id, error = %e, "a crdt/delta from the upstream does not decode; skipped");
                    return;
                }
            }
        } else {
            None
        };
        // The upstream's word that the cloud committed actions: those this edge sent up folded
        // are named by the id of their fold there, and here by their own.
        let action_json = if kind == COMMITTED_TYPE && id.node.is_server() {
            let Expanded { json, folds, others, positions } = self.expand_folds(action).await;
            batch.counter_ops_done.extend(positions);
            // Committed by the cloud: never refused now, so no longer kept.
            for fold in folds {
                if let Some(id) = ActionId::parse(&fold) {
                    self.folds_writing.remove(&id);
                }
                batch.relay_folds_done.push(fold);
            }
            if self.named_early.len() + others.len() > NAMED_EARLY_MAX {
                self.named_early.clear();
            }
            self.named_early.extend(others.iter().filter_map(|id| ActionId::parse(id)));
            json
        } else {
            action.json().clone()
        };
        let new = NewEntry { id, time, action_json, subprotocol, routing, status: Status::Processed };
        let append = match delta {
            // The upstream's whole state (it corrected its object, or caught this edge up with
            // it) replaces the object here, as it replaced the upstream's (docs/edge.md).
            Some((key, state)) if rhizome_crdt::replaces(action.fields()) => {
                // The upstream is done correcting it, if it was.
                if session.upstream_correcting.remove(key.as_str())
                    && !batch.objects_to_reset.iter().any(|k| k == key.as_str())
                {
                    batch.objects_to_reset.push(key.as_str().to_owned());
                }
                Append::crdt_state(new, key, state)
            }
            // Joined even under an id logged here (its author sent it here too, and the
            // upstream applied its own copy), when it holds what this edge lacks.
            Some((key, delta)) => Append::crdt_delta(new, key, delta),
            None => Append::new(new),
        };
        batch.appends.push(append.from_upstream());
    }

    /// `notice`, a [`COMMITTED_TYPE`] from the upstream, naming each fold this edge sent up
    /// by the ids in it (in log order) rather than by the id it went under. A fold is read
    /// from the writes in flight or from the store; an id that is none is kept as it is, and so
    /// is a notice that cannot be read.
    async fn expand_folds(&self, notice: &Action) -> Expanded {
        let Some(ids) = notice.fields().get("ids").and_then(serde_json::Value::as_array) else {
            return Expanded { json: notice.json().clone(), ..Expanded::default() };
        };
        let ids: Vec<String> = ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect();
        let writing: Vec<Option<Vec<ActionId>>> = ids
            .iter()
            .map(|id| ActionId::parse(id).and_then(|id| self.folds_writing.get(&id).cloned()))
            .collect();
        let store = self.shared.store.clone();
        let expanded = rhizome_io::blocking(move || {
            let mut expanded: Vec<String> = Vec::with_capacity(ids.len());
            let mut folds = Vec::new();
            let mut others = Vec::new();
            // The positions of those this edge relayed: their counter operations can no longer
            // be refused.
            let mut positions = Vec::new();
            for (id, writing) in ids.into_iter().zip(writing) {
                if let Some(folded) = writing {
                    for id in &folded {
                        positions.extend(store.position_of_id(&id.text())?);
                    }
                    expanded.extend(folded.iter().map(ActionId::text));
                    folds.push(id);
                    continue;
                }
                match store.fold_of(&id)? {
                    Some(fold) => {
                        for position in fold {
                            if let Some((entry, _)) = store.own_entry(position)? {
                                expanded.push(entry.id.text());
                                positions.push(position);
                            }
                        }
                        folds.push(id);
                    }
                    None => {
                        positions.extend(store.position_of_id(&id)?);
                        others.push(id.clone());
                        expanded.push(id);
                    }
                }
            }
            Ok::<_, rhizome_store::StoreError>((expanded, folds, others, positions))
        })
        .await;
        match expanded {
            Ok(Ok((mut ids, folds, others, positions))) => {
                let mut seen = HashSet::new();
                ids.retain(|id| seen.insert(id.clone()));
                let json = Arc::from(serde_json::json!({"type": COMMITTED_TYPE, "ids": ids}).to_string());
                Expanded { json, folds, others, positions }
            }
            _ => {
                tracing::warn!("the folds a rhizome/committed from the upstream names could not be read");
                Expanded { json: notice.json().clone(), ..Expanded::default() }
            }
        }
    }

    /// What the upstream's answers to relayed actions mean here (docs/edge.md, two levels of
    /// acknowledgement): a `logux/processed` becomes `rhizome/committed` for the author's
    /// client, unless the upstream relays further (`upstream_relays`: its own notice comes
    /// down once the cloud commits); a `logux/undo` marks the entry undone here and goes to
    /// the author's client and the entry's channels, as an undo of this server's own would.
    /// Both are kept in the log, so an author that is away gets them when it connects.
    async fn relay_answers(
        &self,
        mut answers: Vec<RelayAnswer>,
        batch: &mut WriteBatch,
        upstream_relays: bool,
    ) -> Result<(), End> {
        let store = self.shared.store.clone();
        let targets: Vec<ActionId> =
            answers.iter().filter(|a| a.undo.is_some()).map(|a| a.target.clone()).collect();
        // The upstream's notice comes down once the cloud commits, to the sites that follow the
        // author's user; an author whose user this edge does not follow (no user part, or past
        // `channels_max`) is told now, at its upstream's level, and its counter operations are
        // no longer kept.
        let told_now = |a: &RelayAnswer| {
            a.undo.is_none()
                && !rhizome_core::uplink::is_taken_back(&a.target)
                && (!upstream_relays || a.committed || !self.follows_author(&a.target))
        };
        let fallback: Vec<ActionId> = if upstream_relays {
            answers.iter().filter(|a| told_now(a) && !a.committed).map(|a| a.target.clone()).collect()
        } else {
            Vec::new()
        };
        // The undone entries as logged here, if this edge relayed them (not received from the
        // upstream): their positions, routing and status. A delta may have been emptied by
        // snapshot cleaning since (an answer that came again, from the upstream's log, after
        // the cursor passed it). An undo of a fold the upstream accepted before (its own
        // upstream refused it since) undoes every delta in it: `folded_too` (the fold's record
        // may still be in a write in flight).
        let writing: HashMap<ActionId, Vec<ActionId>> = targets
            .iter()
            .filter_map(|target| self.folds_writing.get(target).map(|ids| (target.clone(), ids.clone())))
            .collect();
        let found = rhizome_io::blocking(move || {
            let mut found: HashMap<ActionId, (StoredEntry, Status)> = HashMap::new();
            let mut folded_too = Vec::new();
            let mut folds = Vec::new();
            for target in targets {
                let Some(position) = store.position_of_id(&target.text())? else { continue };
                if let Some(own) = store.own_entry(position)? {
                    found.insert(target.clone(), own);
                }
                let fold = match writing.get(&target) {
                    Some(ids) => {
                        let mut positions = Vec::with_capacity(ids.len());
                        for id in ids {
                            positions.extend(store.position_of_id(&id.text())?);
                        }
                        Some(positions)
                    }
                    None => store.fold_of(&target.text())?,
                };
                if fold.is_some() {
                    folds.push(target.text());
                }
                for position in fold.unwrap_or_default() {
                    if let Some(own) = store.own_entry(position)? {
                        if own.0.id != target {
                            folded_too.push((own.0.id.clone(), target.clone()));
                            found.insert(own.0.id.clone(), own);
                        }
                    }
                }
            }
            // The counter operations among them, to take back (their deltas are running totals
            // that later ones carry).
            let mut counter_ops = HashMap::new();
            for (id, (entry, _)) in &found {
                if let Some(op) = store.counter_op(entry.added)? {
                    counter_ops.insert(id.clone(), op);
                }
            }
            let mut told = Vec::new();
            for id in fallback {
                told.extend(store.position_of_id(&id.text())?);
            }
            Ok::<_, rhizome_store::StoreError>((found, folded_too, folds, counter_ops, told))
        })
        .await;
        let (found, folded_too, folds, counter_ops, told) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return Err(End::retry(format!("reading the log: {e}"))),
            Err(e) => return Err(End::retry(format!("reading the log: {e}"))),
        };
        // Refused: no longer kept.
        batch.relay_folds_done.extend(folds);
        batch.counter_ops_done.extend(told);
        for (id, fold) in folded_too {
            let undo = answers.iter().find(|a| a.target == fold).and_then(|a| a.undo.clone());
            answers.push(RelayAnswer { target: id, undo, committed: false });
        }
        let taken_back = rhizome_core::uplink::is_taken_back;
        // Per author, in the order of the answers (a map's order would change the log's from
        // one run to the next).
        let mut committed: Vec<(rhizome_protocol::ClientId, Vec<String>)> = Vec::new();
        let mut author_index: HashMap<rhizome_protocol::ClientId, usize> = HashMap::new();
        let mut denied_logged = false;
        let mut undone = HashSet::new();
        for answer in answers {
            let author = answer.target.client_id();
            if answer.undo.is_none() && !told_now(&answer) {
                continue;
            }
            let Some(undo) = answer.undo else {
                let i = *author_index.entry(author.clone()).or_insert_with(|| {
                    committed.push((author, Vec::new()));
                    committed.len() - 1
                });
                committed[i].1.push(answer.target.text());
                continue;
            };
            // Only an undo of what this edge relayed, once: the upstream also sends it undos
            // of others' actions addressed to a user it follows (they are its own answers to
            // those clients), and the same undo may come by two ways.
            let Some((entry, status)) = found.get(&answer.target) else {
                tracing::debug!(id = %answer.target, "an undo of an action this edge did not relay; skipped");
                continue;
            };
            if matches!(status, Status::Undone(_)) || !undone.insert(answer.target.clone()) {
                continue;
            }
            if undo.str_field("reason") == Some("denied") && !denied_logged {
                // Also what an upstream that does not make the link's user a peer answers.
                tracing::error!(id = %answer.target, "the upstream denied an action this edge took (is the link's user a peer there?)");
                denied_logged = true;
            }
            let reason = undo.str_field("reason").unwrap_or("error").to_owned();
            // The action as relayed: this edge's entry, or, emptied since, the undo's copy.
            let emptied = &*entry.action_json == "{}";
            let relayed: Arc<str> = match undo.fields().get("action") {
                Some(action) if emptied => Arc::from(action.to_string()),
                _ => entry.action_json.clone(),
            };
            // In its own words: a folded delta's undo names the id it went under.
            let json =
                Arc::from(crate::pipeline::undo_json(&answer.target, &relayed, &reason, &Default::default()));
            batch.statuses.push((entry.added, Status::Undone(reason)));
            // A refused counter operation is taken back, under its author, by its inverse: the
            // deltas of the author's later operations carry it in their running totals, so
            // leaving it out of the object would not be enough (docs/edge.md).
            if let Some(op) = counter_ops.get(&answer.target) {
                let logged = Action::from_json(&relayed)
                    .and_then(|action| rhizome_crdt::parse_delta(action.fields()).ok())
                    .map(|(_, delta)| delta);
                self.take_back(&answer.target, entry, op, logged, batch);
            }
            let mut routing = Routing {
                // An operation taken back is no client's (its undo corrects the object).
                clients: if taken_back(&answer.target) { Vec::new() } else { vec![author] },
                channels: entry.routing.channels.clone(),
                ..Routing::default()
            };
            // A refused CRDT delta is in this edge's object: it is corrected from the upstream's
            // state (docs/edge.md).
            if let Some(action) = Action::from_json(&relayed) {
                if action.kind() == rhizome_crdt::DELTA_TYPE {
                    if let Some(key) = action.str_field("key").filter(|_| emptied) {
                        routing.channels.push(Channel::from(format!("crdt/{key}")));
                    }
                    if let Some(key) = action.str_field("key") {
                        if !batch.objects_to_reset.iter().any(|k| k == key) {
                            batch.objects_to_reset.push(key.to_owned());
                        }
                    }
                }
            }
            batch.appends.push(Append::new(self.server_entry(json, routing)));
        }
        for (client, ids) in committed {
            let action = serde_json::json!({"type": COMMITTED_TYPE, "ids": ids}).to_string();
            let routing = Routing { clients: vec![client], ..Routing::default() };
            batch.appends.push(Append::new(self.server_entry(Arc::from(action), routing)));
        }
        Ok(())
    }

    /// Whether this edge follows upstream the user of `id`'s author (what is addressed to it
    /// comes down).
    fn follows_author(&self, id: &ActionId) -> bool {
        id.node
            .user_id()
            .is_some_and(|user| self.channels.contains_key(&format!("{USER_CHANNEL_PREFIX}{user}")))
    }

    /// Appends to `batch` the taking back of `op`, the counter operation of `id` (logged as
    /// `entry`, its delta `logged`) that the upstream refused: its inverse, applied under the
    /// same actor to totals that hold it, under
    /// [`rhizome_core::uplink::taken_back_id`]. It goes up like the author's operations, and to
    /// the object's subscribers and the author's devices. Its record is then done with.
    fn take_back(
        &self,
        id: &ActionId,
        entry: &StoredEntry,
        op: &rhizome_crdt::ops::Op,
        logged: Option<rhizome_crdt::Object>,
        batch: &mut WriteBatch,
    ) {
        batch.counter_ops_done.push(entry.added);
        // Taken back here: it no longer yields to a site's application (docs/edge.md).
        batch.applied_ops_done.push(entry.added);
        let (Some(back), Some(inverse)) =
            (rhizome_core::uplink::taken_back_id(id), rhizome_crdt::ops::inverse(op))
        else {
            return;
        };
        let actor = rhizome_core::actor::actor(&id.node, self.shared.site.get());
        let mut channels = entry.routing.channels.clone();
        let channel = Channel::from(format!("crdt/{}", op.key()));
        if !channels.contains(&channel) {
            channels.push(channel);
        }
        let new = NewEntry {
            time: now_ms(),
            id: back,
            action_json: Arc::from(serde_json::Value::Object(inverse.to_action()).to_string()),
            subprotocol: self.shared.config.subprotocol,
            routing: Routing { channels, clients: vec![id.client_id()], ..Routing::default() },
            status: Status::Processed,
        };
        batch.appends.push(Append::crdt_undo(new, op.clone(), actor, logged));
    }

    /// An action of this server's own.
    fn server_entry(&self, action_json: Arc<str>, routing: Routing) -> NewEntry {
        let id = self.shared.next_server_id();
        NewEntry {
            time: id.ms,
            id,
            action_json,
            subprotocol: self.shared.config.subprotocol,
            routing,
            status: Status::Processed,
        }
    }

    /// Who receives an action from the upstream here: what this server's rules route it to,
    /// judged as its author's.
    async fn routing(&self, action: &Action, meta: &Meta) -> Routing {
        let Some(rules) = self.shared.app.find_type(action.kind()) else {
            return Routing::default();
        };
        let ctx = Context {
            user_id: meta.id.node.user_id(),
            client_id: meta.id.client_id(),
            node_id: meta.id.node.clone(),
            subprotocol: meta.subprotocol,
            headers: Arc::default(),
        };
        match rules.resend(&ctx, action, meta).await {
            Ok(routing) => routing,
            Err(e) => {
                tracing::warn!(id = %meta.id, error = ?e, "resend failed for an action from the upstream");
                Routing::default()
            }
        }
    }

    /// Handles one frame from the upstream; a `sync` is returned, to be stored.
    async fn frame(
        &mut self,
        session: &mut Session,
        text: &str,
    ) -> Result<Option<(u64, Vec<WireEntry>)>, End> {
        match parse(text) {
            Ok(Message::Synced(0)) => Ok(None),
            Ok(Message::Synced(added)) => match self.uplink.synced(added) {
                Ok(confirmed) => {
                    self.set_status(|s| s.confirmed = confirmed);
                    self.shared.outbox_moved.notify_one();
                    self.start_cursor_write().await;
                    Ok(None)
                }
                Err(e) => Err(End::retry(e.to_string())),
            },
            Ok(Message::Sync { added, entries }) => Ok(Some((added, entries))),
            Ok(Message::Ping(_)) => {
                let pong = encode_pong(self.received);
                session.send(pong, self.options.timeout).await.map(|()| None)
            }
            Ok(Message::Error { kind, options }) => {
                let fatal = FATAL_ERRORS.contains(&kind.as_str());
                Err(End { fatal, ..End::retry(format!("upstream error {kind} {options:?}")) })
            }
            Ok(_) => Ok(None),
            Err(e) => Err(End::retry(format!("bad frame from the upstream: {e}"))),
        }
    }

    /// Sends `sync`s while the window has room and the log has entries to send. Returns
    /// whether it stopped at an action still being processed.
    async fn fill(&mut self, session: &mut Session) -> Result<bool, End> {
        while let Some(after) = self.uplink.next_read() {
            let committed = *self.shared.committed.borrow();
            if after >= committed {
                return Ok(false);
            }
            let store = self.shared.store.clone();
            let limit = self.options.sync_actions_max;
            let rows = match rhizome_io::blocking(move || store.read_from(after, limit)).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => return Err(End::retry(format!("reading the log: {e}"))),
                Err(e) => return Err(End::retry(format!("reading the log: {e}"))),
            };
            // The ids a site folded into the deltas it relayed here (in a chain): they go up
            // with them.
            let into = match (rows.first(), rows.last()) {
                (Some((first, _)), Some((last, _))) => {
                    let store = self.shared.store.clone();
                    let (from, to) = (first.added, last.added);
                    match rhizome_io::blocking(move || store.folded_into(from, to)).await {
                        Ok(Ok(into)) => into,
                        Ok(Err(e)) => return Err(End::retry(format!("reading the log: {e}"))),
                        Err(e) => return Err(End::retry(format!("reading the log: {e}"))),
                    }
                }
                _ => Vec::new(),
            };
            let mut folded_into: HashMap<Position, Vec<ActionId>> = HashMap::new();
            for (position, id) in into {
                if let Some(id) = ActionId::parse(&id) {
                    folded_into.entry(position).or_default().push(id);
                }
            }
            let subprotocol = self.shared.config.subprotocol;
            let fold = self.options.fold_crdt;
            let limits = (self.options.sync_bytes_max, fold);
            let chunk = Chunk::build(&rows, &folded_into, session, subprotocol, limits, &self.uplink);
            if self.folded.len() > FOLDED_KEPT_MAX {
                // Answers that never came (the connection ends when they are overdue): their
                // deltas are sent again, folded anew, on the next one.
                self.folded.clear();
            }
            for (id, others) in &chunk.folded {
                let positions = chunk.actions.iter().find(|(a, _)| a == id).map(|(_, p)| p.clone());
                self.folded.insert(id.clone(), (others.clone(), positions.unwrap_or_default()));
            }
            if let Some(frame) = chunk.frame {
                session.send(frame, self.options.timeout).await?;
                for (id, positions) in &chunk.actions {
                    self.awaiting.insert(id.clone(), positions[0]);
                }
                let actions = chunk.actions.into_iter().map(|(_, positions)| positions);
                self.uplink.sent(chunk.last_sent, chunk.through, actions);
                let awaiting = self.uplink.unanswered();
                self.set_status(|s| s.awaiting_answers = awaiting);
                self.set_status(|s| s.actions_sent += chunk.count as u64);
            } else {
                // Nothing to send up to `through`; with no rows at all, nothing up to what
                // the hub has routed (a gap, or deltas cleaned below the cursor).
                let through = if rows.is_empty() { committed } else { chunk.through };
                if let Some(confirmed) = self.uplink.skipped(through) {
                    self.set_status(|s| s.confirmed = confirmed);
                    self.shared.outbox_moved.notify_one();
                    self.start_cursor_write().await;
                }
            }
            if chunk.waiting {
                return Ok(true);
            }
            if rows.is_empty() {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Starts writing the cursor if it rose and no write is in flight: one write at a time,
    /// each with the latest confirmation, so a busy link costs at most one cursor row write per
    /// commit of the writer.
    async fn start_cursor_write(&mut self) {
        let confirmed = self.uplink.confirmed();
        if self.cursor_write.is_some() || confirmed <= self.cursor_written {
            return;
        }
        let rx = self.shared.writer.write_unordered(self.cursor_batch(confirmed)).await;
        self.cursor_write = Some((rx, confirmed));
        self.cursor_written = confirmed;
    }

    /// Writes the cursor and waits for it (at the end).
    async fn write_cursor(&mut self) {
        if let Some((rx, _)) = self.cursor_write.take() {
            let _ = rx.await;
        }
        let confirmed = self.uplink.confirmed();
        if confirmed > self.cursor_written {
            let _ = self.shared.writer.write_unordered(self.cursor_batch(confirmed)).await.await;
        }
    }

    /// The write of the cursor at `confirmed`: every entry up to it was answered. An upstream
    /// that does not relay further is the cloud, whose answers are final: the counter
    /// operations up to there can no longer be refused.
    fn cursor_batch(&self, confirmed: Position) -> WriteBatch {
        WriteBatch {
            cursors: vec![(UPSTREAM_SENT.to_owned(), confirmed)],
            counter_ops_through: (!self.upstream_relays).then_some(confirmed),
            ..WriteBatch::default()
        }
    }
}

/// One `sync` built from rows of the log.
struct Chunk {
    frame: Option<String>,
    count: usize,
    /// The position of its last action.
    last_sent: Position,
    /// The last position handled (sent, folded or skipped); rows after it are read again.
    through: Position,
    /// Reading stopped at an action still being processed.
    waiting: bool,
    /// With folding: the id each folded delta went under (its last), and the ids folded into it.
    folded: Vec<(ActionId, Vec<ActionId>)>,
    /// Each action sent: its id, and the positions it carries (its own, or those of the
    /// deltas folded into it), in log order.
    actions: Vec<(ActionId, Vec<Position>)>,
}

/// What goes into a `sync`, in order.
enum Part<'a> {
    /// An entry as logged.
    Entry(&'a StoredEntry),
    /// The join of one author's deltas of one object: the last of them, with the others
    /// joined into `delta`.
    Folded {
        last: &'a StoredEntry,
        key: String,
        delta: Box<rhizome_crdt::Object>,
        others: Vec<ActionId>,
        /// The positions of all of them, in log order.
        positions: Vec<Position>,
    },
}

impl Chunk {
    /// The next `sync` from `rows`: up to `bytes_max` of actions (at least one), stopping at an
    /// action still being processed. With `fold`, each author's deltas of one object in the
    /// chunk go as one delta under the last one's id, in its place (deltas join in any order,
    /// so sending the earlier ones late changes nothing but their number); the upstream still
    /// judges it as that author's. Not the first one's id: after a drop, a `sync` read again
    /// from the cursor may fold more deltas than the one the upstream committed, under an id it
    /// already has, which it would drop as a duplicate. An upstream that has the last one's id
    /// has every delta folded under it: each was sent no later, from the cursor on, and the
    /// upstream commits `sync`s in order.
    ///
    /// A delta goes with the ids of those folded into it (`folded` meta, docs/edge.md): those
    /// folded here, and those a site folded into the ones it relayed here (`folded_into`, by
    /// position), so that the upstream finds each by its own id.
    fn build(
        rows: &[(StoredEntry, Status)],
        folded_into: &HashMap<Position, Vec<ActionId>>,
        session: &Session,
        subprotocol: u64,
        (bytes_max, fold): (usize, bool),
        uplink: &Uplink,
    ) -> Chunk {
        let mut chunk = Chunk {
            frame: None,
            count: 0,
            last_sent: 0,
            through: 0,
            waiting: false,
            folded: Vec::new(),
            actions: Vec::new(),
        };
        let aliases = |entry: &StoredEntry| folded_into.get(&entry.added).map_or(0, Vec::len);
        let mut parts: Vec<Part<'_>> = Vec::new();
        // Index in `parts` of the folded delta of each (author, key).
        let mut groups: HashMap<(&NodeId, String), usize> = HashMap::new();
        let mut bytes = 0;
        for (entry, status) in rows {
            // Answered on an earlier connection: the upstream has its outcome (sent again, it
            // would be judged again).
            let forward =
                if uplink.is_answered(entry.added) { Forward::Skip } else { forward(&entry.id.node, status) };
            match forward {
                Forward::Skip => {}
                Forward::Wait => {
                    chunk.waiting = true;
                    break;
                }
                Forward::Send => {
                    let delta = if fold { folded_delta(entry) } else { None };
                    match delta {
                        Some((key, delta)) => match groups.get(&(&entry.id.node, key.clone())) {
                            Some(&at) => {
                                // The join grows by up to this delta (a set's elements, a list's
                                // values) and its id in `folded`: counted, so the `sync` keeps to
                                // its limit.
                                let grows = entry.action_json.len() + FOLDED_ID_BYTES * (1 + aliases(entry));
                                if bytes + grows > bytes_max {
                                    break;
                                }
                                bytes += grows;
                                if let Part::Folded { last, delta: joined, others, positions, .. } =
                                    &mut parts[at]
                                {
                                    if joined.join(&delta).is_ok() {
                                        others.push(last.id.clone());
                                        positions.push(entry.added);
                                        *last = entry;
                                    } else {
                                        bytes += META_BYTES_MAX;
                                        parts.push(Part::Entry(entry));
                                    }
                                }
                            }
                            None => {
                                let takes = entry.action_json.len()
                                    + META_BYTES_MAX
                                    + FOLDED_ID_BYTES * aliases(entry);
                                if !parts.is_empty() && bytes + takes > bytes_max {
                                    break;
                                }
                                bytes += takes;
                                groups.insert((&entry.id.node, key.clone()), parts.len());
                                parts.push(Part::Folded {
                                    last: entry,
                                    key,
                                    delta: Box::new(delta),
                                    others: Vec::new(),
                                    positions: vec![entry.added],
                                });
                            }
                        },
                        None => {
                            let takes =
                                entry.action_json.len() + META_BYTES_MAX + FOLDED_ID_BYTES * aliases(entry);
                            if !parts.is_empty() && bytes + takes > bytes_max {
                                break;
                            }
                            bytes += takes;
                            parts.push(Part::Entry(entry));
                        }
                    }
                    chunk.last_sent = entry.added;
                }
            }
            chunk.through = entry.added;
        }
        if parts.is_empty() {
            return chunk;
        }
        // In log order, a folded delta where its last one is.
        parts.sort_by_key(|part| match part {
            Part::Entry(entry) | Part::Folded { last: entry, .. } => entry.added,
        });
        let mut frame = SyncBuilder::new();
        for part in parts {
            let (entry, json, positions, others) = match part {
                Part::Entry(entry) => (entry, None, vec![entry.added], Vec::new()),
                Part::Folded { last, others, positions, .. } if others.is_empty() => {
                    (last, None, positions, others)
                }
                Part::Folded { last, key, delta, others, positions } => {
                    chunk.folded.push((last.id.clone(), others.clone()));
                    (last, Some(rhizome_crdt::delta_action(&key, &delta)), positions, others)
                }
            };
            let into = positions.iter().filter_map(|p| folded_into.get(p)).flatten();
            let extra = rhizome_protocol::folded_meta(&entry.id, others.iter().chain(into));
            chunk.actions.push((entry.id.clone(), positions));
            let time = entry.time - session.time_fix;
            let own = (entry.subprotocol != subprotocol).then_some(entry.subprotocol);
            let action = json.as_deref().unwrap_or(&entry.action_json);
            frame.push_with_meta(&session.codec, action, &entry.id, time, own, &extra);
        }
        chunk.count = frame.len();
        chunk.frame = Some(frame.finish(chunk.last_sent));
        chunk
    }
}

/// The key and delta of a logged `crdt/delta`, if `entry` is one.
fn folded_delta(entry: &StoredEntry) -> Option<(String, rhizome_crdt::Object)> {
    // A taking back goes up alone: the upstream takes it whatever the author may do now,
    // which must not cover the author's operations. So does a delta rejoined (under a
    // sequence only servers make): the upstream finds it by that id alone.
    if !entry.action_json.contains("\"crdt/delta\"") || rhizome_core::uplink::is_servers_seq(&entry.id) {
        return None;
    }
    let action = Action::from_json(&entry.action_json)?;
    if action.kind() != rhizome_crdt::DELTA_TYPE {
        return None;
    }
    let (key, delta) = rhizome_crdt::parse_delta(action.fields()).ok()?;
    Some((key.as_str().to_owned(), delta))
}

/// The `Retry-After` of a refused WebSocket upgrade (HTTP 503 or 429).
fn retry_hint(error: &WsError) -> Option<Duration> {
    match error {
        WsError::Http(response) => {
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after)
        }
        _ => None,
    }
}
