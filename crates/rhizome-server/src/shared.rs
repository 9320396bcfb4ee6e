//! State shared by every task of one server: settings, the application, the store handles.

use crate::hub::HubMessage;
use crate::writer::{now_ms, WriteQueue};
use rhizome_core::{App, HandshakeConfig, Limits};
use rhizome_protocol::{ActionId, IdGenerator};
use rhizome_store::Store;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Everything the connection tasks, the hub and catch-up jobs share.
pub struct Shared {
    /// Handshake settings.
    pub config: Arc<HandshakeConfig>,
    /// Limits.
    pub limits: Arc<Limits>,
    /// The application rules.
    pub app: App,
    /// Reads of the log.
    pub store: Arc<dyn Store>,
    /// Writes to the log (group commit thread).
    pub writer: WriteQueue,
    /// The hub.
    pub hub: mpsc::Sender<HubMessage>,
    /// Turns to read for connections with `sync`s in flight (`Limits::backlog_readers_max`).
    pub backlog_readers: Arc<tokio::sync::Semaphore>,
    /// Ids of the server's own actions.
    ids: Mutex<IdGenerator>,
    /// Failed authentications per address, for the brute-force guard.
    auth_failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    /// Connection ids.
    next_conn: AtomicU64,
    /// Outboxes of the open connections.
    pub outboxes: crate::outbox::Outboxes,
    /// Quiet connections, parked off the runtime.
    pub parking: crate::park::Parking,
    /// Open WebSocket connections (handshake answered, socket not yet closed).
    open_connections: AtomicUsize,
    /// Notified whenever a connection closes.
    connection_closed: tokio::sync::Notify,
    /// The log position the hub has routed up to: HTTP long-polls wait for it to pass theirs.
    pub committed: tokio::sync::watch::Sender<u64>,
    /// What recent commits touched, for waiting long-polls.
    pub recent: crate::recent::RecentCommits,
    /// Push wake-ups of devices without a connection.
    pub wakeups: Arc<crate::wakeup::Wakeups>,
    /// Turns true when the server shuts down.
    pub stop: tokio::sync::watch::Sender<bool>,
    /// An edge's link (docs/edge.md): told each channel a client subscribes to, which the edge
    /// then follows upstream. Unset on a server without an upstream.
    pub upstream_follow: std::sync::OnceLock<crate::link::Follow>,
    /// An edge's site, the client id of its link: the dots of the operations it applies are
    /// its own actors (`rhizome_core::actor`). Unset on a server without an upstream.
    pub site: std::sync::OnceLock<rhizome_protocol::ClientId>,
    /// The token an edge's status endpoint requires, if any.
    pub status_token: std::sync::OnceLock<String>,
    /// An edge's link state, for the status endpoint.
    pub link_status: std::sync::OnceLock<Arc<Mutex<crate::link::LinkStatus>>>,
    /// An edge's outbox is at its limit: client actions are refused (`outboxFull`).
    pub outbox_full: std::sync::atomic::AtomicBool,
    /// An edge's upstream cursor moved: its outbox is measured again.
    pub outbox_moved: tokio::sync::Notify,
    /// How far HTTP clients' cursors are trusted.
    pub pull_cursors: crate::pull_cursors::PullCursors,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("node", &self.config.server_node).finish_non_exhaustive()
    }
}

impl Shared {
    /// Takes a connection slot; `false` when `connections_max` are open.
    pub fn try_open_connection(&self) -> bool {
        if self.open_connections.fetch_add(1, Ordering::AcqRel) >= self.limits.connections_max {
            self.open_connections.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives a connection slot back.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.connection_closed.notify_waiters();
    }

    /// Open connections.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Acquire)
    }

    /// Waits until a connection closes.
    pub async fn some_connection_closed(&self) {
        self.connection_closed.notified().await
    }

    /// Assembles the shared state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: HandshakeConfig,
        limits: Limits,
        app: App,
        store: Arc<dyn Store>,
        writer: WriteQueue,
        hub: mpsc::Sender<HubMessage>,
        parking: crate::park::Parking,
        wakeups: crate::wakeup::Wakeups,
    ) -> Self {
        let ids = IdGenerator::new(config.server_node.clone());
        Shared {
            config: Arc::new(config),
            backlog_readers: Arc::new(tokio::sync::Semaphore::new(limits.backlog_readers_max)),
            limits: Arc::new(limits),
            app,
            store,
            writer,
            hub,
            ids: Mutex::new(ids),
            auth_failures: Mutex::default(),
            next_conn: AtomicU64::new(1),
            outboxes: crate::outbox::Outboxes::default(),
            parking,
            open_connections: AtomicUsize::new(0),
            connection_closed: tokio::sync::Notify::new(),
            committed: tokio::sync::watch::Sender::new(0),
            recent: crate::recent::RecentCommits::default(),
            wakeups: Arc::new(wakeups),
            stop: tokio::sync::watch::Sender::new(false),
            upstream_follow: std::sync::OnceLock::new(),
            site: std::sync::OnceLock::new(),
            status_token: std::sync::OnceLock::new(),
            link_status: std::sync::OnceLock::new(),
            outbox_full: std::sync::atomic::AtomicBool::new(false),
            outbox_moved: tokio::sync::Notify::new(),
            pull_cursors: crate::pull_cursors::PullCursors::default(),
        }
    }

    /// A fresh id for an action of the server itself.
    pub fn next_server_id(&self) -> ActionId {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).next(now_ms())
    }

    /// Returns once the server is shutting down.
    pub async fn stopping(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `ip` has failed authentication too often recently.
    pub fn auth_blocked(&self, ip: IpAddr) -> bool {
        let mut map = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.limits.auth_failure_window;
        let Some(list) = map.get_mut(&ip) else {
            return false;
        };
        while list.front().is_some_and(|t| t.elapsed() > window) {
            list.pop_front();
        }
        if list.is_empty() {
            map.remove(&ip);
            return false;
        }
        list.len() >= self.limits.auth_failures_max
    }

    /// Counts a failed authentication from `ip`.
    pub fn auth_failed(&self, ip: IpAddr) {
        let mut map = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the table itself: under a flood from many addresses, forget the oldest.
        if map.len() > 100_000 {
            map.clear();
        }
        let list = map.entry(ip).or_default();
        list.push_back(Instant::now());
        if list.len() > self.limits.auth_failures_max * 4 {
            list.pop_front();
        }
    }
}
