//! A Logux protocol 5 load generator, usable against any protocol 5 server, so Rhizome and the
//! reference `@logux/server` can be measured with the same tool.
//!
//! Producers send `{type:"inc", id}` actions in `sync` messages of `batch` actions, with at most
//! `window` unanswered per connection, and time each action from send to `logux/processed`.
//! Subscribers count what the channel delivers. `--idle` opens subscribed idle connections and
//! reports the server's memory per connection.

mod http;

use futures_util::{SinkExt, StreamExt};
use rhizome_protocol::message::{encode_connect, encode_synced};
use rhizome_protocol::{parse, ActionId, Codec, IdGenerator, Message, NodeId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Which counter producers increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChannelMode {
    /// Every producer its own `counter/<n>`.
    Own,
    /// All producers `counter/1` (what subscribers watch).
    Shared,
}

/// Flags of `rhizome bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server URL.
    #[arg(long, default_value = "ws://127.0.0.1:31337")]
    pub url: String,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Actions per producer.
    #[arg(long, default_value_t = 10_000)]
    pub actions: usize,
    /// Actions per `sync` message.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Most unanswered actions per producer.
    #[arg(long, default_value_t = 5_000)]
    pub window: usize,
    /// Own counter per producer, or one shared counter.
    #[arg(long, value_enum, default_value_t = ChannelMode::Own)]
    pub channel: ChannelMode,
    /// Extra connections subscribed to `counter/1`, counting deliveries.
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// Open this many idle subscribed connections instead, and report memory per connection.
    #[arg(long)]
    pub idle: Option<usize>,
    /// With `--idle`: how long the connections stay idle before memory is read, in seconds.
    #[arg(long, default_value_t = 2)]
    pub idle_secs: u64,
    /// Server process id, for memory figures.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Token sent in `connect`.
    #[arg(long, default_value = "bench")]
    pub token: String,
    /// Subprotocol sent in `connect`.
    #[arg(long, default_value_t = 1)]
    pub subprotocol: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Send CRDT counter increments (`crdt/counter/inc` on the object `bench/<counter>`)
    /// instead of `inc` actions (needs a server with CRDT rules; not with `--subscribers`).
    #[arg(long)]
    pub crdt: bool,
    /// Producers push over HTTP (`POST /v1/push`, one request of `--batch` actions in flight
    /// per connection) instead of a WebSocket. Rhizome only.
    #[arg(long)]
    pub http: bool,
    /// Opens this many idle HTTP clients, each holding a long-poll `POST /v1/pull` open, and
    /// reports the server's memory per client and its CPU while they wait (with `--pid`).
    #[arg(long)]
    pub idle_http: Option<usize>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// WebSocket failure.
    #[error("websocket: {0}")]
    Ws(Box<tokio_tungstenite::tungstenite::Error>),
    /// The server broke the protocol or refused us.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The run did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Reading /proc failed.
    #[error("reading server memory: {0}")]
    Memory(std::io::Error),
    /// A socket of the HTTP side failed.
    #[error("http: {0}")]
    Io(std::io::Error),
}

impl From<tokio_tungstenite::tungstenite::Error> for BenchError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        BenchError::Ws(Box::new(e))
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn random_part() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..8).map(|_| (b'a' + rng.gen_range(0..26)) as char).collect()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol 5 connection: handshake done, ids and times compressed for the server.
struct Client {
    ws: Ws,
    codec: Codec,
    ids: IdGenerator,
    added: u64,
}

impl Client {
    async fn connect(args: &BenchArgs, user: &str) -> Result<Client, BenchError> {
        let (mut ws, _) = tokio_tungstenite::connect_async(args.url.as_str()).await?;
        let node = NodeId::from(format!("{user}:{}:{}", random_part(), random_part()));
        ws.send(WsMessage::text(encode_connect(node.as_str(), 0, Some(&args.token), args.subprotocol)))
            .await?;
        loop {
            let Some(msg) = ws.next().await else {
                return Err(BenchError::Protocol("closed during handshake".into()));
            };
            let WsMessage::Text(text) = msg? else { continue };
            match parse(text.as_str()) {
                Ok(Message::Connected { node_id, time, .. }) => {
                    let codec =
                        Codec { base_time: time[1], local: node.clone(), remote: NodeId::from(node_id) };
                    return Ok(Client { ws, codec, ids: IdGenerator::new(node), added: 0 });
                }
                Ok(Message::Error { kind, options }) => {
                    return Err(BenchError::Protocol(format!("server error {kind} {options:?}")))
                }
                _ => {}
            }
        }
    }

    /// Encodes one `sync` with these actions; returns the frame and the full ids.
    fn sync(&mut self, actions: &[String]) -> (String, Vec<ActionId>) {
        let mut frame = String::with_capacity(actions.len() * 64 + 16);
        let mut ids = Vec::with_capacity(actions.len());
        let now = now_ms();
        for action in actions {
            let id = self.ids.next(now);
            frame.push(',');
            frame.push_str(action);
            frame.push(',');
            self.codec.encode_meta(&mut frame, &id, now, None);
            ids.push(id);
        }
        self.added += actions.len() as u64;
        (format!("[\"sync\",{}{}]", self.added, frame), ids)
    }
}

/// An id of our own actions, as `(ms, seq)`: the node is ours.
type Key = (i64, u64);

fn key(id: &ActionId) -> Key {
    (id.ms, id.seq)
}

/// The `(ms, seq)` of an id's text `"<ms> <node> <seq>"`, read without allocating.
fn key_of_text(text: &str) -> Option<Key> {
    let (ms, rest) = text.split_once(' ')?;
    let (_, seq) = rest.rsplit_once(' ')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Send times of the actions awaiting an answer, in the order they were sent. Ids of one
/// generator only grow, so an answer's id is found by binary search; answers mostly come in
/// order, so the answered front is dropped as it forms.
struct InFlight {
    sent: VecDeque<(Key, Option<Instant>)>,
    waiting: usize,
}

impl InFlight {
    fn with_capacity(capacity: usize) -> Self {
        InFlight { sent: VecDeque::with_capacity(capacity), waiting: 0 }
    }

    fn insert(&mut self, key: Key, at: Instant) {
        debug_assert!(self.sent.back().is_none_or(|(last, _)| *last < key), "ids grow");
        self.sent.push_back((key, Some(at)));
        self.waiting += 1;
    }

    /// The send time of `key`, if it is still waiting; it waits no more.
    fn remove(&mut self, key: &Key) -> Option<Instant> {
        let index = self.sent.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        let at = self.sent[index].1.take()?;
        self.waiting -= 1;
        while self.sent.front().is_some_and(|(_, at)| at.is_none()) {
            self.sent.pop_front();
        }
        Some(at)
    }

    fn len(&self) -> usize {
        self.waiting
    }
}

/// What one server frame told us.
#[derive(Default)]
struct Seen {
    processed: Vec<Key>,
    undone: Vec<Key>,
    incs: u64,
}

/// Handles one incoming frame: answers `sync` with `synced` and `ping` with `pong`.
async fn on_frame(client: &mut Client, text: &str, seen: &mut Seen) -> Result<(), BenchError> {
    match parse(text) {
        Ok(Message::Sync { added, entries }) => {
            for e in entries {
                match e.action.kind() {
                    "logux/processed" => {
                        seen.processed.extend(e.action.str_field("id").and_then(key_of_text))
                    }
                    "logux/undo" => seen.undone.extend(e.action.str_field("id").and_then(key_of_text)),
                    "inc" => seen.incs += 1,
                    _ => {}
                }
            }
            client.ws.send(WsMessage::text(encode_synced(added))).await?;
        }
        Ok(Message::Ping(_)) => {
            client.ws.send(WsMessage::text(format!("[\"pong\",{}]", client.added))).await?
        }
        Ok(Message::Error { kind, options }) => {
            return Err(BenchError::Protocol(format!("server error {kind} {options:?}")))
        }
        Ok(_) => {}
        Err(e) => return Err(BenchError::Protocol(format!("bad frame from server: {e}"))),
    }
    Ok(())
}

async fn next_text(client: &mut Client) -> Result<String, BenchError> {
    loop {
        match client.ws.next().await {
            None => return Err(BenchError::Protocol("connection closed".into())),
            Some(Ok(WsMessage::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(WsMessage::Close(f))) => {
                return Err(BenchError::Protocol(format!("closed by server: {f:?}")))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn subscribe(client: &mut Client, channel: &str) -> Result<(), BenchError> {
    let (frame, ids) = client.sync(&[format!("{{\"type\":\"logux/subscribe\",\"channel\":\"{channel}\"}}")]);
    client.ws.send(WsMessage::text(frame)).await?;
    let want = key(&ids[0]);
    loop {
        let text = next_text(client).await?;
        let mut seen = Seen::default();
        on_frame(client, &text, &mut seen).await?;
        if seen.undone.contains(&want) {
            return Err(BenchError::Protocol(format!("subscription to {channel} was undone")));
        }
        if seen.processed.contains(&want) {
            return Ok(());
        }
    }
}

struct ProducerResult {
    latencies_us: Vec<u64>,
    undone: usize,
}

async fn producer(
    args: Arc<BenchArgs>,
    index: usize,
    start: Arc<tokio::sync::Barrier>,
) -> Result<ProducerResult, BenchError> {
    let mut client = Client::connect(&args, &format!("p{index}")).await?;
    let counter = match args.channel {
        ChannelMode::Own => format!("p{index}"),
        ChannelMode::Shared => "1".to_owned(),
    };
    let action = if args.crdt {
        subscribe(&mut client, &format!("crdt/bench/{counter}")).await?;
        format!("{{\"type\":\"crdt/counter/inc\",\"key\":\"bench/{counter}\",\"by\":1}}")
    } else {
        subscribe(&mut client, &format!("counter/{counter}")).await?;
        format!("{{\"type\":\"inc\",\"id\":\"{counter}\"}}")
    };
    start.wait().await;
    let mut pending = InFlight::with_capacity(args.window * 2);
    let mut latencies_us = Vec::with_capacity(args.actions);
    let (mut sent, mut undone) = (0usize, 0usize);
    let batch: Vec<String> = vec![action; args.batch.max(1)];
    while latencies_us.len() + undone < args.actions {
        while sent < args.actions && pending.len() < args.window {
            let k = (args.actions - sent).min(args.batch.max(1)).min(args.window - pending.len());
            let (frame, ids) = client.sync(&batch[..k]);
            let t = Instant::now();
            for id in ids {
                pending.insert(key(&id), t);
            }
            client.ws.send(WsMessage::text(frame)).await?;
            sent += k;
        }
        let text = next_text(&mut client).await?;
        let mut seen = Seen::default();
        on_frame(&mut client, &text, &mut seen).await?;
        for id in seen.processed {
            if let Some(t) = pending.remove(&id) {
                latencies_us.push(t.elapsed().as_micros() as u64);
            }
        }
        for id in seen.undone {
            if pending.remove(&id).is_some() {
                undone += 1;
            }
        }
    }
    let _ = client.ws.close(None).await;
    Ok(ProducerResult { latencies_us, undone })
}

async fn subscriber(
    args: Arc<BenchArgs>,
    index: usize,
    expected: u64,
    start: Arc<tokio::sync::Barrier>,
    received: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let mut client = Client::connect(&args, &format!("s{index}")).await?;
    subscribe(&mut client, "counter/1").await?;
    start.wait().await;
    let mut got = 0;
    while got < expected {
        let text = next_text(&mut client).await?;
        let mut seen = Seen::default();
        on_frame(&mut client, &text, &mut seen).await?;
        got += seen.incs;
        received.fetch_add(seen.incs, Ordering::Relaxed);
    }
    let _ = client.ws.close(None).await;
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(BenchError::Memory)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BenchError::Memory(std::io::Error::other("no VmRSS")))
}

async fn idle(args: &BenchArgs, count: usize) -> Result<(), BenchError> {
    let pid = args.pid;
    let before = pid.map(rss_kib).transpose()?;
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        let wave = (count - i).min(100);
        let mut set = tokio::task::JoinSet::new();
        for j in 0..wave {
            let args = args.clone();
            set.spawn(async move {
                let mut c = Client::connect(&args, &format!("i{}", i + j)).await?;
                subscribe(&mut c, &format!("counter/i{}", i + j)).await?;
                Ok::<_, BenchError>(c)
            });
        }
        while let Some(r) = set.join_next().await {
            clients.push(r.map_err(|e| BenchError::Protocol(e.to_string()))??);
        }
        i += wave;
    }
    let connect_ms = t0.elapsed().as_millis();
    for second in 1..args.idle_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(pid) = pid {
            eprintln!("bench: idle after {second} s rss_kib={}", rss_kib(pid)?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pid.map(rss_kib).transpose()?;
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "bench: idle connections={count} connect_ms={connect_ms} rss_before_kib={b} rss_after_kib={a} kib_per_conn={:.2}",
            (a as f64 - b as f64) / count as f64
        ),
        _ => println!("bench: idle connections={count} connect_ms={connect_ms} (no --pid: memory not measured)"),
    }
    for mut c in clients {
        let _ = c.ws.close(None).await;
    }
    Ok(())
}

/// Runs the load generator and prints one `bench:` summary line.
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let limit = Duration::from_secs(args.timeout_secs);
    match tokio::time::timeout(limit, run_inner(args)).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::Timeout(limit)),
    }
}

async fn run_inner(args: BenchArgs) -> Result<(), BenchError> {
    if let Some(count) = args.idle {
        return idle(&args, count).await;
    }
    if let Some(count) = args.idle_http {
        return http::idle(&args, count).await;
    }
    if args.http && (args.subscribers > 0 || args.crdt) {
        return Err(BenchError::Protocol(
            "--http pushes inc actions only: use it without --subscribers and --crdt".into(),
        ));
    }
    if args.crdt && args.subscribers > 0 {
        return Err(BenchError::Protocol("--crdt counts no deliveries: use it without --subscribers".into()));
    }
    let args = Arc::new(args);
    let start = Arc::new(tokio::sync::Barrier::new(args.connections + args.subscribers + 1));
    let received = Arc::new(AtomicU64::new(0));
    let expected = match args.channel {
        ChannelMode::Shared => (args.connections * args.actions) as u64,
        ChannelMode::Own => 0,
    };
    let mut subs = tokio::task::JoinSet::new();
    for i in 0..args.subscribers {
        subs.spawn(subscriber(args.clone(), i, expected, start.clone(), received.clone()));
    }
    let mut producers = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        if args.http {
            let (args, start) = (args.clone(), start.clone());
            producers.spawn(async move {
                let r = http::producer(args, i, start).await?;
                Ok(ProducerResult { latencies_us: r.latencies_us, undone: r.undone })
            });
        } else {
            producers.spawn(producer(args.clone(), i, start.clone()));
        }
    }
    // A connection that fails while setting up never reaches the barrier: its error ends the
    // run instead of leaving everyone waiting.
    let failed_early = tokio::select! {
        _ = start.wait() => None,
        Some(r) = producers.join_next() => Some(r.map(|r| r.map(|_| ()))),
        Some(r) = subs.join_next() => Some(r),
    };
    if let Some(r) = failed_early {
        r.map_err(|e| BenchError::Protocol(e.to_string()))??;
        return Err(BenchError::Protocol("a connection ended before the start".into()));
    }
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    let mut undone = 0;
    while let Some(r) = producers.join_next().await {
        let r = r.map_err(|e| BenchError::Protocol(e.to_string()))??;
        latencies.extend(r.latencies_us);
        undone += r.undone;
    }
    let produce_secs = t0.elapsed().as_secs_f64();
    while let Some(r) = subs.join_next().await {
        r.map_err(|e| BenchError::Protocol(e.to_string()))??;
    }
    let all_secs = t0.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let processed = latencies.len();
    let deliveries = received.load(Ordering::Relaxed);
    println!(
        "bench: transport={} connections={} actions={} batch={} window={} channel={:?} crdt={} subscribers={} processed={processed} undone={undone} \
         secs={produce_secs:.3} actions/s={:.0} deliveries={deliveries} deliveries/s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        if args.http { "http" } else { "ws" },
        args.connections,
        args.actions,
        args.batch,
        args.window,
        args.channel,
        args.crdt,
        args.subscribers,
        processed as f64 / produce_secs,
        deliveries as f64 / all_secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
    if undone > 0 {
        return Err(BenchError::Protocol(format!("{undone} actions were undone")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_answers_are_taken_once_in_any_order() {
        let t = Instant::now();
        let mut pending = InFlight::with_capacity(4);
        for key in [(1, 0), (1, 1), (2, 0), (3, 0)] {
            pending.insert(key, t);
        }
        assert_eq!(pending.remove(&(2, 0)), Some(t), "out of order");
        assert_eq!(pending.remove(&(2, 0)), None, "answered twice counts once");
        assert_eq!(pending.remove(&(9, 9)), None, "not ours");
        assert_eq!(pending.len(), 3);
        assert_eq!(pending.remove(&(1, 0)), Some(t));
        assert_eq!(pending.remove(&(1, 1)), Some(t));
        // The answered front, (2, 0) included, is dropped.
        assert_eq!(pending.sent.len(), 1);
        pending.insert((4, 0), t);
        assert_eq!((pending.remove(&(3, 0)), pending.remove(&(4, 0))), (Some(t), Some(t)));
        assert_eq!((pending.len(), pending.sent.len()), (0, 0));
    }
}
