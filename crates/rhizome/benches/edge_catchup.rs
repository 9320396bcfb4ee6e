//! Catch-up after a long partition between an edge and its cloud (docs/edge.md): both run in
//! this process, the link through a TCP proxy that counts bytes. With the link down, a producer
//! writes `ACTIONS` actions at the edge and another `ACTIONS` at the cloud, on one channel both
//! follow; then the link comes back, and the time until both sides hold everything is measured,
//! with the bytes the link carried each way.
//!
//! `cargo bench -p rhizome --bench edge_catchup` with, in the environment:
//! - `ACTIONS` (default 1000000) on each side;
//! - `MODE=plain` (`inc` actions on `counter/1`) or `MODE=crdt` (`crdt/counter/inc` on the
//!   object `bench/1`);
//! - `FOLD=1` folds each author's consecutive deltas of one object into one on the way up;
//! - `SIDES=edge` or `SIDES=cloud` writes on one side only (up or down alone).

use rhizome_core::{App, Limits};
use rhizome_server::config::FileConfig;
use rhizome_server::link::UpstreamOptions;
use rhizome_server::{Server, ServerOptions};
use rhizome_store::Store as _;
use rhizome_testkit::Proxy;
use std::path::Path;
use std::time::{Duration, Instant};

const RULES: &str = r#"
[auth]
mode = "open"
[[channel]]
pattern = "counter/:id"
subscribe = "everyone"
write = "everyone"
[[action]]
type = "inc"
channel = "counter/{id}"
[[channel]]
pattern = "crdt/*"
subscribe = "everyone"
write = "everyone"
[[action]]
type = "crdt/*"
channel = "crdt/{key}"
"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn app() -> (App, Limits) {
    let file: FileConfig = toml::from_str(RULES).expect("rules");
    (file.app().expect("app"), Limits::default())
}

async fn start(dir: &Path, app: App, limits: Limits, upstream: Option<UpstreamOptions>) -> Server {
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.into(),
        subprotocol: 1,
        min_subprotocol: 1,
        development: false,
        limits,
        app,
        wakeups: Default::default(),
        upstream,
    };
    Server::start(options).await.expect("start")
}

/// `rhizome bench` with one producer of `actions` on the shared channel at `url`.
async fn produce(url: String, actions: usize, crdt: bool) {
    let args = rhizome_bench::BenchArgs {
        url,
        connections: 1,
        actions,
        batch: 500,
        window: 20_000,
        channel: rhizome_bench::ChannelMode::Shared,
        subscribers: 0,
        idle: None,
        idle_secs: 0,
        pid: None,
        token: "bench".into(),
        subprotocol: 1,
        timeout_secs: 3600,
        crdt,
        http: false,
        idle_http: None,
    };
    rhizome_bench::run(args).await.expect("producer");
}

/// Entries of `db`'s log received from its upstream.
fn received(db: &Path) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("db");
    conn.query_row("SELECT count(*) FROM log WHERE upstream = 1", [], |r| r.get::<_, i64>(0)).expect("count")
        as u64
}

/// The value of the counter `key` in the log at `dir`.
fn counter(dir: &Path, key: &str) -> i128 {
    let store = rhizome_store::SqliteStore::open(dir).expect("store");
    match store.read_object(key).expect("object") {
        Some((rhizome_crdt::Object::Counter(c), _)) => c.value(),
        _ => 0,
    }
}

fn main() {
    let actions: usize = env_or("ACTIONS", 1_000_000);
    let crdt = env_or::<String>("MODE", "plain".into()) == "crdt";
    let fold = env_or::<u8>("FOLD", 0) == 1;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cloud_dir, edge_dir) = (dir.path().join("cloud"), dir.path().join("edge"));
        let (cloud_app, limits) = app();
        let cloud = start(&cloud_dir, cloud_app.peer("edge".into()), limits, None).await;
        let proxy = Proxy::start(cloud.local_addr()).await.expect("proxy");
        let mut link = UpstreamOptions::new(proxy.url(), "edge:site:link".into(), None);
        link.fold_crdt = fold;
        link.backoff.max = Duration::from_millis(200);
        link.outbox_max = u64::MAX;
        link.outbox_bytes_max = u64::MAX;
        let (edge_app, limits) = app();
        let edge = start(&edge_dir, edge_app, limits, Some(link)).await;
        proxy.down(true);

        let sides = env_or::<String>("SIDES", "both".into());
        let (at_edge, at_cloud) = match sides.as_str() {
            "edge" => (actions, 0),
            "cloud" => (0, actions),
            _ => (actions, actions),
        };
        let loading = Instant::now();
        // A subscription at the edge makes it follow the channel, whichever side writes.
        produce(format!("ws://{}/", edge.local_addr()), at_edge.max(1), crdt).await;
        produce(format!("ws://{}/", cloud.local_addr()), at_cloud.max(1), crdt).await;
        let load = loading.elapsed();

        let started = Instant::now();
        proxy.down(false);
        let edge_log = edge_dir.join("rhizome.db");
        loop {
            // Checking reads the logs (a count over the edge's): not too often.
            tokio::time::sleep(Duration::from_millis(250)).await;
            let status = edge.link_status().expect("an edge");
            let stats = edge.stats().await.expect("stats");
            let up = status.confirmed >= stats.position;
            let total = (at_edge.max(1) + at_cloud.max(1)) as i128;
            let down = if crdt {
                counter(&edge_dir, "bench/1") == total && counter(&cloud_dir, "bench/1") == total
            } else {
                received(&edge_log) >= at_cloud.max(1) as u64
            };
            if up && down {
                break;
            }
        }
        let took = started.elapsed();
        println!(
            "edge catch-up: {} mode{}, {at_edge} actions at the edge and {at_cloud} at the cloud (loaded in {:.1} s): \
             converged in {:.2} s ({:.0} actions/s); link bytes up {:.1} MiB, down {:.1} MiB \
             ({:.0} / {:.0} bytes per action written at the edge / cloud), {} connection(s)",
            if crdt { "crdt" } else { "plain" },
            if fold { " with folding" } else { "" },
            load.as_secs_f64(),
            took.as_secs_f64(),
            (at_edge + at_cloud) as f64 / took.as_secs_f64(),
            proxy.bytes_up() as f64 / 1048576.0,
            proxy.bytes_down() as f64 / 1048576.0,
            proxy.bytes_up() as f64 / at_edge.max(1) as f64,
            proxy.bytes_down() as f64 / at_cloud.max(1) as f64,
            proxy.connections(),
        );
        edge.shutdown().await;
        cloud.shutdown().await;
    });
}
