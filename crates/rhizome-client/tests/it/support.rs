//! Test support: an in-process Rhizome server whose `inc` type counts how often each id is
//! processed, clients on temporary SQLite files, and an event collector.

use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use rhizome_client::{ActionId, Backoff, Client, ClientOptions, Event};
use rhizome_core::{
    ActionType, App, AuthRequest, Authenticator, ChannelType, Context, HookError, Limits, Meta, Params,
    Routing,
};
use rhizome_protocol::Action;
use rhizome_server::{Server, ServerOptions};
pub use rhizome_testkit::Proxy;
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

/// The `meta.time` (server clock) the server gave each processed `inc`.
pub type Times = Arc<Mutex<HashMap<String, i64>>>;

/// `inc`: goes to `counter/<id>`; `process` counts the id and records its time.
struct Inc(Processed, Times);

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
        if let Ok(mut times) = self.1.lock() {
            times.insert(meta.id.text(), meta.time);
        }
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

/// `notify`: delivered to the user named by its `to` (offline delivery by `users`).
struct Notify;

#[async_trait]
impl ActionType for Notify {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
    async fn resend(&self, _: &Context, action: &Action, _: &Meta) -> Result<Routing, HookError> {
        let to = action.str_field("to").unwrap_or("nobody");
        Ok(Routing { users: vec![to.into()], ..Routing::default() })
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
    dir: TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Process counts of `inc` ids.
    pub processed: Processed,
    /// Server-clock times of processed `inc` ids.
    pub times: Times,
}

impl TestServer {
    /// Starts a server on a free port.
    pub async fn start() -> Result<TestServer> {
        Self::start_at("127.0.0.1:0".parse()?).await
    }

    /// Starts a server on `addr`.
    pub async fn start_at(addr: SocketAddr) -> Result<TestServer> {
        Self::start_with(addr, Limits::default()).await
    }

    /// Starts a server on `addr` with `limits`.
    pub async fn start_with(addr: SocketAddr, limits: Limits) -> Result<TestServer> {
        let processed = Processed::default();
        let times = Times::default();
        let app = App::new(Tokens)
            .action_type("inc", Inc(processed.clone(), times.clone()))
            .action_type("forbidden", Forbidden)
            .action_type("notify", Notify)
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
            limits,
            app,
            wakeups: Default::default(),
            upstream: None,
        };
        let server = Server::start(options).await?;
        let addr = server.local_addr();
        Ok(TestServer { server: Some(server), dir, addr, processed, times })
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

    /// The status of every entry of the server's log (`0` waiting, `1` processed, `2` undone),
    /// read from its SQLite file.
    pub fn log_statuses(&self) -> Result<HashMap<String, i64>> {
        let path = self.dir.path().join("rhizome.db");
        let db = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = db.prepare("SELECT id, status FROM log")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Checks what a client's actions became on the server: every id is in the server's log
    /// (nothing lost) and none was processed twice. Waits for the processing of all of them;
    /// returns how many the server left `waiting` instead, each checked to be in its log,
    /// unprocessed. (Rhizome leaves an action `waiting` when the connection that committed it
    /// closes before `process` ran for it and its close drain times out: no connection
    /// processes it until the server restarts. That is the server's, not the client's.)
    pub async fn check_exactly_once(&self, ids: &[ActionId]) -> Result<usize> {
        let all = || async { Ok(self.processed_counts().0 == ids.len()) };
        if wait_until_within(Duration::from_secs(20), "every action to be processed", all).await.is_ok() {
            // Nothing else may be processed either.
            let (count, most) = self.processed_counts();
            if count != ids.len() || most != 1 {
                bail!("{count} ids processed, one of them {most} times");
            }
            return Ok(0);
        }
        let statuses = self.log_statuses()?;
        let processed = self.processed.lock().map(|p| p.clone()).unwrap_or_default();
        let mut stuck = 0;
        for id in ids {
            let text = id.text();
            match (statuses.get(&text), processed.get(&text)) {
                (None, _) => bail!("{id} is not in the server's log: lost"),
                (Some(_), Some(1)) => {}
                (Some(_), Some(n)) => bail!("{id} processed {n} times"),
                (Some(0), None) => stuck += 1,
                (Some(status), None) => bail!("{id} has status {status} but was never processed"),
            }
        }
        if processed.len() + stuck != ids.len() {
            bail!("{} ids processed, {stuck} waiting, of {}", processed.len(), ids.len());
        }
        eprintln!("note: the server left {stuck} committed actions waiting, never processed");
        Ok(stuck)
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
pub async fn wait_until<F, Fut>(what: &str, cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    wait_until_within(WAIT, what, cond).await
}

/// Polls `cond` every 10 ms until it holds, failing after `limit` with `what`.
pub async fn wait_until_within<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
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
