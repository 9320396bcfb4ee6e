//! `process` outlives the connection that sent the action: a client that drops while its
//! committed actions are still being processed loses none of them, and when it re-sends them
//! it gets each one's answer once processing ends, without any being processed twice. Answers
//! that a closed connection could not send are kept in the log for the client.

use crate::support::{sync_actions, Client, Open, Slow, TestServer};
use anyhow::{anyhow, Result};
use rhizome_core::{App, Limits};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn start(delay: Duration) -> Result<(TestServer, Arc<Mutex<HashMap<String, u32>>>)> {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let app = App::new(Open).action_type("slow", Slow { delay, counts: counts.clone() });
    Ok((TestServer::with_app(app, Limits::default()).await?, counts))
}

/// One `sync` numbered `added` of `n` `slow` actions with ids `<ms> <node> <i>`; returns
/// their full ids. The same `ms` sends the same ids again on any connection.
async fn send_batch(c: &mut Client, added: u64, ms: i64, n: u64) -> Result<Vec<String>> {
    let shift = ms - c.base_time;
    let mut message = vec![json!("sync"), json!(added)];
    for i in 0..n {
        message.push(json!({"type": "slow"}));
        message.push(json!({"id": [shift, i], "time": shift}));
    }
    c.send_json(&Value::from(message)).await?;
    Ok((0..n).map(|i| format!("{ms} alice:c1:t1 {i}")).collect())
}

#[tokio::test]
async fn actions_committed_before_a_drop_are_processed_and_answered_on_resend() -> Result<()> {
    // Two `sync`s: 20 actions, then 150 at 50 ms each (7.5 s of processing, longer than a
    // closing connection waits for its in-flight `sync`s).
    let (server, counts) = start(Duration::from_millis(50)).await?;
    let mut c = Client::open(server.addr).await?;
    c.connect("alice:c1:t1", "t").await?;
    let (first, second) = (c.base_time + 1, c.base_time + 2);
    let mut ids = send_batch(&mut c, 1, first, 20).await?;
    ids.extend(send_batch(&mut c, 2, second, 150).await?);
    // Both are committed long before the first is processed; the client drops meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);

    // Processing goes on without the connection.
    let processed = |counts: &Arc<Mutex<HashMap<String, u32>>>| counts.lock().map(|c| c.len()).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while processed(&counts) < 130 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "only {} processed", processed(&counts));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client comes back while the rest is still being processed and re-sends everything:
    // every id is answered (those still in process when their processing ends).
    let mut c = Client::open(server.addr).await?;
    c.connect("alice:c1:t1", "t").await?;
    send_batch(&mut c, 1, first, 20).await?;
    send_batch(&mut c, 2, second, 150).await?;
    let mut answered: HashSet<String> = HashSet::new();
    while answered.len() < ids.len() {
        let m = c.next_json().await?;
        for a in sync_actions(&m) {
            if a["type"] == "logux/undo" {
                return Err(anyhow!("undone: {a}"));
            }
            if a["type"] == "logux/processed" {
                answered.insert(a["id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    assert_eq!(answered, ids.iter().cloned().collect::<HashSet<_>>());
    let counts = counts.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    assert_eq!(counts.len(), ids.len(), "every action processed");
    assert!(counts.values().all(|&n| n == 1), "none twice: {counts:?}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_replacing_connection_gets_the_answers_its_predecessor_could_not_send() -> Result<()> {
    let (server, counts) = start(Duration::from_millis(20)).await?;
    let mut old = Client::open(server.addr).await?;
    old.connect("alice:c1:t1", "t").await?;
    // 60 actions: 1.2 s of processing, answered at its end.
    let ms = old.base_time + 1;
    let ids = send_batch(&mut old, 1, ms, 60).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The same client connects again while the first connection is still processing: the old
    // one is closed, and what it could not answer is kept for the client and reaches the new one
    // without anything being re-sent.
    let mut new = Client::open(server.addr).await?;
    new.connect("alice:c1:t1", "t").await?;
    let mut answered: HashSet<String> = HashSet::new();
    while answered.len() < ids.len() {
        let m = new.next_json().await?;
        for a in sync_actions(&m) {
            if a["type"] == "logux/processed" {
                answered.insert(a["id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    assert_eq!(answered, ids.iter().cloned().collect::<HashSet<_>>());
    let counts = counts.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    assert_eq!(counts.len(), ids.len());
    assert!(counts.values().all(|&n| n == 1), "none twice: {counts:?}");
    drop(old);
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_of_a_dropped_connection_leaves_its_later_committed_actions_processed() -> Result<()>
{
    let (server, counts) = start(Duration::ZERO).await?;
    // Another process holds the log's write lock: the writer's transaction fails after its
    // 10 s busy timeout, as on a full disk.
    let lock = rusqlite::Connection::open(server.db_path())?;
    lock.execute_batch("BEGIN IMMEDIATE")?;
    let started = tokio::time::Instant::now();
    let mut c = Client::open(server.addr).await?;
    c.connect("alice:c1:t1", "t").await?;
    let (first, second) = (c.base_time + 1, c.base_time + 2);
    let mut ids = send_batch(&mut c, 1, first, 1).await?;
    // The first sync is in the blocked transaction; the second waits for the next one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ids.extend(send_batch(&mut c, 2, second, 1).await?);
    // The client goes away with both in flight: a task of their own finishes them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c);
    // Released after the first transaction failed (at about 10 s) and before the second one
    // would (at about 20 s): the second commits, and its action must still be processed.
    tokio::time::sleep_until(started + Duration::from_secs(15)).await;
    lock.execute_batch("ROLLBACK")?;
    drop(lock);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counts.lock().map(|c| c.len()).unwrap_or(0) < 1 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the committed action was never processed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client sends both again: both answered, each processed once.
    let mut c = Client::open(server.addr).await?;
    c.connect("alice:c1:t1", "t").await?;
    send_batch(&mut c, 1, first, 1).await?;
    send_batch(&mut c, 2, second, 1).await?;
    let mut answered: HashSet<String> = HashSet::new();
    while answered.len() < ids.len() {
        let m = c.next_json().await?;
        for a in sync_actions(&m) {
            if a["type"] == "logux/processed" {
                answered.insert(a["id"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    assert_eq!(answered, ids.iter().cloned().collect::<HashSet<_>>());
    let counts = counts.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    assert_eq!(counts.len(), 2, "both processed: {counts:?}");
    assert!(counts.values().all(|&n| n == 1), "none twice: {counts:?}");
    server.stop().await;
    Ok(())
}
