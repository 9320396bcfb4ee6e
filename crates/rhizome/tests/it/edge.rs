//! Three `rhizome serve` processes: a cloud and two edges (`--upstream`), each edge behind a
//! fault-injecting TCP proxy. Clients write to the edges while one link is down for seconds and
//! the other is cut again and again; once the clients' queues drain at the edges and the links
//! catch up, the cloud holds every plain action exactly once, and the CRDT counter both edges' clients
//! incremented counts every increment at the cloud, at both edges and in every client's copy.

use crate::support::ServerProcess;
use rhizome_client::{Client, ClientOptions, Object};
use rhizome_testkit::Proxy;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "edge-test-secret";

/// Rules both kinds of node share.
const RULES: &str = r#"
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

/// Clients per edge, and actions each one queues (one in four a CRDT increment).
const CLIENTS: usize = 3;
const ACTIONS: usize = 4_000;

const WAIT: Duration = Duration::from_secs(120);

fn token(user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600;
    let claims = json!({"sub": user, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
}

/// Every id in the log of the node whose database is `db`, with its copies and highest status.
fn logged(db: &Path) -> HashMap<String, (i64, i64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the log");
    let mut logged: HashMap<String, (i64, i64)> = HashMap::new();
    let mut stmt = conn.prepare("SELECT id, status FROM log").expect("prepare");
    let mut rows = stmt.query([]).expect("query");
    while let Some(row) = rows.next().expect("row") {
        let entry = logged.entry(row.get(0).expect("id")).or_insert((0, -1));
        entry.0 += 1;
        entry.1 = entry.1.max(row.get(1).expect("status"));
    }
    logged
}

async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the counter `key` as a client of `url` receives it, once it equals `expected`
/// (or whatever it is when the wait ends).
async fn counter_seen(url: &str, path: &Path, user: &str, key: &str, expected: i128) -> i128 {
    let options = ClientOptions::new(url, path, user).token(token(user));
    let (client, events) = Client::open(options).await.expect("open");
    drop(events);
    client.subscribe(&format!("crdt/{key}")).await.expect("subscribe");
    let value = || async {
        match client.object(key).await.expect("object") {
            Some(Object::Counter(c)) => c.value(),
            _ => -1,
        }
    };
    let deadline = Instant::now() + WAIT;
    let mut seen = value().await;
    while seen != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = value().await;
    }
    client.close().await;
    seen
}

#[test]
fn a_cloud_and_two_edges_converge_after_their_links_fail_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud_config = dir.path().join("cloud.toml");
    let auth = format!("[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\npeers = [\"edge\"]\n");
    std::fs::write(&cloud_config, format!("{auth}{RULES}")).expect("config");
    let edge_config = dir.path().join("edge.toml");
    std::fs::write(&edge_config, format!("[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n{RULES}"))
        .expect("config");
    let cloud = ServerProcess::start(&cloud_config, &dir.path().join("cloud"));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let proxies = [
            Proxy::start(cloud.addr()).await.expect("proxy"),
            Proxy::start(cloud.addr()).await.expect("proxy"),
        ];
        let link_token = token("edge");
        let edges: Vec<ServerProcess> = ["a", "b"]
            .iter()
            .zip(&proxies)
            .map(|(name, proxy)| {
                let node = format!("edge:{name}:link");
                let args =
                    ["--upstream", &proxy.url(), "--upstream-node", &node, "--upstream-token", &link_token];
                ServerProcess::start_with(&edge_config, &dir.path().join(name), &args)
            })
            .collect();

        // Clients queue their actions at their edge, which answers them whatever its link does.
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        for (e, edge) in edges.iter().enumerate() {
            for c in 0..CLIENTS {
                let user = format!("u{e}{c}");
                let path = dir.path().join(format!("{user}.sqlite"));
                let mut options =
                    ClientOptions::new(edge.url.as_str(), &path, user.as_str()).token(token(&user));
                options.sync_actions_max = 100;
                let (client, events) = Client::open(options).await.expect("open");
                drop(events);
                client.subscribe("crdt/shared").await.expect("subscribe");
                let actions = (0..ACTIONS)
                    .map(|n| match n % 4 {
                        0 => json!({"type": "crdt/counter/inc", "key": "shared", "by": 1}),
                        _ => json!({"type": "inc", "id": format!("k{}", n % 5)}),
                    })
                    .collect();
                let queued = client.add_many(actions).await.expect("queue");
                // The CRDT increments (every fourth) may reach the cloud folded into fewer
                // actions (the link's `fold_crdt`): the counter below accounts for them.
                ids.extend(queued.iter().enumerate().filter(|(n, _)| n % 4 != 0).map(|(_, id)| id.text()));
                clients.push(client);
            }
        }
        // Edge a's link is down for three seconds; edge b's is cut every 50 ms for as long.
        let started = Instant::now();
        proxies[0].down(true);
        while started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            proxies[1].cut();
        }
        proxies[0].down(false);
        for client in &clients {
            wait_until("the clients' queues to drain at their edges", || async {
                let s = client.log_stats().await.expect("stats");
                s.queued == 0 && s.awaiting_outcome == 0
            })
            .await;
        }
        let cloud_db = dir.path().join("cloud/rhizome.db");
        wait_until("the cloud to hold every plain action", || async {
            let logged = logged(&cloud_db);
            ids.iter().all(|id| logged.contains_key(id))
        })
        .await;
        let logged = logged(&cloud_db);
        let wrong: Vec<_> =
            ids.iter().filter(|id| logged[*id] != (1, 1)).map(|id| (id, logged[id])).collect();
        assert!(wrong.is_empty(), "not logged once and processed: {wrong:?}");
        let increments = (2 * CLIENTS * ACTIONS / 4) as i128;
        for (n, url) in [&cloud.url, &edges[0].url, &edges[1].url].into_iter().enumerate() {
            let path = dir.path().join(format!("reader{n}.sqlite"));
            let seen = counter_seen(url, &path, &format!("reader{n}"), "shared", increments).await;
            assert_eq!(seen, increments, "the counter at {url} counts both edges' increments");
        }
        // Every client's copy too, joined from what its edge sent it.
        for client in &clients {
            wait_until("each client's copy of the counter to count everything", || async {
                let copy = client.object("shared").await.expect("object");
                matches!(copy, Some(Object::Counter(c)) if c.value() == increments)
            })
            .await;
        }
        eprintln!(
            "{} actions ({} plain); proxied bytes {} and {}; link connections {} and {}",
            2 * CLIENTS * ACTIONS,
            ids.len(),
            proxies[0].bytes(),
            proxies[1].bytes(),
            proxies[0].connections(),
            proxies[1].connections()
        );
        assert!(proxies[1].connections() > 1, "edge b's link was cut and came back");
        for client in clients {
            client.close().await;
        }
    });
}
