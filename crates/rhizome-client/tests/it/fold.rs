//! With folding on, a long offline run of CRDT operations on one object reaches the server as
//! one operation, and the object ends in the same state as if each had been sent.

use crate::support::{open, options, wait_drained, wait_until, TestServer};
use anyhow::{anyhow, Result};
use rhizome_client::Event;
use serde_json::{json, Value};

const INCS: usize = 1_000;

/// The `crdt/delta` of `key` among `events`.
fn delta(events: &[Event], key: &str) -> Option<Value> {
    events.iter().find_map(|e| match e {
        Event::Action { action, .. } if action["type"] == "crdt/delta" && action["key"] == key => {
            Some(action["delta"].clone())
        }
        _ => None,
    })
}

#[tokio::test]
async fn queued_crdt_operations_are_folded_before_sending() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut o = options(&server.url(), &dir.path().join("alice.sqlite"), "alice");
    o.fold_crdt = true;
    o.sync_actions_max = 2_000;
    let (alice, alice_events) = open(o).await?;
    let mut actions: Vec<Value> =
        (0..INCS).map(|_| json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).collect();
    actions.extend((0..10).map(|n| json!({"type": "crdt/lww/set", "key": "title", "value": n})));
    let ids = alice.add_many(actions).await?;
    wait_drained(&alice).await?;

    assert_eq!(alice.session_stats().actions_sent, 2, "one increment of 1000, one write");
    let is_folded = |e: &Event| matches!(e, Event::Folded { .. });
    wait_until("the fold reports", || async { Ok(alice_events.count(is_folded) == INCS - 1 + 9) }).await?;
    // The log is drained once the answers are stored; their events reach the app just after.
    let is_processed = |e: &Event| matches!(e, Event::Processed { .. });
    wait_until("the answers' events", || async { Ok(alice_events.count(is_processed) >= 2) }).await?;
    let processed: Vec<_> = alice_events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            Event::Processed { id } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(processed, [ids[INCS - 1].clone(), ids[INCS + 9].clone()], "the last ids carry the folds");

    // Another client reads the objects: the counter is 1000, the title the last write.
    let (bob, bob_events) = open(options(&server.url(), &dir.path().join("bob.sqlite"), "bob")).await?;
    bob.subscribe("crdt/likes").await?;
    bob.subscribe("crdt/title").await?;
    wait_until("both states", || async {
        let all = bob_events.all();
        Ok(delta(&all, "likes").is_some() && delta(&all, "title").is_some())
    })
    .await?;
    let all = bob_events.all();
    let likes = delta(&all, "likes").ok_or_else(|| anyhow!("no likes"))?;
    let total: i64 = likes
        .as_object()
        .ok_or_else(|| anyhow!("counter document {likes}"))?
        .values()
        .map(|pm| pm[0].as_i64().unwrap_or(0) - pm[1].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, INCS as i64, "{likes}");
    assert_eq!(delta(&all, "title").map(|t| t["value"].clone()), Some(json!(9)));
    alice.close().await;
    bob.close().await;
    server.stop().await;
    Ok(())
}
