//! Rhizome's network layer: the WebSocket transport (Logux protocol 5), `GET /health`, the hub
//! that routes committed actions, the group-commit writer, JWT authentication and config rules.
//!
//! [`Server::start`] runs a server in the current tokio runtime and returns a handle.

pub mod config;
mod conn_map;
mod handshake;
mod http;
mod http_sync;
mod hub;
pub mod jwt;
pub mod link;
mod outbox;
mod park;
mod pipeline;
mod pull_cursors;
mod recent;
pub mod rules;
mod shared;
mod socket;
mod subscribers;
pub mod wakeup;
mod writer;
mod ws;

pub use hub::HubStats;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use rhizome_core::{App, HandshakeConfig, Limits};
use rhizome_protocol::NodeId;
use rhizome_store::{SqliteStore, Store, StoreError, WriteBatch};
use shared::Shared;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Everything needed to start a server.
#[derive(Debug)]
pub struct ServerOptions {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory of the SQLite log.
    pub data_dir: PathBuf,
    /// Our subprotocol.
    pub subprotocol: u64,
    /// Lowest client subprotocol accepted.
    pub min_subprotocol: u64,
    /// Development mode.
    pub development: bool,
    /// Limits.
    pub limits: Limits,
    /// Application rules and authenticator.
    pub app: App,
    /// Push wake-ups.
    pub wakeups: wakeup::WakeupOptions,
    /// The upstream this server is an edge of (docs/edge.md), if any.
    pub upstream: Option<link::UpstreamOptions>,
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log could not be opened.
    #[error("opening the log: {0}")]
    Store(#[from] StoreError),
    /// The address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
    /// The VAPID key could not be read or made.
    #[error("VAPID key: {0}")]
    Vapid(String),
    /// Another server runs on the same data directory.
    #[error("the data directory {0} is in use by another rhizome server")]
    Locked(std::path::PathBuf),
    /// The upstream link's node id cannot name this edge.
    #[error("upstream node: {0}")]
    Site(#[from] rhizome_core::actor::SiteError),
    /// The data directory ran without an upstream and its snapshot cleaning emptied CRDT
    /// deltas: made an edge, it would never send those operations upstream.
    #[error(
        "this data directory ran without an upstream, and snapshot cleaning dropped CRDT deltas \
         an upstream never got: start an edge with an empty data directory (docs/edge.md)"
    )]
    RanAlone,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    done: oneshot::Receiver<()>,
    /// An edge's link: it writes its last cursor when it stops, before the lock is released.
    link_task: Option<tokio::task::JoinHandle<()>>,
    /// `<data dir>/rhizome.lock`, locked for as long as this server runs: a second server on
    /// the same log would have a hub and a writer of its own.
    _lock: std::fs::File,
}

/// Takes the data directory's lock (released when the file is closed, or by the kernel when
/// the process dies).
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("rhizome.lock"))
        .map_err(StoreError::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Io(e).into()),
    }
}

fn random_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-";
    let mut random = rhizome_io::random_u64();
    (0..8)
        .map(|_| {
            let c = ALPHABET[(random % ALPHABET.len() as u64) as usize] as char;
            random /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

impl Server {
    /// Opens the log, starts the writer thread and the hub, and listens.
    pub async fn start(options: ServerOptions) -> Result<Server, StartError> {
        // An edge's CRDT dots name it by its link's client id (docs/edge.md).
        let site = match &options.upstream {
            Some(upstream) => Some(rhizome_core::actor::site(&upstream.node.client_id())?),
            None => None,
        };
        let lock = lock_data_dir(&options.data_dir)?;
        let store = SqliteStore::open(&options.data_dir)?;
        let mut writer = store.writer()?;
        let interrupted = rhizome_store::LogWriter::recover_interrupted(&mut writer)?;
        if interrupted > 0 {
            tracing::warn!(
                count = interrupted,
                "actions whose processing was interrupted by a crash are answered with undo `error`"
            );
        }
        let position = store.last_position()?;
        let mark = pull_cursors::LogMark { tag: rhizome_io::random_u64() };
        let vapid = wakeup::Vapid::load(&options.wakeups, &options.data_dir).map_err(StartError::Vapid)?;
        let wakeups = wakeup::Wakeups::new(options.wakeups, vapid, store.push_targets()?);
        let store: Arc<dyn Store> = Arc::new(store);
        let (writer_tx, writer_rx) = writer::queue();
        let (hub_tx, hub_rx) = mpsc::channel(4096);
        let config = HandshakeConfig {
            server_node: NodeId::from(format!("server:{}", random_id())),
            subprotocol: options.subprotocol,
            min_subprotocol: options.min_subprotocol,
            development: options.development,
            relays: options.upstream.is_some(),
        };
        let parking = park::Parking::start(tokio::runtime::Handle::current()).map_err(StartError::Thread)?;
        let shared = Arc::new(Shared::new(
            config,
            options.limits,
            options.app,
            store,
            writer_tx,
            hub_tx.clone(),
            parking,
            wakeups,
        ));
        shared.pull_cursors.set_mark(mark);
        let hub_for_writer = hub_tx.clone();
        if rhizome_io::is_simulated() {
            tokio::spawn(writer::run_task(writer, writer_rx, hub_for_writer));
        } else {
            std::thread::Builder::new()
                .name("rhizome-writer".into())
                .spawn(move || writer::run(writer, writer_rx, hub_for_writer))
                .map_err(StartError::Thread)?;
        }
        shared.committed.send_replace(position);
        tokio::spawn(hub::run(shared.clone(), position, hub_tx, hub_rx));

        // An edge's cursor exists before any client's action is committed: the store keeps the
        // CRDT deltas above it (docs/edge.md), which snapshot cleaning would empty otherwise.
        let mut link_task = None;
        if let Some(site) = site {
            let _ = shared.site.set(site);
        }
        if let Some(upstream) = options.upstream {
            if let Some(token) = &upstream.status_token {
                let _ = shared.status_token.set(token.clone());
            }
            // A log that ran alone is relayed from its start, but what cleaning emptied is
            // gone: refused rather than half sent.
            let store = shared.store.clone();
            let ran_alone = rhizome_io::blocking(move || {
                Ok::<_, StoreError>(
                    store.cursor(rhizome_store::UPSTREAM_SENT)?.is_none() && store.cleaned_any()?,
                )
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
            if ran_alone {
                return Err(StartError::RanAlone);
            }
            let batch = WriteBatch {
                cursors: vec![(rhizome_store::UPSTREAM_SENT.to_owned(), 0)],
                ..WriteBatch::default()
            };
            if !matches!(shared.writer.write_unordered(batch).await.await, Ok(Ok(_))) {
                return Err(StartError::Store(StoreError::Io(std::io::Error::other(
                    "the upstream cursor could not be written",
                ))));
            }
            let status = Arc::new(std::sync::Mutex::new(link::LinkStatus::default()));
            let store = shared.store.clone();
            let channels = rhizome_io::blocking(move || store.upstream_channels())
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
            let (follow, followed) = link::Follow::new(channels, upstream.channels_max);
            let _ = shared.upstream_follow.set(follow);
            let _ = shared.link_status.set(status.clone());
            tokio::spawn(link::measure_outbox(shared.clone(), upstream.clone()));
            link_task = Some(tokio::spawn(link::run(shared.clone(), upstream, status, followed)));
        }

        let listener = rhizome_io::Listener::bind(options.listen)
            .await
            .map_err(|source| StartError::Bind { addr: options.listen, source })?;
        let addr =
            listener.local_addr().map_err(|source| StartError::Bind { addr: options.listen, source })?;
        let stop_rx = shared.stop.subscribe();
        tokio::spawn(tick(shared.clone()));
        tokio::spawn(wakeup::run(shared.clone()));
        let router = Router::new()
            .route("/health", get(health))
            .route("/v1/edge/status", get(link::status_endpoint))
            .route("/v1/push", post(http_sync::push))
            .route("/v1/pull", post(http_sync::pull))
            .route("/v1/push-config", get(wakeup::config_endpoint))
            .route("/v1/push-target", put(wakeup::register_endpoint).delete(wakeup::unregister_endpoint))
            .fallback(upgrade)
            .with_state(shared.clone());
        let (done_tx, done) = oneshot::channel();
        let shared_for_accept = shared.clone();
        tokio::spawn(async move {
            let shared = shared_for_accept;
            http::accept(listener, router, stop_rx, shared.clone()).await;
            shared.outboxes.close_all(outbox::Closed::Shutdown);
            // Connections were told to close; wait for them to finish their in-flight writes.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while shared.open_connections() > 0 {
                if tokio::time::timeout_at(deadline, shared.some_connection_closed()).await.is_err() {
                    tracing::warn!(open = shared.open_connections(), "connections still open at shutdown");
                    break;
                }
            }
            shared.parking.stop();
            let _ = done_tx.send(());
        });
        tracing::info!(%addr, node = %shared.config.server_node, position, "rhizome listening");
        Ok(Server { addr, shared, done, link_task, _lock: lock })
    }

    /// The state of the link to the upstream, for an edge.
    pub fn link_status(&self) -> Option<link::LinkStatus> {
        self.shared.link_status.get().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's node id.
    pub fn node_id(&self) -> &NodeId {
        &self.shared.config.server_node
    }

    /// The CRDT object `key` as this server holds it (docs/crdt.md), if it has one.
    pub async fn object(&self, key: &str) -> Result<Option<rhizome_crdt::Object>, StoreError> {
        let (store, key) = (self.shared.store.clone(), key.to_owned());
        match rhizome_io::blocking(move || store.read_object(&key)).await {
            Ok(read) => Ok(read?.map(|(object, _)| object)),
            Err(e) => Err(StoreError::Io(std::io::Error::other(e.to_string()))),
        }
    }

    /// Connections parked off the runtime because they are quiet.
    pub fn parked_connections(&self) -> usize {
        self.shared.parking.len()
    }

    /// Counters of the push wake-ups.
    pub fn wakeup_stats(&self) -> wakeup::WakeupStats {
        self.shared.wakeups.stats()
    }

    /// Counters of the hub.
    pub async fn stats(&self) -> Option<HubStats> {
        let (tx, rx) = oneshot::channel();
        self.shared.hub.send(hub::HubMessage::Stats(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops accepting, closes every socket with 1001 after its in-flight writes, and returns
    /// when all connections are gone (or after 10 s).
    pub async fn shutdown(self) {
        self.shared.stop.send_replace(true);
        let _ = self.done.await;
        if let Some(link) = self.link_task {
            if tokio::time::timeout(Duration::from_secs(10), link).await.is_err() {
                tracing::warn!("the upstream link did not stop in time");
            }
        }
    }
}

/// Connection deadlines (pings, timeouts, parking) are checked when the earliest is due, and at
/// least this often (a deadline set meanwhile rings the ticker's alarm): a server whose
/// connections are all quiet wakes once in a while, not ten times a second.
const TICK_MAX: Duration = Duration::from_secs(5);

/// ... and at most this often: deadlines due within it are met together.
const TICK_MIN: Duration = Duration::from_millis(100);

/// Wakes the connections whose protocol deadline passed, until shutdown. A deadline set before
/// the next round rings the alarm, which brings the round forward.
async fn tick(shared: Arc<Shared>) {
    let alarm = shared.outboxes.alarm().clone();
    loop {
        let now = writer::now_ms();
        let Some(next) = shared.outboxes.wake_due(now) else { break };
        let wait_ms =
            next.saturating_sub(now).clamp(TICK_MIN.as_millis() as i64, TICK_MAX.as_millis() as i64);
        alarm.set(now + wait_ms);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            () = alarm.rung() => tokio::time::sleep(TICK_MIN).await,
        }
    }
}

/// The HTTP answer to a refused WebSocket handshake.
fn refused(refusal: handshake::Refusal) -> Response {
    match refusal {
        handshake::Refusal::NotWebSocket => (StatusCode::NOT_FOUND, "Not found\n").into_response(),
        handshake::Refusal::WrongVersion => (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "WebSocket version 13 only\n",
        )
            .into_response(),
        handshake::Refusal::MissingKey => {
            (StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing\n").into_response()
        }
    }
}

async fn health() -> &'static str {
    "Rhizome: OK\n"
}

/// Seconds a client refused for `connections_max` is asked to wait (`Retry-After`).
const BUSY_RETRY_AFTER_SECS: u32 = 2;

/// Answers a WebSocket handshake (RFC 6455, section 4.2) and hands the socket to [`ws::serve`].
/// Any other request that reaches this fallback is not found.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let headers: Vec<(&str, &[u8])> =
        request.headers().iter().map(|(name, value)| (name.as_str(), value.as_bytes())).collect();
    let handshake::Accepted { accept, cookie } = match handshake::check(request.method().as_str(), &headers) {
        Ok(accepted) => accepted,
        Err(refusal) => return refused(refusal),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (StatusCode::BAD_REQUEST, "This connection cannot be upgraded\n").into_response();
    };
    if !shared.try_open_connection() {
        // A client that honours the hint (`rhizome-client` does, with jitter on top) comes back
        // later instead of at once.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, BUSY_RETRY_AFTER_SECS.to_string())],
            "Too many connections\n",
        )
            .into_response();
    }
    // The session owns the slot from here: dropping it (also unpolled) gives the slot back.
    let session = ws::session(shared.clone(), peer.ip(), cookie);
    tokio::spawn(session.serve(on_upgrade));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
