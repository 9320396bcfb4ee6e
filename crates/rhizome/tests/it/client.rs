//! The Rust client (`rhizome-client`) against a real `rhizome serve` process with the
//! benchmark's app: a client killed in the middle of its backlog resumes from its SQLite file
//! with nothing lost and nothing processed twice (checked in the server's log), and a
//! subscriber whose device was offline for (simulated) weeks catches up on its channel.

use crate::support::{root, ServerProcess};
use rhizome_client::{Client, ClientOptions, Clock, Event, State};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Polls `cond` every 10 ms until it holds; panics with `what` after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Status code and count of each id in the server's log (read-only).
fn server_log(db: &Path, ids: &[String]) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the server's log");
    // Read whole once: the log has no index on id texts.
    let mut logged: HashMap<String, (i64, i64)> = HashMap::new();
    let mut stmt = conn.prepare("SELECT id, status FROM log").expect("prepare");
    let mut rows = stmt.query([]).expect("query");
    while let Some(row) = rows.next().expect("row") {
        let entry = logged.entry(row.get(0).expect("id")).or_insert((-1, 0));
        entry.0 = entry.0.max(row.get(1).expect("status"));
        entry.1 += 1;
    }
    ids.iter().map(|id| logged.get(id).copied().unwrap_or((-1, 0))).collect()
}

#[test]
fn a_client_killed_mid_backlog_resumes_against_rhizome_serve() {
    const ACTIONS: usize = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("server");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), &data);
    let path = dir.path().join("alice.sqlite");
    let mut options = ClientOptions::new(server.url.as_str(), &path, "alice");
    options.sync_actions_max = 200;
    options.inflight_syncs_max = 4;

    let ids = runtime().block_on(async {
        // Events are not read here: the receiver is dropped so the client never waits for room.
        let (client, events) = Client::open(options.clone()).await.expect("open");
        drop(events);
        let actions = (0..ACTIONS).map(|n| json!({"type": "inc", "id": "k", "n": n})).collect();
        let ids = client.add_many(actions).await.expect("queue");
        wait_until("part of the backlog to be confirmed", || async {
            client.session_stats().actions_acked >= 2_000
        })
        .await;
        // Killed: the task is aborted with syncs in flight, nothing is closed politely.
        drop(client);
        // A SQLite write the dead instance had begun on a blocking thread still finishes;
        // let it, so the counts below are final.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (client, events) = Client::open(options).await.expect("reopen");
        drop(events);
        let left = client.log_stats().await.expect("stats");
        assert!(left.queued > 0 && left.queued < ACTIONS as u64, "killed mid-backlog: {left:?}");
        wait_until("the rest of the backlog to be confirmed", || async {
            client.log_stats().await.is_ok_and(|s| s.queued == 0)
        })
        .await;
        client.close().await;
        ids
    });

    let texts: Vec<String> = ids.iter().map(|id| id.text()).collect();
    let log = server_log(&data.join("rhizome.db"), &texts);
    let once_processed = log.iter().filter(|(status, count)| *status == 1 && *count == 1).count();
    assert_eq!(once_processed, ACTIONS, "every action in the log once, processed");
    server.kill();
}

/// A clock the test moves forward.
#[derive(Debug)]
struct ShiftedClock(AtomicI64);

impl Clock for ShiftedClock {
    fn now_ms(&self) -> i64 {
        rhizome_client::SystemClock.now_ms() + self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn a_subscriber_offline_for_weeks_catches_up_against_rhizome_serve() {
    const MISSED: i64 = 3_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), &dir.path().join("server"));
    let clock = Arc::new(ShiftedClock(AtomicI64::new(0)));
    let mut alice_options = ClientOptions::new(server.url.as_str(), dir.path().join("alice.sqlite"), "alice");
    alice_options.clock = clock.clone();
    let bob_options = ClientOptions::new(server.url.as_str(), dir.path().join("bob.sqlite"), "bob");

    runtime().block_on(async {
        let (alice, mut alice_events) = Client::open(alice_options).await.expect("open alice");
        let (bob, bob_events) = Client::open(bob_options).await.expect("open bob");
        drop(bob_events);
        alice.subscribe("counter/w").await.expect("subscribe");
        wait_until("the subscription to be answered", || async {
            alice.subscriptions().await.is_ok_and(|s| s.iter().any(|s| s.since.is_some()))
        })
        .await;
        let received = |events: &mut rhizome_client::Events, into: &mut Vec<i64>| {
            while let Ok(event) = events.try_recv() {
                if let Event::Action { action, .. } = event {
                    into.extend(action["n"].as_i64());
                }
            }
        };
        let mut got = Vec::new();
        bob.add(json!({"type": "inc", "id": "w", "n": -1})).await.expect("add");
        wait_until("live delivery", || {
            received(&mut alice_events, &mut got);
            let done = got == [-1];
            async move { done }
        })
        .await;

        // The device loses its network; three weeks later (on its clock) it is back.
        alice.set_online(false);
        let mut state = alice.state();
        let offline = tokio::time::timeout(WAIT, state.wait_for(|s| *s == State::Offline)).await.is_ok();
        assert!(offline, "alice went offline");
        bob.add_many((0..MISSED).map(|n| json!({"type": "inc", "id": "w", "n": n})).collect())
            .await
            .expect("add");
        wait_until("bob's actions to be processed", || async {
            bob.log_stats().await.is_ok_and(|s| s.queued == 0)
        })
        .await;
        clock.0.store(21 * 24 * 3_600_000, Ordering::SeqCst);
        alice.set_online(true);
        wait_until("the catch-up", || {
            received(&mut alice_events, &mut got);
            let done = got.len() as i64 > MISSED;
            async move { done }
        })
        .await;
        // Anything extra would come before a marker sent after the catch-up.
        bob.add(json!({"type": "inc", "id": "w", "n": MISSED})).await.expect("add");
        wait_until("the marker", || {
            received(&mut alice_events, &mut got);
            let done = got.last() == Some(&MISSED);
            async move { done }
        })
        .await;
        let expected: Vec<i64> = std::iter::once(-1).chain(0..=MISSED).collect();
        assert_eq!(got, expected, "each missed action once, in order");
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
        alice.close().await;
        bob.close().await;
    });
    server.kill();
}
