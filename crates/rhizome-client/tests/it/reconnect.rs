//! The reconnect loop uses the configured backoff with its seeded jitter, and honours an
//! HTTP `Retry-After` hint. Delays are compared with the pure function, not timed.

use crate::support::{open, options};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rhizome_client::{Backoff, Event};
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

#[tokio::test]
async fn a_retry_after_header_is_honoured() -> Result<()> {
    // A server shedding load: every upgrade is answered 503 with `Retry-After: 7`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
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
