//! The reconnect loop uses the configured backoff with its seeded jitter, and honours an
//! HTTP `Retry-After` hint (delays are compared with the pure function, not timed); pings
//! keep a quiet connection open, and a dead link is noticed by the timeout.

use crate::support::{open, options, wait_until, Proxy, TestServer};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rhizome_client::{Backoff, Event, State};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn retry_delays(events: &[Event]) -> Vec<Duration> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Disconnected { retry_in, .. } => *retry_in,
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn retries_follow_the_seeded_backoff() -> Result<()> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&format!("ws://{addr}/"), &dir.path().join("a.sqlite"), "alice");
    o.backoff = Backoff { base: Duration::from_millis(2), max: Duration::from_millis(16) };
    o.seed = Some(42);
    let backoff = o.backoff;
    let (client, events) = open(o).await?;
    crate::support::wait_until("six failed attempts", || async {
        Ok(retry_delays(&events.all()).len() >= 6)
    })
    .await?;
    client.close().await;
    let mut rng = StdRng::seed_from_u64(42);
    let expected: Vec<Duration> = (0..6).map(|n| backoff.delay(n, None, &mut rng)).collect();
    assert_eq!(retry_delays(&events.all())[..6], expected[..]);
    Ok(())
}

/// A server shedding load: every upgrade is answered 503 with `Retry-After: 7`. Returns its
/// address and the count of connection attempts.
async fn shedding_server() -> Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    Ok((addr, attempts))
}

#[tokio::test]
async fn a_retry_after_header_is_honoured() -> Result<()> {
    let (addr, _attempts) = shedding_server().await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&format!("ws://{addr}/"), &dir.path().join("a.sqlite"), "alice");
    o.seed = Some(5);
    let backoff = o.backoff;
    let (client, events) = open(o).await?;
    crate::support::wait_until("a refused attempt", || async { Ok(!retry_delays(&events.all()).is_empty()) })
        .await?;
    client.close().await;
    let mut rng = StdRng::seed_from_u64(5);
    assert_eq!(retry_delays(&events.all())[0], backoff.delay(0, Some(Duration::from_secs(7)), &mut rng));
    Ok(())
}

#[tokio::test]
async fn a_retry_after_hint_holds_when_the_network_comes_back_meanwhile() -> Result<()> {
    let (addr, attempts) = shedding_server().await?;
    let dir = tempfile::tempdir()?;
    let (client, events) =
        open(options(&format!("ws://{addr}/"), &dir.path().join("a.sqlite"), "alice")).await?;
    crate::support::wait_until("a refused attempt", || async { Ok(!retry_delays(&events.all()).is_empty()) })
        .await?;
    // The device's network drops and comes back: that skips a reconnect delay, not the
    // server's hint.
    client.set_online(false);
    client.set_online(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "no attempt before the 7 s hint");
    assert!(
        matches!(*client.state().borrow(), rhizome_client::State::Disconnected { retry_in } if retry_in > Duration::from_secs(4)),
        "{:?}",
        *client.state().borrow()
    );
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn pings_both_ways_keep_an_idle_connection_open() -> Result<()> {
    // The server pings after 100 ms of silence and drops a client that does not answer
    // within 400 ms; one client leaves pinging to the server, the other pings every 50 ms.
    let limits = rhizome_core::Limits {
        ping_interval: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
        ..rhizome_core::Limits::default()
    };
    let server = TestServer::start_with("127.0.0.1:0".parse()?, limits).await?;
    let dir = tempfile::tempdir()?;
    let (quiet, _quiet_events) = open(options(&server.url(), &dir.path().join("q.sqlite"), "quiet")).await?;
    let mut o = options(&server.url(), &dir.path().join("p.sqlite"), "pinger");
    o.ping_interval = Duration::from_millis(50);
    o.timeout = Duration::from_millis(300);
    let (pinger, _pinger_events) = open(o).await?;
    wait_until("both connected", || async {
        Ok(quiet.session_stats().connections == 1 && pinger.session_stats().connections == 1)
    })
    .await?;
    // Many ping periods of silence. This wait asserts nothing by itself; the counts below do.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(quiet.session_stats().connections, 1, "the quiet client answered every ping");
    assert_eq!(pinger.session_stats().connections, 1, "the server answered every ping");
    assert_eq!(*quiet.state().borrow(), State::Connected);
    quiet.close().await;
    pinger.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_dead_link_is_noticed_by_the_timeout_and_reconnected() -> Result<()> {
    let server = TestServer::start().await?;
    let proxy = Proxy::start(server.addr).await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&proxy.url(), &dir.path().join("a.sqlite"), "alice");
    o.ping_interval = Duration::from_millis(50);
    o.timeout = Duration::from_millis(300);
    let (client, events) = open(o).await?;
    wait_until("connected", || async { Ok(client.session_stats().connections == 1) }).await?;

    proxy.freeze(true);
    let id = client.add(json!({"type": "inc", "id": "dead"})).await?;
    let timed_out = |e: &Event| matches!(e, Event::Disconnected { reason, .. } if reason.contains("timeout") || reason.contains("no answer"));
    wait_until("the timeout", || async { Ok(events.count(timed_out) >= 1) }).await?;
    proxy.freeze(false);
    wait_until("the action to be processed", || async {
        Ok(events.count(|e| matches!(e, Event::Processed { id: p } if *p == id)) == 1)
    })
    .await?;
    assert!(client.session_stats().connections >= 2);
    assert_eq!(server.processed_counts(), (1, 1));
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_server_that_accepts_and_drops_at_once_does_not_reset_the_backoff() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A shedding server: it completes the handshake, then closes before anything else.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else { return };
                let _connect = ws.next().await;
                let now = rhizome_client::Clock::now_ms(&rhizome_client::SystemClock);
                let connected = format!("[\"connected\",5,\"server:shed\",[{now},{now}]]");
                let _ = ws.send(Message::text(connected)).await;
                let _ = ws.close(None).await;
            });
        }
    });
    let dir = tempfile::tempdir()?;
    let mut o = options(&format!("ws://{addr}/"), &dir.path().join("a.sqlite"), "alice");
    o.backoff = Backoff { base: Duration::from_millis(2), max: Duration::from_millis(16) };
    o.seed = Some(9);
    let backoff = o.backoff;
    let (client, events) = open(o).await?;
    wait_until("five drops", || async { Ok(retry_delays(&events.all()).len() >= 5) }).await?;
    client.close().await;
    assert!(events.count(|e| matches!(e, Event::Connected { .. })) >= 5, "each attempt was accepted");
    let mut rng = StdRng::seed_from_u64(9);
    let growing: Vec<Duration> = (0..5).map(|n| backoff.delay(n, None, &mut rng)).collect();
    assert_eq!(retry_delays(&events.all())[..5], growing[..]);
    Ok(())
}
