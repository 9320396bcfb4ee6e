//! A client killed in the middle of a large backlog resumes from the same SQLite file at the
//! first action the server had not confirmed: nothing lost, nothing processed twice, and
//! nothing the server confirmed sent again.

use crate::support::{open, options, wait_until, Proxy, TestServer};
use anyhow::Result;
use serde_json::json;

const ACTIONS: usize = 20_000;

#[tokio::test]
async fn a_client_killed_mid_backlog_resumes_without_loss_or_duplicates() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("alice.sqlite");
    let mut o = options(&server.url(), &path, "alice");
    o.sync_actions_max = 200;
    o.inflight_syncs_max = 4;
    let (o_chunk, o_window) = (o.sync_actions_max, o.inflight_syncs_max);

    let (client, _events) = open(o.clone()).await?;
    let actions = (0..ACTIONS).map(|n| json!({"type": "inc", "id": "big", "n": n})).collect();
    let ids = client.add_many(actions).await?;
    let node = client.node_id().clone();
    wait_until("part of the backlog to be confirmed", || async {
        Ok(client.session_stats().actions_acked >= 2_000)
    })
    .await?;
    // Killed: the task is aborted with syncs in flight, nothing is closed politely.
    drop(client);
    // A SQLite write the dead instance had already started on a blocking thread still
    // finishes (a killed process's would not have begun). Let it, so the counts read below
    // are final; this wait asserts nothing.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let (client, events) = open(o).await?;
    assert_eq!(client.node_id(), &node, "the node id comes from the log");
    let left = client.log_stats().await?;
    assert!(left.queued > 0 && left.queued < ACTIONS as u64, "killed mid-backlog: {left:?}");

    wait_until("every action to be confirmed", || async { Ok(client.log_stats().await?.queued == 0) })
        .await?;
    // Nothing lost, nothing processed twice, nothing left unprocessed.
    let stuck = server.check_exactly_once(&ids).await?;
    assert_eq!(stuck, 0, "{stuck} committed actions left unprocessed");

    let stats = client.session_stats();
    assert_eq!(stats.connections, 1);
    // After the restart only the actions the server had not confirmed were sent, less any the
    // server's kept answers (for the killed connection's in-flight chunks) settled first.
    assert!(
        stats.actions_sent <= left.queued && stats.actions_sent + (o_window * o_chunk) as u64 >= left.queued,
        "sent {} of {} unconfirmed",
        stats.actions_sent,
        left.queued
    );
    // Every action confirmed in this session is answered in it, once: a copy the server was
    // still processing when it arrived is answered when processing ends, and an answer the
    // killed connection could not send arrives from the log (a second answer to the same id
    // settles nothing and is not reported). At most the actions the killed instance saw
    // confirmed but not answered may stay awaiting an outcome.
    let is_processed = |e: &rhizome_client::Event| matches!(e, rhizome_client::Event::Processed { .. });
    let settled = || async {
        let awaiting = client.log_stats().await?.awaiting_outcome;
        Ok::<_, anyhow::Error>((events.count(is_processed) as u64, awaiting))
    };
    let _ = wait_until("the answers to reach the app", || async {
        let (answered, awaiting) = settled().await?;
        Ok(answered + awaiting == left.queued + left.awaiting_outcome)
    })
    .await;
    let (answered, awaiting) = settled().await?;
    assert_eq!(
        answered + awaiting,
        left.queued + left.awaiting_outcome,
        "answered {answered}, awaiting {awaiting}, {left:?}"
    );
    // Kept answers can settle actions the killed instance was awaiting, so fewer may await now.
    assert!(
        awaiting.saturating_sub(left.awaiting_outcome) <= (o_window * o_chunk) as u64,
        "{awaiting} {left:?}"
    );
    client.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_dropped_connection_resumes_the_backlog_without_restarting_it() -> Result<()> {
    let server = TestServer::start().await?;
    let proxy = Proxy::start(server.addr).await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&proxy.url(), &dir.path().join("alice.sqlite"), "alice");
    o.sync_actions_max = 250;
    o.inflight_syncs_max = 4;
    let in_flight_max = (o.sync_actions_max * o.inflight_syncs_max) as u64;
    let (client, _events) = open(o).await?;
    let ids =
        client.add_many((0..ACTIONS).map(|n| json!({"type": "inc", "id": "drop", "n": n})).collect()).await?;

    // Two drops in the middle of the backlog; the same client reconnects by itself.
    for acked in [3_000, 9_000] {
        wait_until("more of the backlog to be confirmed", || async {
            Ok(client.session_stats().actions_acked >= acked)
        })
        .await?;
        proxy.cut();
    }
    wait_until("every action to be confirmed", || async { Ok(client.log_stats().await?.queued == 0) })
        .await?;
    let stuck = server.check_exactly_once(&ids).await?;
    assert_eq!(stuck, 0, "{stuck} committed actions left unprocessed");

    let stats = client.session_stats();
    assert!(stats.connections >= 3, "{stats:?}");
    // Each action confirmed at most once; an in-flight chunk of a cut connection may instead be
    // settled by its answers, which the server keeps for the client when the connection that
    // should have carried them is gone (they arrive on the next one, before any re-send).
    assert!(stats.actions_acked <= ACTIONS as u64, "{stats:?}");
    assert!(stats.actions_acked + 2 * in_flight_max >= ACTIONS as u64, "{stats:?}");
    // Only what was in flight at each drop was sent again.
    let resent = stats.actions_sent - ACTIONS as u64;
    assert!(resent <= 2 * in_flight_max, "{resent} actions sent twice");
    client.close().await;
    server.stop().await;
    Ok(())
}
