//! Actions queued with no server reachable are all processed once it comes up; undos are
//! recorded; a refused token stops the client for good; the app's word that the device is
//! offline (`Client::set_online`) keeps the client from connecting until it is back.

use crate::support::{open, options, wait_drained, wait_until, TestServer, WAIT};
use anyhow::Result;
use rhizome_client::{Backoff, Event, State};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_client_opened_offline_connects_only_once_told_it_is_online() -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&format!("ws://{addr}/"), &dir.path().join("a.sqlite"), "alice");
    o.online = false;
    let (client, events) = open(o).await?;
    let ids =
        client.add_many((0..200).map(|n| json!({"type": "inc", "id": "off", "n": n})).collect()).await?;
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == State::Offline)).await??;
    // Retries of a client that believed it was online would have come by now (backoff 20 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempt = listener.accept();
    assert!(
        matches!(&attempt, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection attempt while offline: {attempt:?}"
    );
    assert_eq!(events.count(|e| matches!(e, Event::Disconnected { .. })), 0);
    drop(listener);

    let server = TestServer::start_at(addr).await?;
    client.set_online(true);
    wait_drained(&client).await?;
    assert_eq!(server.check_exactly_once(&ids).await?, 0, "none left waiting");
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn going_offline_closes_the_connection_and_coming_back_skips_the_reconnect_delay() -> Result<()> {
    let server = TestServer::start().await?;
    let addr = server.addr;
    let dir = tempfile::tempdir()?;
    let mut o = options(&server.url(), &dir.path().join("a.sqlite"), "alice");
    // Any reconnect that waits its delay would outlast the test's waits.
    o.backoff = Backoff { base: Duration::from_secs(10_000), max: Duration::from_secs(10_000) };
    let (client, events) = open(o).await?;
    let first = client.add(json!({"type": "inc", "id": "a"})).await?;
    wait_drained(&client).await?;

    client.set_online(false);
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == State::Offline)).await??;
    let offline =
        |e: &Event| matches!(e, Event::Disconnected { reason, retry_in: None } if reason == "offline");
    wait_until("the offline disconnection to be reported", || async { Ok(events.count(offline) == 1) })
        .await?;
    let queued =
        client.add_many((0..50).map(|n| json!({"type": "inc", "id": "b", "n": n})).collect()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.log_stats().await?.queued, 50, "nothing is sent while offline");

    client.set_online(true);
    wait_drained(&client).await?;
    let both: Vec<_> = std::iter::once(first.clone()).chain(queued).collect();
    assert_eq!(server.check_exactly_once(&both).await?, 0, "none left waiting");

    // Dropped by the server: the client waits its delay (up to 10,000 s)...
    server.stop().await;
    let retry_in =
        match &*tokio::time::timeout(WAIT, state.wait_for(|s| matches!(s, State::Disconnected { .. })))
            .await??
        {
            State::Disconnected { retry_in } => *retry_in,
            other => anyhow::bail!("not disconnected: {other:?}"),
        };
    let server = TestServer::start_at(addr).await?;
    let last = client.add(json!({"type": "inc", "id": "c"})).await?;
    // ...unless the device's network comes back (an offline spell in between).
    let back = std::time::Instant::now();
    client.set_online(false);
    client.set_online(true);
    wait_drained(&client).await?;
    assert!(
        back.elapsed() < retry_in,
        "synced in {:?}, before the delay {retry_in:?} was out",
        back.elapsed()
    );
    assert_eq!(server.check_exactly_once(&[last]).await?, 0, "none left waiting");
    assert_eq!(events.count(|e| matches!(e, Event::Processed { id } if *id == first)), 1);
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn actions_queued_offline_are_all_processed_once_the_server_is_up() -> Result<()> {
    // A port nobody listens on yet: the client starts offline and retries.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dir = tempfile::tempdir()?;
    let url = format!("ws://{addr}/");
    let (client, events) = open(options(&url, &dir.path().join("a.sqlite"), "alice")).await?;
    let actions = (0..300).map(|n| json!({"type": "inc", "id": "off", "n": n})).collect();
    let ids = client.add_many(actions).await?;
    assert_eq!(client.log_stats().await?.queued, 300);
    wait_until("a failed attempt", || async {
        Ok(events.count(|e| matches!(e, Event::Disconnected { .. })) > 0)
    })
    .await?;

    let server = TestServer::start_at(addr).await?;
    wait_drained(&client).await?;
    let processed = server.processed.lock().map(|p| p.clone()).unwrap_or_default();
    for id in &ids {
        assert_eq!(processed.get(&id.text()), Some(&1), "{id}");
    }
    assert_eq!(processed.len(), 300);
    let is_processed = |e: &Event| matches!(e, Event::Processed { .. });
    wait_until("every answer to reach the app", || async { Ok(events.count(is_processed) == 300) }).await?;
    let answered: Vec<_> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            Event::Processed { id } => Some(id),
            _ => None,
        })
        .collect();
    assert!(answered == ids, "one logux/processed per action, in order");
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_undo_is_recorded_and_reported() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (client, events) = open(options(&server.url(), &dir.path().join("a.sqlite"), "alice")).await?;
    let id = client.add(json!({"type": "forbidden"})).await?;
    wait_drained(&client).await?;
    let is_undone = |e: &Event| matches!(e, Event::Undone { .. });
    wait_until("the undo to reach the app", || async { Ok(events.count(is_undone) == 1) }).await?;
    let undone = client.undone().await?;
    assert_eq!(undone.len(), 1);
    assert_eq!((undone[0].id.as_str(), undone[0].reason.as_str()), (id.text().as_str(), "denied"));
    assert_eq!(undone[0].action, json!({"type": "forbidden"}));
    assert_eq!(
        events.count(|e| matches!(e, Event::Undone { id: i, reason, .. } if *i == id && reason == "denied")),
        1
    );
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_stop_the_client_instead_of_retrying() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&server.url(), &dir.path().join("a.sqlite"), "alice");
    o.token = Some("bad".into());
    let (client, events) = open(o).await?;
    let mut state = client.state();
    tokio::time::timeout(crate::support::WAIT, state.wait_for(|s| *s == State::Stopped)).await??;
    assert_eq!(
        events.count(|e| matches!(e, Event::ServerError { kind, .. } if kind == "wrong-credentials")),
        1
    );
    assert_eq!(client.session_stats().connections, 0);
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn frames_stay_under_the_byte_limit_and_oversized_actions_are_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&server.url(), &dir.path().join("a.sqlite"), "alice");
    o.sync_bytes_max = 4096;
    let (client, _events) = open(o).await?;
    let pad = "x".repeat(300);
    let too_big = client.add(json!({"type": "inc", "id": "b", "pad": "x".repeat(5000)})).await;
    assert!(matches!(too_big, Err(rhizome_client::ClientError::Invalid(_))), "{too_big:?}");
    let ids = client
        .add_many((0..100).map(|n| json!({"type": "inc", "id": "b", "n": n, "pad": pad})).collect())
        .await?;
    wait_drained(&client).await?;
    assert_eq!(server.check_exactly_once(&ids).await?, 0);
    let stats = client.session_stats();
    // About 330 bytes per action: at most 12 in 4096 bytes, so at least 9 frames.
    assert!(stats.syncs_sent >= 9, "{stats:?}");
    assert_eq!(stats.actions_sent, 100);
    client.close().await;
    server.stop().await;
    Ok(())
}

/// A clock `shift_ms` ahead of the system's.
#[derive(Debug)]
struct Shifted(i64);

impl rhizome_client::Clock for Shifted {
    fn now_ms(&self) -> i64 {
        rhizome_client::SystemClock.now_ms() + self.0
    }
}

#[tokio::test]
async fn a_clock_weeks_ahead_is_corrected_in_the_times_sent() -> Result<()> {
    use rhizome_client::Clock;
    const THREE_WEEKS_MS: i64 = 21 * 24 * 3600 * 1000;
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&server.url(), &dir.path().join("a.sqlite"), "alice");
    o.clock = std::sync::Arc::new(Shifted(THREE_WEEKS_MS));
    let (client, events) = open(o).await?;
    let id = client.add(json!({"type": "inc", "id": "clock"})).await?;
    wait_drained(&client).await?;
    let fix = events
        .all()
        .iter()
        .find_map(|e| match e {
            Event::Connected { time_fix, .. } => Some(*time_fix),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no Connected event"))?;
    assert!((fix - THREE_WEEKS_MS).abs() < 5_000, "timeFix {fix}");
    // The id keeps the client's clock; the time the server got is in its own clock.
    assert!(id.ms - rhizome_client::SystemClock.now_ms() > THREE_WEEKS_MS - 60_000);
    let time = server.times.lock().map(|t| t.get(&id.text()).copied()).unwrap_or_default();
    let server_now = rhizome_client::SystemClock.now_ms();
    let time = time.ok_or_else(|| anyhow::anyhow!("not processed"))?;
    assert!((server_now - time).abs() < 60_000, "server time {time}, now {server_now}");
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn going_offline_is_the_state_at_once_even_while_the_app_reads_no_events() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&server.url(), &dir.path().join("a.sqlite"), "alice");
    o.events_capacity = 1;
    let (client, mut events) = rhizome_client::Client::open(o).await?;
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == State::Connected)).await??;
    // The unread `Connected` event fills the channel: the offline event waits for room.
    client.set_online(false);
    // (The watch's guard is dropped at once: the driver cannot change the state under it.)
    let offline =
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| *s == State::Offline)).await.is_ok();
    assert!(offline, "state: {:?}", *client.state().borrow());
    assert!(matches!(events.recv().await, Some(Event::Connected { .. })));
    let next = tokio::time::timeout(Duration::from_secs(10), events.recv()).await?;
    assert!(
        matches!(&next, Some(Event::Disconnected { reason, retry_in: None }) if reason == "offline"),
        "{next:?}"
    );
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_client_opened_offline_says_so_from_the_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut o = options("ws://127.0.0.1:1/", &dir.path().join("a.sqlite"), "alice");
    o.online = false;
    let (client, _events) = open(o).await?;
    assert_eq!(*client.state().borrow(), State::Offline);
    client.close().await;
    Ok(())
}
