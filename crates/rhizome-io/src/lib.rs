//! Rhizome's I/O seam: the wall clock, randomness, blocking work and sockets of the server and
//! the client go through here.
//!
//! By default everything is real: [`now_ms`] reads the system clock, [`random_u64`] draws from
//! the thread's RNG, [`blocking`] runs on tokio's blocking pool, [`connect`] and
//! [`Listener::bind`] use tokio's TCP sockets. A deterministic simulation calls [`simulate`] on
//! the thread that runs it (turmoil runs every simulated host on one thread): from then on,
//! on that thread only, time is the simulation's, randomness comes from its seed, blocking work
//! runs inline (so no other thread ever races the simulated hosts, and a crashed host's work
//! dies with its tasks) and sockets are the simulated network's. Production never calls
//! [`simulate`].
//!
//! The seam is a thread-local rather than a parameter threaded through every constructor: the
//! clock alone is read in some forty places of the server, most of them deep in per-connection
//! code, and a parameter missed in one of them would break determinism silently, where the
//! thread-local cannot be missed.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};

/// A boxed future, sendable between threads (tokio tasks require it).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream: a TCP socket, or a simulated one.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A simulated network: what [`connect`] and [`Listener::bind`] use under [`simulate`].
pub trait Network: Send + Sync + 'static {
    /// Opens a stream to `host:port`.
    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Box<dyn Io>>>;
    /// Listens on `addr`.
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listen>>>;
}

/// A simulated listening socket.
pub trait Listen: Send + Sync + 'static {
    /// The next connection, and its peer's address.
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn Io>, SocketAddr)>>;
    /// The address it listens on.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// What a simulation supplies.
pub struct Simulation {
    /// The simulated wall clock, ms since the Unix epoch.
    pub clock: Box<dyn Fn() -> i64>,
    /// The seed of every random draw on the thread.
    pub seed: u64,
    /// The simulated network.
    pub network: Arc<dyn Network>,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation").field("seed", &self.seed).finish_non_exhaustive()
    }
}

struct Simulated {
    clock: Box<dyn Fn() -> i64>,
    rng: RefCell<StdRng>,
    network: Arc<dyn Network>,
}

thread_local! {
    static SIMULATED: RefCell<Option<Rc<Simulated>>> = const { RefCell::new(None) };
}

fn simulated_state() -> Option<Rc<Simulated>> {
    SIMULATED.with(|s| s.borrow().clone())
}

/// The simulated network, under a simulation (an `Arc`: the thread's state cannot be held
/// across an await by a task that may move between threads).
fn simulated_network() -> Option<Arc<dyn Network>> {
    simulated_state().map(|simulated| simulated.network.clone())
}

/// Makes this thread's clock, randomness, blocking work and sockets those of `simulation`, until
/// [`end_simulation`].
pub fn simulate(simulation: Simulation) {
    let state = Simulated {
        clock: simulation.clock,
        rng: RefCell::new(StdRng::seed_from_u64(simulation.seed)),
        network: simulation.network,
    };
    SIMULATED.with(|s| *s.borrow_mut() = Some(Rc::new(state)));
}

/// Gives this thread its real clock, randomness and sockets back.
pub fn end_simulation() {
    SIMULATED.with(|s| *s.borrow_mut() = None);
}

/// Whether this thread runs a simulation.
pub fn is_simulated() -> bool {
    SIMULATED.with(|s| s.borrow().is_some())
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    match simulated_state() {
        Some(simulated) => (simulated.clock)(),
        None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
    }
}

/// A random number.
pub fn random_u64() -> u64 {
    match simulated_state() {
        Some(simulated) => simulated.rng.borrow_mut().gen(),
        None => rand::thread_rng().gen(),
    }
}

/// A seeded RNG of its own, for a component that draws many numbers (backoff jitter).
pub fn rng() -> StdRng {
    match simulated_state() {
        Some(_) => StdRng::seed_from_u64(random_u64()),
        None => StdRng::from_entropy(),
    }
}

/// Blocking work that panicked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("blocking work failed: {0}")]
pub struct BlockingFailed(String);

/// Runs `f`, which blocks (SQLite), off the async runtime: on tokio's blocking pool, or inline
/// under a simulation.
pub async fn blocking<R, F>(f: F) -> Result<R, BlockingFailed>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    if is_simulated() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| BlockingFailed(e.to_string()))
}

/// Opens a stream to `host:port` (TCP options left at the system's defaults, as
/// `tokio_tungstenite::connect_async` leaves them).
pub async fn connect(host: &str, port: u16) -> io::Result<Box<dyn Io>> {
    if let Some(network) = simulated_network() {
        return network.connect(host.to_owned(), port).await;
    }
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    Ok(Box::new(stream))
}

/// A client WebSocket opened by [`websocket`].
pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<Box<dyn Io>>>;

/// Opens a WebSocket to `url` (TLS for `wss://`) over [`connect`]: what the edge's link and
/// the client use.
pub async fn websocket(url: &str) -> Result<WebSocket, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let request = url.into_client_request()?;
    let uri = request.uri();
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    let stream = connect(&host, port).await?;
    let (ws, _) = tokio_tungstenite::client_async_tls(request, stream).await?;
    Ok(ws)
}

/// A listening socket.
pub enum Listener {
    /// A real one.
    Tcp(tokio::net::TcpListener),
    /// A simulated one.
    Simulated(Box<dyn Listen>),
}

/// An accepted connection.
pub enum Accepted {
    /// A real TCP socket.
    Tcp(tokio::net::TcpStream),
    /// A simulated stream.
    Simulated(Box<dyn Io>),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Tcp(listener) => listener.fmt(f),
            Listener::Simulated(_) => f.write_str("Listener::Simulated"),
        }
    }
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accepted::Tcp(stream) => stream.fmt(f),
            Accepted::Simulated(_) => f.write_str("Accepted::Simulated"),
        }
    }
}

impl Listener {
    /// Listens on `addr`.
    pub async fn bind(addr: SocketAddr) -> io::Result<Listener> {
        if let Some(network) = simulated_network() {
            return Ok(Listener::Simulated(network.bind(addr).await?));
        }
        Ok(Listener::Tcp(tokio::net::TcpListener::bind(addr).await?))
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<(Accepted, SocketAddr)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((Accepted::Tcp(stream), peer))
            }
            Listener::Simulated(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((Accepted::Simulated(stream), peer))
            }
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr(),
            Listener::Simulated(listener) => listener.local_addr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;

    impl Network for Nowhere {
        fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
            Box::pin(async move { Err(io::Error::other(format!("simulated: no route to {host}:{port}"))) })
        }
        fn bind(&self, _: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listen>>> {
            Box::pin(async { Err(io::Error::other("simulated: cannot bind")) })
        }
    }

    fn simulation(seed: u64) -> Simulation {
        Simulation { clock: Box::new(|| 42), seed, network: Arc::new(Nowhere) }
    }

    #[tokio::test]
    async fn a_simulated_thread_has_the_simulations_clock_randomness_and_network() {
        simulate(simulation(7));
        assert_eq!(now_ms(), 42);
        let first: Vec<u64> = (0..3).map(|_| random_u64()).collect();
        simulate(simulation(7));
        let again: Vec<u64> = (0..3).map(|_| random_u64()).collect();
        assert_eq!(first, again, "the same seed draws the same numbers");
        let thread = std::thread::current().id();
        let ran_on = blocking(move || std::thread::current().id()).await.expect("ran");
        assert_eq!(ran_on, thread, "blocking work runs inline");
        let refused = connect("cloud", 1).await.err().expect("the simulated network refuses");
        assert!(refused.to_string().contains("cloud:1"), "{refused}");
        end_simulation();
        assert!(now_ms() > 1_600_000_000_000, "the real clock is back");
        let ran_on = blocking(move || std::thread::current().id()).await.expect("ran");
        assert_ne!(ran_on, thread, "blocking work runs on the pool again");
    }

    #[test]
    fn another_thread_is_not_simulated() {
        simulate(simulation(1));
        let elsewhere = std::thread::spawn(|| (is_simulated(), now_ms())).join().expect("thread");
        assert!(!elsewhere.0);
        assert!(elsewhere.1 > 1_600_000_000_000);
        end_simulation();
    }
}
