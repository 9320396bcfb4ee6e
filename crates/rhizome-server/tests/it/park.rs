//! Parked connections (quiet ones, moved off the runtime) behave exactly like active ones:
//! they receive deliveries, answer what they are sent, are pinged and timed out, and are
//! closed with "going away" at shutdown.

use crate::support::{has_answer, sync_pairs, Event, TestServer, DEFAULT_LIMITS};
use anyhow::Result;
use serde_json::json;

fn limits(extra: &str) -> String {
    format!("{DEFAULT_LIMITS}\npark_after_ms = 50\n{extra}")
}

#[tokio::test]
async fn parked_connections_receive_deliveries_and_are_answered() -> Result<()> {
    let server = TestServer::start(&limits("")).await?;
    let mut bob = server.login("bob:c2:t1").await?;
    bob.subscribe("counter/1").await?;
    let mut alice = server.login("alice:c1:t1").await?;
    server.wait_parked(2).await?;

    // A frame for a parked subscriber wakes it.
    for n in 0..3 {
        let id = alice.send_action(json!({"type": "inc", "id": "1", "n": n})).await?;
        alice.wait_processed(&id).await?;
        let got = bob.until(|m| sync_pairs(m).iter().any(|(a, _)| a["n"] == n)).await?;
        assert_eq!(sync_pairs(&got).len(), 1, "{got}");
        // Quiet again: both park again between the actions.
        server.wait_parked(2).await?;
    }

    // Input on a parked socket wakes it.
    let id = bob.send_action(json!({"type": "inc", "id": "1", "n": 10})).await?;
    let seen = bob.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    assert!(seen.iter().any(|m| m[0] == "synced"), "{seen:?}");
    server.wait_parked(2).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn parked_connections_are_pinged_and_timed_out() -> Result<()> {
    let server = TestServer::start(&limits("ping_interval_ms = 400\ntimeout_ms = 400")).await?;
    let mut silent = server.login("alice:c1:t1").await?;
    server.wait_parked(1).await?;
    // The ticker wakes the parked connection when its ping is due ...
    let ping = silent.next_json().await?;
    assert_eq!(ping[0], "ping", "{ping}");
    // ... and again when the answer is overdue.
    silent.expect_error_and_close(&json!(["error", "timeout", 400])).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_parked_connections_with_going_away() -> Result<()> {
    let server = TestServer::start(&limits("")).await?;
    let mut bob = server.login("bob:c2:t1").await?;
    server.wait_parked(1).await?;
    assert_eq!(server.parked(), 1);
    let stop = tokio::spawn(server.stop());
    assert_eq!(bob.next_event().await?, Event::Close(Some(1001)));
    stop.await?;
    Ok(())
}

#[tokio::test]
async fn a_client_closing_a_parked_connection_is_noticed() -> Result<()> {
    let server = TestServer::start(&limits("")).await?;
    let bob = server.login("bob:c2:t1").await?;
    server.wait_connections(1).await?;
    server.wait_parked(1).await?;
    bob.close().await;
    server.wait_connections(0).await?;
    assert_eq!(server.parked(), 0);
    server.stop().await;
    Ok(())
}
