//! `rhizome sim`: what happens when thousands of clients that were offline, each with a long
//! queue of actions, come back at once.
//!
//! Built on the public client library (`rhizome-client`), so it runs against any Logux
//! protocol 5 server whose app has `inc` actions (with an `id` field) and, for
//! [`Scenario::crdt_share`], `crdt/*` operations: `bench/rhizome-bench.toml` for Rhizome.
//!
//! A run has three phases:
//! 1. **Offline**: each client opens its SQLite log with the server's URL but told that the
//!    device has no network (`ClientOptions::online` false), and queues its actions with one
//!    `add_many`. It stays open, as an app does while its device is out of reach.
//! 2. **Probes**: the probe clients connect and wait.
//! 3. **Storm**: each offline client's network comes back (`Client::set_online`) at its
//!    instant, within [`Scenario::return_within_ms`] as [`Scenario::return_mode`] says; it syncs its
//!    queue with the client's default chunking and counts every `logux/processed` /
//!    `logux/undo` for its ids. Probes send one `inc` every [`PROBE_INTERVAL`] and time each
//!    until its answer. The storm ends when every client has an answer for every queued id (or
//!    at the timeout).
//!
//! Then the server's log may be read (`--server-db`) to check every queued id is there,
//! processed. The result is a [`Report`], printed as one line, written as JSON and drawn as an
//! SVG chart ([`Chart`]).

#![deny(missing_docs)]

mod chart;
mod converge;
mod procfs;
mod progress;
mod scenario;
mod stats;

pub use chart::Chart;
pub use converge::{Convergence, CONVERGE_WAIT};
pub use scenario::{ReturnMode, Scenario, SimArgs};
pub use stats::{is_crdt, percentile, reconnect_offset, Buckets};

use rhizome_client::{ActionId, Client, ClientError, ClientOptions, Durability, Event};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a probe sends an action.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Clients preparing their offline queue at the same time (SQLite work off the runtime).
const PREPARE_PARALLEL: usize = 4;

/// How long probes and clients may take to connect before the storm.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// How long probes wait for the answers to their last actions after the storm.
const PROBE_DRAIN: Duration = Duration::from_secs(5);

/// Why a run failed (a lost action is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is invalid or its file unreadable.
    #[error("scenario: {0}")]
    Scenario(String),
    /// A client failed.
    #[error("client: {0}")]
    Client(#[from] ClientError),
    /// A file could not be written or a directory made.
    #[error("io: {0}")]
    Io(std::io::Error),
    /// The server's log could not be read.
    #[error("server log: {0}")]
    ServerDb(#[from] rusqlite::Error),
    /// A probe never connected.
    #[error("probe: {0}")]
    Probe(String),
    /// The JSON result could not be written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The run finished but its checks failed: actions lost, clients not synced, ids missing
    /// from the server's log (the report is written all the same).
    #[error("check failed: {0}")]
    Check(String),
}

/// Latency of the probe clients, from `add` to `logux/processed`, in ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeReport {
    /// Answered probe actions.
    pub samples: usize,
    /// Probe actions sent and never answered.
    pub unanswered: usize,
    /// Median.
    pub p50_ms: Option<u64>,
    /// 99th percentile.
    pub p99_ms: Option<u64>,
    /// Largest.
    pub max_ms: Option<u64>,
    /// Median latency per second of the storm (by send time); `null` for a second with no
    /// answered probe action.
    pub p50_ms_per_second: Vec<Option<u64>>,
    /// Largest latency per second of the storm (by send time); `null` as above.
    pub max_ms_per_second: Vec<Option<u64>>,
}

/// What the server's log says about the queued ids.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerLogCheck {
    /// Ids looked up.
    pub checked: u64,
    /// Ids not in the log: lost.
    pub missing: u64,
    /// Ids in the log with status processed.
    pub processed: u64,
    /// Ids in the log undone.
    pub undone: u64,
    /// Ids in the log still waiting.
    pub waiting: u64,
    /// Ids logged more than once: processed twice.
    pub duplicated: u64,
}

/// The server process's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    /// Its pid.
    pub pid: u32,
    /// Peak resident memory (VmHWM) at the end, KiB: the peak of the process's whole life.
    pub peak_rss_kib: Option<u64>,
    /// Resident memory before the storm, KiB.
    pub rss_before_kib: Option<u64>,
    /// CPU time (user + system) it used during the storm, ms.
    pub cpu_ms: Option<u64>,
}

/// The result of a run, written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario run.
    pub scenario: Scenario,
    /// Time to queue every offline action, ms (not part of the storm).
    pub prepare_ms: u64,
    /// Actions queued, all clients.
    pub queued: u64,
    /// `logux/processed` answers received for queued ids.
    pub processed: u64,
    /// `logux/undo` answers received for queued ids.
    pub undone: u64,
    /// Answers for an id already answered.
    pub duplicate_answers: u64,
    /// Queued ids never answered.
    pub lost: u64,
    /// Clients with an answer for every queued id.
    pub clients_synced: usize,
    /// Reconnections beyond the first, all clients (drops during the storm).
    pub reconnects: u64,
    /// From the storm's start until the last client was synced, ms; `None` if one never was.
    pub time_to_sync_ms: Option<u64>,
    /// Answers to queued actions per second of the storm.
    pub throughput_per_second: Vec<u64>,
    /// The probes' latency.
    pub probes: ProbeReport,
    /// CPU time (user + system) the simulator used during the storm, ms.
    pub sim_cpu_ms: Option<u64>,
    /// The simulator's peak resident memory (VmHWM), KiB.
    pub sim_peak_rss_kib: Option<u64>,
    /// The server's figures, with `--pid`.
    pub server: Option<ServerReport>,
    /// Whether the server's log was read (`--server-db`): without it nothing says the server
    /// stored the actions it answered (the reference `@logux/server` keeps no log at all).
    pub server_log_checked: bool,
    /// The check against the server's log, with `--server-db`.
    pub server_log: Option<ServerLogCheck>,
    /// The clients' CRDT objects against the server's, with `--crdt-share` > 0.
    pub convergence: Option<Convergence>,
}

impl Report {
    /// The one-line summary.
    pub fn summary(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let server = self.server.clone().unwrap_or_default();
        let peak = self.throughput_per_second.iter().max().copied().unwrap_or(0);
        format!(
            "sim: clients={} actions_per_client={} queued={} processed={} undone={} lost={} duplicate_answers={} \
             synced={}/{} time_to_sync_ms={} peak_actions_per_s={peak} probe_p50_ms={} probe_p99_ms={} probe_max_ms={} \
             probe_samples={} sim_cpu_ms={} server_cpu_ms={} server_peak_rss_kib={} return_mode={} {}",
            self.scenario.clients,
            self.scenario.actions_per_client,
            self.queued,
            self.processed,
            self.undone,
            self.lost,
            self.duplicate_answers,
            self.clients_synced,
            self.scenario.clients,
            opt(self.time_to_sync_ms),
            opt(self.probes.p50_ms),
            opt(self.probes.p99_ms),
            opt(self.probes.max_ms),
            self.probes.samples,
            opt(self.sim_cpu_ms),
            opt(server.cpu_ms),
            opt(server.peak_rss_kib),
            self.scenario.return_mode.name(),
            match &self.server_log {
                Some(c) => format!(
                    "server_log_missing={} server_log_waiting={} server_log_duplicated={}",
                    c.missing, c.waiting, c.duplicated
                ),
                None => "server_log=not_checked".to_owned(),
            },
        )
    }
}

impl Report {
    /// What went wrong, if anything: queued actions without an answer, clients not synced,
    /// ids missing from the server's log or not processed there.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.lost > 0 {
            failures.push(format!("{} queued actions never answered", self.lost));
        }
        if self.clients_synced < self.scenario.clients {
            failures.push(format!(
                "{} of {} clients not synced",
                self.scenario.clients - self.clients_synced,
                self.scenario.clients
            ));
        }
        if let Some(log) = &self.server_log {
            if log.missing > 0 {
                failures.push(format!("{} queued ids missing from the server's log", log.missing));
            }
            if log.waiting > 0 {
                failures.push(format!("{} queued ids still waiting in the server's log", log.waiting));
            }
            if log.duplicated > 0 {
                failures.push(format!("{} queued ids logged more than once", log.duplicated));
            }
        }
        if let Some(c) = &self.convergence {
            if c.diverged > 0 {
                failures
                    .push(format!("{} of {} clients' CRDT objects diverged", c.diverged, c.clients_checked));
            }
        }
        failures
    }
}

/// Runs `rhizome sim`: the scenario from the flags, the summary on stdout, the JSON to `--out`,
/// the chart to `--chart`. Fails with [`SimError::Check`] after writing them when
/// [`Report::failures`] is not empty.
pub async fn run(args: SimArgs) -> Result<Report, SimError> {
    let scenario = args.scenario()?;
    let report = simulate(scenario).await?;
    if !report.server_log_checked {
        eprintln!(
            "sim: the server's log was not checked (no --server-db): `lost` counts queued actions \
             the server never answered, nothing says it stored the ones it did"
        );
    }
    println!("{}", report.summary());
    if let Some(out) = &report.scenario.out {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(out, json).map_err(SimError::Io)?;
    }
    if let Some(path) = &report.scenario.chart {
        std::fs::write(path, Chart::of(&report).svg()).map_err(SimError::Io)?;
    }
    let failures = report.failures();
    if !failures.is_empty() {
        return Err(SimError::Check(failures.join("; ")));
    }
    Ok(report)
}

/// Runs a scenario and returns its report (prints progress on stderr).
pub async fn simulate(scenario: Scenario) -> Result<Report, SimError> {
    scenario.validate()?;
    let temp;
    let data_dir = match &scenario.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(SimError::Io)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().map_err(SimError::Io)?;
            temp.path().to_path_buf()
        }
    };

    let prepare_start = Instant::now();
    let queues = prepare(&scenario, &data_dir).await?;
    let prepare_ms = prepare_start.elapsed().as_millis() as u64;
    let queued: u64 = queues.iter().map(|q| q.ids.len() as u64).sum();
    eprintln!("sim: {queued} actions queued by {} offline clients in {prepare_ms} ms", scenario.clients);

    let mut probes = ProbeThread::start(&scenario, &data_dir).await?;

    let pid = scenario.pid.map(|p| p.to_string());
    let server_cpu_before = pid.as_deref().and_then(procfs::cpu_time);
    let rss_before_kib = pid.as_deref().and_then(|p| procfs::status_kib(p, "VmRSS"));
    let sim_cpu_before = procfs::cpu_time("self");

    let storm = Arc::new(Storm {
        start: Instant::now(),
        deadline: Instant::now() + scenario.timeout(),
        answers: Buckets::new(scenario.timeout_secs as usize + 1),
        answered: AtomicU64::new(0),
        synced: AtomicUsize::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    probes.begin(storm.start);
    let progress = tokio::spawn(progress::show(storm.clone(), scenario.clients, queued, stop_rx.clone()));
    let window = Duration::from_millis(scenario.return_within_ms);
    let mut tasks = Vec::with_capacity(queues.len());
    for (index, offline) in queues.into_iter().enumerate() {
        let at = storm.start + reconnect_offset(index, scenario.clients, window, scenario.return_mode);
        let hold = converge::writes_objects(&scenario).then_some(index);
        tasks.push(tokio::spawn(storm_client(storm.clone(), offline, at, hold)));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.map_err(|_| SimError::Client(ClientError::Stopped))??);
    }
    let sim_cpu_after = procfs::cpu_time("self");
    let server_cpu_after = pid.as_deref().and_then(procfs::cpu_time);
    let closing: Vec<_> =
        outcomes.iter_mut().filter_map(|o| o.open.take()).map(|c| tokio::spawn(c.close())).collect();
    for close in closing {
        let _ = close.await;
    }
    let _ = stop_tx.send(true);
    let _ = progress.await;
    let (latencies, unanswered) = probes.finish().await?;
    let held: Vec<_> = outcomes.iter_mut().filter_map(|o| o.held.take()).collect();
    let convergence = match held.is_empty() {
        true => None,
        false => Some(converge::check(&scenario, &data_dir, held).await?),
    };

    let server_log = match &scenario.server_db {
        Some(path) => {
            let path = path.clone();
            let ids: Vec<Vec<ActionId>> = outcomes.iter().map(|o| o.ids.clone()).collect();
            let check = tokio::task::spawn_blocking(move || check_server_log(&path, &ids))
                .await
                .map_err(|_| SimError::Client(ClientError::Stopped))??;
            Some(check)
        }
        None => None,
    };
    let cpu_delta = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b).as_millis() as u64),
        _ => None,
    };
    let server = scenario.pid.map(|p| ServerReport {
        pid: p,
        peak_rss_kib: procfs::status_kib(&p.to_string(), "VmHWM"),
        rss_before_kib,
        cpu_ms: cpu_delta(server_cpu_before, server_cpu_after),
    });
    let all_synced = outcomes.iter().all(|o| o.synced_after.is_some());
    Ok(Report {
        prepare_ms,
        queued,
        processed: outcomes.iter().map(|o| o.processed).sum(),
        undone: outcomes.iter().map(|o| o.undone).sum(),
        duplicate_answers: outcomes.iter().map(|o| o.duplicates).sum(),
        lost: outcomes.iter().map(|o| o.unanswered()).sum(),
        clients_synced: outcomes.iter().filter(|o| o.synced_after.is_some()).count(),
        reconnects: outcomes.iter().map(|o| o.connections.saturating_sub(1)).sum(),
        time_to_sync_ms: if all_synced {
            Some(outcomes.iter().filter_map(|o| o.synced_after).max().unwrap_or_default().as_millis() as u64)
        } else {
            None
        },
        throughput_per_second: storm.answers.snapshot(),
        probes: probe_report(latencies, unanswered),
        sim_cpu_ms: cpu_delta(sim_cpu_before, sim_cpu_after),
        sim_peak_rss_kib: procfs::status_kib("self", "VmHWM"),
        server,
        server_log_checked: server_log.is_some(),
        server_log,
        convergence,
        scenario,
    })
}

/// Shared counters of the storm.
#[derive(Debug)]
struct Storm {
    start: Instant,
    deadline: Instant,
    answers: Buckets,
    answered: AtomicU64,
    synced: AtomicUsize,
}

/// The options of client `index` (probes use indexes after the storm's clients).
pub(crate) fn client_options(scenario: &Scenario, data_dir: &Path, index: usize) -> ClientOptions {
    let mut options = ClientOptions::new(&scenario.url, client_path(data_dir, index), format!("sim{index}"))
        .token(scenario.token.clone());
    // A crash of the simulator may lose its last commits: no fsync per commit, so a thousand
    // clients on one machine measure the server, not this machine's disk.
    options.durability = Durability::ProcessCrash;
    options.seed = Some(index as u64);
    options
}

fn client_path(data_dir: &Path, index: usize) -> PathBuf {
    data_dir.join(format!("client-{index}.sqlite"))
}

/// The queued action number `n` of client `index`.
fn action(scenario: &Scenario, index: usize, n: usize) -> Value {
    if is_crdt(n, scenario.crdt_share) {
        json!({"type": "crdt/counter/inc", "key": converge::object_key(scenario, index), "by": 1})
    } else {
        json!({"type": "inc", "id": format!("sim-{index}")})
    }
}

/// A client with its queue, open and offline, waiting for its network to come back.
struct Offline {
    client: Client,
    events: rhizome_client::Events,
    /// Its queued ids, sorted.
    ids: Vec<ActionId>,
}

/// Phase 1: every client queues its actions while offline.
async fn prepare(scenario: &Scenario, data_dir: &Path) -> Result<Vec<Offline>, SimError> {
    let mut queues = Vec::with_capacity(scenario.clients);
    let indexes: Vec<usize> = (0..scenario.clients).collect();
    for chunk in indexes.chunks(PREPARE_PARALLEL) {
        let mut tasks = Vec::new();
        for &index in chunk {
            let mut options = client_options(scenario, data_dir, index);
            options.online = false;
            let actions: Vec<Value> =
                (0..scenario.actions_per_client).map(|n| action(scenario, index, n)).collect();
            let channels = converge::channels(scenario, index);
            tasks.push(tokio::spawn(async move {
                let (client, events) = Client::open(options).await?;
                for channel in channels {
                    client.subscribe(&channel).await?;
                }
                let mut ids = client.add_many(actions).await?;
                ids.sort();
                Ok::<_, ClientError>(Offline { client, events, ids })
            }));
        }
        for task in tasks {
            queues.push(task.await.map_err(|_| ClientError::Stopped)??);
        }
    }
    Ok(queues)
}

/// What one storm client saw.
#[derive(Debug)]
struct Outcome {
    /// Its queued ids, sorted.
    ids: Vec<ActionId>,
    /// Which of them were answered.
    answered: Vec<bool>,
    processed: u64,
    undone: u64,
    duplicates: u64,
    connections: u64,
    /// When every id was answered, from the storm's start.
    synced_after: Option<Duration>,
    /// The client, still open, when its CRDT objects are to be checked.
    held: Option<converge::Held>,
    /// Otherwise the client, still open: it is closed after the storm is measured, as a device
    /// that synced keeps its log open (closing checkpoints the log's WAL, work that is not
    /// the storm's and would compete with it for the CPU).
    open: Option<Client>,
}

impl Outcome {
    fn unanswered(&self) -> u64 {
        self.answered.iter().filter(|a| !**a).count() as u64
    }
}

/// Phase 3 for one client: back online at `at`, count answers until all ids have one.
async fn storm_client(
    storm: Arc<Storm>,
    offline: Offline,
    at: Instant,
    hold: Option<usize>,
) -> Result<Outcome, SimError> {
    let Offline { client, mut events, ids } = offline;
    tokio::time::sleep_until(at.into()).await;
    let mut outcome = Outcome {
        answered: vec![false; ids.len()],
        ids,
        processed: 0,
        undone: 0,
        duplicates: 0,
        connections: 0,
        synced_after: None,
        held: None,
        open: None,
    };
    let mut left = outcome.ids.len();
    let mut next = 0;
    client.set_online(true);
    let deadline = tokio::time::sleep_until(storm.deadline.into());
    tokio::pin!(deadline);
    while left > 0 {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = &mut deadline => break,
        };
        let (id, processed) = match event {
            None => break,
            Some(Event::Connected { .. }) => {
                outcome.connections += 1;
                continue;
            }
            Some(Event::Processed { id }) => (id, true),
            Some(Event::Undone { id, .. }) => (id, false),
            Some(_) => continue,
        };
        // Answers mostly come in the order of the ids: try the one after the last first.
        let found = match outcome.ids.get(next) {
            Some(expected) if *expected == id => Ok(next),
            _ => outcome.ids.binary_search(&id),
        };
        if let Ok(i) = found {
            next = i + 1;
        }
        match found {
            Ok(i) if !outcome.answered[i] => {
                outcome.answered[i] = true;
                left -= 1;
                if processed {
                    outcome.processed += 1;
                } else {
                    outcome.undone += 1;
                }
                storm.answers.add(storm.start.elapsed());
                storm.answered.fetch_add(1, Ordering::Relaxed);
            }
            _ => outcome.duplicates += 1,
        }
    }
    if left == 0 {
        outcome.synced_after = Some(storm.start.elapsed());
        storm.synced.fetch_add(1, Ordering::Relaxed);
    }
    match hold {
        // Kept open: its copies still receive the other clients' operations.
        Some(index) => outcome.held = Some(converge::Held::new(index, client, events)),
        None => outcome.open = Some(client),
    }
    Ok(outcome)
}

/// A probe client, connected before the storm.
#[derive(Debug)]
struct Probe {
    client: Client,
    events: rhizome_client::Events,
    index: usize,
}

/// Phase 2: the probes connect (each waits for `connected`).
async fn start_probes(scenario: &Scenario, data_dir: &Path) -> Result<Vec<Probe>, SimError> {
    let mut probes = Vec::with_capacity(scenario.probes);
    for p in 0..scenario.probes {
        let index = scenario.clients + p;
        let options = client_options(scenario, data_dir, index);
        let (client, mut events) = Client::open(options).await?;
        let connected = tokio::time::timeout(CONNECT_WAIT, async {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Connected { .. } => return Ok(()),
                    Event::ServerError { kind, .. } => return Err(kind),
                    _ => {}
                }
            }
            Err("client stopped".to_owned())
        })
        .await;
        match connected {
            Ok(Ok(())) => probes.push(Probe { client, events, index }),
            Ok(Err(why)) => return Err(SimError::Probe(format!("probe {p} refused: {why}"))),
            Err(_) => return Err(SimError::Probe(format!("probe {p} did not connect in {CONNECT_WAIT:?}"))),
        }
    }
    Ok(probes)
}

/// The probes, on a thread and runtime of their own: their actions and answers are not queued
/// behind the storm clients' tasks and SQLite work in this process, so their latency is the
/// server's (and the network's), as much as one machine allows.
#[derive(Debug)]
struct ProbeThread {
    start: Option<tokio::sync::oneshot::Sender<Instant>>,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<(Vec<Sample>, usize), SimError>>,
}

impl ProbeThread {
    /// Starts the thread; returns when every probe is connected.
    async fn start(scenario: &Scenario, data_dir: &Path) -> Result<ProbeThread, SimError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<Instant>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SimError::Io)?;
        let (scenario, data_dir) = (scenario.clone(), data_dir.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("sim-probes".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let probes = match start_probes(&scenario, &data_dir).await {
                        Ok(probes) => {
                            let _ = ready_tx.send(Ok(()));
                            probes
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok((Vec::new(), 0));
                        }
                    };
                    let Ok(start) = start_rx.await else { return Ok((Vec::new(), 0)) };
                    let tasks: Vec<_> =
                        probes.into_iter().map(|p| tokio::spawn(p.run(start, stop_rx.clone()))).collect();
                    let (mut samples, mut unanswered) = (Vec::new(), 0);
                    for task in tasks {
                        let (s, left) = task.await.map_err(|_| SimError::Client(ClientError::Stopped))??;
                        samples.extend(s);
                        unanswered += left;
                    }
                    Ok((samples, unanswered))
                })
            })
            .map_err(SimError::Io)?;
        ready_rx.await.map_err(|_| SimError::Probe("the probe thread ended".into()))??;
        Ok(ProbeThread { start: Some(start_tx), stop: stop_tx, thread })
    }

    /// The storm starts: probes send from `start` on.
    fn begin(&mut self, start: Instant) {
        if let Some(tx) = self.start.take() {
            let _ = tx.send(start);
        }
    }

    /// Stops the probes; returns their samples and how many actions had no answer.
    async fn finish(self) -> Result<(Vec<Sample>, usize), SimError> {
        let _ = self.stop.send(true);
        drop(self.start);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|_| SimError::Probe("the probe thread panicked".into()))?
            .map_err(|_| SimError::Probe("the probe thread panicked".into()))?
    }
}

/// A probe's answered action: when it was sent (since the storm's start) and its latency.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent_after: Duration,
    latency: Duration,
}

impl Probe {
    /// Sends an `inc` every [`PROBE_INTERVAL`] from `start` until `stop`, then waits
    /// [`PROBE_DRAIN`] for the last answers. Returns the samples and the unanswered count.
    async fn run(
        mut self,
        start: Instant,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(Vec<Sample>, usize), SimError> {
        let mut sent: HashMap<ActionId, Instant> = HashMap::new();
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval_at(start.into(), PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let action = json!({"type": "inc", "id": format!("probe-{}", self.index)});
        let mut drain_until: Option<Instant> = None;
        loop {
            if let Some(until) = drain_until {
                if sent.is_empty() || Instant::now() >= until {
                    break;
                }
            }
            tokio::select! {
                _ = tick.tick(), if drain_until.is_none() => {
                    let at = Instant::now();
                    let id = self.client.add(action.clone()).await?;
                    sent.insert(id, at);
                }
                changed = stop.changed(), if drain_until.is_none() => {
                    if changed.is_err() || *stop.borrow() {
                        drain_until = Some(Instant::now() + PROBE_DRAIN);
                    }
                }
                event = self.events.recv() => match event {
                    Some(Event::Processed { id }) | Some(Event::Undone { id, .. }) => {
                        if let Some(at) = sent.remove(&id) {
                            samples.push(Sample { sent_after: at.duration_since(start), latency: at.elapsed() });
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep(PROBE_INTERVAL), if drain_until.is_some() => {}
            }
        }
        self.client.close().await;
        Ok((samples, sent.len()))
    }
}

fn probe_report(samples: Vec<Sample>, unanswered: usize) -> ProbeReport {
    let mut ms: Vec<u64> = samples.iter().map(|s| s.latency.as_millis() as u64).collect();
    ms.sort_unstable();
    let mut per_second: Vec<Vec<u64>> = Vec::new();
    for s in &samples {
        let i = s.sent_after.as_secs() as usize;
        if per_second.len() <= i {
            per_second.resize(i + 1, Vec::new());
        }
        per_second[i].push(s.latency.as_millis() as u64);
    }
    for second in &mut per_second {
        second.sort_unstable();
    }
    ProbeReport {
        samples: ms.len(),
        unanswered,
        p50_ms: percentile(&ms, 0.50),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied(),
        p50_ms_per_second: per_second.iter().map(|s| percentile(s, 0.50)).collect(),
        max_ms_per_second: per_second.iter().map(|s| s.last().copied()).collect(),
    }
}

/// Looks every queued id up in the server's log (read-only), read whole once: the log has no
/// index on id texts.
fn check_server_log(path: &Path, queues: &[Vec<ActionId>]) -> Result<ServerLogCheck, SimError> {
    let db = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut wanted: std::collections::HashMap<String, (u64, i64)> = queues
        .iter()
        .flatten()
        .map(|id| {
            let mut text = String::new();
            id.push_to(&mut text);
            (text, (0, -1))
        })
        .collect();
    let mut stmt = db.prepare("SELECT id, status FROM log")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        if let Some((count, status)) = wanted.get_mut(&id) {
            *count += 1;
            *status = row.get(1)?;
        }
    }
    let mut check =
        ServerLogCheck { checked: queues.iter().map(|q| q.len() as u64).sum(), ..Default::default() };
    for (count, status) in wanted.into_values() {
        if count > 1 {
            check.duplicated += 1;
        }
        // The store's status codes: 0 waiting, 1 processed, 2 undone.
        match (count, status) {
            (0, _) => check.missing += 1,
            (_, 1) => check.processed += 1,
            (_, 2) => check.undone += 1,
            _ => check.waiting += 1,
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_take_percentiles_and_the_worst_latency_per_second() {
        let sample = |sent_ms: u64, latency_ms: u64| Sample {
            sent_after: Duration::from_millis(sent_ms),
            latency: Duration::from_millis(latency_ms),
        };
        let samples =
            vec![sample(100, 5), sample(900, 30), sample(500, 8), sample(1500, 10), sample(3200, 7)];
        let report = probe_report(samples, 2);
        assert_eq!((report.samples, report.unanswered), (5, 2));
        assert_eq!((report.p50_ms, report.p99_ms, report.max_ms), (Some(8), Some(30), Some(30)));
        assert_eq!(report.p50_ms_per_second, [Some(8), Some(10), None, Some(7)]);
        assert_eq!(report.max_ms_per_second, [Some(30), Some(10), None, Some(7)]);
        let empty = probe_report(Vec::new(), 0);
        assert_eq!((empty.p50_ms, empty.max_ms, empty.max_ms_per_second.len()), (None, None, 0));
    }
}
