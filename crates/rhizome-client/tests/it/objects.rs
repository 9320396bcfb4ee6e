//! Clients hold CRDT objects: the `crdt/delta`s they receive are joined into copies kept in
//! their SQLite files. Two clients that wrote the same objects, one of them offline, end with
//! the copies a fresh subscriber receives, their own operations included, and a client
//! reopened from its file still has its copies.

use crate::support::{open, options, wait_drained, wait_until, TestServer};
use anyhow::{anyhow, Result};
use rhizome_client::{Client, Object};
use serde_json::{json, Value};
use std::path::Path;

/// The objects both clients write, one of each kind the test covers.
const KEYS: [&str; 4] = ["likes", "tags", "title", "doc"];

fn channels() -> Vec<String> {
    KEYS.iter().map(|k| format!("crdt/{k}")).collect()
}

/// Operations by `who` (`n` distinguishes rounds), one or more on every object.
fn ops(who: &str, n: u64) -> Vec<Value> {
    vec![
        json!({"type": "crdt/counter/inc", "key": "likes", "by": n}),
        json!({"type": "crdt/counter/inc", "key": "likes", "by": 1}),
        json!({"type": "crdt/set/add", "key": "tags", "elem": format!("{who}-{n}")}),
        json!({"type": "crdt/lww/set", "key": "title", "value": format!("{who} {n}")}),
        json!({"type": "crdt/map/inc", "key": "doc", "path": ["views"], "by": n}),
        json!({"type": "crdt/map/add", "key": "doc", "path": ["by"], "elem": who}),
    ]
}

/// Every object of `client` as JSON documents (`null` for a missing one).
async fn documents(client: &Client) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for key in KEYS {
        docs.push(client.object(key).await?.map_or(Value::Null, |o| o.to_json()));
    }
    Ok(docs)
}

async fn counter(client: &Client) -> Result<i128> {
    match client.object("likes").await? {
        Some(Object::Counter(c)) => Ok(c.value()),
        other => Err(anyhow!("likes is {other:?}")),
    }
}

async fn subscribe_all(client: &Client) -> Result<()> {
    for channel in channels() {
        client.subscribe(&channel).await?;
    }
    Ok(())
}

/// A client that has never seen the objects subscribes and receives them from the server.
async fn fresh_copies(server: &TestServer, dir: &Path) -> Result<Vec<Value>> {
    let (carol, _events) = open(options(&server.url(), &dir.join("carol.sqlite"), "carol")).await?;
    subscribe_all(&carol).await?;
    wait_until("carol to receive every object", || async {
        Ok(documents(&carol).await?.iter().all(|d| !d.is_null()))
    })
    .await?;
    let docs = documents(&carol).await?;
    carol.close().await;
    Ok(docs)
}

#[tokio::test]
async fn two_writers_one_offline_converge_on_the_servers_objects_and_keep_them_across_restarts() -> Result<()>
{
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (alice_path, bob_path) = (dir.path().join("alice.sqlite"), dir.path().join("bob.sqlite"));

    // Both online, subscribed, writing.
    let (alice, _alice_events) = open(options(&server.url(), &alice_path, "alice")).await?;
    let (bob, _bob_events) = open(options(&server.url(), &bob_path, "bob")).await?;
    subscribe_all(&alice).await?;
    subscribe_all(&bob).await?;
    alice.add_many(ops("alice", 1)).await?;
    bob.add_many(ops("bob", 1)).await?;
    wait_drained(&alice).await?;
    wait_drained(&bob).await?;

    // Alice goes offline (her device sleeps) and writes into her queue; Bob goes on online.
    alice.close().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (alice, _alice_events) = open(options(&format!("ws://{closed}/"), &alice_path, "alice")).await?;
    for n in 2..5 {
        alice.add_many(ops("alice", n)).await?;
        bob.add_many(ops("bob", n)).await?;
    }
    wait_drained(&bob).await?;
    assert_eq!(alice.log_stats().await?.queued, 18, "alice's offline operations wait in her queue");
    alice.close().await;

    // Alice comes back; her queue syncs.
    let (alice, _alice_events) = open(options(&server.url(), &alice_path, "alice")).await?;
    wait_drained(&alice).await?;
    // likes: each round n adds n + 1, for rounds 1 to 4 by both.
    let likes = 2 * (2 + 3 + 4 + 5);
    wait_until("both copies to hold every increment", || async {
        Ok(counter(&alice).await? == likes && counter(&bob).await? == likes)
    })
    .await?;
    let fresh = fresh_copies(&server, dir.path()).await?;
    wait_until("alice's and bob's copies to equal a fresh subscriber's", || async {
        Ok(documents(&alice).await? == fresh && documents(&bob).await? == fresh)
    })
    .await?;
    match alice.object("tags").await? {
        Some(Object::Set(tags)) => assert_eq!(tags.elements().len(), 8, "{fresh:?}"),
        other => return Err(anyhow!("tags is {other:?}")),
    }
    let title = &fresh[2]["value"];
    assert!(*title == json!("alice 4") || *title == json!("bob 4"), "a round-4 write wins: {title}");
    assert_eq!(alice.object("missing").await?, None);
    assert_eq!(alice.object_keys().await?, ["doc", "likes", "tags", "title"]);

    // Bob restarts from his file, offline: his copies are there.
    bob.close().await;
    let (bob, _bob_events) = open(options(&format!("ws://{closed}/"), &bob_path, "bob")).await?;
    assert_eq!(documents(&bob).await?, fresh, "bob's copies survive a restart");
    bob.close().await;
    alice.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_redelivered_delta_changes_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (alice, _a) = open(options(&server.url(), &dir.path().join("alice.sqlite"), "alice")).await?;
    let (bob, _b) = open(options(&server.url(), &dir.path().join("bob.sqlite"), "bob")).await?;
    bob.subscribe("crdt/likes").await?;
    // Live before Alice writes: her delta comes after the position Bob's `since` stands for,
    // so his re-subscription below brings it again. (A subscription answered after her write
    // holds it already, and its `since` rightly brings nothing.)
    wait_until("bob's subscription to be answered", || async {
        Ok(bob.subscriptions().await?.iter().any(|s| s.since.is_some()))
    })
    .await?;
    alice.add_many(vec![json!({"type": "crdt/counter/inc", "key": "likes", "by": 5})]).await?;
    wait_drained(&alice).await?;
    wait_until("bob to count 5", || async { Ok(counter(&bob).await? == 5) }).await?;
    // Reopened, Bob subscribes again and the server sends the counter's delta again.
    bob.close().await;
    let (bob, _b) = open(options(&server.url(), &dir.path().join("bob.sqlite"), "bob")).await?;
    wait_until("the counter to arrive again", || async { Ok(bob.session_stats().actions_received >= 1) })
        .await?;
    assert_eq!(counter(&bob).await?, 5, "the state received twice is joined once");
    alice.close().await;
    bob.close().await;
    server.stop().await;
    Ok(())
}
