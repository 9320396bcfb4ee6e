//! Test support shared by the integration suites of several crates.
//!
//! [`Proxy`] stands between a client (or an edge's link) and a server over real TCP, and does
//! to the connections what a network does: drops them, swallows bytes on a dead link, stops
//! reading (a far end that hangs), or refuses connections for as long as an outage lasts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinSet;

/// A TCP proxy in front of a server whose connections a test can cut, as a network drop would,
/// freeze (bytes are swallowed, sockets stay open), as a dead link would, or refuse altogether
/// (an outage: open connections are cut and new ones closed at once).
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    pipes: Mutex<JoinSet<()>>,
    frozen: AtomicBool,
    /// Only what the server sends is swallowed.
    frozen_down: AtomicBool,
    stalled: AtomicBool,
    down: AtomicBool,
    /// Connections accepted and forwarded.
    connections: AtomicU64,
    /// Bytes forwarded from clients to the server.
    bytes_up: AtomicU64,
    /// Bytes forwarded from the server to clients.
    bytes_down: AtomicU64,
}

/// Copies `from` to `to`, swallowing what arrives while the proxy is frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, state: Arc<State>, up: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while state.stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.frozen.load(Ordering::Relaxed) || (!up && state.frozen_down.load(Ordering::Relaxed)) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let counter = if up { &state.bytes_up } else { &state.bytes_down };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), upstream).await
    }

    /// Starts forwarding to `upstream`, listening on `listen`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.down.load(Ordering::Relaxed) {
                    drop(client);
                    continue;
                }
                let state = shared.clone();
                let Ok(mut set) = shared.pipes.lock() else { return };
                set.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    state.connections.fetch_add(1, Ordering::Relaxed);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // Either direction ending ends both: the halves are dropped together.
                    tokio::select! {
                        () = pump(client_read, server_write, state.clone(), true) => {}
                        () = pump(server_read, client_write, state, false) => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, state, accept })
    }

    /// The WebSocket URL through the proxy.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Drops every open connection (both sides see the socket end abruptly).
    pub fn cut(&self) {
        if let Ok(mut set) = self.state.pipes.lock() {
            set.abort_all();
            *set = JoinSet::new();
        }
    }

    /// Swallows (`true`) or forwards (`false`) bytes on every connection, open or new: a dead
    /// link. When it comes back, the connections that lived through it are cut: TCP never
    /// delivers a stream with bytes missing in the middle, so a connection whose bytes were
    /// swallowed cannot go on (it would hand the far end later frames without earlier ones).
    pub fn freeze(&self, frozen: bool) {
        self.state.frozen.store(frozen, Ordering::Relaxed);
        if !frozen {
            self.cut();
        }
    }

    /// Swallows (`true`) or forwards (`false`) what the server sends on every connection, open
    /// or new, while what clients send still reaches it: the server's answers are lost. As with
    /// [`Proxy::freeze`], the connections that lived through it are cut when it ends.
    pub fn freeze_down(&self, frozen: bool) {
        self.state.frozen_down.store(frozen, Ordering::Relaxed);
        if !frozen {
            self.cut();
        }
    }

    /// Stops reading (`true`) or reads again (`false`) on every connection, open or new: what
    /// is sent piles up in the sockets' buffers until the sender blocks, as when the far end
    /// hangs (a process stopped, a host whose kernel still acknowledges with a zero window).
    pub fn stall(&self, stalled: bool) {
        self.state.stalled.store(stalled, Ordering::Relaxed);
    }

    /// An outage (`true`): open connections are cut and new ones closed as soon as they are
    /// accepted, until `false`.
    pub fn down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
        if down {
            self.cut();
        }
    }

    /// Connections forwarded so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes_up() + self.bytes_down()
    }

    /// Bytes forwarded so far from clients to the server.
    pub fn bytes_up(&self) -> u64 {
        self.state.bytes_up.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far from the server to clients.
    pub fn bytes_down(&self) -> u64 {
        self.state.bytes_down.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
