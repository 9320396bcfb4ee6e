//! Test support: an in-process Rhizome server whose `inc` type counts how often each id is
//! processed, clients on temporary SQLite files, and an event collector.

use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use rhizome_client::{Backoff, Client, ClientOptions, Event};
use rhizome_core::{
    ActionType, App, AuthRequest, Authenticator, ChannelType, Context, HookError, Limits, Meta, Params,
    Routing,
};
use rhizome_protocol::Action;
use rhizome_server::{Server, ServerOptions};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

/// How long any wait may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// How often each action id was processed by the server.
pub type Processed = Arc<Mutex<HashMap<String, u32>>>;

/// Lets in every client whose token is not `bad`.
struct Tokens;

#[async_trait]
impl Authenticator for Tokens {
    async fn authenticate(&self, request: &AuthRequest) -> bool {
        request.token.as_deref() != Some("bad")
    }
}

/// `inc`: goes to `counter/<id>`; `process` counts the id.
struct Inc(Processed);

#[async_trait]
impl ActionType for Inc {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
    async fn resend(&self, _: &Context, action: &Action, _: &Meta) -> Result<Routing, HookError> {
        Ok(Routing::channel(format!("counter/{}", action.str_field("id").unwrap_or("default"))))
    }
    fn processes(&self) -> bool {
        true
    }
    async fn process(&self, _: &Context, _: &Action, meta: &Meta) -> Result<(), HookError> {
        let mut counts = self.0.lock().map_err(|_| HookError::Failed("poisoned".into()))?;
        *counts.entry(meta.id.text()).or_default() += 1;
        Ok(())
    }
}

/// `forbidden`: always denied.
struct Forbidden;

#[async_trait]
impl ActionType for Forbidden {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(false)
    }
}

/// `crdt/*` operations: always allowed (the server applies them to their object).
struct Crdt;

#[async_trait]
impl ActionType for Crdt {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
}

/// `counter/:id` and `crdt/*`: anyone may subscribe.
struct Counters;

#[async_trait]
impl ChannelType for Counters {
    async fn access(&self, _: &Context, _: &Params, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
}

/// A running server.
pub struct TestServer {
    server: Option<Server>,
    _dir: TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Process counts of `inc` ids.
    pub processed: Processed,
}

impl TestServer {
    /// Starts a server on a free port.
    pub async fn start() -> Result<TestServer> {
        Self::start_at("127.0.0.1:0".parse()?).await
    }

    /// Starts a server on `addr`.
    pub async fn start_at(addr: SocketAddr) -> Result<TestServer> {
        let processed = Processed::default();
        let app = App::new(Tokens)
            .action_type("inc", Inc(processed.clone()))
            .action_type("forbidden", Forbidden)
            .action_type("crdt/*", Crdt)
            .channel("counter/:id", Counters)
            .channel("crdt/*", Counters);
        let dir = tempfile::tempdir()?;
        let options = ServerOptions {
            listen: addr,
            data_dir: dir.path().into(),
            subprotocol: 1,
            min_subprotocol: 1,
            development: false,
            limits: Limits::default(),
            app,
        };
        let server = Server::start(options).await?;
        let addr = server.local_addr();
        Ok(TestServer { server: Some(server), _dir: dir, addr, processed })
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Subscriptions the server's hub holds.
    pub async fn subscriptions(&self) -> Result<usize> {
        let server = self.server.as_ref().ok_or_else(|| anyhow!("server stopped"))?;
        Ok(server.stats().await.ok_or_else(|| anyhow!("hub is gone"))?.subscriptions)
    }

    /// How many distinct ids were processed, and the largest count of one id.
    pub fn processed_counts(&self) -> (usize, u32) {
        let counts = self.processed.lock().map(|c| c.clone()).unwrap_or_default();
        (counts.len(), counts.values().copied().max().unwrap_or(0))
    }
}

/// Client options for tests: fast backoff, a fixed seed.
pub fn options(url: &str, path: &Path, user: &str) -> ClientOptions {
    let mut o = ClientOptions::new(url, path, user).token("good");
    o.backoff = Backoff { base: Duration::from_millis(20), max: Duration::from_millis(200) };
    o.seed = Some(1);
    o
}

/// Every event a client reported, collected by a task so the client never waits for us.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<Event>>>);

impl Collected {
    /// Starts collecting.
    pub fn start(mut events: rhizome_client::Events) -> Collected {
        let collected = Collected::default();
        let sink = collected.0.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Ok(mut all) = sink.lock() {
                    all.push(event);
                }
            }
        });
        collected
    }

    /// A copy of the events so far.
    pub fn all(&self) -> Vec<Event> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// How many events satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.0.lock().map(|e| e.iter().filter(|e| pred(e)).count()).unwrap_or(0)
    }
}

/// Polls `cond` every 10 ms until it holds, failing after [`WAIT`] with `what`.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if cond().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a client and collects its events.
pub async fn open(options: ClientOptions) -> Result<(Client, Collected)> {
    let (client, events) = Client::open(options).await.map_err(|e| anyhow!("open: {e}"))?;
    Ok((client, Collected::start(events)))
}

/// Waits until every action of `client` is answered (processed or undone).
pub async fn wait_drained(client: &Client) -> Result<()> {
    wait_until("the queue to drain", || async {
        let s = client.log_stats().await?;
        Ok(s.queued == 0 && s.awaiting_outcome == 0)
    })
    .await
}

/// A TCP proxy in front of a server whose connections the test can cut, as a network drop
/// would.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    pipes: Arc<Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let pipes: Arc<Mutex<tokio::task::JoinSet<()>>> = Arc::default();
        let set = pipes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if let Ok(mut set) = set.lock() {
                    set.spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Ok(Proxy { addr, pipes, accept })
    }

    /// The WebSocket URL through the proxy.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Drops every open connection (both sides see the socket end abruptly).
    pub fn cut(&self) {
        if let Ok(mut set) = self.pipes.lock() {
            set.abort_all();
            *set = tokio::task::JoinSet::new();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
