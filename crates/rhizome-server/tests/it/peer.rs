//! The peer role (an edge node's link, docs/edge.md): a peer relays other nodes' actions with
//! their own ids, and each is judged by the rules as its author's and processed at most once,
//! whoever sends it again.

use crate::support::{has_answer, sync_actions, Client, Open, TestServer};
use anyhow::{anyhow, Result};
use async_trait::async_trait;
use rhizome_core::{ActionType, App, Context, HookError, Limits, Meta};
use rhizome_protocol::Action;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Relays `action` with the id `"<ms> <node> 0"` in `sync` number `added`; returns the id.
async fn relay(link: &mut Client, added: u64, ms: i64, node: &str, action: Value) -> Result<String> {
    let shift = ms - link.base_time;
    link.send_json(&json!(["sync", added, action, {"id": [shift, node, 0], "time": shift}])).await?;
    Ok(format!("{ms} {node} 0"))
}

/// How many rows of the server's log hold `id`.
fn logged(server: &TestServer, id: &str) -> Result<i64> {
    let db = rusqlite::Connection::open(server.db_path())?;
    Ok(db.query_row("SELECT count(*) FROM log WHERE id = ?1", [id], |r| r.get(0))?)
}

#[tokio::test]
async fn a_peer_relays_its_clients_actions_judged_as_their_authors() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;

    // Alice may write her own channel: processed.
    let own =
        relay(&mut link, 1, ms, "alice:a1:t", json!({"type": "post", "channel": "users/alice"})).await?;
    link.until(|m| has_answer(m, "logux/processed", &own)).await?;
    // Not Bob's, whoever relays it: denied as Alice's action, though the peer's user is not Alice.
    let other =
        relay(&mut link, 2, ms + 1, "alice:a1:t", json!({"type": "post", "channel": "users/bob"})).await?;
    link.until(|m| has_answer(m, "logux/undo", &other)).await?;

    // Relayed again (the link dropped before `synced`), then sent by Alice herself: each answered
    // as the first, and logged once.
    relay(&mut link, 3, ms, "alice:a1:t", json!({"type": "post", "channel": "users/alice"})).await?;
    link.until(|m| has_answer(m, "logux/processed", &own)).await?;
    let mut alice = server.login("alice:a1:t").await?;
    alice.send_action_at(json!({"type": "post", "channel": "users/alice"}), ms).await?;
    alice.until(|m| has_answer(m, "logux/processed", &own)).await?;
    assert_eq!(logged(&server, &own)?, 1);
    assert_eq!(logged(&server, &other)?, 0);
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// The sequence number of a taken-back id (`rhizome_core::uplink::taken_back_id`).
const TAKEN_BACK_SEQ: u64 = 1 << 51;

#[tokio::test]
async fn only_a_peer_takes_back_and_only_its_authors_counter_totals() -> Result<()> {
    // Only Bob may change objects here.
    let everyone = "pattern = \"crdt/*\"\nsubscribe = \"everyone\"\nwrite = \"everyone\"";
    let only_bob = "pattern = \"crdt/*\"\nsubscribe = \"everyone\"\nwrite = [\"bob\"]";
    let server =
        TestServer::with_peers_and_rules(&["edge"], |rules| rules.replace(everyone, only_bob)).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    let taking_back = |added: u64, shift: i64, delta: Value| {
        json!(["sync", added,
            {"type": "crdt/delta", "key": "likes", "kind": "counter", "delta": delta},
            {"id": [shift, "alice:a1:t", TAKEN_BACK_SEQ], "time": shift}])
    };
    // Alice's totals under an edge's actor, taken back: taken whatever she may do now.
    link.send_json(&taking_back(1, 1, json!({"server:edge:e1~alice:a1:t": [5, 5]}))).await?;
    let taken = format!("{ms} alice:a1:t {TAKEN_BACK_SEQ}");
    link.until(|m| has_answer(m, "logux/processed", &taken)).await?;
    // Not another author's totals, nor hers under her own node id: judged as hers, refused.
    for (n, delta) in
        [json!({"server:edge:e1~bob:b1:t": [0, 5]}), json!({"alice:a1:t": [0, 5]})].into_iter().enumerate()
    {
        let shift = 2 + n as i64;
        link.send_json(&taking_back(2 + n as u64, shift, delta)).await?;
        let id = format!("{} alice:a1:t {TAKEN_BACK_SEQ}", link.base_time + shift);
        link.until(|m| has_answer(m, "logux/undo", &id)).await?;
    }
    // A client cannot make an id that passes for a taking back: refused, though Alice may
    // write her own channel.
    let mut alice = server.login("alice:a1:t").await?;
    let shift = 10;
    alice
        .send_json(&json!(["sync", 1, {"type": "post", "channel": "users/alice"},
            {"id": [shift, "alice:a1:t", TAKEN_BACK_SEQ], "time": shift}]))
        .await?;
    let id = format!("{} alice:a1:t {TAKEN_BACK_SEQ}", alice.base_time + shift);
    let undo = alice.until(|m| has_answer(m, "logux/undo", &id)).await?;
    assert!(sync_actions(&undo).iter().any(|a| a["id"] == id && a["reason"] == "denied"), "{undo}");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn only_a_configured_peer_may_relay() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    // Mallory, a client, cannot send Alice's actions, even to a channel Alice may write.
    let mut mallory = server.login("mallory:m1:t").await?;
    let ms = mallory.base_time + 1;
    let forged =
        relay(&mut mallory, 1, ms, "alice:a1:t", json!({"type": "post", "channel": "users/alice"})).await?;
    mallory.until(|m| has_answer(m, "logux/undo", &forged)).await?;
    assert_eq!(logged(&server, &forged)?, 0);
    // The peer's own actions are judged as its own user's.
    let mut link = server.login("edge:e1:link").await?;
    let own = link.send_action(json!({"type": "post", "channel": "users/alice"})).await?;
    link.until(|m| has_answer(m, "logux/undo", &own)).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_peer_cannot_relay_the_servers_actions() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    // No client may connect as the server: no peer speaks for it either, with its node id
    // (taking an id the server would give its own answers) or any other of user `server`.
    let server_node = link.server_node.clone();
    for (added, node) in [(1, server_node.as_str()), (2, "server:other"), (3, "server")] {
        let forged = relay(&mut link, added, ms, node, json!({"type": "inc", "id": "c"})).await?;
        let answered =
            |m: &Value| has_answer(m, "logux/undo", &forged) || has_answer(m, "logux/processed", &forged);
        let answer = link.until(answered).await?;
        assert!(has_answer(&answer, "logux/undo", &forged), "{answer}");
        assert_eq!(logged(&server, &forged)?, 0, "{forged}");
    }
    server.stop().await;
    Ok(())
}

/// `noted`: anyone may send it; `process` records the client it runs as, by action id, and
/// fails with undo `refusedHere` when the action has `"fail": true`.
struct Noted {
    ran_as: Arc<Mutex<Vec<(String, String)>>>,
}

#[async_trait]
impl ActionType for Noted {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(true)
    }
    fn processes(&self) -> bool {
        true
    }
    async fn process(&self, ctx: &Context, action: &Action, meta: &Meta) -> Result<(), HookError> {
        let entry = (meta.id.text(), ctx.client_id.as_str().to_owned());
        self.ran_as.lock().map_err(|_| HookError::Failed("poisoned".into()))?.push(entry);
        match action.field("fail") {
            Some(Value::Bool(true)) => {
                Err(HookError::Undo { reason: "refusedHere".into(), extra: Map::new() })
            }
            _ => Ok(()),
        }
    }
}

/// A server whose `edge` user is a peer (authentication open) and whose `noted` actions record
/// who they were processed as.
pub async fn noting() -> Result<(TestServer, Arc<Mutex<Vec<(String, String)>>>)> {
    let ran_as = Arc::new(Mutex::new(Vec::new()));
    let app = App::new(Open).peer("edge".into()).action_type("noted", Noted { ran_as: ran_as.clone() });
    Ok((TestServer::with_app(app, Limits::default()).await?, ran_as))
}

#[tokio::test]
async fn a_relayed_action_is_processed_as_its_authors() -> Result<()> {
    let (server, ran_as) = noting().await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    let relayed = relay(&mut link, 1, ms, "alice:a1:t", json!({"type": "noted"})).await?;
    link.until(|m| has_answer(m, "logux/processed", &relayed)).await?;
    let own = link.send_action(json!({"type": "noted"})).await?;
    link.until(|m| has_answer(m, "logux/processed", &own)).await?;
    let ran_as = ran_as.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    assert_eq!(ran_as, [(relayed, "alice:a1".to_owned()), (own, "edge:e1".to_owned())]);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_undo_of_a_relayed_actions_failed_process_reaches_its_author_and_the_peer() -> Result<()> {
    let (server, _) = noting().await?;
    let mut alice = server.login("alice:a1:t2").await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    let failed = relay(&mut link, 1, ms, "alice:a1:t", json!({"type": "noted", "fail": true})).await?;
    // The peer that sent it hears the undo, and so does its author, connected here directly.
    link.until(|m| has_answer(m, "logux/undo", &failed)).await?;
    alice.until(|m| has_answer(m, "logux/undo", &failed)).await?;
    server.stop().await;
    Ok(())
}

/// `gated` actions, allowed while `open` is.
struct Gated {
    open: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl ActionType for Gated {
    async fn access(&self, _: &Context, _: &Action, _: &Meta) -> Result<bool, HookError> {
        Ok(self.open.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[tokio::test]
async fn an_action_a_peer_sends_again_is_answered_with_its_outcome_not_judged_again() -> Result<()> {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let app = App::new(Open).peer("edge".into()).action_type("gated", Gated { open: open.clone() });
    let server = TestServer::with_app(app, Limits::default()).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    let taken = relay(&mut link, 1, ms, "alice:a1:t", json!({"type": "gated"})).await?;
    link.until(|m| has_answer(m, "logux/processed", &taken)).await?;
    // Alice's right is revoked; the peer, which lost the answer (this server crashed before
    // it went out, say), sends the action again: it was taken, and stays taken.
    open.store(false, std::sync::atomic::Ordering::SeqCst);
    relay(&mut link, 2, ms, "alice:a1:t", json!({"type": "gated"})).await?;
    let either = |id: &str| {
        let id = id.to_owned();
        move |m: &Value| has_answer(m, "logux/processed", &id) || has_answer(m, "logux/undo", &id)
    };
    let again = link.until(either(&taken)).await?;
    assert!(has_answer(&again, "logux/processed", &taken), "{again}");
    // Another action under that id is no copy of it: judged, and denied.
    relay(&mut link, 3, ms, "alice:a1:t", json!({"type": "gated", "other": true})).await?;
    let forged = link.until(either(&taken)).await?;
    assert!(has_answer(&forged, "logux/undo", &taken), "{forged}");
    // A new action of hers is judged, and denied.
    let new = relay(&mut link, 4, ms + 1, "alice:a1:t", json!({"type": "gated"})).await?;
    let answer = link.until(either(&new)).await?;
    assert!(has_answer(&answer, "logux/undo", &new), "{answer}");
    assert_eq!((logged(&server, &taken)?, logged(&server, &new)?), (1, 0));
    server.stop().await;
    Ok(())
}

/// A CRDT delta sent again under its id, as it was taken, is answered with its outcome after
/// the author lost the right; another delta under that id is judged.
#[tokio::test]
async fn a_delta_a_peer_sends_again_is_answered_with_its_outcome_not_judged_again() -> Result<()> {
    let everyone = "pattern = \"crdt/*\"\nsubscribe = \"everyone\"\nwrite = \"everyone\"";
    let only_bob = "pattern = \"crdt/*\"\nsubscribe = \"everyone\"\nwrite = [\"bob\"]";
    let server = TestServer::with_peers(&["edge"]).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    let delta = |totals: u64| {
        json!({"type": "crdt/delta", "key": "likes", "kind": "counter",
            "delta": {"server:edge:e1~alice:a1:t": [totals, 0]}})
    };
    let taken = relay(&mut link, 1, ms, "alice:a1:t", delta(5)).await?;
    link.until(|m| has_answer(m, "logux/processed", &taken)).await?;
    drop(link);
    // Alice's right is revoked; the peer, which lost the answer, sends the delta again.
    let server = server.restart_with_rules(&["edge"], |rules| rules.replace(everyone, only_bob)).await?;
    let mut link = server.login("edge:e1:link").await?;
    let either = |id: &str| {
        let id = id.to_owned();
        move |m: &Value| has_answer(m, "logux/processed", &id) || has_answer(m, "logux/undo", &id)
    };
    relay(&mut link, 1, ms, "alice:a1:t", delta(5)).await?;
    let again = link.until(either(&taken)).await?;
    assert!(has_answer(&again, "logux/processed", &taken), "{again}");
    // A fold of more under that id is no copy of it: judged, and denied.
    relay(&mut link, 2, ms, "alice:a1:t", delta(7)).await?;
    let more = link.until(either(&taken)).await?;
    assert!(has_answer(&more, "logux/undo", &taken), "{more}");
    let mut reader = server.login("reader:r1:t").await?;
    let sub = reader.send_action(json!({"type": "logux/subscribe", "channel": "crdt/likes"})).await?;
    let seen = reader.collect_until(|m| has_answer(m, "logux/processed", &sub)).await?;
    let document =
        seen.iter().flat_map(sync_actions).find(|a| a["type"] == "crdt/delta").map(|a| a["delta"].clone());
    assert_eq!(document, Some(json!({"server:edge:e1~alice:a1:t": [5, 0]})));
    assert_eq!(logged(&server, &taken)?, 1);
    server.stop().await;
    Ok(())
}

/// A peer's `folded` meta: on a delta, each id in it becomes the delta's, so the author's own
/// copy is a duplicate (its sequence-only-servers-make ids are ignored); on another action, or
/// from a client, it is refused.
#[tokio::test]
async fn the_ids_a_peer_folded_into_a_delta_are_the_deltas_and_no_one_elses() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 10;
    let delta = json!({"type": "crdt/delta", "key": "likes", "kind": "counter",
        "delta": {"server:edge:e1~alice:a1:t": [3, 0]}});
    // Three increments: two folded into the last, and one more id of a sequence no node makes.
    let servers_seq = 1u64 << 51;
    let meta = json!({"id": [10, "alice:a1:t", 0], "time": 10,
        "folded": [[2, 0], [1, 0], [0, servers_seq]]});
    link.send_json(&json!(["sync", 1, delta, meta])).await?;
    let fold = format!("{ms} alice:a1:t 0");
    link.until(|m| has_answer(m, "logux/processed", &fold)).await?;
    // Folded on a plain action: refused.
    let plain = json!({"id": [11, "alice:a1:t", 0], "time": 11, "folded": [[1, 0]]});
    link.send_json(&json!(["sync", 2, {"type": "inc", "id": "x"}, plain])).await?;
    let refused = format!("{} alice:a1:t 0", ms + 1);
    let answer = link.until(|m| has_answer(m, "logux/undo", &refused)).await?;
    let undo =
        sync_actions(&answer).into_iter().find(|a| a["type"] == "logux/undo").ok_or(anyhow!("undo"))?;
    assert_eq!(undo["reason"], "denied");
    assert_eq!(logged(&server, &refused)?, 0);
    // Alice's device, which moved with them in flight: each folded one is a duplicate.
    let mut alice = server.login("alice:a1:t").await?;
    let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 1});
    for back in [2, 1] {
        let id = alice.send_action_at(inc.clone(), ms - back).await?;
        alice.wait_processed(&id).await?;
        assert_eq!(logged(&server, &id)?, 0, "{id} is the fold's");
    }
    // The ignored id stays free (a client may not use it, but no server found it either).
    let taken_back = format!("{ms} alice:a1:t {servers_seq}");
    let db = rusqlite::Connection::open(server.db_path())?;
    let aliases: i64 =
        db.query_row("SELECT count(*) FROM log_late_ids WHERE id = ?1", [&taken_back], |r| r.get(0))?;
    assert_eq!(aliases, 0);
    // A client may not send `folded`.
    let shift = ms + 5 - alice.base_time;
    alice.send_json(&json!(["sync", 9, inc, {"id": [shift, 0], "time": shift, "folded": [[1, 0]]}])).await?;
    let own = format!("{} alice:a1:t 0", ms + 5);
    let answer = alice.until(|m| has_answer(m, "logux/undo", &own)).await?;
    assert!(has_answer(&answer, "logux/undo", &own), "{answer}");
    let mut reader = server.login("reader:r1:t").await?;
    let sub = reader.send_action(json!({"type": "logux/subscribe", "channel": "crdt/likes"})).await?;
    let seen = reader.collect_until(|m| has_answer(m, "logux/processed", &sub)).await?;
    let document =
        seen.iter().flat_map(sync_actions).find(|a| a["type"] == "crdt/delta").map(|a| a["delta"].clone());
    assert_eq!(document, Some(json!({"server:edge:e1~alice:a1:t": [3, 0]})), "counted once");
    server.stop().await;
    Ok(())
}

/// A peer subscribed to a channel for its clients is not sent back what it relayed there (the
/// edge has it), live or when it subscribes again with `since`; it gets what others wrote.
#[tokio::test]
async fn a_peer_is_not_sent_back_what_it_relayed() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    // The subscription too is judged as its author's: Alice may read her channel.
    let sub =
        relay(&mut link, 1, ms, "alice:a1:t", json!({"type": "logux/subscribe", "channel": "users/alice"}))
            .await?;
    link.until(|m| has_answer(m, "logux/processed", &sub)).await?;
    let relayed =
        relay(&mut link, 2, ms + 1, "alice:a1:t", json!({"type": "post", "channel": "users/alice", "n": 1}))
            .await?;
    link.until(|m| has_answer(m, "logux/processed", &relayed)).await?;
    // Alice's other device writes after it: the link gets that one, and only that one.
    let mut phone = server.login("alice:a2:t").await?;
    phone.send_action(json!({"type": "post", "channel": "users/alice", "n": 2})).await?;
    let message = link.until(|m| sync_actions(m).iter().any(|a| a["type"] == "post")).await?;
    let posts: Vec<Value> = sync_actions(&message).into_iter().filter(|a| a["type"] == "post").collect();
    assert_eq!(posts, [json!({"type": "post", "channel": "users/alice", "n": 2})]);
    // A catch-up from the start brings the other device's post, not the relayed one.
    let again = relay(
        &mut link,
        3,
        ms + 2,
        "alice:a1:t",
        json!({"type": "logux/subscribe", "channel": "users/alice", "since": {"id": "0 x:x 0", "time": 0}}),
    )
    .await?;
    let mut caught_up = Vec::new();
    link.until(|m| {
        caught_up.extend(sync_actions(m).into_iter().filter(|a| a["type"] == "post"));
        has_answer(m, "logux/processed", &again)
    })
    .await?;
    assert_eq!(caught_up, [json!({"type": "post", "channel": "users/alice", "n": 2})]);
    // One of the peer's clients leaving the channel does not end the peer's subscription,
    // which its other clients still need.
    let left = relay(
        &mut link,
        4,
        ms + 3,
        "alice:a1:t",
        json!({"type": "logux/unsubscribe", "channel": "users/alice"}),
    )
    .await?;
    link.until(|m| has_answer(m, "logux/processed", &left)).await?;
    phone.send_action(json!({"type": "post", "channel": "users/alice", "n": 3})).await?;
    let message = link.until(|m| sync_actions(m).iter().any(|a| a["type"] == "post")).await?;
    let posts: Vec<Value> = sync_actions(&message).into_iter().filter(|a| a["type"] == "post").collect();
    assert_eq!(posts, [json!({"type": "post", "channel": "users/alice", "n": 3})]);
    // The link's own unsubscription ends it.
    let own = link.send_action(json!({"type": "logux/unsubscribe", "channel": "users/alice"})).await?;
    link.until(|m| has_answer(m, "logux/processed", &own)).await?;
    phone.send_action(json!({"type": "post", "channel": "users/alice", "n": 4})).await?;
    let quiet = Duration::from_millis(500);
    let more = link.until_within(quiet, |m| sync_actions(m).iter().any(|a| a["type"] == "post")).await;
    assert!(more.is_err(), "{more:?}");
    server.stop().await;
    Ok(())
}

/// The `crdt/delta` a peer's store made of Alice's `by` increments to the counter at `key`
/// (her entry reaching `total`).
fn counter_delta(key: &str, total: u64) -> Value {
    json!({"type": "crdt/delta", "key": key, "kind": "counter", "delta": {"alice:a1:t": [total, 0]}})
}

#[tokio::test]
async fn a_peer_relays_crdt_deltas_joined_as_they_are() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    let first = relay(&mut link, 1, ms, "alice:a1:t", counter_delta("likes", 3)).await?;
    link.until(|m| has_answer(m, "logux/processed", &first)).await?;
    // The same delta again (under another id, as a second path would relay it) and a later one.
    let again = relay(&mut link, 2, ms + 1, "alice:a1:t", counter_delta("likes", 3)).await?;
    link.until(|m| has_answer(m, "logux/processed", &again)).await?;
    let later = relay(&mut link, 3, ms + 2, "alice:a1:t", counter_delta("likes", 5)).await?;
    link.until(|m| has_answer(m, "logux/processed", &later)).await?;
    // A subscriber gets the join: Alice's entry at 5, not 3 + 3 + 5.
    let mut bob = server.login("bob:b1:t").await?;
    let id = bob.send_action(json!({"type": "logux/subscribe", "channel": "crdt/likes"})).await?;
    let seen = bob.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    let deltas: Vec<Value> =
        seen.iter().flat_map(sync_actions).filter(|a| a["type"] == "crdt/delta").collect();
    assert_eq!(deltas.len(), 1, "{deltas:?}");
    assert_eq!(deltas[0]["delta"], json!({"alice:a1:t": [5, 0]}));
    // Bob's own operation applies on top, under his own dot.
    let inc = bob.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?;
    bob.until(|m| has_answer(m, "logux/processed", &inc)).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn only_a_peer_relays_deltas_and_as_their_author() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    // A client sends operations, never deltas (it could set any node's entry).
    let mut bob = server.login("bob:b1:t").await?;
    let own = bob.send_action(counter_delta("likes", 100)).await?;
    let answer = bob.until(|m| has_answer(m, "logux/undo", &own)).await?;
    assert_eq!(sync_actions(&answer)[0]["reason"], "crdtUnknownType", "{answer}");
    // A relayed delta goes through the rules as its author's: Alice may not write Bob's objects.
    let mut link = server.login("edge:e1:link").await?;
    let ms = link.base_time + 1;
    let denied = relay(&mut link, 1, ms, "alice:a1:t", counter_delta("private/bob/likes", 1)).await?;
    let answer = link.until(|m| has_answer(m, "logux/undo", &denied)).await?;
    assert_eq!(sync_actions(&answer)[0]["reason"], "denied", "{answer}");
    // A delta that does not decode is refused with the CRDT reason.
    let bad = json!({"type": "crdt/delta", "key": "likes", "kind": "counter", "delta": {"alice:a1:t": "x"}});
    let broken = relay(&mut link, 2, ms + 1, "alice:a1:t", bad).await?;
    let answer = link.until(|m| has_answer(m, "logux/undo", &broken)).await?;
    assert_eq!(sync_actions(&answer)[0]["reason"], "crdtWrongShape", "{answer}");
    assert_eq!(logged(&server, &own)? + logged(&server, &denied)? + logged(&server, &broken)?, 0);
    server.stop().await;
    Ok(())
}
