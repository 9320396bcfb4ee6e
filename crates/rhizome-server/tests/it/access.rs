//! Access rules and meta rules: refused actions come back as `logux/undo` with the reference
//! server's reasons, and a refused action leaves no trace in the log.

use crate::support::{Client, TestServer};
use anyhow::Result;
use serde_json::json;

#[tokio::test]
async fn refused_subscriptions_and_types_are_undone_with_their_reason() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let cases = [
        (json!({"type": "logux/subscribe", "channel": "users/bob"}), "denied"),
        (json!({"type": "logux/subscribe", "channel": "nope/1"}), "wrongChannel"),
        (json!({"type": "nope"}), "unknownType"),
        (json!({"type": "post", "channel": "news", "text": "hi"}), "denied"),
        (json!({"type": "post", "channel": "users/bob", "text": "hi"}), "denied"),
        (json!({"type": "post", "channel": "nope/1", "text": "hi"}), "wrongChannel"),
    ];
    for (action, reason) in cases {
        let id = alice.send_action(action.clone()).await?;
        let added = alice.added;
        let seen = alice.collect_until(|m| crate::support::has_answer(m, "logux/undo", &id)).await?;
        assert!(seen.contains(&json!(["synced", added])), "synced before the undo: {seen:?}");
        let undo = alice.wait_undo_in(&seen, &id)?;
        assert_eq!(undo, json!({"type": "logux/undo", "id": id, "action": action, "reason": reason}));
    }
    // The allowed ones still work on the same connection.
    alice.subscribe("users/alice").await?;
    let id = alice.send_action(json!({"type": "post", "channel": "users/alice", "text": "hi"})).await?;
    alice.wait_processed(&id).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn forged_id_is_denied_and_does_not_poison_the_real_owner() -> Result<()> {
    let server = TestServer::default().await?;
    let mut carol = server.login("carol:c3:t1").await?;
    carol.subscribe("counter/12").await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let action = json!({"type": "inc", "id": "12", "by": "alice"});
    alice.send_json(&json!(["sync", 1, action, {"id": [5, "bob:c9:t9", 0], "time": 5}])).await?;
    let forged = format!("{} bob:c9:t9 0", alice.base_time + 5);
    let undo = alice.wait_undo(&forged).await?;
    assert_eq!(undo, json!({"type": "logux/undo", "id": forged, "action": action, "reason": "denied"}));

    // Bob creates an action with exactly that id: it is new to the server.
    let mut bob = server.login("bob:c9:t9").await?;
    let ms = alice.base_time + 5;
    let id = bob.send_action_at(json!({"type": "inc", "id": "12", "by": "bob"}), ms).await?;
    assert_eq!(id, forged);
    bob.wait_processed(&id).await?;
    let delivered = carol.until(|m| !crate::support::sync_pairs(m).is_empty()).await?;
    let pairs = crate::support::sync_pairs(&delivered);
    assert_eq!(pairs.len(), 1, "{delivered}");
    assert_eq!(pairs[0].0, json!({"type": "inc", "id": "12", "by": "bob"}));
    let shift = ms - carol.base_time;
    assert_eq!(pairs[0].1["id"], json!([shift, "bob:c9:t9", 0]), "{delivered}");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn extra_meta_keys_are_denied() -> Result<()> {
    let server = TestServer::default().await?;
    let mut carol = server.login("carol:c3:t1").await?;
    carol.subscribe("counter/13").await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let action = json!({"type": "inc", "id": "13"});
    alice.send_json(&json!(["sync", 1, action, {"id": 1, "time": 1, "reasons": []}])).await?;
    let id = alice.full_id(alice.base_time + 1);
    alice.until(|m| *m == json!(["synced", 1])).await?;
    let undo = alice.wait_undo(&id).await?;
    assert_eq!(undo, json!({"type": "logux/undo", "id": id, "action": action, "reason": "denied"}));
    // The denied action reached nobody: the next frame carol gets is the next accepted action.
    let next = alice.send_action(json!({"type": "inc", "id": "13", "n": 2})).await?;
    alice.wait_processed(&next).await?;
    let delivered = carol.until(|m| !crate::support::sync_pairs(m).is_empty()).await?;
    let actions = crate::support::sync_actions(&delivered);
    assert_eq!(actions, vec![json!({"type": "inc", "id": "13", "n": 2})]);
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

impl Client {
    /// The `logux/undo` of `id` among messages already read.
    pub fn wait_undo_in(&self, seen: &[serde_json::Value], id: &str) -> Result<serde_json::Value> {
        seen.iter()
            .flat_map(crate::support::sync_actions)
            .find(|a| a["type"] == "logux/undo" && a["id"] == id)
            .ok_or_else(|| anyhow::anyhow!("no undo of {id} in {seen:?}"))
    }
}
