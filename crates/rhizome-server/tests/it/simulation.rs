//! Deterministic simulation of a cloud, two edges and their clients (turmoil): the real server
//! and the real client run as simulated hosts, over a simulated network, clock and randomness
//! (`rhizome_io::simulate`), each on real SQLite files of its own. A seed draws a schedule of
//! writes and faults: partitions lasting from minutes to weeks (edge from cloud, client from
//! edge), crashes and restarts of every node, held (delayed, then delivered at once) traffic and
//! varying latency. When the schedule is over the network heals, and the seed must end with:
//! - every plain action a client added (durably, on its device) in the log of the cloud and of
//!   both edges exactly once: nothing lost, nothing processed twice;
//! - the same CRDT objects (a counter, a set, a map with a counter) at the cloud, both edges
//!   and every client, each counter counting every increment added once (less those undone).
//! - every action a client added at an edge and that was not undone named by a
//!   `rhizome/committed` the client received (the cloud committed it), and none other.
//!
//! Odd seeds make a chain instead: edge2 is an edge of edge1 (cloud ← edge1 ← edge2), so what
//! edge2 relays and receives goes through edge1, and the cloud's refusals of dave's elements
//! and increments (taken by edge2, passed by edge1 to its own clients) must be corrected away,
//! or taken back, at both tiers.
//!
//! A device of an edge sometimes moves to the cloud (its edge often cut off meanwhile) and
//! back, writing at both: each server names the dots of the operations it applies after itself
//! (docs/edge.md), so none is lost. It moves once nothing it added waits for an answer but
//! increments of the counter and elements of the set, and often just after adding some and
//! losing its server: an operation in flight then reaches both servers in either order, and
//! must count once (docs/edge.md, "An operation in flight when its device moves"). Such an
//! action may be named by a `rhizome/committed` or not (the edge may never have taken it).
//!
//! Copies reach the servers as they do in the field: a crash or a cut between a commit and its
//! `synced` makes the sender send again what was already committed, so every seed that cuts or
//! crashes a node sends duplicates.
//!
//! `SIM_SEEDS=<n>` runs seeds 0 to n−1 (`<a>..<b>`: a to b−1); `SIM_SEED=<s>` replays one seed,
//! exactly: the same seed runs the same schedule and the same interleaving.

use crate::support::{sign, TestServer, SECRET};
use anyhow::{anyhow, bail, Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rhizome_client::{ActionId, Client, ClientOptions, Event};
use rhizome_io::{BoxFuture, Io, Listen, Network, Simulation};
use rhizome_protocol::backoff::Backoff;
use rhizome_protocol::NodeId;
use rhizome_server::link::UpstreamOptions;
use rhizome_server::wakeup::WakeupOptions;
use rhizome_server::{Server, ServerOptions};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::sync::Notify;

/// The port every server listens on.
const PORT: u16 = 31337;

/// The simulated wall clock starts here (2026-09-21), whatever the real date.
const EPOCH_MS: i64 = 1_790_000_000_000;

/// One simulation step. Messages between hosts move at step boundaries; within a host, timers
/// fire in order. Coarse steps make simulated weeks cheap; every timeout of the servers and
/// clients is several steps long (a connection's HTTP request comes two steps after it is
/// accepted, within the server's 10 s).
const TICK: Duration = Duration::from_secs(4);

/// How long the network may take to converge once healed.
const CONVERGE: Duration = Duration::from_secs(4 * 3600);

/// How edges and clients retry: soon at first, every five minutes at most through a long
/// partition.
const RETRY: Backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(300) };

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// The simulated network: turmoil's TCP.
struct Turmoil;

struct TurmoilListener(turmoil::net::TcpListener);

impl Network for Turmoil {
    fn connect(&self, host: String, port: u16) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listen>>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TurmoilListener(listener)) as Box<dyn Listen>)
        })
    }
}

impl Listen for TurmoilListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(Box<dyn Io>, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as Box<dyn Io>, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The servers: the cloud and its two edges.
const SERVERS: [&str; 3] = ["cloud", "edge1", "edge2"];

/// Whether `seed` makes a chain (cloud ← edge1 ← edge2) rather than two edges of the cloud.
fn chain(seed: u64) -> bool {
    seed % 2 == 1
}

/// The server that `server`'s link goes to, if it is an edge.
fn upstream_of(server: &str, chain: bool) -> Option<&'static str> {
    match server {
        "cloud" => None,
        "edge2" if chain => Some("edge1"),
        _ => Some("cloud"),
    }
}

/// The clients, and the server each one uses.
const CLIENTS: [(&str, &str); 5] =
    [("alice", "edge1"), ("bob", "edge1"), ("carol", "edge2"), ("dave", "edge2"), ("erin", "cloud")];

/// What a client is asked to add.
#[derive(Debug, Clone, Copy)]
struct Write {
    plain: usize,
    increments: usize,
    elements: usize,
    /// A message (`dm`) to the user of this client (the next one when it is the writer's own).
    message_to: Option<usize>,
    /// Whether each increment goes to the map's counter as well.
    map: bool,
}

/// What a client host shares with the test: its to-do list, what it added, what it holds.
#[derive(Debug, Default)]
struct Device {
    /// The server it uses now.
    at: &'static str,
    /// Where it is asked to go: it goes once nothing it added waits for an answer but
    /// increments of the counter and elements of the set (docs/edge.md: those count once
    /// whichever server hears of them first).
    move_to: Option<&'static str>,
    /// Of what it added, what it has heard no answer to yet (a crash may lose the event: then
    /// until nothing is queued), by id, with the action's type.
    unanswered: HashMap<String, String>,
    /// Ids that were in flight when it moved: the server it added them at may never have
    /// got them (the other took them).
    moved_in_flight: HashSet<String>,
    /// Its increments of the map's counter.
    map_increments: i64,
    /// Times it went elsewhere with something in flight.
    moves_in_flight: u64,
    /// How many times it went elsewhere.
    moves: u64,
    todo: VecDeque<Write>,
    /// Notified when there is something to do (or the test starts watching).
    wake: Rc<Notify>,
    /// Ids of the plain actions it added (each committed to its log when recorded).
    plain: Vec<String>,
    increments: i64,
    elements: Vec<String>,
    /// The messages it sent: (id, recipient user, text, the server it was at).
    messages: Vec<(String, &'static str, String, &'static str)>,
    /// Published by the host while the test watches.
    queued: Option<u64>,
    /// The messages (`dm`) in its log of received actions, as `(id, text)`; published too.
    received_messages: BTreeSet<(String, String)>,
    objects: HashMap<String, Value>,
    /// Its actions the server undid, with the reason (a server crash in the middle of
    /// processing undoes them with `error`; nothing else may).
    /// (An edge's undo of a relayed CRDT operation carries the delta it made of it: the
    /// action is the one added, found by its id.)
    undone: Vec<(Value, String)>,
    /// Every action it added, by id.
    added: HashMap<String, Value>,
    /// The server it was at when it added each action (it moves only once all are answered,
    /// so that server took it).
    added_at: HashMap<String, &'static str>,
    /// The ids that the `rhizome/committed` notices in its log of received actions name (the
    /// cloud committed them), each with the id of the first notice naming it (published).
    committed: BTreeMap<String, String>,
    /// The ids of its own actions undone, as the undos name them (published).
    undone_ids: BTreeSet<String>,
    /// Operations its client folded into a later one before sending them: their answer is
    /// that one's.
    folded_into: HashMap<String, String>,
}

/// What a server host publishes while the test watches.
#[derive(Debug, Default)]
struct Node {
    objects: HashMap<String, Value>,
    /// For an edge: what waits to go upstream.
    outbox: Option<u64>,
    connected: bool,
    starts: u64,
}

/// The objects every replica must agree on.
const OBJECTS: [&str; 3] = ["likes", "tags", "stats"];

fn token(user: &str) -> String {
    // Far in the future: the simulated weeks must not expire it.
    sign(SECRET, user, crate::support::now_secs() + 5 * 365 * 86_400)
}

/// Limits of the simulated servers: the tests' (`DEFAULT_LIMITS`), with time for a handshake
/// to take several steps.
const LIMITS: &str = r#"
frame_bytes_max = 65536
actions_per_sync_max = 100
unauthenticated_timeout_ms = 30000
"#;

/// The user whose access to the objects the cloud has revoked (its edge, not told, still lets
/// it write): the cloud refuses each element it adds to the set and each increment of the
/// map's counter, and its edge must correct its copies and its clients'; and each increment of
/// the counter, which its edge must take back (docs/edge.md).
const REVOKED: &str = "dave";

/// The objects whose writers the cloud's rules name (all but [`REVOKED`]).
const REVOKED_OBJECTS: [&str; 3] = ["tags", "likes", "stats"];

fn server_options(name: &str, upstream: Option<&str>, dir: &Path) -> Result<ServerOptions> {
    let (app, limits) = TestServer::edited_rules_with_peers(&["edge"], LIMITS, |rules| {
        if name != "cloud" {
            return rules.to_owned();
        }
        let allowed: Vec<String> = CLIENTS
            .iter()
            .map(|(user, _)| *user)
            .filter(|u| *u != REVOKED)
            .map(|u| format!("{u:?}"))
            .collect();
        let mut revoked = String::new();
        for key in REVOKED_OBJECTS {
            revoked.push_str(&format!(
                "[[channel]]\npattern = \"crdt/{key}\"\nsubscribe = \"everyone\"\nwrite = [{}]\n\n",
                allowed.join(", ")
            ));
        }
        revoked.push_str("[[channel]]\npattern = \"crdt/*\"");
        assert!(rules.contains("[[channel]]\npattern = \"crdt/*\""));
        rules.replacen("[[channel]]\npattern = \"crdt/*\"", &revoked, 1)
    })?;
    let upstream = upstream.map(|upstream| {
        let node = NodeId::from(format!("edge:{name}:link"));
        let mut link = UpstreamOptions::new(format!("ws://{upstream}:{PORT}/"), node, Some(token("edge")));
        link.backoff = RETRY;
        link.sync_actions_max = 100;
        link.timeout = Duration::from_secs(60);
        link.ping_interval = Duration::from_secs(30);
        link
    });
    Ok(ServerOptions {
        listen: SocketAddr::from(([0, 0, 0, 0], PORT)),
        data_dir: dir.to_owned(),
        subprotocol: 1,
        min_subprotocol: 1,
        development: false,
        limits,
        app,
        wakeups: WakeupOptions::default(),
        upstream,
    })
}

/// How often hosts publish what they hold once the test watches (after healing); before, they
/// publish nothing, which keeps the steps of long partitions cheap.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// A server host: starts on its data directory (again after each crash) and publishes what it
/// holds while the test watches.
async fn server_host(
    name: &'static str,
    upstream: Option<&'static str>,
    dir: PathBuf,
    node: Rc<RefCell<Node>>,
    watching: Rc<Cell<bool>>,
) -> turmoil::Result {
    let server = Server::start(server_options(name, upstream, &dir)?).await?;
    node.borrow_mut().starts += 1;
    loop {
        tokio::time::sleep(PUBLISH_EVERY).await;
        if !watching.get() {
            continue;
        }
        let mut objects = HashMap::new();
        for key in OBJECTS {
            // An empty object is no object (an edge whose set was corrected to nothing keeps it).
            if let Some(object) = server.object(key).await?.filter(|o| !o.is_bottom()) {
                objects.insert(key.to_owned(), object.to_json());
            }
        }
        let status = server.link_status();
        let mut node = node.borrow_mut();
        node.objects = objects;
        node.outbox = status.as_ref().map(|s| s.outbox.entries);
        node.connected = status.is_some_and(|s| s.connected_since_ms.is_some());
    }
}

/// A client host: opens its log (again after each crash), subscribes, carries out its to-do
/// list and publishes what it holds while the test watches.
async fn client_host(
    user: &'static str,
    path: PathBuf,
    seed: u64,
    device: Rc<RefCell<Device>>,
    watching: Rc<Cell<bool>>,
) -> turmoil::Result {
    loop {
        // After a crash, where it was: a move waits until nothing it added waits for an answer.
        let server = device.borrow().at;
        let options = ClientOptions::new(format!("ws://{server}:{PORT}/"), path.clone(), user);
        let mut options = options.token(token(user));
        options.node = Some(NodeId::from(format!("{user}:phone:app")));
        options.seed = Some(seed);
        options.fold_crdt = true;
        options.backoff = RETRY;
        let (client, events) = Client::open(options).await?;
        use_client(user, server, &client, events, &device, &watching).await?;
        client.close().await;
        let mut device = device.borrow_mut();
        if let Some(to) = device.move_to.take() {
            device.moves += 1;
            device.at = to;
        }
    }
}

/// Runs `client` at `server` until the device is asked to move and nothing it added waits for
/// an answer.
async fn use_client(
    user: &'static str,
    server: &'static str,
    client: &Client,
    mut events: rhizome_client::Events,
    device: &Rc<RefCell<Device>>,
    watching: &Cell<bool>,
) -> turmoil::Result {
    for channel in ["counter/x", "crdt/likes", "crdt/tags", "crdt/stats"] {
        client.subscribe(channel).await?;
    }
    let wake = device.borrow().wake.clone();
    let mut next_publish = tokio::time::Instant::now();
    loop {
        let moving = device.borrow().move_to.is_some_and(|to| to != server);
        if moving && device.borrow().todo.is_empty() {
            let queued = client.log_stats().await?.queued;
            let mut device = device.borrow_mut();
            if queued == 0 {
                device.unanswered.clear();
            }
            let movable = |t: &String| t == "crdt/counter/inc" || t == "crdt/set/add";
            if device.unanswered.values().all(movable) && (queued == 0 || !device.unanswered.is_empty()) {
                let in_flight: Vec<String> = device.unanswered.keys().cloned().collect();
                device.moves_in_flight += u64::from(!in_flight.is_empty());
                device.moved_in_flight.extend(in_flight);
                return Ok(());
            }
        }
        if !moving {
            // Asked to stay, or to go back before it left.
            device.borrow_mut().move_to = None;
        }
        // What the app was asked to do, each action recorded as soon as `add` returns: it is
        // then in the device's log (and no await comes between, so no crash either).
        let write = device.borrow_mut().todo.pop_front();
        if let Some(write) = write {
            let mut actions = Vec::new();
            for _ in 0..write.plain {
                actions.push(json!({"type": "inc", "id": "x"}));
            }
            let plain = actions.len();
            // Each increment of the counter goes to the map's counter as well, after them (so
            // that the client folds runs of each).
            for _ in 0..write.increments {
                actions.push(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1}));
            }
            for _ in 0..write.increments * usize::from(write.map) {
                actions.push(json!({"type": "crdt/map/inc", "key": "stats", "path": ["n"], "by": 1}));
            }
            let first_element = device.borrow().elements.len();
            let elements: Vec<String> =
                (0..write.elements).map(|i| format!("{user}-{}", first_element + i)).collect();
            for element in &elements {
                actions.push(json!({"type": "crdt/set/add", "key": "tags", "elem": element}));
            }
            let message = write.message_to.map(|to| {
                let to = if CLIENTS[to].0 == user { (to + 1) % CLIENTS.len() } else { to };
                (CLIENTS[to].0, format!("{user}-{}", device.borrow().messages.len()))
            });
            if let Some((to, text)) = &message {
                actions.push(json!({"type": "dm", "to": to, "text": text}));
            }
            let ids = client.add_many(actions.clone()).await?;
            let mut device = device.borrow_mut();
            let typed = ids
                .iter()
                .zip(&actions)
                .map(|(id, a)| (id.text(), a["type"].as_str().unwrap_or("").to_owned()));
            device.unanswered.extend(typed);
            device.added.extend(ids.iter().map(ActionId::text).zip(actions));
            device.added_at.extend(ids.iter().map(|id| (id.text(), server)));
            device.plain.extend(ids[..plain].iter().map(|id| id.text()));
            device.increments += write.increments as i64;
            if write.map {
                device.map_increments += write.increments as i64;
            }

            device.elements.extend(elements);
            if let (Some((to, text)), Some(id)) = (message, ids.last()) {
                device.messages.push((id.text(), to, text, server));
            }
            continue;
        }
        if watching.get() && tokio::time::Instant::now() >= next_publish {
            let queued = client.log_stats().await?.queued;
            let mut objects = HashMap::new();
            for key in OBJECTS {
                if let Some(object) = client.object(key).await?.filter(|o| !o.is_bottom()) {
                    objects.insert(key.to_owned(), object.to_json());
                }
            }
            let received = client.received(0, usize::MAX >> 1).await?;
            let received_messages: BTreeSet<(String, String)> = received
                .iter()
                .filter(|r| r.action["type"] == "dm")
                .map(|r| (r.id.clone(), r.action["text"].as_str().unwrap_or_default().to_owned()))
                .collect();
            let mut committed = BTreeMap::new();
            for notice in received.iter().filter(|r| r.action["type"] == "rhizome/committed") {
                for id in notice.action["ids"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                    committed.entry(id.to_owned()).or_insert_with(|| notice.id.clone());
                }
            }
            // The undos its log records (an event may be lost in a crash; the log is not).
            let undone = client.undone().await?;
            let mut device = device.borrow_mut();
            device.undone_ids =
                undone.iter().filter(|u| device.added.contains_key(&u.id)).map(|u| u.id.clone()).collect();
            device.committed = committed;
            device.undone = undone_actions(&device, undone);
            device.queued = Some(queued);
            device.objects = objects;
            device.received_messages = received_messages;
            next_publish = tokio::time::Instant::now() + PUBLISH_EVERY;
        }
        // Events are read, or a full channel would pause the connection.
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Folded { id, into }) => {
                    let mut device = device.borrow_mut();
                    device.unanswered.remove(&id.text());
                    device.folded_into.insert(id.text(), into.text());
                }
                Some(Event::Processed { id } | Event::Undone { id, .. }) => {
                    device.borrow_mut().unanswered.remove(&id.text());
                }
                Some(_) => {}
                None => return Err("the client stopped".into()),
            },
            () = wake.notified() => {}
            () = tokio::time::sleep_until(next_publish), if watching.get() => {}
            // A device asked to move looks again whether it may.
            () = tokio::time::sleep(Duration::from_secs(5)), if moving => {}
        }
    }
}

/// The actions `undone` undid, as `device` added them (an edge's undo of a CRDT operation
/// carries the delta it made of it), with the operations folded into each.
fn undone_actions(device: &Device, undone: Vec<rhizome_client::Undone>) -> Vec<(Value, String)> {
    let mut out = Vec::new();
    // Its own (the log also records undos of others' actions sent to its channels).
    for u in undone.into_iter().filter(|u| device.added.contains_key(&u.id)) {
        let mut ids = vec![u.id.clone()];
        let mut i = 0;
        while i < ids.len() {
            let into = ids[i].clone();
            ids.extend(device.folded_into.iter().filter(|(_, t)| **t == into).map(|(f, _)| f.clone()));
            i += 1;
        }
        for id in &ids {
            let Some(action) = device.added.get(id).cloned() else { continue };
            out.push((action, u.reason.clone()));
        }
    }
    out
}

/// One step of a seed's schedule.
#[derive(Debug, Clone)]
enum Fault {
    /// Clients add actions: (client, write).
    Writes(Vec<(usize, Write)>),
    /// An edge is cut off from the cloud for this many seconds, its clients writing meanwhile
    /// (at the edge, and at the cloud's client).
    EdgePartition { edge: usize, secs: u64, writes: usize },
    /// A client is offline for this many seconds, writing meanwhile.
    ClientOffline { client: usize, secs: u64, writes: usize },
    /// A server or client crashes, stays down this many seconds, and restarts.
    Crash { host: &'static str, secs: u64 },
    /// Traffic between an edge and the cloud is held for this many seconds, then delivered.
    Hold { edge: usize, secs: u64 },
    /// A client of an edge moves to the cloud for this many seconds, writing there meanwhile,
    /// then back (its edge cut off from the cloud meanwhile with `cut`). With `in_flight`, each
    /// way, it adds increments and elements first and loses its server that many ms later (an
    /// odd number), or as soon as the server took one of them (an even one; at most 5 s), its
    /// answer lost: it moves with them in flight.
    Move { client: usize, cut: bool, secs: u64, writes: usize, in_flight: Option<u64> },
    /// Time passes.
    Wait(u64),
}

fn write(rng: &mut StdRng) -> Write {
    Write {
        plain: rng.gen_range(0..6),
        increments: rng.gen_range(0..4),
        elements: rng.gen_range(0..2),
        message_to: rng.gen_bool(0.4).then(|| rng.gen_range(0..CLIENTS.len())),
        map: true,
    }
}

/// The schedule of `seed`: 12 steps. Edge partitions last minutes (30%), hours (35%), days
/// (25%) or one to three weeks (10%).
fn schedule(seed: u64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..12)
        .map(|_| match rng.gen_range(0..13) {
            0..=2 => {
                let writes = (0..rng.gen_range(1..4))
                    .map(|_| (rng.gen_range(0..CLIENTS.len()), write(&mut rng)))
                    .collect();
                Fault::Writes(writes)
            }
            3..=4 => {
                let secs = match rng.gen_range(0..20) {
                    0..=5 => rng.gen_range(MINUTE..30 * MINUTE),
                    6..=12 => rng.gen_range(HOUR..12 * HOUR),
                    13..=17 => rng.gen_range(DAY..5 * DAY),
                    _ => rng.gen_range(7 * DAY..21 * DAY),
                };
                Fault::EdgePartition { edge: rng.gen_range(1..=2), secs, writes: rng.gen_range(1..6) }
            }
            5 => Fault::ClientOffline {
                client: rng.gen_range(0..CLIENTS.len()),
                secs: rng.gen_range(MINUTE..2 * DAY),
                writes: rng.gen_range(1..4),
            },
            6..=8 => {
                let host = match rng.gen_range(0..4) {
                    0 => SERVERS[0],
                    1 | 2 => SERVERS[rng.gen_range(1..3)],
                    _ => CLIENTS[rng.gen_range(0..CLIENTS.len())].0,
                };
                Fault::Crash { host, secs: rng.gen_range(0..10 * MINUTE) }
            }
            9 => Fault::Hold { edge: rng.gen_range(1..=2), secs: rng.gen_range(1..120) },
            10 => {
                let edge_clients: Vec<usize> =
                    (0..CLIENTS.len()).filter(|&c| CLIENTS[c].1 != "cloud").collect();
                Fault::Move {
                    client: edge_clients[rng.gen_range(0..edge_clients.len())],
                    cut: rng.gen_bool(0.7),
                    secs: rng.gen_range(10 * MINUTE..3 * DAY),
                    writes: rng.gen_range(1..4),
                    in_flight: rng.gen_bool(0.6).then(|| rng.gen_range(0..400)),
                }
            }
            _ => Fault::Wait(rng.gen_range(1..600)),
        })
        .collect()
}

/// A running simulation and what its hosts share with the test.
struct Run<'a> {
    sim: turmoil::Sim<'a>,
    /// A chain (see [`chain`]).
    chain: bool,
    rng: StdRng,
    devices: Vec<Rc<RefCell<Device>>>,
    nodes: Vec<Rc<RefCell<Node>>>,
    /// Where each server keeps its data (a directory per server name).
    data: PathBuf,
}

impl Run<'_> {
    /// Whether `server`'s log holds one of the actions `client` has heard no answer to.
    fn holds_unanswered(&self, server: &str, client: usize) -> Result<bool> {
        let ids: Vec<String> = self.devices[client].borrow().unanswered.keys().cloned().collect();
        let db = rusqlite::Connection::open(self.data.join(server).join("rhizome.db"))?;
        let mut stmt = db.prepare("SELECT 1 FROM log WHERE id = ?1")?;
        for id in ids {
            if stmt.exists([id])? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The server that `server`'s link goes to ("cloud" for the cloud itself).
    fn upstream(&self, server: &str) -> &'static str {
        upstream_of(server, self.chain).unwrap_or("cloud")
    }

    fn step_for(&mut self, secs: u64) -> Result<()> {
        self.step_for_ms(secs * 1000)
    }

    /// Runs the simulation for `ms` milliseconds (at least one step).
    fn step_for_ms(&mut self, ms: u64) -> Result<()> {
        let until = self.sim.elapsed() + Duration::from_millis(ms);
        while self.sim.elapsed() < until {
            self.sim.step().map_err(|e| anyhow!("simulation failed: {e}"))?;
            if PANICKED.load(Ordering::SeqCst) {
                bail!("a task of a simulated host panicked (see above)");
            }
        }
        Ok(())
    }

    /// Asks client `client` to go to `server`.
    fn move_to(&mut self, client: usize, server: &'static str) {
        let mut device = self.devices[client].borrow_mut();
        device.move_to = Some(server);
        device.wake.notify_one();
    }

    /// Asks client `client` to add actions.
    fn ask(&mut self, client: usize, write: Write) {
        let mut device = self.devices[client].borrow_mut();
        device.todo.push_back(write);
        device.wake.notify_one();
    }

    /// Spreads `writes` random writes of random clients over `secs` seconds.
    fn writes_over(&mut self, secs: u64, writes: usize, clients: &[usize]) -> Result<()> {
        let mut left = secs;
        for _ in 0..writes {
            let wait = self.rng.gen_range(0..=left / writes.max(1) as u64);
            self.step_for(wait)?;
            left -= wait;
            let client = clients[self.rng.gen_range(0..clients.len())];
            let write = write(&mut self.rng);
            self.ask(client, write);
        }
        self.step_for(left)
    }

    fn apply(&mut self, fault: &Fault) -> Result<()> {
        let all: Vec<usize> = (0..CLIENTS.len()).collect();
        match *fault {
            Fault::Writes(ref writes) => {
                for &(client, write) in writes {
                    self.ask(client, write);
                }
                self.step_for(5)
            }
            Fault::EdgePartition { edge, secs, writes } => {
                let upstream = self.upstream(SERVERS[edge]);
                self.sim.partition(SERVERS[edge], upstream);
                self.writes_over(secs, writes, &all)?;
                self.sim.repair(SERVERS[edge], upstream);
                Ok(())
            }
            Fault::ClientOffline { client, secs, writes } => {
                // From every server: it may be moving.
                let name = CLIENTS[client].0;
                for server in SERVERS {
                    self.sim.partition(name, server);
                }
                self.writes_over(secs, writes, &[client])?;
                for server in SERVERS {
                    self.sim.repair(name, server);
                }
                Ok(())
            }
            Fault::Move { client, cut, secs, writes, in_flight } => {
                let home = CLIENTS[client].1;
                let upstream = self.upstream(home);
                if cut {
                    self.sim.partition(home, upstream);
                }
                let name = CLIENTS[client].0;
                for (from, to) in [(home, "cloud"), ("cloud", home)] {
                    if let Some(ms) = in_flight {
                        let write = Write {
                            plain: 0,
                            increments: self.rng.gen_range(1..4),
                            elements: self.rng.gen_range(0..2),
                            message_to: None,
                            map: false,
                        };
                        self.ask(client, write);
                        if ms % 2 == 0 {
                            // Its answers lost: cut off as soon as its server took them.
                            let until = self.sim.elapsed() + Duration::from_secs(5);
                            while self.sim.elapsed() < until && !self.holds_unanswered(from, client)? {
                                self.step_for_ms(1)?;
                            }
                        } else {
                            self.step_for_ms(ms)?;
                        }
                        self.sim.partition(name, from);
                    }
                    self.move_to(client, to);
                    self.writes_over(secs / 2, writes, &[client])?;
                    if in_flight.is_some() {
                        self.sim.repair(name, from);
                    }
                }
                if cut {
                    self.sim.repair(home, upstream);
                }
                Ok(())
            }
            Fault::Crash { host, secs } => {
                self.sim.crash(host);
                self.step_for(secs)?;
                self.sim.bounce(host);
                Ok(())
            }
            Fault::Hold { edge, secs } => {
                let upstream = self.upstream(SERVERS[edge]);
                self.sim.hold(SERVERS[edge], upstream);
                self.step_for(secs)?;
                self.sim.release(SERVERS[edge], upstream);
                Ok(())
            }
            Fault::Wait(secs) => self.step_for(secs),
        }
    }

    /// The messages sent to `user` (less any undone), as `(id, text)`.
    fn messages_to(&self, user: &str) -> BTreeSet<(String, String)> {
        let mut messages = BTreeSet::new();
        for device in &self.devices {
            let device = device.borrow();
            let undone: Vec<&str> = device
                .undone
                .iter()
                .filter(|(a, _)| a["type"] == "dm")
                .filter_map(|(a, _)| a["text"].as_str())
                .collect();
            for (id, to, text, _) in &device.messages {
                if *to == user && !undone.contains(&text.as_str()) {
                    messages.insert((id.clone(), text.clone()));
                }
            }
        }
        messages
    }

    /// Whether each client holds every message sent to its user, and nothing else (in its log
    /// of received actions).
    fn messages_delivered(&self) -> bool {
        CLIENTS
            .iter()
            .zip(&self.devices)
            .all(|((user, _), device)| device.borrow().received_messages == self.messages_to(user))
    }

    /// Whether every replica holds the same objects, nothing is queued anywhere, both counters
    /// count every increment added, and every message reached its user.
    fn converged(&self) -> bool {
        self.objects_converged() && self.messages_delivered()
    }

    fn objects_converged(&self) -> bool {
        let (increments, elements, map_increments) = self.expected();
        let reference = self.nodes[0].borrow().objects.clone();
        let counted = reference.get("likes").map(counter_total).unwrap_or(0);
        let map_counted = reference.get("stats").map(map_counter_total).unwrap_or(0);
        counted == increments
            && map_counted == map_increments
            && reference.get("tags").map(set_elements).unwrap_or_default() == elements
            && self.nodes.iter().all(|n| {
                let n = n.borrow();
                n.objects == reference && n.outbox.unwrap_or(0) == 0
            })
            && self.devices.iter().all(|d| {
                let d = d.borrow();
                d.todo.is_empty() && d.queued == Some(0) && d.objects == reference
            })
    }

    /// What the counter must count, the set must hold and the map's counter must count: what
    /// was added, less what was undone.
    fn expected(&self) -> (i64, BTreeSet<String>, i64) {
        let mut increments = 0;
        let mut map_increments = 0;
        let mut elements = BTreeSet::new();
        for device in &self.devices {
            let device = device.borrow();
            increments += device.increments;
            map_increments += device.map_increments;
            elements.extend(device.elements.iter().cloned());
            for (action, _) in &device.undone {
                match action["type"].as_str() {
                    Some("crdt/counter/inc") => increments -= action["by"].as_i64().unwrap_or(1),
                    Some("crdt/map/inc") => map_increments -= action["by"].as_i64().unwrap_or(1),
                    Some("crdt/set/add") => {
                        elements.remove(action["elem"].as_str().unwrap_or_default());
                    }
                    _ => {}
                }
            }
        }
        (increments, elements, map_increments)
    }

    fn describe(&self) -> String {
        let nodes: Vec<String> =
            self.nodes.iter().zip(SERVERS).map(|(n, name)| format!("{name}: {:?}", n.borrow())).collect();
        let devices: Vec<String> = self
            .devices
            .iter()
            .zip(CLIENTS)
            .map(|(d, (name, _))| {
                let d = d.borrow();
                format!(
                    "{name}: queued {:?}, {} plain, {} increments, objects {:?}, messages received {:?}, sent to it {:?}",
                    d.queued,
                    d.plain.len(),
                    d.increments,
                    d.objects,
                    d.received_messages,
                    self.messages_to(name),
                )
            })
            .collect();
        let undone: Vec<String> = self
            .devices
            .iter()
            .zip(CLIENTS)
            .map(|(d, (name, _))| format!("{name} undone {:?}", d.borrow().undone))
            .collect();
        format!(
            "{}\n{}\nexpected {:?}\n{}",
            nodes.join("\n"),
            devices.join("\n"),
            self.expected(),
            undone.join("\n")
        )
    }
}

/// The total of a PN-counter document `{node: [p, n]}`.
fn counter_total(document: &Value) -> i64 {
    document
        .get("state")
        .unwrap_or(document)
        .as_object()
        .map(|o| o.values().map(|pn| pn[0].as_i64().unwrap_or(0) - pn[1].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// How many of their operations of `kind` the cloud refused (`denied`), over all devices.
fn refused_of(run: &Run<'_>, kind: &str) -> usize {
    let denied = |device: &Device| {
        device.undone.iter().filter(|(a, reason)| a["type"] == kind && reason == "denied").count()
    };
    run.devices.iter().map(|d| denied(&d.borrow())).sum()
}

/// The value of the counter at `n` in a map document: each node's totals, the larger of each
/// among its dots, should it hold several (docs/crdt.md).
fn map_counter_total(document: &Value) -> i64 {
    let counter = document["entries"]["n"]["counter"].as_array().cloned().unwrap_or_default();
    let mut totals: HashMap<&str, (i64, i64)> = HashMap::new();
    for entry in &counter {
        let node = totals.entry(entry[0].as_str().unwrap_or_default()).or_default();
        node.0 = node.0.max(entry[2].as_i64().unwrap_or(0));
        node.1 = node.1.max(entry[3].as_i64().unwrap_or(0));
    }
    totals.values().map(|(p, n)| p - n).sum()
}

/// The elements of an add-wins set document.
fn set_elements(document: &Value) -> BTreeSet<String> {
    let elems = document["elems"].as_array().cloned().unwrap_or_default();
    elems.iter().filter_map(|e| e[0].as_str().map(str::to_owned)).collect()
}

/// The log at `dir`, in log order, one line per entry: two runs of one seed must write the
/// same logs.
fn log_lines(dir: &Path) -> Result<Vec<String>> {
    let db = rusqlite::Connection::open(dir.join("rhizome.db"))?;
    let mut stmt = db.prepare("SELECT added, id, time, action FROM log ORDER BY added")?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "{} {} {} {}",
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rows per id of the messages (`dm`) in the log at `dir`.
fn messages_in(dir: &Path) -> Result<HashMap<String, i64>> {
    let db = rusqlite::Connection::open(dir.join("rhizome.db"))?;
    let mut stmt =
        db.prepare("SELECT id, count(*) FROM log WHERE json_extract(action, '$.type') = 'dm' GROUP BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rows per id of `node`'s `inc` actions in the log at `dir`.
/// The ids under which a server took back its own application of an operation (a yielded id:
/// bit 50 of the sequence) in the log at `dir`.
fn yielded_in(dir: &Path) -> Result<BTreeSet<String>> {
    let db = rusqlite::Connection::open(dir.join("rhizome.db"))?;
    let mut stmt = db.prepare("SELECT id FROM log")?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    let yielded = |id: &String| {
        let seq = id.rsplit(' ').next().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        ((1 << 50)..(1 << 51)).contains(&seq)
    };
    Ok(ids.into_iter().filter(yielded).collect())
}

fn incs_in(dir: &Path, node: &str) -> Result<HashMap<String, i64>> {
    let db = rusqlite::Connection::open(dir.join("rhizome.db"))?;
    let mut stmt = db.prepare(
        "SELECT id, count(*) FROM log WHERE id LIKE ?1 AND json_extract(action, '$.type') = 'inc' GROUP BY id",
    )?;
    let rows = stmt.query_map([format!("% {node} %")], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What one seed did, for the report.
#[derive(Debug)]
struct Outcome {
    simulated: Duration,
    plain: usize,
    increments: i64,
    messages: usize,
    undone: usize,
    /// Of them, the revoked user's operations the cloud refused.
    refused: usize,
    /// Of those, elements (corrected away) and counter increments (taken back).
    refused_elements: usize,
    refused_increments: usize,
    restarts: u64,
    /// Times a device went to another server, and of those with something in flight.
    moves: u64,
    moves_in_flight: u64,
    /// Operations a server applied and took back when a peer relayed another's application.
    yields: usize,
    /// The logs of the cloud and the edges.
    logs: Vec<Vec<String>>,
}

/// Set when any thread panics: a panic in a spawned task ends that task only (tokio catches
/// it), which would leave a host running without, say, its link.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// The thread that runs the simulation: panics elsewhere (another test) are not its own.
static SIMULATING: std::sync::Mutex<Option<std::thread::ThreadId>> = std::sync::Mutex::new(None);

fn watch_for_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let simulating = *SIMULATING.lock().unwrap_or_else(|p| p.into_inner());
            if simulating == Some(std::thread::current().id()) {
                PANICKED.store(true, Ordering::SeqCst);
            }
            default(info);
        }));
    });
    *SIMULATING.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current().id());
    PANICKED.store(false, Ordering::SeqCst);
}

/// Runs `seed`: the schedule, then healing until everything converged, then the checks.
fn run_seed(seed: u64) -> Result<Outcome> {
    watch_for_panics();
    // `SIM_KEEP=1` keeps the hosts' files, to read after a failure.
    let keep = std::env::var_os("SIM_KEEP").is_some();
    let dir = tempfile::Builder::new().disable_cleanup(keep).tempdir()?;
    if keep {
        eprintln!("seed {seed}: files in {}", dir.path().display());
    }
    let network: Arc<dyn Network> = Arc::new(Turmoil);
    rhizome_io::simulate(Simulation {
        clock: Box::new(|| EPOCH_MS + turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64),
        seed,
        network,
    });
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(400))
        .simulation_duration(Duration::from_secs(400 * DAY))
        // turmoil keeps the port of a connection refused by a partition: weeks of retries need
        // more than the usual range.
        .ephemeral_ports(1024..=65535)
        .build();
    let watching = Rc::new(Cell::new(false));
    let nodes: Vec<Rc<RefCell<Node>>> = SERVERS.iter().map(|_| Rc::default()).collect();
    let chain = chain(seed);
    for (name, node) in SERVERS.into_iter().zip(&nodes) {
        let (data, node, watching) = (dir.path().join(name), node.clone(), watching.clone());
        let upstream = upstream_of(name, chain);
        sim.host(name, move || server_host(name, upstream, data.clone(), node.clone(), watching.clone()));
    }
    let devices: Vec<Rc<RefCell<Device>>> =
        CLIENTS.iter().map(|&(_, at)| Rc::new(RefCell::new(Device { at, ..Device::default() }))).collect();
    for (i, ((user, _), device)) in CLIENTS.into_iter().zip(&devices).enumerate() {
        let (path, device) = (dir.path().join(format!("{user}.sqlite")), device.clone());
        let client_seed = seed.wrapping_mul(31).wrapping_add(i as u64);
        let watching = watching.clone();
        sim.host(user, move || {
            client_host(user, path.clone(), client_seed, device.clone(), watching.clone())
        });
    }
    let data = dir.path().to_path_buf();
    let mut run = Run { sim, chain, rng: StdRng::seed_from_u64(seed ^ 0x5eed), devices, nodes, data };
    // Everyone comes up and subscribes before the schedule starts.
    run.step_for(30)?;
    let verbose = std::env::var_os("SIM_VERBOSE").is_some();
    let started = std::time::Instant::now();
    for fault in schedule(seed) {
        if verbose {
            eprintln!(
                "[{:.1} s, simulated {:?}] {fault:?}",
                started.elapsed().as_secs_f64(),
                run.sim.elapsed()
            );
        }
        run.apply(&fault).with_context(|| format!("{fault:?}"))?;
    }
    if verbose {
        eprintln!(
            "[{:.1} s, simulated {:?}] healed\n{}",
            started.elapsed().as_secs_f64(),
            run.sim.elapsed(),
            run.describe()
        );
    }
    // Healed: no more faults; everything must converge.
    watching.set(true);
    for device in &run.devices {
        device.borrow().wake.notify_one();
    }
    let healed = run.sim.elapsed();
    while !run.converged() {
        if run.sim.elapsed() - healed > CONVERGE {
            bail!("not converged {CONVERGE:?} after healing:\n{}", run.describe());
        }
        run.step_for(5)?;
    }
    // An undo is the cloud's refusal of an object operation the revoked user made, or a
    // server's answer to a crash in the middle of processing, nothing else; and each element
    // and increment the revoked user added is refused.
    let restarts: u64 = run.nodes.iter().map(|n| n.borrow().starts.saturating_sub(1)).sum();
    for ((user, _), device) in CLIENTS.iter().zip(&run.devices) {
        let device = device.borrow();
        for (action, reason) in &device.undone {
            let object = action["type"].as_str().is_some_and(|t| t.starts_with("crdt/"));
            let revoked = *user == REVOKED && object && reason == "denied";
            if !revoked && (reason != "error" || restarts == 0) {
                bail!("{user}'s {action} was undone ({reason}) with {restarts} server restarts");
            }
        }
        if *user == REVOKED {
            let refused = |kind: &str| {
                device.undone.iter().filter(|(a, reason)| a["type"] == kind && reason == "denied").count()
            };
            let (elements, increments) = (device.elements.len(), device.increments as usize);
            let map_increments = device.map_increments as usize;
            let refused = (refused("crdt/set/add"), refused("crdt/counter/inc"), refused("crdt/map/inc"));
            if refused != (elements, increments, map_increments) {
                bail!("{user} added {elements} elements, {increments} increments and {map_increments} of the map's counter; refused {refused:?}");
            }
        }
    }
    // The revoked user's increments that his edge took and the cloud refused were taken back
    // (his totals under his edge's actor count nothing at the cloud), not only corrected away.
    let dave = run.devices[CLIENTS.iter().position(|(user, _)| *user == REVOKED).expect("dave")].clone();
    let taken_at_edge = {
        let dave = dave.borrow();
        dave.undone_ids.iter().any(|id| {
            dave.added.get(id).is_some_and(|a| a["type"] == "crdt/counter/inc")
                && dave.added_at.get(id) == Some(&"edge2")
                && !dave.moved_in_flight.contains(id)
        })
    };
    if taken_at_edge {
        let cloud = run.nodes[0].borrow().objects.get("likes").cloned().unwrap_or_default();
        let totals = &cloud[format!("server:edge:edge2~{REVOKED}:phone:app")];
        let (p, n) = (totals[0].as_i64().unwrap_or(0), totals[1].as_i64().unwrap_or(0));
        if p == 0 || p != n {
            bail!("{REVOKED}'s refused increments were not taken back at the cloud: {cloud}");
        }
    }
    // Plain actions are in every server's log exactly once. A server's log is read once the
    // objects agree; its last plain actions may still be on their way, so wait for them.
    let devices = run.devices.clone();
    for name in SERVERS {
        for ((user, _), device) in CLIENTS.iter().zip(&devices) {
            let node = format!("{user}:phone:app");
            let sent = device.borrow().plain.clone();
            loop {
                let logged = incs_in(&dir.path().join(name), &node)?;
                let twice: Vec<_> = logged.iter().filter(|(_, &n)| n != 1).collect();
                if !twice.is_empty() {
                    bail!("{name} logged {user}'s actions more than once: {twice:?}");
                }
                let missing: Vec<_> = sent.iter().filter(|id| !logged.contains_key(*id)).collect();
                if logged.len() > sent.len() {
                    bail!("{name} logged {} of {user}'s actions, {} added", logged.len(), sent.len());
                }
                if missing.is_empty() {
                    break;
                }
                if run.sim.elapsed() - healed > CONVERGE {
                    bail!("{name} misses {user}'s {missing:?}\n{}", run.describe());
                }
                run.step_for(5)?;
            }
        }
    }
    // A message is in the logs of the cloud, of the server its writer was at and of its
    // recipient's server, and of the servers between those and the cloud (in a chain), once
    // each, and nowhere else (one undone after a crash is left out).
    // Its recipient may have it before the cloud does (both at one edge): wait for the rest.
    let server_of = |user: &str| CLIENTS.iter().find(|(u, _)| *u == user).map_or("cloud", |(_, s)| *s);
    let (mut messages, mut moves) = (0, 0);
    let mut wanted: Vec<(&str, String, i64, String)> = Vec::new();
    for ((writer, _), device) in CLIENTS.iter().zip(&run.devices) {
        let device = device.borrow();
        moves += device.moves;
        let undone = |text: &str| device.undone.iter().any(|(a, _)| a["type"] == "dm" && a["text"] == text);
        for (id, to, text, at) in &device.messages {
            messages += 1;
            if undone(text) {
                continue;
            }
            for name in SERVERS {
                let on_the_way = |server: &str| upstream_of(server, chain) == Some(name);
                let want = [
                    name == "cloud",
                    name == *at,
                    name == server_of(to),
                    on_the_way(at) || on_the_way(server_of(to)),
                ];
                let what = format!("{writer}'s message {id} to {to}");
                wanted.push((name, id.clone(), i64::from(want.contains(&true)), what));
            }
        }
    }
    loop {
        let logged: Vec<HashMap<String, i64>> =
            SERVERS.iter().map(|name| messages_in(&dir.path().join(name))).collect::<Result<_>>()?;
        let wrong: Vec<String> = wanted
            .iter()
            .filter_map(|(name, id, want, what)| {
                let logs = &logged[SERVERS.iter().position(|s| s == name).unwrap_or(0)];
                let got = logs.get(id).copied().unwrap_or(0);
                (got != *want).then(|| format!("{name} logged {what} {got} times, not {want}"))
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        // More than wanted never goes away.
        if wrong.iter().any(|w| !w.contains(" 0 times")) || run.sim.elapsed() - healed > CONVERGE {
            bail!("{}\n{}", wrong.join("\n"), run.describe());
        }
        run.step_for(5)?;
    }
    // The second level of acknowledgement: each action a device added at an edge and that was
    // not undone is named by a `rhizome/committed` it received, once the cloud committed it
    // (in a chain, at the cloud's level, not edge1's: so never one the cloud refused). None
    // added at the cloud is (its `logux/processed` said so), nor any undone. A device names
    // an operation its client folded into a later one by that one's id.
    loop {
        let mut missing = Vec::new();
        for ((user, _), device) in CLIENTS.iter().zip(&run.devices) {
            let device = device.borrow();
            let sent_as = |id: &String| {
                let mut id = id;
                while let Some(into) = device.folded_into.get(id) {
                    id = into;
                }
                id.clone()
            };
            for (id, at) in &device.added_at {
                let sent = sent_as(id);
                let undone = device.undone_ids.contains(&sent);
                let named = device.committed.get(&sent);
                // In flight when it moved: the server it was added at may not have taken it,
                // and the other one may have been an edge.
                let moved = device.moved_in_flight.contains(id) || device.moved_in_flight.contains(&sent);
                if let Some(notice) = named.filter(|_| undone || (*at == "cloud" && !moved)) {
                    bail!(
                        "{user} was told by {notice} that the cloud committed {sent} (added at {at}, undone: {undone})\n{}",
                        run.describe()
                    );
                }
                let named = named.is_some();
                if !named && !undone && *at != "cloud" && !moved {
                    missing.push(format!("{user}'s {sent} (added at {at})"));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if run.sim.elapsed() - healed > CONVERGE {
            bail!("no rhizome/committed for {}\n{}", missing.join(", "), run.describe());
        }
        run.step_for(5)?;
    }
    let mut yielded = BTreeSet::new();
    for name in SERVERS {
        yielded.extend(yielded_in(&dir.path().join(name))?);
    }
    let outcome = Outcome {
        messages,
        moves,
        moves_in_flight: run.devices.iter().map(|d| d.borrow().moves_in_flight).sum(),
        yields: yielded.len(),
        simulated: run.sim.elapsed(),
        plain: run.devices.iter().map(|d| d.borrow().plain.len()).sum(),
        increments: run.devices.iter().map(|d| d.borrow().increments).sum(),
        undone: run.devices.iter().map(|d| d.borrow().undone.len()).sum(),
        refused: run
            .devices
            .iter()
            .map(|d| d.borrow().undone.iter().filter(|(_, reason)| reason == "denied").count())
            .sum(),
        refused_elements: refused_of(&run, "crdt/set/add"),
        refused_increments: refused_of(&run, "crdt/counter/inc"),
        logs: SERVERS.iter().map(|name| log_lines(&dir.path().join(name))).collect::<Result<_>>()?,
        restarts: run.nodes.iter().map(|n| n.borrow().starts.saturating_sub(1)).sum(),
    };
    drop(run);
    rhizome_io::end_simulation();
    Ok(outcome)
}

/// Seeds run by default; `SIM_SEEDS=<n>` runs seeds 0 to n−1 instead (`<a>..<b>`: a to b−1),
/// `SIM_SEED=<s>` one seed (to replay a failure).
fn seeds() -> Vec<u64> {
    crate::support::seeds_from_env("SIM_SEED", "SIM_SEEDS", &[1, 2, 3])
}

#[test]
fn a_cloud_two_edges_and_their_clients_converge_in_every_seed() -> Result<()> {
    let started = std::time::Instant::now();
    let (mut failed, mut days) = (Vec::new(), 0.0);
    let (mut messages, mut moves) = (0, 0);
    let (mut refused_elements, mut refused_increments) = (0, 0);
    let (mut in_flight, mut yields) = (0, 0);
    let seeds = seeds();
    for &seed in &seeds {
        let began = std::time::Instant::now();
        let outcome = run_seed(seed);
        rhizome_io::end_simulation();
        match outcome {
            Ok(outcome) => {
                days += outcome.simulated.as_secs_f64() / DAY as f64;
                refused_elements += outcome.refused_elements;
                refused_increments += outcome.refused_increments;
                messages += outcome.messages;
                moves += outcome.moves;
                in_flight += outcome.moves_in_flight;
                yields += outcome.yields;
                eprintln!(
                    "seed {seed}{}: converged after {:.1} simulated days ({} plain actions, {} increments, {} messages, {} undone of which {} refused by the cloud, {} elements and {} increments, {} server restarts, {} moves of which {} with operations in flight, {} applications taken back) in {:.1} s",
                    if chain(seed) { " (chain)" } else { "" },
                    outcome.simulated.as_secs_f64() / DAY as f64,
                    outcome.plain,
                    outcome.increments,
                    outcome.messages,
                    outcome.undone,
                    outcome.refused,
                    outcome.refused_elements,
                    outcome.refused_increments,
                    outcome.restarts,
                    outcome.moves,
                    outcome.moves_in_flight,
                    outcome.yields,
                    began.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                eprintln!(
                    "seed {seed} FAILED (replay: SIM_SEED={seed}): {e:?}\nschedule {:?}",
                    schedule(seed)
                );
                failed.push(seed);
            }
        }
    }
    eprintln!(
        "{} seeds, {} failed {failed:?}; {days:.0} simulated days, {moves} moves of which {in_flight} with operations in flight, {yields} applications taken back, in {:.0} s",
        seeds.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("seeds {failed:?} failed (each replays with SIM_SEED=<seed>)");
    }
    // The seeds CI runs go through every kind of step the checks are about.
    let skipped = refused_elements == 0 || refused_increments == 0 || messages == 0 || moves == 0;
    if seeds == [1, 2, 3] && (skipped || in_flight == 0 || yields == 0) {
        bail!(
            "seeds {seeds:?} refused {refused_elements} elements and {refused_increments} increments, sent {messages} messages, moved {moves} devices ({in_flight} with operations in flight) and took back {yields} applications: choose others"
        );
    }
    Ok(())
}

/// The seed whose run is checked for determinism: short, with crashes (`SIM_REPLAY_SEED`
/// checks another).
const REPLAYED_SEED: u64 = 3;

#[test]
fn a_seed_runs_the_same_way_twice() -> Result<()> {
    if !cfg!(tokio_unstable) {
        bail!(
            "built without `--cfg tokio_unstable` (.cargo/config.toml): tokio's select! order is not seeded"
        );
    }
    let seed = std::env::var("SIM_REPLAY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(REPLAYED_SEED);
    let first = run_seed(seed);
    rhizome_io::end_simulation();
    let second = run_seed(seed);
    rhizome_io::end_simulation();
    let (first, second) = (first?, second?);
    assert_eq!(first.simulated, second.simulated, "converged at another simulated time");
    for (name, (a, b)) in SERVERS.iter().zip(first.logs.iter().zip(&second.logs)) {
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            panic!(
                "{name}'s log differs between two runs of seed {seed} at entry {i}:\n{:?}\n{:?}",
                a.get(i),
                b.get(i)
            );
        }
    }
    Ok(())
}
