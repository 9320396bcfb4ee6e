//! The log failing to commit: nothing unacknowledged is confirmed, nothing is lost.

use crate::support::{Event, TestServer};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// SQLite's busy timeout of the server's writer: a transaction that cannot take the write lock
/// for this long fails.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_commit_no_later_sync_is_confirmed_and_a_resend_loses_nothing() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    // Another process holds the log's write lock: the writer's next transaction waits its busy
    // timeout, then fails. A real failure of the real store, as a full disk would cause.
    let lock = rusqlite::Connection::open(server.db_path())?;
    lock.execute_batch("BEGIN IMMEDIATE")?;
    let started = tokio::time::Instant::now();
    let first = alice.send_action(json!({"type": "inc", "id": "a"})).await?;
    // The writer has taken the first sync into a transaction by now; the second waits for the
    // next one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = alice.send_action(json!({"type": "inc", "id": "b"})).await?;
    // Released after the first transaction failed (at about 10 s) and before the second one
    // would (at about 20 s), with 5 s to spare each way.
    tokio::time::sleep_until(started + WRITER_BUSY_TIMEOUT + Duration::from_secs(5)).await;
    lock.execute_batch("ROLLBACK")?;
    drop(lock);

    // The second sync commits while the connection closes, but confirming it would confirm the
    // first as well (clients confirm their queue in order): no `synced` at all, then the close.
    let mut seen = Vec::new();
    let close = loop {
        match alice.next_event_within(Duration::from_secs(30)).await? {
            Event::Text(text) => {
                let message: Value = serde_json::from_str(&text)?;
                if message[0] == "synced" {
                    bail!("{message} after a failed commit; before it: {seen:?}");
                }
                seen.push(message);
            }
            Event::Close(code) => break code,
            other => bail!("the connection ended with {other:?}, not a close; before it: {seen:?}"),
        }
    };
    assert_eq!(close, Some(1011), "closed as a storage failure");

    // The client sends both again: each is processed, once.
    let mut again = server.login("alice:c1:t1").await?;
    let ms = |id: &str| id.split(' ').next().and_then(|ms| ms.parse::<i64>().ok()).unwrap_or_default();
    for id in [&first, &second] {
        again.send_action_at(json!({"type": "inc", "id": "again"}), ms(id)).await?;
    }
    again.wait_processed(&first).await?;
    again.wait_processed(&second).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// A second server on the same data directory is refused while the first runs (it would have a
/// hub and a writer of its own on the same log), and starts once the first has stopped.
#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let options = || -> Result<rhizome_server::ServerOptions> {
        Ok(rhizome_server::ServerOptions {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().into(),
            subprotocol: 1,
            min_subprotocol: 1,
            development: false,
            limits: rhizome_core::Limits::default(),
            app: rhizome_core::App::new(crate::support::Open),
            wakeups: rhizome_server::wakeup::WakeupOptions::default(),
            upstream: None,
        })
    };
    let first = rhizome_server::Server::start(options()?).await?;
    match rhizome_server::Server::start(options()?).await {
        Err(rhizome_server::StartError::Locked(path)) => assert_eq!(path, dir.path()),
        Err(other) => bail!("expected Locked, got {other}"),
        Ok(_) => bail!("a second server started on the same data directory"),
    }
    first.shutdown().await;
    let again = rhizome_server::Server::start(options()?).await?;
    again.shutdown().await;
    Ok(())
}
