//! An offline-first Logux protocol 5 client with a durable local log.
//!
//! The app adds actions to a local SQLite log ([`Client::add`]); they are kept there while
//! offline, across restarts, and sent to the server whenever a connection is up, in bounded
//! `sync` chunks with a window of unanswered chunks. An action confirmed by the server's
//! `synced` (durable on the server) is never sent again, so a dropped connection resumes the
//! backlog at the first unconfirmed action, never from zero. An action sent twice (its
//! `synced` lost with the connection) is harmless: the server processes an id at most once.
//!
//! A background task owns the connection: it connects (token, subprotocol), corrects the
//! clock offset as the protocol defines (`timeFix`), answers `ping`, stores actions the server
//! sends and answers `synced`, re-subscribes with `since` after every reconnect, and
//! reconnects with exponential backoff and full jitter ([`Backoff`]), honouring an HTTP
//! `Retry-After` hint. The app may pass on the device's network status
//! ([`Client::set_online`]): offline, the connection is closed and not retried while actions
//! keep queueing; back online, it connects at once. What happens reaches the app as
//! [`Event`]s on a bounded channel.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rhizome_client::ClientError> {
//! use rhizome_client::{Client, ClientOptions, Event};
//! use serde_json::json;
//!
//! let options = ClientOptions::new("ws://127.0.0.1:31337", "alice.sqlite", "alice").token("secret");
//! let (client, mut events) = Client::open(options).await?;
//! client.subscribe("counter/1").await?;
//! client.add(json!({"type": "inc", "id": "1"})).await?; // queued durably, sent when online
//! while let Some(event) = events.recv().await {
//!     if let Event::Processed { id } = event {
//!         println!("{id} processed");
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Guarantees and limits
//! - An action returned by [`Client::add`] is committed to the local log (WAL,
//!   `synchronous=FULL` unless [`ClientOptions::durability`] says otherwise) and stays queued
//!   until the server's `synced` confirms it.
//! - Received actions are stored before `synced` is answered, and a copy received twice is
//!   delivered to the app once (the newest `received_keep_max` ids are remembered).
//! - The outcome (`logux/processed` / `logux/undo`) of an action whose `synced` arrived but
//!   whose answer was lost with the connection is not asked for again: the server holds it
//!   durably (and processes it at most once), and [`LogStats::awaiting_outcome`] counts such
//!   actions. Rhizome keeps the undo of a failed `process` in its log for the author, so such
//!   undos still arrive after a reconnect; a `logux/processed` does not. A copy re-sent while
//!   the server still processes the original is answered with `synced` only, so it is counted
//!   there too.
//! - Frames are bounded: [`ClientOptions::sync_actions_max`] actions and
//!   [`ClientOptions::sync_bytes_max`] bytes per `sync`, [`ClientOptions::inflight_syncs_max`]
//!   unanswered; the event channel holds [`ClientOptions::events_capacity`] events and a full
//!   one pauses the connection. The recorded undos are kept until the log is deleted.
//! - `ws://` and `wss://` URLs (TLS by rustls, with the webpki roots).
//! - With [`ClientOptions::fold_crdt`], runs of queued CRDT operations on one object are
//!   folded with `rhizome_crdt::ops::fold_queue` when they are first read for sending, and only
//!   operations never sent are folded (a `sent` mark is committed before the `sync` goes out).
//!   The folded operations keep the ids of the run's last rows; the dropped ids are reported
//!   as [`Event::Folded`]. Folding works within one chunk ([`ClientOptions::sync_actions_max`]).
//! - CRDT objects: every `crdt/delta` received (subscribe to `crdt/<key>`) is joined into the
//!   client's copy of the object, in the transaction that records the action, so
//!   [`Client::object`] survives restarts. Every delta is joined, even under an id received
//!   before (the server joins a commit's deltas for a subscriber into one carrying the last
//!   one's id, so that id may come again with more in it); joining is idempotent, so a copy
//!   changes nothing. The server sends an author no delta of its own
//!   operations, so when one of ours on a subscribed object is processed, the client
//!   subscribes to it again (with `seen`, the copy's version vector, when its kind has one)
//!   and joins what the server answers; one such subscription per object is in flight, and
//!   operations processed meanwhile ask for one more after it. After a reconnect the
//!   subscriptions renewed on connect bring the copies up to date the same way.
//! - One [`Client`] per SQLite file at a time: the file stays locked while it is open
//!   (SQLite's exclusive locking mode), so another process or client opening it waits 10 s,
//!   then fails.
//!
//! # Not yet
//! - The HTTP transport (Rhizome has none yet).
//! - Asking the server again for the outcome of actions counted in
//!   [`LogStats::awaiting_outcome`].

#![deny(missing_docs)]

mod driver;
mod error;
mod fold;
mod store;

pub use error::ClientError;
pub use rhizome_crdt::Object;
pub use rhizome_protocol::backoff::{parse_retry_after, Backoff, RETRY_HINT_MAX};
pub use rhizome_protocol::{ActionId, NodeId};
pub use store::{Durability, LogStats, Received, Since, Subscription, Undone};

use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
use tokio::sync::{mpsc, watch, Notify};

/// The prefix of CRDT action types and object channels.
const CRDT_PREFIX: &str = "crdt/";

/// How long [`Client::close`] waits for the background task before stopping it.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A source of wall-clock time in ms since the epoch, passed in so tests and simulators can
/// control it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in ms since the epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock (the simulation's on a thread that runs one, see `rhizome_io::simulate`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        rhizome_io::now_ms()
    }
}

/// How to open a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Server URL, `ws://host:port/`.
    pub url: String,
    /// The SQLite file of the local log (created if missing).
    pub path: PathBuf,
    /// The user id (the first part of the node id).
    pub user: String,
    /// The node id, `user:client:tab`; by default the one stored in the log, or a new random
    /// one on first open.
    pub node: Option<NodeId>,
    /// Sent in `connect`.
    pub token: Option<String>,
    /// The application's subprotocol, sent in `connect` (0 is not sent, as the protocol says).
    pub subprotocol: u64,
    /// Most actions in one outgoing `sync`.
    pub sync_actions_max: usize,
    /// Largest outgoing `sync` frame, in bytes (well under the server's frame limit, 16 MiB
    /// for Rhizome). A larger action is refused by [`Client::add`].
    pub sync_bytes_max: usize,
    /// Most `sync` messages sent and not yet answered with `synced`.
    pub inflight_syncs_max: usize,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Silence after which the client sends `ping`.
    pub ping_interval: Duration,
    /// How long an answer (`connected`, `synced`, `pong`) may take before the connection is
    /// dropped and opened again.
    pub timeout: Duration,
    /// Capacity of the event channel. A full channel pauses the connection (nothing is
    /// dropped); a client that never reads its events stops syncing.
    pub events_capacity: usize,
    /// What a crash may lose of the local log (default: nothing, even on power loss).
    pub durability: Durability,
    /// How many received action ids the log remembers to drop copies.
    pub received_keep_max: u64,
    /// Fold runs of queued CRDT operations on one object before they are first sent
    /// (`rhizome_crdt::ops::fold_queue`: a run of counter increments becomes one, a run of
    /// last-writer-wins writes becomes the last), reported as [`Event::Folded`]. Off by
    /// default: a folded-away id never gets `logux/processed`.
    pub fold_crdt: bool,
    /// Seed of the jitter's random generator; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Whether to connect once opened (the default). `false` opens the log only, as on a
    /// device without network, until [`Client::set_online`] says otherwise.
    pub online: bool,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl ClientOptions {
    /// Options with defaults: 500 actions and 1 MiB per `sync`, 8 `sync`s in flight, backoff 0.5 s…30 s,
    /// ping after 10 s, timeout 70 s (the protocol's defaults for the last two).
    pub fn new(url: impl Into<String>, path: impl Into<PathBuf>, user: impl Into<String>) -> Self {
        ClientOptions {
            url: url.into(),
            path: path.into(),
            user: user.into(),
            node: None,
            token: None,
            subprotocol: 1,
            sync_actions_max: 500,
            sync_bytes_max: 1 << 20,
            inflight_syncs_max: 8,
            backoff: Backoff::default(),
            ping_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(70),
            events_capacity: 1024,
            received_keep_max: 100_000,
            durability: Durability::PowerLoss,
            fold_crdt: false,
            seed: None,
            online: true,
            clock: Arc::new(SystemClock),
        }
    }

    /// Sets the token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// The connection's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Opening a socket or waiting for `connected`.
    Connecting,
    /// Authenticated; syncing.
    Connected,
    /// Waiting before the next attempt.
    Disconnected {
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// Not connecting: the app said the device is offline ([`Client::set_online`]).
    Offline,
    /// Stopped for good: closed by the app, or refused by the server with a fatal error
    /// (`wrong-protocol`, `wrong-subprotocol`, `wrong-credentials`).
    Stopped,
}

/// What the client reports to the app.
#[derive(Debug, Clone)]
pub enum Event {
    /// The server accepted the connection.
    Connected {
        /// The server's node id.
        server: NodeId,
        /// The clock offset, client clock minus server clock, ms.
        time_fix: i64,
    },
    /// The connection dropped or could not be opened.
    Disconnected {
        /// Why, for people.
        reason: String,
        /// The delay before the next attempt; `None` when the client stopped, or went offline
        /// ([`Client::set_online`], reason `offline`).
        retry_in: Option<Duration>,
    },
    /// An action from the server (another client's, or the server's), stored in the log.
    Action {
        /// The action.
        action: Value,
        /// Its id.
        id: ActionId,
        /// Its time, in the client's clock.
        time: i64,
    },
    /// The server processed one of our actions.
    Processed {
        /// Its id.
        id: ActionId,
    },
    /// The server undid one of our actions (recorded in the log, see [`Client::undone`]),
    /// possibly after it processed it: an edge whose upstream refused the action. Reported
    /// once per action.
    Undone {
        /// Its id.
        id: ActionId,
        /// The undo reason.
        reason: String,
        /// The undone action.
        action: Value,
    },
    /// With [`ClientOptions::fold_crdt`]: a queued CRDT operation was folded into a later
    /// one before it was ever sent. Its id will get no answer; `into`'s answer stands for it.
    /// Reported once, when the fold is written to the log.
    Folded {
        /// The operation that is no longer queued.
        id: ActionId,
        /// The queued operation that now carries its effect.
        into: ActionId,
    },
    /// The server sent `["error", kind, options]`.
    ServerError {
        /// The error type (`wrong-credentials`, `wrong-format`, …).
        kind: String,
        /// Its options.
        options: Option<Value>,
    },
}

/// Counters of this client instance since it was opened (not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Actions sent in `sync` messages (a re-send after a drop counts again).
    pub actions_sent: u64,
    /// Actions confirmed by `synced`.
    pub actions_acked: u64,
    /// `sync` messages of queued actions sent.
    pub syncs_sent: u64,
    /// Actions received from the server, copies included (answers to ours not counted).
    pub actions_received: u64,
    /// Connections opened (`connected` received).
    pub connections: u64,
}

/// State shared by the handle and the background task.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    wake: Notify,
    stats: Mutex<SessionStats>,
    clock: Arc<dyn Clock>,
}

impl Shared {
    /// Runs `f` on the log off the async runtime.
    pub(crate) async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, ClientError> {
        let shared = self.clone();
        rhizome_io::blocking(move || {
            let mut store = shared.store.lock().map_err(|_| ClientError::Poisoned)?;
            f(&mut store)
        })
        .await
        .map_err(|_| ClientError::Stopped)?
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut SessionStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(&mut stats);
        }
    }
}

/// A client: the handle the app uses. Dropping it stops the background task at once (as a
/// crash would: the log keeps everything); [`Client::close`] stops it politely.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    action_bytes_max: usize,
    node: NodeId,
    control: watch::Sender<driver::Want>,
    state: watch::Receiver<State>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The receiving end of a client's events.
pub type Events = mpsc::Receiver<Event>;

impl Client {
    /// Opens the local log and starts connecting in the background.
    pub async fn open(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let action_bytes_max = options.sync_bytes_max;
        if options.sync_actions_max == 0 || options.inflight_syncs_max == 0 || options.events_capacity == 0 {
            return Err(ClientError::Invalid(
                "sync_actions_max, inflight_syncs_max and events_capacity must be at least 1".into(),
            ));
        }
        let (path, user, node, received_keep_max, durability) = (
            options.path.clone(),
            options.user.clone(),
            options.node.clone(),
            options.received_keep_max,
            options.durability,
        );
        let store = rhizome_io::blocking(move || {
            let open = store::OpenOptions { user: &user, node: node.as_ref(), received_keep_max, durability };
            Store::open(&path, &open)
        })
        .await
        .map_err(|_| ClientError::Stopped)??;
        let node = store.node().clone();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            wake: Notify::new(),
            stats: Mutex::new(SessionStats::default()),
            clock: options.clock.clone(),
        });
        let (events_tx, events_rx) = mpsc::channel(options.events_capacity);
        let (control_tx, control_rx) =
            watch::channel(if options.online { driver::Want::Online } else { driver::Want::Offline });
        let (state_tx, state_rx) =
            watch::channel(if options.online { State::Connecting } else { State::Offline });
        let driver =
            driver::Driver::new(options, shared.clone(), node.clone(), events_tx, state_tx, control_rx);
        let span = tracing::info_span!("rhizome_client", node = %node);
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        Ok((
            Client { shared, action_bytes_max, node, control: control_tx, state: state_rx, task: Some(task) },
            events_rx,
        ))
    }

    /// This client's node id.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// Queues one action (a JSON object with a string `type`); returns its id once it is
    /// durable in the local log.
    pub async fn add(&self, action: Value) -> Result<ActionId, ClientError> {
        let mut ids = self.add_many(vec![action]).await?;
        ids.pop().ok_or(ClientError::Stopped)
    }

    /// Queues many actions in one transaction (one fsync).
    pub async fn add_many(&self, actions: Vec<Value>) -> Result<Vec<ActionId>, ClientError> {
        let mut texts = Vec::with_capacity(actions.len());
        for action in actions {
            if !matches!(action.get("type"), Some(Value::String(_))) {
                return Err(ClientError::Invalid(format!("an action needs a string type: {action}")));
            }
            let text = action.to_string();
            // Refused now rather than sent forever: a frame the server refuses would be sent
            // again after every reconnect.
            if text.len() + driver::META_BYTES_MAX + 32 > self.action_bytes_max {
                return Err(ClientError::Invalid(format!(
                    "an action of {} bytes is over sync_bytes_max",
                    text.len()
                )));
            }
            let object = match (action.get("type"), action.get("key")) {
                (Some(Value::String(kind)), Some(Value::String(key)))
                    if kind.starts_with(CRDT_PREFIX) && kind != rhizome_crdt::DELTA_TYPE =>
                {
                    Some(key.clone())
                }
                _ => None,
            };
            texts.push(store::NewAction { action: text, object });
        }
        let now = self.shared.clock.now_ms();
        let ids = self.shared.with_store(move |s| s.add(now, &texts)).await?;
        self.shared.wake.notify_one();
        Ok(ids)
    }

    /// Subscribes to `channel`: persisted, sent now if connected and again (with `since`)
    /// after every reconnect, until [`Client::unsubscribe`] or the server undoes it.
    pub async fn subscribe(&self, channel: &str) -> Result<(), ClientError> {
        let channel = channel.to_owned();
        self.shared.with_store(move |s| s.subscribe(&channel)).await?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Forgets a subscription. When connected, the server is sent `logux/unsubscribe`; when
    /// offline nothing needs sending (the server forgets subscriptions with the connection)
    /// and it is not renewed on reconnect. `false` when there was no such subscription.
    pub async fn unsubscribe(&self, channel: &str) -> Result<bool, ClientError> {
        let channel = channel.to_owned();
        let removed = self.shared.with_store(move |s| s.unsubscribe(&channel)).await?;
        self.shared.wake.notify_one();
        Ok(removed)
    }

    /// The persisted subscriptions.
    pub async fn subscriptions(&self) -> Result<Vec<Subscription>, ClientError> {
        self.shared.with_store(|s| s.subscriptions()).await
    }

    /// The CRDT object at `key` as this client holds it: the join of every `crdt/delta` the
    /// server sent it (subscribe to `crdt/<key>` to receive them), persisted with them in the
    /// log. `None` before the first delta. The client's own operations on the object count
    /// once the server processed them and sent the object again (see [`Event::Processed`]
    /// and the crate documentation); an unsubscribed object stays as it was last received.
    pub async fn object(&self, key: &str) -> Result<Option<Object>, ClientError> {
        let key = key.to_owned();
        self.shared.with_store(move |s| s.object(&key)).await
    }

    /// The keys of the CRDT objects this client holds, in order.
    pub async fn object_keys(&self) -> Result<Vec<String>, ClientError> {
        self.shared.with_store(|s| s.object_keys()).await
    }

    /// The undos recorded in the log.
    pub async fn undone(&self) -> Result<Vec<Undone>, ClientError> {
        self.shared.with_store(|s| s.undone()).await
    }

    /// The actions received from the server and kept in the log, after `after` (a
    /// [`Received::seq`], 0 for the oldest kept), oldest first, at most `limit`.
    pub async fn received(&self, after: u64, limit: usize) -> Result<Vec<Received>, ClientError> {
        self.shared.with_store(move |s| s.received(after, limit)).await
    }

    /// Counts of the local log.
    pub async fn log_stats(&self) -> Result<LogStats, ClientError> {
        self.shared.with_store(|s| s.stats()).await
    }

    /// Counters of this instance.
    pub fn session_stats(&self) -> SessionStats {
        self.shared.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// The connection's state, as a watch (wait for changes with `changed()`).
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Tells the client whether the device has a network, as the OS reports it. Offline closes
    /// the connection and stops reconnecting; actions keep queueing in the log. Back online, it
    /// connects at once, without waiting out a reconnect delay (a server's `Retry-After` still
    /// holds). Saying what the client already knows changes nothing; a closed client stays
    /// closed.
    pub fn set_online(&self, online: bool) {
        let wanted = if online { driver::Want::Online } else { driver::Want::Offline };
        self.control.send_if_modified(|want| {
            let change = *want != wanted && *want != driver::Want::Stop;
            if change {
                *want = wanted;
            }
            change
        });
    }

    /// Closes the connection politely and stops the background task (at once after
    /// [`CLOSE_WAIT`], e.g. when it waits for room in an event channel nobody reads).
    pub async fn close(mut self) {
        self.control.send_replace(driver::Want::Stop);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(CLOSE_WAIT, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
