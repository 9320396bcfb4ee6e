//! A client killed in the middle of a large backlog resumes from the same SQLite file at the
//! first action the server had not confirmed: nothing lost, nothing processed twice, and
//! nothing the server confirmed sent again.

use crate::support::{open, options, wait_until, TestServer};
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

    let (client, events) = open(o).await?;
    assert_eq!(client.node_id(), &node, "the node id comes from the log");
    let left = client.log_stats().await?;
    assert!(left.queued > 0 && left.queued < ACTIONS as u64, "killed mid-backlog: {left:?}");

    wait_until("every action to be confirmed", || async { Ok(client.log_stats().await?.queued == 0) })
        .await?;
    wait_until("every action to be processed", || async { Ok(server.processed_counts().0 == ACTIONS) })
        .await?;
    let processed = server.processed.lock().map(|p| p.clone()).unwrap_or_default();
    for id in &ids {
        assert_eq!(processed.get(&id.text()), Some(&1), "{id} processed once");
    }
    assert_eq!(processed.len(), ACTIONS, "no other id was processed");

    let stats = client.session_stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(
        stats.actions_sent, left.queued,
        "after the restart only the actions the server had not confirmed were sent"
    );
    // Every action confirmed in this session was answered in it, except those the killed
    // connection had sent too and the server was still processing when their copy arrived:
    // Rhizome answers such a copy with `synced` only. They are counted as awaiting an outcome.
    let is_processed = |e: &rhizome_client::Event| matches!(e, rhizome_client::Event::Processed { .. });
    wait_until("the answers to reach the app", || async {
        let awaiting = client.log_stats().await?.awaiting_outcome;
        Ok(events.count(is_processed) as u64 + awaiting == left.queued)
    })
    .await?;
    let end = client.log_stats().await?;
    assert!(end.awaiting_outcome <= (o_window * o_chunk) as u64, "{end:?}");
    client.close().await;
    server.stop().await;
    Ok(())
}
