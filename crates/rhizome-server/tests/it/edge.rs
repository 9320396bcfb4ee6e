//! Edge nodes (docs/edge.md), up direction: an edge serves its clients whether or not its
//! upstream is reachable, and its link relays what they sent, in order, resumably, each action
//! once, through drops, dead links and restarts (a real TCP proxy between edge and cloud).

use crate::support::{has_answer, Client, TestServer};
use anyhow::{bail, Context as _, Result};
use rhizome_server::link::LinkStatus;
use rhizome_testkit::Proxy;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How long the link may take to deliver everything.
const CONVERGE: Duration = Duration::from_secs(30);

/// Rows per id in `server`'s log, for the ids of `node`.
fn ids_of(server: &TestServer, node: &str) -> Result<HashMap<String, i64>> {
    let db = rusqlite::Connection::open(server.db_path())?;
    let mut stmt = db.prepare("SELECT id, count(*) FROM log WHERE id LIKE ?1 GROUP BY id")?;
    let rows = stmt.query_map([format!("% {node} %")], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rows per id in `server`'s log, for the `inc` actions of `node`.
fn incs_of(server: &TestServer, node: &str) -> Result<HashMap<String, i64>> {
    let db = rusqlite::Connection::open(server.db_path())?;
    let mut stmt = db.prepare(
        "SELECT id, count(*) FROM log WHERE id LIKE ?1 AND json_extract(action, '$.type') = 'inc' GROUP BY id",
    )?;
    let rows = stmt.query_map([format!("% {node} %")], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The last position of `server`'s log.
fn last_position(server: &TestServer) -> Result<u64> {
    let db = rusqlite::Connection::open(server.db_path())?;
    Ok(db.query_row("SELECT coalesce(max(added), 0) FROM log", [], |r| r.get::<_, i64>(0))? as u64)
}

/// The edge's durable upstream cursor.
fn durable_cursor(edge: &TestServer) -> Result<Option<u64>> {
    let db = rusqlite::Connection::open(edge.db_path())?;
    let mut stmt = db.prepare("SELECT position FROM cursors WHERE name = 'upstream_sent'")?;
    let mut rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    Ok(rows.next().transpose()?.map(|p| p as u64))
}

/// Waits until the edge's link confirmed its whole log; returns its status then.
async fn wait_forwarded(edge: &TestServer) -> Result<LinkStatus> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let status = edge.link_status()?;
        if status.confirmed >= last_position(edge)? {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the link did not confirm the edge's log: {status:?}, last {}", last_position(edge)?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` `inc` actions, each in its own `sync`, and waits for the edge's answer to the last.
async fn send_incs(client: &mut Client, n: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(client.send_action(json!({"type": "inc", "id": format!("c{}", i % 7)})).await?);
    }
    let last = ids.last().cloned().unwrap_or_default();
    client.wait_processed(&last).await?;
    Ok(ids)
}

/// Every id in `sent` is in `ids` exactly once, and nothing else is.
fn exactly_once(ids: &HashMap<String, i64>, sent: &[String]) -> Result<()> {
    let twice: Vec<_> = ids.iter().filter(|(_, &n)| n != 1).collect();
    let missing: Vec<_> = sent.iter().filter(|id| !ids.contains_key(*id)).collect();
    if !twice.is_empty() || !missing.is_empty() || ids.len() != sent.len() {
        bail!("{} logged, {} sent; more than once: {twice:?}; missing: {missing:?}", ids.len(), sent.len());
    }
    Ok(())
}

#[tokio::test]
async fn an_edge_relays_its_clients_actions_once_each_and_keeps_what_it_refused() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    // Each CRDT operation goes up on its own here (see the folding test below).
    let edge = TestServer::edge_with(&cloud.url(), |o| o.fold_crdt = false).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let mut sent = send_incs(&mut alice, 250).await?;
    // A CRDT operation goes up as the delta the edge made of it.
    for _ in 0..40 {
        sent.push(alice.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?);
    }
    alice.wait_processed(sent.last().expect("sent")).await?;
    // The edge refuses this one (Bob's channel): it stays here.
    let refused = alice.send_action(json!({"type": "post", "channel": "users/bob"})).await?;
    alice.until(|m| has_answer(m, "logux/undo", &refused)).await?;

    let status = wait_forwarded(&edge).await?;
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    // The cursor is written as it rises (one write at a time, the latest position each).
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while durable_cursor(&edge)? != Some(edge.link_status()?.confirmed) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the durable cursor stays at {:?}, confirmed {:?}",
                durable_cursor(&edge)?,
                edge.link_status()?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(status.connected_since_ms.is_some() && status.connections == 1, "{status:?}");
    assert_eq!(status.actions_sent, sent.len() as u64, "each action was sent once on a steady link");

    // The cloud's copy of the object is the edge's: a subscriber there gets 40.
    let mut bob = cloud.login("bob:b1:t").await?;
    let id = bob.send_action(json!({"type": "logux/subscribe", "channel": "crdt/likes"})).await?;
    let seen = bob.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    let delta = seen.iter().flat_map(crate::support::sync_actions).find(|a| a["type"] == "crdt/delta");
    assert_eq!(delta.map(|d| d["delta"].clone()), Some(json!({edge.actor("alice:a1:t"): [40, 0]})));
    cloud.assert_healthy().await?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_edge_serves_through_an_outage_and_relays_everything_when_it_ends() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    // The edge answers its clients as usual while its upstream is unreachable.
    let mut alice = edge.login("alice:a1:t").await?;
    let sent = send_incs(&mut alice, 300).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = edge.link_status()?;
    assert_eq!(status.connected_since_ms, None, "{status:?}");
    assert_eq!(status.confirmed, 0);
    assert!(status.last_error.is_some(), "the failed attempts are reported: {status:?}");
    assert!(ids_of(&cloud, "alice:a1:t")?.is_empty());

    proxy.down(false);
    wait_forwarded(&edge).await?;
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_link_cut_again_and_again_under_load_resumes_from_its_cursor() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let proxy = std::sync::Arc::new(proxy);
    // Cuts every few milliseconds while Alice writes and the link relays.
    let cutter = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(15)).await;
                proxy.cut();
            }
        })
    };
    let sent = send_incs(&mut alice, 3000).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cutter.abort();
    let status = wait_forwarded(&edge).await?;
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    assert!(status.connections >= 2, "the cuts were seen: {status:?}");
    eprintln!("{} connections; {} actions sent for {}", status.connections, status.actions_sent, sent.len());
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_dead_link_is_noticed_and_replaced() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let mut sent = send_incs(&mut alice, 10).await?;
    wait_forwarded(&edge).await?;
    // The link goes dead without a close (bytes vanish, sockets stay open).
    proxy.freeze(true);
    sent.extend(send_incs(&mut alice, 100).await?);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = edge.link_status()?;
    assert_eq!(status.connected_since_ms, None, "a silent upstream is given up on: {status:?}");
    proxy.freeze(false);
    let status = wait_forwarded(&edge).await?;
    assert!(status.connections >= 2, "{status:?}");
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_edge_resumes_from_its_durable_cursor() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let edge = TestServer::edge_of(&cloud.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let sent = send_incs(&mut alice, 200).await?;
    let before = wait_forwarded(&edge).await?;
    alice.close().await;
    let edge = edge.restart_edge(&cloud.url()).await?;
    // Another device of Alice's (the first one's ids ran ahead of the clock).
    let mut alice = edge.login("alice:a2:t").await?;
    let later = send_incs(&mut alice, 50).await?;
    let after = wait_forwarded(&edge).await?;
    assert!(after.confirmed > before.confirmed);
    // Only what came after the restart was sent: what the cloud confirmed before is not again.
    assert_eq!(after.actions_sent, 50, "{after:?}");
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    exactly_once(&ids_of(&cloud, "alice:a2:t")?, &later)?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// The ids of the `inc` actions `client` receives, until it has `n` of them.
async fn received_incs(client: &mut Client, n: usize) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let m = client.next_json().await.with_context(|| format!("{} of {n} received", ids.len()))?;
        for (action, meta) in crate::support::sync_pairs(&m) {
            if action["type"] == "inc" {
                ids.push(client.decode_id(&meta["id"])?);
            }
        }
    }
    Ok(ids)
}

/// Subscribes `client` to `channel` and waits for the answer.
async fn subscribe(client: &mut Client, channel: &str) -> Result<Vec<serde_json::Value>> {
    let id = client.send_action(json!({"type": "logux/subscribe", "channel": channel})).await?;
    client.collect_until(|m| has_answer(m, "logux/processed", &id)).await
}

/// The document of object `key` as a fresh subscriber `node` of `server` receives it.
async fn object_document(server: &TestServer, node: &str, key: &str) -> Result<serde_json::Value> {
    let mut reader = server.login(node).await?;
    let seen = subscribe(&mut reader, &format!("crdt/{key}")).await?;
    let delta = seen.iter().flat_map(crate::support::sync_actions).find(|a| a["type"] == "crdt/delta");
    Ok(delta.map(|d| d["delta"].clone()).unwrap_or_default())
}

/// Waits until a fresh subscriber of each of `servers` gets the same document of object `key`
/// and `done` holds for it; returns the document.
async fn converged_object(
    servers: &[&TestServer],
    key: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let mut documents = Vec::new();
        for (n, server) in servers.iter().enumerate() {
            documents.push(object_document(server, &format!("reader:r{n}:t"), key).await?);
        }
        if documents.iter().all(|d| *d == documents[0]) && done(&documents[0]) {
            return Ok(documents.swap_remove(0));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("object {key} did not converge: {documents:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a fresh subscriber of each of `servers` gets the same counter `key`, with
/// `value` in all; returns the document.
async fn converged_counter(servers: &[&TestServer], key: &str, value: i64) -> Result<serde_json::Value> {
    let total = |doc: &serde_json::Value| -> i64 {
        doc.as_object()
            .map(|o| o.values().map(|pn| pn[0].as_i64().unwrap_or(0) - pn[1].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0)
    };
    converged_object(servers, key, |doc| total(doc) == value).await
}

#[tokio::test]
async fn a_server_that_ran_alone_becomes_an_edge_only_if_it_dropped_no_crdt_delta() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    // A few operations: every delta is still in the log, and goes up once the server is an edge.
    let few = TestServer::start("").await?;
    let mut alice = few.login("alice:a1:t").await?;
    let mut last = String::new();
    for _ in 0..10 {
        last = alice.send_action(json!({"type": "crdt/counter/inc", "key": "few", "by": 1})).await?;
    }
    alice.wait_processed(&last).await?;
    drop(alice);
    let edge = few.restart_as_edge_of(&cloud.url()).await?;
    converged_counter(&[&cloud, &edge], "few", 10).await?;
    edge.stop().await;
    // Enough for two snapshots: cleaning empties the deltas the first one holds.
    let many = TestServer::start("").await?;
    let mut bob = many.login("bob:b1:t").await?;
    for _ in 0..200 {
        last = bob.send_action(json!({"type": "crdt/counter/inc", "key": "many", "by": 1})).await?;
    }
    bob.wait_processed(&last).await?;
    drop(bob);
    let refused = many.restart_as_edge_of(&cloud.url()).await;
    let error = format!("{:#}", refused.err().context("an edge that would lose deltas started")?);
    assert!(error.contains("ran without an upstream"), "{error}");
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_channel_followed_by_an_edge_gets_what_is_written_at_the_cloud_and_other_edges() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let edge_a = TestServer::edge_of(&cloud.url()).await?;
    let edge_b = TestServer::edge_of(&cloud.url()).await?;
    let mut bob = edge_b.login("bob:b1:t").await?;
    subscribe(&mut bob, "counter/x").await?;
    let mut alice = edge_a.login("alice:a1:t").await?;
    let mut carol = cloud.login("carol:c1:t").await?;
    let mut sent = Vec::new();
    for _ in 0..20 {
        sent.push(alice.send_action(json!({"type": "inc", "id": "x"})).await?);
    }
    for _ in 0..5 {
        sent.push(carol.send_action(json!({"type": "inc", "id": "x"})).await?);
    }
    let mut got = tokio::time::timeout(CONVERGE, received_incs(&mut bob, sent.len())).await??;
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "bob gets each action once, with its author's id");
    // Edge b keeps them in its log, received (never sent back up).
    assert_eq!(ids_of(&edge_b, "alice:a1:t")?.len(), 20);
    assert_eq!(edge_b.link_status()?.actions_sent, 0, "{:?}", edge_b.link_status()?);
    edge_a.stop().await;
    edge_b.stop().await;
    cloud.stop().await;
    Ok(())
}

/// The `dm` actions among `messages`, as `(id, text)`.
fn dms_in(messages: &[serde_json::Value]) -> Vec<String> {
    let pairs = messages.iter().flat_map(crate::support::sync_pairs);
    pairs
        .filter(|(a, _)| a["type"] == "dm")
        .map(|(a, _)| a["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Reads until the `dm`s received make `want`; fails on a timeout (a missing one) and on one
/// more or another than wanted.
async fn receive_dms(client: &mut Client, want: &[&str]) -> Result<()> {
    let mut got: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while got.len() < want.len() {
        let Ok(message) = tokio::time::timeout_at(deadline, client.next_json()).await else {
            bail!("received {got:?} of {want:?}");
        };
        got.extend(dms_in(&[message?]));
    }
    // Anything more (a copy) would be here by now.
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(300), client.next_json()).await {
        got.extend(dms_in(&[message]));
    }
    let mut sorted = got.clone();
    sorted.sort();
    let mut wanted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    wanted.sort();
    if sorted != wanted {
        bail!("received {got:?}, wanted {want:?} once each");
    }
    Ok(())
}

#[tokio::test]
async fn what_is_addressed_to_a_user_at_the_cloud_reaches_them_at_an_edge() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let mut erin = cloud.login("erin:e1:t").await?;
    // Sent before Bob ever connected to the edge: it comes down when he first does, as it
    // would to a new device at the cloud.
    let early = erin.send_action(json!({"type": "dm", "to": "bob", "text": "early"})).await?;
    erin.wait_processed(&early).await?;
    let edge = TestServer::edge_of(&cloud.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let mut bob = edge.login("bob:b1:t").await?;
    receive_dms(&mut bob, &["early"]).await?;
    // Live, once each, to every client of the user connected there.
    let mut alice2 = edge.login("alice:a2:t").await?;
    for text in ["one", "two"] {
        let id = erin.send_action(json!({"type": "dm", "to": "alice", "text": text})).await?;
        erin.wait_processed(&id).await?;
    }
    receive_dms(&mut alice, &["one", "two"]).await?;
    receive_dms(&mut alice2, &["one", "two"]).await?;
    // Offline at the edge: kept there, and delivered when she connects again.
    alice.close().await;
    let id = erin.send_action(json!({"type": "dm", "to": "alice", "text": "while away"})).await?;
    erin.wait_processed(&id).await?;
    receive_dms(&mut alice2, &["while away"]).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    receive_dms(&mut alice, &["one", "two", "while away"]).await?;
    // Addressed at the edge: delivered there (once each, whatever comes back down) and
    // relayed up.
    let id = bob.send_action(json!({"type": "dm", "to": "alice", "text": "from bob"})).await?;
    bob.wait_processed(&id).await?;
    receive_dms(&mut alice, &["from bob"]).await?;
    receive_dms(&mut alice2, &["from bob"]).await?;
    let mut alice3 = cloud.login("alice:a3:t").await?;
    receive_dms(&mut alice3, &["one", "two", "while away", "from bob"]).await?;
    wait_forwarded(&edge).await?;
    let rows = |server: &TestServer| -> Result<i64> {
        let db = rusqlite::Connection::open(server.db_path())?;
        Ok(db.query_row("SELECT count(*) FROM log WHERE json_extract(action, '$.type') = 'dm'", [], |r| {
            r.get(0)
        })?)
    };
    assert_eq!((rows(&cloud)?, rows(&edge)?), (5, 5), "each dm once in each log");
    // The edge follows both users upstream, for good.
    assert_eq!(edge.link_status()?.channels, 2, "{:?}", edge.link_status()?);
    // Nobody but a peer may follow a user.
    let id = erin.send_action(json!({"type": "logux/subscribe", "channel": "rhizome/user/alice"})).await?;
    let undo = erin.wait_undo(&id).await?;
    assert!(undo.to_string().contains("wrongChannel"), "{undo}");
    cloud.assert_healthy().await?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn crdt_objects_converge_across_the_cloud_and_its_edges() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let edge_a = TestServer::edge_of(&cloud.url()).await?;
    let edge_b = TestServer::edge_of(&cloud.url()).await?;
    // Each edge follows the object once one of its clients subscribes.
    let mut alice = edge_a.login("alice:a1:t").await?;
    subscribe(&mut alice, "crdt/likes").await?;
    let mut bob = edge_b.login("bob:b1:t").await?;
    subscribe(&mut bob, "crdt/likes").await?;
    let mut carol = cloud.login("carol:c1:t").await?;
    for (client, n) in [(&mut alice, 30), (&mut bob, 20), (&mut carol, 7)] {
        let mut last = String::new();
        for _ in 0..n {
            last = client.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?;
        }
        client.wait_processed(&last).await?;
    }
    let document = converged_counter(&[&cloud, &edge_a, &edge_b], "likes", 57).await?;
    let want = json!({
        edge_a.actor("alice:a1:t"): [30, 0],
        edge_b.actor("bob:b1:t"): [20, 0],
        cloud.actor("carol:c1:t"): [7, 0],
    });
    assert_eq!(document, want);
    edge_a.stop().await;
    edge_b.stop().await;
    cloud.stop().await;
    Ok(())
}

/// The `crdt/delta` rows of `server`'s log received from its upstream.
fn deltas_from_upstream(server: &TestServer) -> Result<i64> {
    let db = rusqlite::Connection::open(server.db_path())?;
    Ok(db.query_row(
        "SELECT count(*) FROM log WHERE upstream = 1 AND json_extract(action, '$.type') = 'crdt/delta'",
        [],
        |r| r.get(0),
    )?)
}

#[tokio::test]
async fn an_edge_keeps_no_delta_from_its_upstream_that_it_holds_already() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    subscribe(&mut alice, "crdt/likes").await?;
    let mut last = String::new();
    for _ in 0..10 {
        last = alice.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?;
    }
    alice.wait_processed(&last).await?;
    wait_forwarded(&edge).await?;
    // Each new connection subscribes again with `since`: the cloud's catch-up is the join of
    // what it logged after it, the edge's own operations included.
    for _ in 0..3 {
        let connections = edge.link_status()?.connections;
        proxy.cut();
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while edge.link_status()?.connections == connections
            || edge.link_status()?.connected_since_ms.is_none()
        {
            if tokio::time::Instant::now() >= deadline {
                bail!("the link did not come back: {:?}", edge.link_status()?);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(deltas_from_upstream(&edge)?, 0, "the edge's own operations, sent back, are not kept");
    let delta =
        |m: &serde_json::Value| crate::support::sync_actions(m).iter().any(|a| a["type"] == "crdt/delta");
    let more = tokio::time::timeout(Duration::from_millis(500), alice.until(delta)).await;
    assert!(!matches!(more, Ok(Ok(_))), "alice is sent no delta: {more:?}");
    // What the edge lacks is kept, and reaches its clients.
    let mut carol = cloud.login("carol:c1:t").await?;
    let id = carol.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?;
    carol.wait_processed(&id).await?;
    let document = converged_counter(&[&cloud, &edge], "likes", 11).await?;
    assert_eq!(document, json!({edge.actor("alice:a1:t"): [10, 0], "carol:c1:t": [1, 0]}));
    assert_eq!(deltas_from_upstream(&edge)?, 1);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// Reads `client`'s messages until its copy of the counter `key` (the join of the deltas it is
/// sent, a whole state replacing it) is `want`; returns the number of whole states received.
async fn copy_becomes(client: &mut Client, key: &str, want: &serde_json::Value) -> Result<usize> {
    copy_goes_on_to(client, key, &mut serde_json::Map::new(), want).await
}

/// [`copy_becomes`] for a copy that holds `copy` already.
async fn copy_goes_on_to(
    client: &mut Client,
    key: &str,
    copy: &mut serde_json::Map<String, serde_json::Value>,
    want: &serde_json::Value,
) -> Result<usize> {
    let mut replaced = 0;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while serde_json::Value::Object(copy.clone()) != *want {
        let Ok(message) = tokio::time::timeout_at(deadline, client.next_json()).await else {
            bail!("the copy stays {copy:?}, not {want}");
        };
        replaced += join_into(copy, key, &message?);
    }
    Ok(replaced)
}

/// Joins into `copy`, a client's copy of the counter `key`, the deltas `message` carries for
/// it; returns how many whole states replaced the copy.
fn join_into(
    copy: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    message: &serde_json::Value,
) -> usize {
    let mut replaced = 0;
    for a in crate::support::sync_actions(message) {
        if a["type"] != "crdt/delta" || a["key"] != key {
            continue;
        }
        if a["replace"] == true {
            copy.clear();
            replaced += 1;
        }
        for (node, pn) in a["delta"].as_object().into_iter().flatten() {
            let old = copy.get(node).cloned().unwrap_or(json!([0, 0]));
            let max = |i: usize| old[i].as_u64().unwrap_or(0).max(pn[i].as_u64().unwrap_or(0));
            copy.insert(node.clone(), json!([max(0), max(1)]));
        }
    }
    replaced
}

/// A cloud where only Bob may change CRDT objects (the others' access was revoked there; an
/// edge with the test rules, not told, lets everyone), and edges' links are peers.
async fn cloud_where_only_bob_writes_objects() -> Result<TestServer> {
    let everyone = "pattern = \"crdt/*\"\nsubscribe = \"everyone\"\nwrite = \"everyone\"";
    let only_bob = "pattern = \"crdt/*\"\nsubscribe = \"everyone\"\nwrite = [\"bob\"]";
    TestServer::with_peers_and_rules(&["edge"], |rules| {
        assert!(rules.contains(everyone));
        rules.replace(everyone, only_bob)
    })
    .await
}

#[tokio::test]
async fn an_edge_corrects_a_crdt_object_when_its_upstream_refuses_an_operation() -> Result<()> {
    // At the cloud only Bob may change the objects (Alice's access was revoked there); the
    // edge, not told yet, lets everyone.
    let cloud = cloud_where_only_bob_writes_objects().await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut bob = edge.login("bob:b1:t").await?;
    let mut alice = edge.login("alice:a1:t").await?;
    subscribe(&mut alice, "crdt/likes").await?;
    // Carol follows the object (a writer is not sent its own operations).
    let mut carol = edge.login("carol:c1:t").await?;
    subscribe(&mut carol, "crdt/likes").await?;
    // While the cloud is away both write; the edge takes everything.
    proxy.down(true);
    let mut ids = Vec::new();
    for (client, n) in [(&mut bob, 3), (&mut alice, 2)] {
        for _ in 0..n {
            ids.push(client.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?);
        }
    }
    let (a, b) = (edge.actor("alice:a1:t"), edge.actor("bob:b1:t"));
    let (mut carols, mut alices) = (serde_json::Map::new(), serde_json::Map::new());
    copy_goes_on_to(&mut carol, "likes", &mut carols, &json!({&a: [2, 0], &b: [3, 0]})).await?;
    // And each adds an element to a set.
    for (client, elem) in [(&mut alice, "from alice"), (&mut bob, "from bob")] {
        let id = client.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": elem})).await?;
        client.wait_processed(&id).await?;
    }
    proxy.down(false);
    // The cloud refuses Alice's: she is told, and the edge's object and every copy of it lose
    // them, Alice's included.
    let seen = alice.collect_until(|m| has_answer(m, "logux/undo", &ids[4])).await?;
    let undo = seen.last().context("the undo")?;
    let refused = crate::support::sync_actions(undo).into_iter().find(|a| a["id"] == ids[4]);
    assert_eq!(refused.map(|a| a["reason"].clone()), Some(json!("denied")), "{undo}");
    // Each of Alice's increments is taken back under her actor (a refused counter operation
    // could otherwise come back with her later ones, docs/edge.md): her totals stay, and
    // count nothing.
    let want = json!({&a: [2, 2], &b: [3, 0]});
    copy_goes_on_to(&mut carol, "likes", &mut carols, &want).await?;
    // Alice gets the taking back of her own operations (she is not sent them otherwise).
    for message in &seen {
        join_into(&mut alices, "likes", message);
    }
    copy_goes_on_to(&mut alice, "likes", &mut alices, &json!({&a: [2, 2]})).await?;
    assert_eq!(converged_counter(&[&cloud, &edge], "likes", 3).await?, want);
    // What comes after joins as usual.
    let id = bob.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?;
    bob.wait_processed(&id).await?;
    let want = json!({&a: [2, 2], &b: [4, 0]});
    copy_goes_on_to(&mut carol, "likes", &mut carols, &want).await?;
    assert_eq!(converged_counter(&[&cloud, &edge], "likes", 4).await?, want);
    // A copy of the set that has seen Alice's element (a device that was away during the
    // correction) gets the whole corrected state, to replace its copy with, although what it
    // has seen covers everything the set holds.
    let mut dave = edge.login("dave:d1:t").await?;
    let seen = json!({&a: 1, &b: 1});
    let id =
        dave.send_action(json!({"type": "logux/subscribe", "channel": "crdt/tags", "seen": seen})).await?;
    let answer = dave.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    let state = answer.iter().flat_map(crate::support::sync_actions).find(|a| a["type"] == "crdt/delta");
    let state = state.context("a delta")?;
    assert_eq!(state["replace"], true, "{state}");
    let elems: Vec<&str> =
        state["delta"]["elems"].as_array().into_iter().flatten().filter_map(|e| e[0].as_str()).collect();
    assert_eq!(elems, ["from bob"], "{state}");
    // The correction is the object's snapshot: a restart keeps it, and nothing is left to do.
    let edge = edge.restart_edge(&proxy.url()).await?;
    assert_eq!(object_document(&edge, "reader:r9:t", "likes").await?, want);
    let db = rusqlite::Connection::open(edge.db_path())?;
    let left: i64 = db.query_row("SELECT count(*) FROM object_resets", [], |r| r.get(0))?;
    assert_eq!(left, 0);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_edge_catches_up_on_its_channels_after_an_outage_and_a_restart() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let edge_a = TestServer::edge_of(&cloud.url()).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge_b = TestServer::edge_of(&proxy.url()).await?;
    let mut bob = edge_b.login("bob:b1:t").await?;
    let started_ms = bob.base_time;
    subscribe(&mut bob, "counter/x").await?;
    bob.close().await;
    // Edge b is cut off and restarted while alice writes at edge a.
    proxy.down(true);
    let mut alice = edge_a.login("alice:a1:t").await?;
    let mut sent = Vec::new();
    for _ in 0..50 {
        sent.push(alice.send_action(json!({"type": "inc", "id": "x"})).await?);
    }
    alice.wait_processed(sent.last().expect("sent")).await?;
    wait_forwarded(&edge_a).await?;
    let edge_b = edge_b.restart_edge(&proxy.url()).await?;
    proxy.down(false);
    // The channel is followed again with its `since`: a subscriber at edge b gets all 50.
    let mut dave = edge_b.login("dave:d1:t").await?;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while ids_of(&edge_b, "alice:a1:t")?.len() < sent.len() {
        if tokio::time::Instant::now() >= deadline {
            bail!("edge b has {} of alice's actions", ids_of(&edge_b, "alice:a1:t")?.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exactly_once(&ids_of(&edge_b, "alice:a1:t")?, &sent)?;
    // Dave was away since before alice wrote: his `since` catches him up from edge b's log.
    let since = json!({"id": "", "time": started_ms});
    let id =
        dave.send_action(json!({"type": "logux/subscribe", "channel": "counter/x", "since": since})).await?;
    let seen = dave.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    let incs = seen.iter().flat_map(crate::support::sync_actions).filter(|a| a["type"] == "inc").count();
    assert_eq!(incs, sent.len());
    edge_a.stop().await;
    edge_b.stop().await;
    cloud.stop().await;
    Ok(())
}

/// `GET /v1/edge/status` of `server`: the status code and the body as JSON (null when not JSON).
async fn edge_status(server: &TestServer) -> Result<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("http://{}/v1/edge/status", server.addr)).await?;
    let code = response.status().as_u16();
    let text = response.text().await?;
    Ok((code, serde_json::from_str(&text).unwrap_or_default()))
}

#[tokio::test]
async fn an_edges_status_with_a_token_answers_only_with_it() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let secret = "a-status-token-of-some-length";
    let edge = TestServer::edge_with(&cloud.url(), |o| o.status_token = Some(secret.into())).await?;
    let url = format!("http://{}/v1/edge/status", edge.addr);
    let http = reqwest::Client::new();
    let without = http.get(&url).send().await?;
    assert_eq!(without.status().as_u16(), 401);
    assert_eq!(without.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    for wrong in
        ["Bearer a-status-token-of-some-lengtH", "Bearer a-status-token", "a-status-token-of-some-length"]
    {
        let response = http.get(&url).header("authorization", wrong).send().await?;
        assert_eq!(response.status().as_u16(), 401, "{wrong}");
    }
    let right = http.get(&url).bearer_auth(secret).send().await?;
    assert_eq!(right.status().as_u16(), 200);
    let body: serde_json::Value = serde_json::from_str(&right.text().await?)?;
    assert!(body["outbox"]["entries"].is_u64(), "{body}");
    // The rest of the server is unaffected.
    edge.assert_healthy().await?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// Waits until the edge's status satisfies `pred`; returns it.
async fn wait_status(
    edge: &TestServer,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let (code, body) = edge_status(edge).await?;
        if code == 200 && pred(&body) {
            return Ok(body);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the edge's status stayed {code} {body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_status_endpoint_reports_the_link_and_the_outbox() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    assert_eq!(edge_status(&cloud).await?.0, 404, "the cloud is no edge");
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    send_incs(&mut alice, 30).await?;
    // Down: 30 actions wait, the oldest for a while, and the link says why it is down.
    let down = wait_status(&edge, |s| {
        s["outbox"]["entries"] == 30 && s["outbox"]["oldestAgeMs"].as_i64() > Some(100)
    })
    .await?;
    assert_eq!(down["connected"], false, "{down}");
    assert!(down["lastError"].is_string(), "{down}");
    assert!(down["outbox"]["bytes"].as_u64() > Some(30 * 10), "{down}");
    assert_eq!(down["outbox"]["full"], false);
    proxy.down(false);
    let up = wait_status(&edge, |s| s["connected"] == true && s["outbox"]["entries"] == 0).await?;
    assert_eq!(up["outbox"]["oldestAgeMs"], serde_json::Value::Null, "{up}");
    assert!(up["upstreamSent"].as_u64() >= Some(30), "{up}");
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_edge_reports_an_empty_outbox_when_everything_was_relayed() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    send_incs(&mut alice, 30).await?;
    wait_forwarded(&edge).await?;
    alice.close().await;
    // Restarted with the cloud away: nothing moves, and the outbox is measured from the
    // durable cursor, not from the start of the log.
    proxy.down(true);
    let edge = edge.restart_edge(&proxy.url()).await?;
    let status =
        wait_status(&edge, |s| s["outbox"]["entries"] == 0 && s["upstreamSent"].as_u64() >= Some(30)).await?;
    assert_eq!(status["connected"], false, "{status}");
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_full_outbox_refuses_client_actions_until_the_link_catches_up() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_with(&proxy.url(), |o| o.outbox_max = 20).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let accepted = send_incs(&mut alice, 25).await?;
    wait_status(&edge, |s| s["outbox"]["full"] == true).await?;
    // Refused explicitly, not stored: the author learns it was not taken.
    let refused = alice.send_action(json!({"type": "inc", "id": "x"})).await?;
    let answer = alice.until(|m| has_answer(m, "logux/undo", &refused)).await?;
    assert_eq!(crate::support::sync_actions(&answer)[0]["reason"], "outboxFull", "{answer}");
    assert!(!ids_of(&edge, "alice:a1:t")?.contains_key(&refused));
    // Subscriptions still work while it is full.
    subscribe(&mut alice, "counter/x").await?;
    proxy.down(false);
    wait_status(&edge, |s| s["outbox"]["full"] == false).await?;
    let later = alice.send_action(json!({"type": "inc", "id": "x"})).await?;
    alice.wait_processed(&later).await?;
    wait_forwarded(&edge).await?;
    let mut sent = accepted;
    sent.push(later);
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// `noted` actions, accepted by anyone, not processed: an edge takes whatever the cloud may
/// later refuse.
struct Accepted;

#[async_trait::async_trait]
impl rhizome_core::ActionType for Accepted {
    async fn access(
        &self,
        _: &rhizome_core::Context,
        _: &rhizome_protocol::Action,
        _: &rhizome_core::Meta,
    ) -> Result<bool, rhizome_core::HookError> {
        Ok(true)
    }
}

#[tokio::test]
async fn the_author_learns_when_the_cloud_committed_or_refused_its_action() -> Result<()> {
    // The cloud's `process` of `noted` fails for `"fail": true` (undo `refusedHere`).
    let (cloud, _) = crate::peer::noting().await?;
    let app = rhizome_core::App::new(crate::support::Open).action_type("noted", Accepted);
    let edge = TestServer::edge_with_app(&cloud.url(), app).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let kept = alice.send_action(json!({"type": "noted"})).await?;
    let refused = alice.send_action(json!({"type": "noted", "fail": true})).await?;
    // First level: the edge took both.
    alice.until(|m| has_answer(m, "logux/processed", &refused)).await?;
    // Second level: the cloud committed one and refused the other.
    let mut committed = false;
    let mut undone = None;
    while !committed || undone.is_none() {
        let m = alice.next_json().await.context("waiting for the cloud's answers")?;
        for a in crate::support::sync_actions(&m) {
            if a["type"] == "rhizome/committed"
                && a["ids"].as_array().is_some_and(|ids| ids.contains(&json!(kept)))
            {
                committed = true;
            }
            if a["type"] == "logux/undo" && a["id"] == refused {
                undone = Some(a);
            }
        }
    }
    let undone = undone.expect("an undo");
    assert_eq!(undone["reason"], "refusedHere", "{undone}");
    assert_eq!(undone["action"]["type"], "noted", "the undo carries the action: {undone}");
    // The edge's own record of it is corrected.
    let db = rusqlite::Connection::open(edge.db_path())?;
    let status: (i64, Option<String>) =
        db.query_row("SELECT status, reason FROM log WHERE id = ?1", [&refused], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    assert_eq!(status, (2, Some("refusedHere".to_owned())));
    let kept_status: i64 = db.query_row("SELECT status FROM log WHERE id = ?1", [&kept], |r| r.get(0))?;
    assert_eq!(kept_status, 1);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_authors_deltas_of_one_object_go_up_folded_and_each_is_answered() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let mut bob = edge.login("bob:b1:t").await?;
    // Queued at the edge while the link is down: 150 of Alice's, 50 of Bob's, interleaved with
    // plain actions.
    let mut incs = Vec::new();
    for n in 0..200 {
        let client = if n % 4 == 3 { &mut bob } else { &mut alice };
        incs.push(client.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?);
        if n % 10 == 0 {
            alice.send_action(json!({"type": "inc", "id": "x"})).await?;
        }
    }
    let last_of = |node: &str| incs.iter().rev().find(|id| id.contains(node)).cloned().unwrap_or_default();
    alice.wait_processed(&last_of("alice:a1:t")).await?;
    bob.wait_processed(&last_of("bob:b1:t")).await?;
    proxy.down(false);
    wait_forwarded(&edge).await?;
    // Fewer actions went up than were written, and the object is whole at the cloud.
    let status = edge.link_status()?;
    assert!(status.actions_sent < 100, "folded: {status:?}");
    let document = converged_counter(&[&cloud, &edge], "likes", 200).await?;
    assert_eq!(document, json!({edge.actor("alice:a1:t"): [150, 0], edge.actor("bob:b1:t"): [50, 0]}));
    // Every author hears that each of its operations was committed, folded or not.
    let mut committed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let wanted: std::collections::HashSet<&String> = incs.iter().collect();
    for client in [&mut alice, &mut bob] {
        loop {
            let mine = wanted.iter().filter(|id| id.contains(&client.node)).count();
            let got = committed.iter().filter(|id| id.contains(&client.node) && wanted.contains(id)).count();
            if got >= mine {
                break;
            }
            let m = client.next_json().await.with_context(|| format!("{got} of {mine} committed"))?;
            for a in crate::support::sync_actions(&m) {
                if a["type"] == "rhizome/committed" {
                    for id in a["ids"].as_array().into_iter().flatten() {
                        committed.insert(id.as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        }
    }
    assert!(wanted.iter().all(|id| committed.contains(*id)));
    // The cloud's answer is final: no fold's record is kept.
    assert_eq!(folds_kept(&edge)?, 0);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_fold_sent_again_after_a_drop_loses_none_of_its_deltas() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    // One `sync` in flight: the second operation waits for the first one's `synced`.
    let edge = TestServer::edge_with(&proxy.url(), |o| o.window = 1).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    wait_status(&edge, |s| s["connected"] == true).await?;
    // The cloud's answers are lost: it commits the first operation, the edge never hears so.
    proxy.freeze_down(true);
    let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 1});
    let first = alice.send_action(inc.clone()).await?;
    alice.wait_processed(&first).await?;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !ids_of(&cloud, "alice:a1:t")?.contains_key(&first) {
        if tokio::time::Instant::now() >= deadline {
            bail!("the cloud never got the first operation");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = alice.send_action(inc).await?;
    alice.wait_processed(&second).await?;
    // The link starts again from its cursor: both operations go up again, folded into one.
    proxy.freeze_down(false);
    proxy.cut();
    wait_forwarded(&edge).await?;
    let document = converged_counter(&[&cloud, &edge], "likes", 2).await?;
    assert_eq!(document, json!({edge.actor("alice:a1:t"): [2, 0]}));
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_folded_delta_keeps_to_the_sync_byte_limit() -> Result<()> {
    // The cloud takes frames of at most 64 KiB; the link's `sync`s are well below that.
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_with(&proxy.url(), |o| o.sync_bytes_max = 16 << 10).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    // 100 elements of about 1 KB added to one set: their join is as large as they all are.
    let mut last = String::new();
    for n in 0..100 {
        let elem = format!("{n:03}{}", "x".repeat(900));
        last = alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": elem})).await?;
    }
    alice.wait_processed(&last).await?;
    proxy.down(false);
    wait_forwarded(&edge).await?;
    assert!(!ids_of(&cloud, "alice:a1:t")?.is_empty());
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_chain_of_cloud_region_and_sites_relays_both_ways() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let region = TestServer::region_of(&cloud.url()).await?;
    let site_a = TestServer::edge_of(&region.url()).await?;
    let site_b = TestServer::edge_of(&cloud.url()).await?;
    // Bob at site b (an edge of the cloud) and Carol at the cloud follow the counter and the
    // channel; Alice writes at site a, two hops away.
    let mut bob = site_b.login("bob:b1:t").await?;
    subscribe(&mut bob, "counter/x").await?;
    subscribe(&mut bob, "crdt/likes").await?;
    let mut alice = site_a.login("alice:a1:t").await?;
    subscribe(&mut alice, "crdt/likes").await?;
    let mut sent = Vec::new();
    for _ in 0..30 {
        sent.push(alice.send_action(json!({"type": "inc", "id": "x"})).await?);
    }
    let mut last = String::new();
    for _ in 0..10 {
        last = alice.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?;
    }
    alice.wait_processed(&last).await?;
    let mut got = tokio::time::timeout(CONVERGE, received_incs(&mut bob, sent.len())).await??;
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "up two hops and down one, each once");
    // Bob's increments go the other way, to site a through the cloud and the region.
    let mut last = String::new();
    for _ in 0..5 {
        last = bob.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?;
    }
    bob.wait_processed(&last).await?;
    let document = converged_counter(&[&cloud, &region, &site_a, &site_b], "likes", 15).await?;
    assert_eq!(document, json!({site_a.actor("alice:a1:t"): [10, 0], site_b.actor("bob:b1:t"): [5, 0]}));
    exactly_once(
        &ids_of(&cloud, "alice:a1:t")?,
        &ids_of(&region, "alice:a1:t")?.into_keys().collect::<Vec<_>>(),
    )?;
    // What is addressed to a user comes down the chain to where the user is: site a follows
    // Alice at the region, which follows her at the cloud.
    let id = bob.send_action(json!({"type": "dm", "to": "alice", "text": "across"})).await?;
    bob.wait_processed(&id).await?;
    receive_dms(&mut alice, &["across"]).await?;
    let mut erin = cloud.login("erin:e1:t").await?;
    let id = erin.send_action(json!({"type": "dm", "to": "alice", "text": "down"})).await?;
    erin.wait_processed(&id).await?;
    receive_dms(&mut alice, &["down"]).await?;
    for server in [site_a, site_b, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

/// How many folds `server` keeps a record of (`relay_folds`: its upstream accepted them, and
/// the cloud has not committed or refused them yet).
fn folds_kept(server: &TestServer) -> Result<i64> {
    let db = rusqlite::Connection::open(server.db_path())?;
    Ok(db.query_row("SELECT count(*) FROM relay_folds", [], |r| r.get(0))?)
}

/// The `rhizome/committed` notices in `server`'s log: the node of each one's id, and the ids
/// it names.
fn committed_notices(server: &TestServer) -> Result<Vec<(String, Vec<String>)>> {
    let db = rusqlite::Connection::open(server.db_path())?;
    let mut stmt = db.prepare(
        "SELECT id, action FROM log WHERE json_extract(action, '$.type') = 'rhizome/committed' ORDER BY added",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut notices = Vec::new();
    for row in rows {
        let (id, action) = row?;
        let action: serde_json::Value = serde_json::from_str(&action)?;
        let node = id.split(' ').nth(1).unwrap_or_default().to_owned();
        let ids = action["ids"].as_array().into_iter().flatten();
        notices.push((node, ids.filter_map(|id| id.as_str().map(str::to_owned)).collect()));
    }
    Ok(notices)
}

#[tokio::test]
async fn in_a_chain_the_author_hears_of_the_commit_when_the_cloud_commits() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let to_cloud = Proxy::start(cloud.addr).await?;
    to_cloud.down(true);
    let region = TestServer::region_of(&to_cloud.url()).await?;
    let to_region = Proxy::start(region.addr).await?;
    to_region.down(true);
    let site = TestServer::edge_of(&to_region.url()).await?;
    let mut alice = site.login("alice:a1:t").await?;
    // A plain action and three increments, which go up folded into one under the last id.
    let mut sent = vec![alice.send_action(json!({"type": "inc", "id": "x"})).await?];
    for _ in 0..3 {
        sent.push(alice.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?);
    }
    alice.wait_processed(&sent[3]).await?;
    // The region takes them all and answers; the cloud is out of reach.
    to_region.down(false);
    wait_forwarded(&site).await?;
    assert!(site.link_status()?.actions_sent < 4, "the increments went up folded");
    assert!(ids_of(&region, "alice:a1:t")?.contains_key(&sent[3]));
    // What the region answered is not the cloud's commit: the site tells Alice nothing yet
    // (it would have written the notice in the write that took the region's answers).
    assert_eq!(committed_notices(&site)?, Vec::new());
    assert_eq!(committed_notices(&region)?, Vec::new());
    // The site keeps the fold's record: the cloud may still refuse it.
    assert_eq!(folds_kept(&site)?, 1);
    // The cloud commits: Alice hears of each of her actions, the folded ones by their own ids.
    to_cloud.down(false);
    let mut heard: Vec<String> = Vec::new();
    while sent.iter().any(|id| !heard.contains(id)) {
        let m = tokio::time::timeout(CONVERGE, alice.next_json())
            .await
            .with_context(|| format!("waiting for the cloud's commit; heard of {heard:?}"))??;
        for a in crate::support::sync_actions(&m) {
            if a["type"] == "rhizome/committed" {
                heard.extend(
                    a["ids"].as_array().into_iter().flatten().filter_map(|id| id.as_str().map(str::to_owned)),
                );
            }
        }
    }
    let mut once = heard.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), heard.len(), "each once: {heard:?}");
    // The notices are the region's, passed down with the fold's ids spelled out; the site
    // wrote none of its own.
    let region_node =
        committed_notices(&region)?.first().map(|(node, _)| node.clone()).context("no notice")?;
    let at_site = committed_notices(&site)?;
    assert!(at_site.iter().all(|(node, _)| *node == region_node), "{at_site:?}");
    let mut named: Vec<String> = at_site.into_iter().flat_map(|(_, ids)| ids).collect();
    named.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(named, want);
    // Committed by the cloud, the fold is never refused now: its record goes.
    assert_eq!(folds_kept(&site)?, 0);
    for server in [site, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_site_that_hears_of_the_clouds_commit_of_a_fold_before_its_regions_answer_names_all_of_it(
) -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    // The region answers a `sync` once every action in it is processed: the fold in it is
    // committed at the cloud, and its notice on its way down, while `slow` waits for its gate.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let region =
        TestServer::region_with_app(&cloud.url(), |app| app.action_type("slow", Gated(gate.clone()))).await?;
    let to_region = Proxy::start(region.addr).await?;
    to_region.down(true);
    let open = Arc::new(tokio::sync::Semaphore::new(1));
    let site = TestServer::edge_with_app_edited(&to_region.url(), |app| app.action_type("slow", Gated(open)))
        .await?;
    let mut alice = site.login("alice:a1:t").await?;
    let mut sent = Vec::new();
    for _ in 0..2 {
        sent.push(alice.send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1})).await?);
    }
    alice.wait_processed(&sent[1]).await?;
    let slow = alice.send_action(json!({"type": "slow"})).await?;
    alice.wait_processed(&slow).await?;
    // One `sync`: the fold of both increments, then `slow`. The cloud's commit of the fold
    // comes down while `slow` waits; then the region may answer.
    to_region.down(false);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while committed_notices(&site)?.is_empty() {
        if tokio::time::Instant::now() >= deadline {
            bail!("the cloud's commit of the fold never came down");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.add_permits(1);
    let mut heard: Vec<String> = Vec::new();
    while sent.iter().any(|id| !heard.contains(id)) {
        let m = tokio::time::timeout(CONVERGE, alice.next_json())
            .await
            .with_context(|| format!("waiting for the cloud's commit; heard of {heard:?}"))??;
        for a in crate::support::sync_actions(&m) {
            if a["type"] == "rhizome/committed" {
                heard.extend(
                    a["ids"].as_array().into_iter().flatten().filter_map(|id| id.as_str().map(str::to_owned)),
                );
            }
        }
    }
    // The region's notice came first, naming the fold's id alone; the site told the rest when
    // the region answered, and keeps no record of a fold the cloud committed.
    let notices = committed_notices(&site)?;
    assert!(notices.len() >= 2, "{notices:?}");
    assert_eq!(notices[0].1, [sent[1].clone()], "{notices:?}");
    wait_forwarded(&site).await?;
    assert_eq!(folds_kept(&site)?, 0);
    for server in [site, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_refused_counter_operation_does_not_come_back_with_the_authors_later_ones() -> Result<()> {
    // Alice has lost the right to change objects at the cloud, for a while.
    let cloud = cloud_where_only_bob_writes_objects().await?;
    // A `slow` action holds back what the site relays after it until its gate opens.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let site =
        TestServer::edge_with_app_edited(&cloud.url(), |app| app.action_type("slow", Gated(gate.clone())))
            .await?;
    let mut bob = site.login("bob:b1:t").await?;
    subscribe(&mut bob, "crdt/likes").await?;
    let mut alice = site.login("alice:a1:t").await?;
    let inc = |by: u64| json!({"type": "crdt/counter/inc", "key": "likes", "by": by});
    // The site takes her 5, then `slow`, then her 2, whose delta (her running total) counts
    // the 5 too. The 5 goes up at once and is refused.
    let refused = alice.send_action(inc(5)).await?;
    alice.send_action(json!({"type": "slow"})).await?;
    let later = alice.send_action(inc(2)).await?;
    // The refusal comes at once (the site marks the 5 undone); the 2 waits at the site behind
    // `slow`, and so do the site's answers to Alice.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let db = rusqlite::Connection::open(site.db_path())?;
        // Not logged yet, or not refused yet.
        let status = db.query_row("SELECT status FROM log WHERE id = ?1", [&refused], |r| r.get::<_, i64>(0));
        if status.ok() == Some(2) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the 5 was never refused");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // She has the right back before the 2 goes up: the cloud takes it.
    let cloud = cloud.restart_with_rules(&["edge"], |rules| rules.to_owned()).await?;
    assert!(!ids_of(&cloud, "alice:a1:t")?.contains_key(&later), "the 2 went up before the right came back");
    gate.add_permits(1);
    let (mut undone, mut taken) = (false, false);
    alice
        .until(|m| {
            undone |= has_answer(m, "logux/undo", &refused);
            taken |= has_answer(m, "logux/processed", &later);
            undone && taken
        })
        .await?;
    wait_forwarded(&site).await?;
    assert!(ids_of(&cloud, "alice:a1:t")?.contains_key(&later));
    // Everywhere the counter is 2: the refused 5 was taken back under Alice's actor, so the
    // 2's running total does not bring it back.
    let document = converged_counter(&[&cloud, &site], "likes", 2).await?;
    assert_eq!(document, json!({site.actor("alice:a1:t"): [7, 5]}));
    // So is the copy of a subscriber at the site.
    copy_becomes(&mut bob, "likes", &document).await?;
    // The record of Alice's operations is done with once the cloud answered them.
    let db = rusqlite::Connection::open(site.db_path())?;
    let kept: i64 = db.query_row("SELECT count(*) FROM counter_ops", [], |r| r.get(0))?;
    assert_eq!(kept, 0);
    for server in [site, cloud] {
        server.stop().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_full_outbox_in_the_middle_of_a_chain_holds_back_what_a_site_relays() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let region = TestServer::region_with(&proxy.url(), |o| o.outbox_max = 5).await?;
    let site = TestServer::edge_of(&region.url()).await?;
    // The region's own client fills its outbox while the cloud is away.
    let mut bob = region.login("bob:b1:t").await?;
    send_incs(&mut bob, 5).await?;
    wait_status(&region, |s| s["outbox"]["full"] == true).await?;
    // Alice's actions are taken at the site (its first level of acknowledgement), which relays
    // them to the full region meanwhile.
    let mut alice = site.login("alice:a1:t").await?;
    let sent = send_incs(&mut alice, 3).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.down(false);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while ids_of(&cloud, "alice:a1:t")?.len() < sent.len() {
        if tokio::time::Instant::now() >= deadline {
            let db = rusqlite::Connection::open(site.db_path())?;
            let mut stmt = db.prepare("SELECT id, status, reason FROM log WHERE id LIKE '% alice:a1:t %'")?;
            let rows: Vec<(String, i64, Option<String>)> =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
            bail!("alice's actions never reached the cloud; at the site: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    for server in [site, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

/// Limits with room for large actions (the default frame of the tests is 64 KiB).
const LARGE_FRAMES: &str = r#"
frame_bytes_max = 16777216
actions_per_sync_max = 100
"#;

#[tokio::test]
async fn an_upstream_that_stops_reading_is_given_up_on_while_the_link_sends() -> Result<()> {
    let cloud = TestServer::with_peers_and_limits(&["edge"], LARGE_FRAMES).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge = TestServer::edge_with_limits(&proxy.url(), LARGE_FRAMES, |o| o.window = 64).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let mut sent = send_incs(&mut alice, 1).await?;
    wait_forwarded(&edge).await?;
    // The upstream hangs: it stops reading, so the link's writes fill the sockets' buffers (far
    // more than they hold fits in the window: 15 MB) and then block.
    proxy.stall(true);
    let body = "x".repeat(60_000);
    for _ in 0..256 {
        sent.push(alice.send_action(json!({"type": "post", "channel": "counter/x", "body": body})).await?);
    }
    alice.wait_processed(sent.last().expect("sent")).await?;
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let status = edge.link_status()?;
    assert_eq!(status.connected_since_ms, None, "a link that cannot send is given up on: {status:?}");
    proxy.stall(false);
    let status = wait_forwarded(&edge).await?;
    assert!(status.connections >= 2, "{status:?}");
    exactly_once(&ids_of(&cloud, "alice:a1:t")?, &sent)?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// A stand-in upstream on `listener`: accepts one link, answers its `connect`, and returns the
/// first `logux/subscribe`s the link sends (see [`stand_in_upstream`]).
async fn first_subscribes_at(listener: tokio::net::TcpListener) -> Result<Vec<serde_json::Value>> {
    let mut subscribes = Vec::new();
    stand_in_upstream(&listener, "logux/subscribe", |_, pairs| {
        subscribes = pairs.into_iter().map(|(a, _)| a).filter(|a| a["type"] == "logux/subscribe").collect();
        (Vec::new(), false)
    })
    .await?;
    Ok(subscribes)
}

#[tokio::test]
async fn a_channel_followed_while_the_upstream_is_away_is_caught_up_from_when_it_was() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy = Proxy::start(listener.local_addr()?).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut bob = edge.login("bob:b1:t").await?;
    subscribe(&mut bob, "counter/x").await?;
    let followed_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    // The upstream comes back a while later (minutes, in life: entries written upstream meanwhile
    // are older than the `since` margin of its catch-up).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    proxy.down(false);
    let subscribes = tokio::time::timeout(CONVERGE, first_subscribes_at(listener)).await??;
    let of = |channel: &str| subscribes.iter().find(|s| s["channel"] == channel);
    let (Some(subscribe), Some(user), 2) = (of("counter/x"), of("rhizome/user/bob"), subscribes.len()) else {
        bail!("{subscribes:?}");
    };
    let since_ms = subscribe["since"]["time"].as_i64().context("a since")?;
    // What is addressed to Bob comes from the start of the upstream's log.
    let user_since = user["since"]["time"].as_i64().context("a since")?;
    assert!(user_since <= 1000, "{subscribes:?}");
    // The stand-in's clock is the edge's.
    assert!(
        since_ms <= followed_ms + 500,
        "the catch-up starts when bob subscribed ({followed_ms}), not when the link came back: {subscribe}"
    );
    edge.stop().await;
    Ok(())
}

/// A stand-in upstream's side of one link connection on `listener`: answers `connect` and
/// `ping`, and gives each `sync` holding an action of type `kind` to `answer` (its `added`, and
/// its actions with their meta) until `answer` returns `false`, then drops the connection.
/// Also returns when the link ends the connection after such a `sync`.
async fn stand_in_upstream(
    listener: &tokio::net::TcpListener,
    kind: &str,
    mut answer: impl FnMut(u64, Vec<(serde_json::Value, serde_json::Value)>) -> (Vec<serde_json::Value>, bool),
) -> Result<()> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let (stream, _) = listener.accept().await?;
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    let mut answered = false;
    while let Some(frame) = ws.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) if answered => return Ok(()),
            Ok(_) => continue,
            Err(e) => return Err(e.into()),
        };
        let message: serde_json::Value = serde_json::from_str(text.as_str())?;
        match message[0].as_str() {
            Some("ping") => ws.send(Message::text(json!(["pong", 0]).to_string())).await?,
            Some("connect") => {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
                let connected = json!(["connected", 5, "server:fake", [now, now]]);
                ws.send(Message::text(connected.to_string())).await?;
            }
            Some("sync") => {
                let pairs = crate::support::sync_pairs(&message);
                if !pairs.iter().any(|(action, _)| action["type"] == kind) {
                    continue;
                }
                let added = message[1].as_u64().context("added")?;
                let (frames, more) = answer(added, pairs);
                answered = true;
                for frame in frames {
                    ws.send(Message::text(frame.to_string())).await?;
                }
                if !more {
                    // As a crashed upstream: no close frame, the socket just goes.
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    if answered {
        return Ok(());
    }
    bail!("the link went away")
}

/// An edge whose upstream is a stand-in listening on a port of its own (see
/// [`stand_in_upstream`]), with alice logged in at the edge.
async fn edge_of_stand_in() -> Result<(tokio::net::TcpListener, TestServer, Client)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let edge = TestServer::edge_of(&format!("ws://{}/", listener.local_addr()?)).await?;
    let alice = edge.login("alice:a1:t").await?;
    Ok((listener, edge, alice))
}

#[tokio::test]
async fn a_connection_whose_upstream_never_answers_a_confirmed_action_starts_again() -> Result<()> {
    // An upstream that confirms a `sync` and then never answers its action, while answering
    // pings: the edge's cursor would wait for good, its outbox filling. The link gives it up
    // after three timeouts (one second each in the tests) and sends the action again.
    let (listener, edge, mut alice) = edge_of_stand_in().await?;
    let sent = send_incs(&mut alice, 1).await?;
    let started = std::time::Instant::now();
    let silent = stand_in_upstream(&listener, "inc", |added, _| (vec![json!(["synced", added])], true));
    tokio::time::timeout(Duration::from_secs(15), silent).await.context("the link stayed")??;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "given up after {waited:?}, before three timeouts");
    let mut again = 0;
    let upstream = stand_in_upstream(&listener, "inc", |added, pairs| {
        again = pairs.len();
        (vec![json!(["synced", added]), answers_of(&[(&sent[0], None, json!(null))])], false)
    });
    tokio::time::timeout(CONVERGE, upstream).await??;
    assert_eq!(again, 1);
    edge.stop().await;
    Ok(())
}

/// A `sync` of a stand-in upstream answering `ids`: each `(id, undo reason)`, with the action
/// for an undo.
fn answers_of(ids: &[(&str, Option<&str>, serde_json::Value)]) -> serde_json::Value {
    let mut sync = vec![json!("sync"), json!(1)];
    for (i, (id, reason, action)) in ids.iter().enumerate() {
        sync.push(match reason {
            Some(reason) => json!({"type": "logux/undo", "id": id, "reason": reason, "action": action}),
            None => json!({"type": "logux/processed", "id": id}),
        });
        // `[shift, seq]`: the stand-in's own id.
        sync.push(json!({"id": [0, i + 1], "time": 0}));
    }
    serde_json::Value::Array(sync)
}

#[tokio::test]
async fn an_action_whose_answer_was_lost_with_the_upstream_is_sent_again_until_answered() -> Result<()> {
    // The upstream commits a `sync` and confirms it, answers two of its three actions, and
    // crashes before the answer to the first goes out (its `process` was slow, say). The edge
    // must not take the `synced` as the end of it: the upstream's refusal of that action would
    // never reach its author, nor would the edge correct its own record.
    let (listener, edge, mut alice) = edge_of_stand_in().await?;
    let sent = send_incs(&mut alice, 3).await?;
    let position = |id: &str| -> Result<u64> {
        let db = rusqlite::Connection::open(edge.db_path())?;
        Ok(db.query_row("SELECT added FROM log WHERE id = ?1", [id], |r| r.get::<_, i64>(0))? as u64)
    };
    let (first, last) = (position(&sent[0])?, position(&sent[2])?);
    let mut sent_first = Vec::new();
    let upstream = stand_in_upstream(&listener, "inc", |added, pairs| {
        sent_first = pairs.into_iter().map(|(_, meta)| meta["id"].clone()).collect();
        let answers = answers_of(&[(&sent[1], None, json!(null)), (&sent[2], None, json!(null))]);
        (vec![json!(["synced", added]), answers], false)
    });
    tokio::time::timeout(CONVERGE, upstream).await??;
    assert_eq!(sent_first.len(), 3, "{sent_first:?}");
    // The two answers reach alice; the cursor stays below the unanswered action.
    let committed = |m: &serde_json::Value| {
        crate::support::sync_actions(m).iter().any(|a| {
            a["type"] == "rhizome/committed"
                && a["ids"].as_array().is_some_and(|ids| ids.contains(&json!(sent[2])))
        })
    };
    alice.until(committed).await?;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while edge.link_status()?.awaiting_answers != 1 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{:?}", edge.link_status()?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(durable_cursor(&edge)?.unwrap_or(0) < first, "{:?} passed {first}", durable_cursor(&edge)?);
    // On the next connection the edge sends the unanswered action again, and only it: the
    // upstream has the outcome of the other two. This time it is answered: refused.
    let mut resent = Vec::new();
    let upstream = stand_in_upstream(&listener, "inc", |added, pairs| {
        resent = pairs.iter().map(|(action, meta)| (action["id"].clone(), meta["id"].clone())).collect();
        let action = pairs.first().map(|(action, _)| action.clone()).unwrap_or_default();
        let answers = answers_of(&[(&sent[0], Some("denied"), action)]);
        (vec![json!(["synced", added]), answers], false)
    });
    tokio::time::timeout(CONVERGE, upstream).await??;
    // The first action (`c0`) under alice's id (`[shift, node, seq]`).
    assert_eq!(resent.len(), 1, "only the unanswered action goes again: {resent:?}");
    let (action, id) = &resent[0];
    assert_eq!((action, &id[1], &id[2]), (&json!("c0"), &json!("alice:a1:t"), &json!(0)), "{resent:?}");
    let undo = alice.until(|m| has_answer(m, "logux/undo", &sent[0])).await?;
    let undo =
        crate::support::sync_actions(&undo).into_iter().find(|a| a["id"] == sent[0]).context("undo")?;
    assert_eq!(undo["reason"], "denied", "{undo}");
    let db = rusqlite::Connection::open(edge.db_path())?;
    let status: i64 = db.query_row("SELECT status FROM log WHERE id = ?1", [&sent[0]], |r| r.get(0))?;
    assert_eq!(status, 2, "the edge marks its entry undone");
    // Answered at last: the durable cursor passes all three.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while durable_cursor(&edge)?.unwrap_or(0) < last {
        if tokio::time::Instant::now() >= deadline {
            bail!("the cursor stayed at {:?}", durable_cursor(&edge)?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    edge.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_upstream_that_ends_each_connection_at_once_is_retried_with_backoff() -> Result<()> {
    // The cloud takes at most 10 actions per `sync`; the edge sends up to 100: the cloud
    // answers the first `sync` with an error and closes, on every connection.
    let cloud =
        TestServer::with_peers_and_limits(&["edge"], "frame_bytes_max = 65536\nactions_per_sync_max = 10\n")
            .await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let mut alice = edge.login("alice:a1:t").await?;
    send_incs(&mut alice, 50).await?;
    let start = proxy.connections();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let connections = proxy.connections() - start;
    // Backoff from 20 ms doubling to 500 ms: about 15 attempts in 3 s; without it, hundreds.
    assert!(connections <= 30, "{connections} connections in 3 s: {:?}", edge.link_status()?);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// The values of a list document (`{"elems": [[node, n, origin, seq, value]], "deleted"}`), in
/// order, deleted ones left out.
fn list_values(document: &serde_json::Value) -> Vec<serde_json::Value> {
    let deleted = document["deleted"].as_array().cloned().unwrap_or_default();
    let elems = document["elems"].as_array().cloned().unwrap_or_default();
    elems.iter().filter(|e| !deleted.contains(&json!([e[0], e[1]]))).map(|e| e[4].clone()).collect()
}

/// The value of the counter at `key` of a map document (`[[node, n, p, m]]` per writer).
fn map_counter(document: &serde_json::Value, key: &str) -> i64 {
    let entries = document["entries"][key]["counter"].as_array().cloned().unwrap_or_default();
    entries.iter().map(|e| e[2].as_i64().unwrap_or(0) - e[3].as_i64().unwrap_or(0)).sum()
}

/// Alice's device adds one operation to a counter, a set, a list and a map's counter at
/// `server`, each to be applied there.
async fn send(server: &TestServer, place: &str) -> Result<()> {
    let actions = [
        json!({"type": "crdt/counter/inc", "key": "likes", "by": 1}),
        json!({"type": "crdt/set/add", "key": "tags", "elem": place}),
        json!({"type": "crdt/list/insert", "key": "notes", "index": 0, "value": place}),
        json!({"type": "crdt/map/inc", "key": "stock", "path": ["apples"], "by": 1}),
    ];
    let mut alice = server.login("alice:a1:t").await?;
    let mut last = String::new();
    for action in actions {
        last = alice.send_action(action).await?;
    }
    alice.wait_processed(&last).await?;
    alice.close().await;
    Ok(())
}

/// A device that writes at an edge cut off from the cloud, then at the cloud directly, then at
/// the edge again: each server names the device's dots after itself (docs/edge.md, "One
/// device, several servers"), so none of its operations takes another's dot.
#[tokio::test]
async fn a_client_that_moves_between_an_edge_and_the_cloud_keeps_all_its_operations() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    // Alice writes at the edge while it is cut off from the cloud…
    send(&edge, "edge").await?;
    // …then, from the same device, at the cloud directly (another room, another network).
    send(&cloud, "cloud").await?;
    proxy.down(false);
    wait_forwarded(&edge).await?;
    // Each operation counts once everywhere.
    let servers = [&cloud, &edge];
    let likes = converged_counter(&servers, "likes", 2).await?;
    assert_eq!(likes, json!({edge.actor("alice:a1:t"): [1, 0], "alice:a1:t": [1, 0]}));
    let tags =
        converged_object(&servers, "tags", |d| d["elems"].as_array().is_some_and(|e| e.len() == 2)).await?;
    let elems: Vec<&str> =
        tags["elems"].as_array().into_iter().flatten().filter_map(|e| e[0].as_str()).collect();
    assert_eq!(elems, ["cloud", "edge"], "{tags}");
    let notes = converged_object(&servers, "notes", |d| list_values(d).len() == 2).await?;
    let mut values = list_values(&notes);
    values.sort_by_key(|v| v.to_string());
    assert_eq!(values, [json!("cloud"), json!("edge")], "{notes}");
    converged_object(&servers, "stock", |d| map_counter(d, "apples") == 2).await?;
    // Back at the edge, its next operations follow its earlier ones there.
    send(&edge, "edge again").await?;
    wait_forwarded(&edge).await?;
    converged_counter(&servers, "likes", 3).await?;
    converged_object(&servers, "tags", |d| d["elems"].as_array().is_some_and(|e| e.len() == 3)).await?;
    converged_object(&servers, "notes", |d| list_values(d).len() == 3).await?;
    converged_object(&servers, "stock", |d| map_counter(d, "apples") == 3).await?;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// A device's operation in flight when it moves (committed by its edge, the answer lost, sent
/// again to the cloud before the edge relays it) is applied by both servers. The cloud still
/// joins what the edge relays under that id, which also holds the device's earlier operation
/// folded with it: that one is not lost, and every replica counts the same (the operation in
/// flight twice, the documented limit).
#[tokio::test]
async fn an_operation_applied_by_an_edge_and_again_by_the_cloud_loses_nothing_and_converges() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 1});
    let mut alice = edge.login("alice:a1:t").await?;
    let earlier = alice.send_action(inc.clone()).await?;
    let in_flight = alice.send_action(inc.clone()).await?;
    alice.wait_processed(&in_flight).await?;
    alice.close().await;
    // The same action again, at the cloud.
    let ms: i64 = in_flight.split(' ').next().context("id")?.parse()?;
    let mut alice = cloud.login("alice:a1:t").await?;
    assert_eq!(alice.send_action_at(inc, ms).await?, in_flight);
    alice.wait_processed(&in_flight).await?;
    proxy.down(false);
    wait_forwarded(&edge).await?;
    // The cloud's own application yields to the edge's, which it takes back: each counts once.
    let document = converged_counter(&[&cloud, &edge], "likes", 2).await?;
    assert_eq!(document, json!({edge.actor("alice:a1:t"): [2, 0], "alice:a1:t": [1, 1]}));
    // The edge's relay, folded under the id the cloud had, is logged under the rejoined id,
    // and the cloud's taking back under the yielded one.
    let ids = ids_of(&cloud, "alice:a1:t")?;
    let rejoined = format!("{ms} alice:a1:t {}", (1u64 << 52));
    let yielded = format!("{ms} alice:a1:t {}", (1u64 << 50));
    assert_eq!(ids.get(&rejoined), Some(&1), "{ids:?}");
    assert_eq!(ids.get(&yielded), Some(&1), "{ids:?}");
    assert_eq!(ids.get(&in_flight), Some(&1), "{ids:?}");
    assert!(!ids.contains_key(&earlier), "folded: {ids:?}");
    // Sent again after a drop, the relay changes nothing more.
    proxy.cut();
    wait_status(&edge, |s| s["connected"] == true).await?;
    wait_forwarded(&edge).await?;
    assert_eq!(converged_counter(&[&cloud, &edge], "likes", 2).await?, document);
    assert_eq!(ids_of(&cloud, "alice:a1:t")?, ids, "taken back once");
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// The device of `client` sends `action` again under `id` (its answer was lost elsewhere) and
/// waits for the answer.
async fn send_again(client: &mut Client, action: &serde_json::Value, id: &str) -> Result<()> {
    let ms: i64 = id.split(' ').next().context("id")?.parse()?;
    assert_eq!(client.send_action_at(action.clone(), ms).await?, id);
    client.wait_processed(id).await
}

/// A device whose edge relayed its operations folded moves to the cloud with them in flight
/// (their answers lost): the cloud knows each folded operation by its own id, so the copies the
/// device sends it directly are duplicates, and each operation counts once.
#[tokio::test]
async fn operations_an_edge_relayed_folded_are_not_applied_again_when_their_device_sends_them_to_the_cloud(
) -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 1});
    let mut alice = edge.login("alice:a1:t").await?;
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(alice.send_action(inc.clone()).await?);
    }
    alice.wait_processed(&sent[2]).await?;
    alice.close().await;
    proxy.down(false);
    wait_forwarded(&edge).await?;
    assert!(edge.link_status()?.actions_sent < 3, "the increments went up folded");
    let ids = ids_of(&cloud, "alice:a1:t")?;
    assert!(!ids.contains_key(&sent[0]), "folded under the last id: {ids:?}");
    // Each one again, at the cloud.
    let mut alice = cloud.login("alice:a1:t").await?;
    for id in &sent {
        send_again(&mut alice, &inc, id).await?;
    }
    let document = converged_counter(&[&cloud, &edge], "likes", 3).await?;
    assert_eq!(document, json!({edge.actor("alice:a1:t"): [3, 0]}), "only the edge's application");
    assert_eq!(ids_of(&cloud, "alice:a1:t")?, ids, "nothing more logged");
    alice.close().await;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// In a chain, the ids a site folded reach the cloud through the region, which folds the site's
/// fold with others of the author's.
#[tokio::test]
async fn in_a_chain_the_ids_a_site_folded_reach_the_cloud() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let to_cloud = Proxy::start(cloud.addr).await?;
    to_cloud.down(true);
    let region = TestServer::region_of(&to_cloud.url()).await?;
    let to_region = Proxy::start(region.addr).await?;
    to_region.down(true);
    let site = TestServer::edge_of(&to_region.url()).await?;
    let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 1});
    let mut alice = site.login("alice:a1:t").await?;
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(alice.send_action(inc.clone()).await?);
    }
    alice.wait_processed(&sent[2]).await?;
    alice.close().await;
    to_region.down(false);
    wait_forwarded(&site).await?;
    // Alice, at the region too, while the cloud is out of reach.
    let mut at_region = region.login("alice:a1:t").await?;
    let there = at_region.send_action(inc.clone()).await?;
    at_region.wait_processed(&there).await?;
    at_region.close().await;
    to_cloud.down(false);
    wait_forwarded(&region).await?;
    assert!(region.link_status()?.actions_sent < 2, "the region folded the site's fold with its own");
    let mut alice = cloud.login("alice:a1:t").await?;
    for id in &sent {
        send_again(&mut alice, &inc, id).await?;
    }
    converged_counter(&[&cloud, &region, &site], "likes", 4).await?;
    for id in &sent {
        assert!(!ids_of(&cloud, "alice:a1:t")?.contains_key(id), "not applied at the cloud: {id}");
    }
    alice.close().await;
    for server in [site, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

/// A set add applied by the cloud and by the edge (its device sent it to both): the cloud's
/// application yields, its dot retired, so a removal at the edge that saw only the edge's dot
/// removes the element everywhere (both dots kept, the cloud's would keep it alive).
#[tokio::test]
async fn a_set_add_the_cloud_applied_too_yields_so_a_removal_that_saw_the_edges_removes_it() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxy = Proxy::start(cloud.addr).await?;
    proxy.down(true);
    let edge = TestServer::edge_of(&proxy.url()).await?;
    let add = json!({"type": "crdt/set/add", "key": "tags", "elem": "x"});
    let mut alice = edge.login("alice:a1:t").await?;
    let in_flight = alice.send_action(add.clone()).await?;
    alice.wait_processed(&in_flight).await?;
    alice.close().await;
    let ms: i64 = in_flight.split(' ').next().context("id")?.parse()?;
    let mut alice = cloud.login("alice:a1:t").await?;
    send_again(&mut alice, &add, &in_flight).await?;
    // Bob, at the edge, removes it: he saw the edge's application only.
    let mut bob = edge.login("bob:b1:t").await?;
    let removed = bob.send_action(json!({"type": "crdt/set/remove", "key": "tags", "elem": "x"})).await?;
    bob.wait_processed(&removed).await?;
    proxy.down(false);
    wait_forwarded(&edge).await?;
    converged_object(&[&cloud, &edge], "tags", |d| set_elems(d).is_empty()).await?;
    let yielded = format!("{ms} alice:a1:t {}", (1u64 << 50));
    assert_eq!(ids_of(&cloud, "alice:a1:t")?.get(&yielded), Some(&1));
    alice.close().await;
    bob.close().await;
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// In a chain, a region that applied an operation its device also sent to a site (cut off
/// meanwhile) takes its own application back when the site relays its own: each tier counts
/// it once, the cloud too (the region's taking back goes up like its own operations).
#[tokio::test]
async fn a_region_takes_back_its_application_of_an_operation_a_site_applied_too() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let region = TestServer::region_of(&cloud.url()).await?;
    let to_region = Proxy::start(region.addr).await?;
    to_region.down(true);
    let site = TestServer::edge_of(&to_region.url()).await?;
    let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 1});
    let mut alice = site.login("alice:a1:t").await?;
    let in_flight = alice.send_action(inc.clone()).await?;
    alice.wait_processed(&in_flight).await?;
    alice.close().await;
    let mut alice = region.login("alice:a1:t").await?;
    send_again(&mut alice, &inc, &in_flight).await?;
    wait_forwarded(&region).await?;
    converged_counter(&[&cloud, &region], "likes", 1).await?;
    to_region.down(false);
    wait_forwarded(&site).await?;
    wait_forwarded(&region).await?;
    let document = converged_counter(&[&cloud, &region, &site], "likes", 1).await?;
    assert_eq!(
        document,
        json!({site.actor("alice:a1:t"): [1, 0], region.actor("alice:a1:t"): [1, 1]}),
        "the region's application and its taking back"
    );
    alice.close().await;
    for server in [site, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

/// Processes an action once the test lets it (a permit of its semaphore).
struct Gated(Arc<tokio::sync::Semaphore>);

#[async_trait::async_trait]
impl rhizome_core::ActionType for Gated {
    async fn access(
        &self,
        _: &rhizome_core::Context,
        _: &rhizome_protocol::Action,
        _: &rhizome_core::Meta,
    ) -> Result<bool, rhizome_core::HookError> {
        Ok(true)
    }

    fn processes(&self) -> bool {
        true
    }

    async fn process(
        &self,
        _: &rhizome_core::Context,
        _: &rhizome_protocol::Action,
        _: &rhizome_core::Meta,
    ) -> Result<(), rhizome_core::HookError> {
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
        Ok(())
    }
}

/// The other way round: the cloud's application of an operation the edge applied too (and has
/// not relayed yet) comes down live under the same id; the edge joins it rather than dropping
/// it as a duplicate, and the two converge once the edge's own goes up.
#[tokio::test]
async fn an_edge_joins_the_clouds_application_of_an_operation_it_applied_too() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (app, _) = TestServer::default_rules()?;
    let edge = TestServer::edge_with_app(&cloud.url(), app.action_type("slow", Gated(gate.clone()))).await?;
    let mut reader = edge.login("reader:r1:t").await?;
    subscribe(&mut reader, "crdt/likes").await?;
    // Bob's action is being processed at the edge: nothing after it goes up meanwhile.
    let mut bob = edge.login("bob:b1:t").await?;
    let slow = bob.send_action(json!({"type": "slow"})).await?;
    let inc = json!({"type": "crdt/counter/inc", "key": "likes", "by": 1});
    let mut alice = edge.login("alice:a1:t").await?;
    let in_flight = alice.send_action(inc.clone()).await?;
    alice.wait_processed(&in_flight).await?;
    alice.close().await;
    // Its answer lost, Alice's device sends it again at the cloud, which sends its delta down.
    let ms: i64 = in_flight.split(' ').next().context("id")?.parse()?;
    let mut alice = cloud.login("alice:a1:t").await?;
    alice.send_action_at(inc, ms).await?;
    alice.wait_processed(&in_flight).await?;
    let both = json!({edge.actor("alice:a1:t"): [1, 0], "alice:a1:t": [1, 0]});
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while object_document(&edge, "reader:r2:t", "likes").await? != both {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the edge dropped the cloud's delta: {}",
                object_document(&edge, "reader:r3:t", "likes").await?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deltas_from_upstream(&edge)?, 1, "the cloud's delta, under the rejoined id");
    // The edge's own application goes up: the cloud joins it and takes its own back.
    gate.add_permits(1);
    bob.wait_processed(&slow).await?;
    wait_forwarded(&edge).await?;
    let once = json!({edge.actor("alice:a1:t"): [1, 0], "alice:a1:t": [1, 1]});
    assert_eq!(converged_counter(&[&cloud, &edge], "likes", 1).await?, once);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// Connects `node` with the `synced` of its `connect` set to `synced` (what a device that was
/// at another server claims: that server's position).
async fn login_claiming(server: &TestServer, node: &str, synced: u64) -> Result<Client> {
    let mut client = server.open().await?;
    let token = crate::support::token(crate::support::user_of(node));
    client.send_json(&json!(["connect", 5, node, synced, {"token": token, "subprotocol": 1}])).await?;
    let answer = client.next_json().await?;
    client.on_connected(&answer)?;
    Ok(client)
}

/// Reads until `sync`s carrying a `dm` with each of `texts` came, answering each `sync` with
/// `synced` (what a client confirms); returns the texts of every `dm` received meanwhile.
async fn dms_arrive(client: &mut Client, texts: &[&str]) -> Result<Vec<String>> {
    let mut missing: Vec<&str> = texts.to_vec();
    let mut received = Vec::new();
    while !missing.is_empty() {
        let message = client.next_json().await.with_context(|| format!("waiting for {missing:?}"))?;
        if message[0] == "sync" {
            client.send_json(&json!(["synced", message[1]])).await?;
        }
        for action in crate::support::sync_actions(&message).into_iter().filter(|a| a["type"] == "dm") {
            missing.retain(|text| action["text"] != *text);
            received.push(action["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    Ok(received)
}

/// A device that comes from another server claims that server's position in its `connect`:
/// the server trusts it only up to what the client confirmed here, so what was addressed to
/// the device while it was away is not skipped.
#[tokio::test]
async fn a_device_from_another_server_gets_what_was_addressed_to_it_here() -> Result<()> {
    let server = TestServer::with_peers(&["edge"]).await?;
    let mut alice = server.login("alice:a1:t").await?;
    // Bob's device receives one message here and confirms it, then goes elsewhere.
    let mut bob = server.login("bob:b1:t").await?;
    alice.send_action(json!({"type": "dm", "to": "bob", "text": "first"})).await?;
    dms_arrive(&mut bob, &["first"]).await?;
    bob.close().await;
    // Its close handled (the hub recorded what it confirmed).
    server.wait_connections(1).await?;
    let id = alice.send_action(json!({"type": "dm", "to": "bob", "text": "while away"})).await?;
    alice.wait_processed(&id).await?;
    // It comes back with the position it reached at a busier server.
    let far = last_position(&server)? + 100_000;
    let mut bob = login_claiming(&server, "bob:b1:t", far).await?;
    let received = dms_arrive(&mut bob, &["while away"]).await?;
    assert_eq!(received, ["while away"], "from where it left off here, not from the start");
    // A device never seen here gets everything addressed to it, whatever it claims.
    let mut phone = login_claiming(&server, "bob:b2:t", far).await?;
    dms_arrive(&mut phone, &["first", "while away"]).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_edge_follows_at_most_its_limit_of_channels_and_serves_the_rest_itself() -> Result<()> {
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let edge = TestServer::edge_with(&cloud.url(), |o| o.channels_max = 1).await?;
    let mut bob = edge.login("bob:b1:t").await?;
    subscribe(&mut bob, "counter/x").await?;
    // Past the limit the subscription is still answered, from the edge's own log.
    subscribe(&mut bob, "counter/y").await?;
    let mut alice = edge.login("alice:a1:t").await?;
    let id = alice.send_action(json!({"type": "inc", "id": "y"})).await?;
    let got = tokio::time::timeout(CONVERGE, received_incs(&mut bob, 1)).await??;
    assert_eq!(got, [id]);
    let status = wait_status(&edge, |s| s["connected"] == true).await?;
    assert_eq!(status["channels"], 1, "{status}");
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}

/// One step of a seeded fault schedule (see [`chaos`]).
#[derive(Debug, Clone, Copy)]
enum ChaosStep {
    /// `plain` `inc` actions and `crdt` counter increments written at side `side` (0: the
    /// cloud, 1 and 2: the edges).
    Write { side: usize, plain: usize, crdt: usize },
    /// The edge's link is cut (both ends see the connection end).
    Cut(usize),
    /// An outage of the edge's link for this many milliseconds.
    Outage(usize, u64),
    /// The edge's link goes dead (bytes vanish) for this many milliseconds.
    Freeze(usize, u64),
    /// The edge stops and starts again on its data.
    Restart(usize),
}

/// The fault schedule of `seed`: 30 steps, at most two restarts.
fn chaos_schedule(seed: u64) -> Vec<ChaosStep> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut restarts = 0;
    (0..30)
        .map(|_| {
            let edge = rng.gen_range(1..=2);
            match rng.gen_range(0..10) {
                0..=4 => ChaosStep::Write {
                    side: rng.gen_range(0..=2),
                    plain: rng.gen_range(0..40),
                    crdt: rng.gen_range(0..10),
                },
                5 => ChaosStep::Cut(edge),
                6 => ChaosStep::Outage(edge, rng.gen_range(50..800)),
                7 => ChaosStep::Freeze(edge, rng.gen_range(50..1500)),
                8 if restarts < 2 => {
                    restarts += 1;
                    ChaosStep::Restart(edge)
                }
                _ => ChaosStep::Write { side: rng.gen_range(0..=2), plain: 1, crdt: 1 },
            }
        })
        .collect()
}

/// Runs the schedule of `seed` against a cloud and two edges behind proxies, then checks that
/// every plain action is in each server's log exactly once and the counter is the same
/// everywhere, counting every increment.
async fn chaos(seed: u64) -> Result<()> {
    let schedule = chaos_schedule(seed);
    let cloud = TestServer::with_peers(&["edge"]).await?;
    let proxies = [Proxy::start(cloud.addr).await?, Proxy::start(cloud.addr).await?];
    let mut edges = [
        Some(TestServer::edge_of(&proxies[0].url()).await?),
        Some(TestServer::edge_of(&proxies[1].url()).await?),
    ];
    // Each edge follows the two channels from the start.
    for edge in edges.iter().flatten() {
        let mut follower = edge.login("follower:f:t").await?;
        subscribe(&mut follower, "counter/x").await?;
        subscribe(&mut follower, "crdt/likes").await?;
        follower.close().await;
    }
    // Per side: its writer (replaced after a restart), and the plain ids written per node.
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut generation = 0;
    let mut increments = 0i64;
    let mut writers: Vec<Option<Client>> = vec![None, None, None];
    for step in schedule {
        match step {
            ChaosStep::Write { side, plain, crdt } => {
                let server = if side == 0 { &cloud } else { edges[side - 1].as_ref().expect("running") };
                if writers[side].is_none() {
                    generation += 1;
                    writers[side] = Some(server.login(&format!("w{side}g{generation}:d:t")).await?);
                }
                let writer = writers[side].as_mut().expect("a writer");
                let mut last = None;
                for _ in 0..plain {
                    let id = writer.send_action(json!({"type": "inc", "id": "x"})).await?;
                    sent.entry(writer.node.clone()).or_default().push(id.clone());
                    last = Some(id);
                }
                for _ in 0..crdt {
                    last = Some(
                        writer
                            .send_action(json!({"type": "crdt/counter/inc", "key": "likes", "by": 1}))
                            .await?,
                    );
                }
                increments += crdt as i64;
                if let Some(last) = last {
                    writer.wait_processed(&last).await?;
                }
            }
            ChaosStep::Cut(edge) => proxies[edge - 1].cut(),
            ChaosStep::Outage(edge, ms) => {
                proxies[edge - 1].down(true);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                proxies[edge - 1].down(false);
            }
            ChaosStep::Freeze(edge, ms) => {
                proxies[edge - 1].freeze(true);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                proxies[edge - 1].freeze(false);
            }
            ChaosStep::Restart(edge) => {
                writers[edge] = None;
                let server = edges[edge - 1].take().expect("running");
                edges[edge - 1] = Some(server.restart_edge(&proxies[edge - 1].url()).await?);
            }
        }
    }
    let edges: Vec<TestServer> = edges.into_iter().flatten().collect();
    for (name, server) in [("cloud", &cloud), ("edge 1", &edges[0]), ("edge 2", &edges[1])] {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        for (node, ids) in &sent {
            while incs_of(server, node)?.len() < ids.len() {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "{} of {node}'s {} actions at {name} ({:?})",
                        incs_of(server, node)?.len(),
                        ids.len(),
                        server.link_status().ok()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            exactly_once(&incs_of(server, node)?, ids).with_context(|| format!("{node} at {name}"))?;
        }
    }
    if increments > 0 {
        converged_counter(&[&cloud, &edges[0], &edges[1]], "likes", increments).await?;
    }
    for server in edges {
        server.stop().await;
    }
    cloud.stop().await;
    Ok(())
}

/// Seeds run by default; `EDGE_CHAOS_SEEDS=<n>` runs seeds 0 to n−1 instead (`<a>..<b>`: a
/// to b−1), `EDGE_CHAOS_SEED=<s>` one seed (to replay a failure's schedule).
fn chaos_seeds() -> Vec<u64> {
    crate::support::seeds_from_env("EDGE_CHAOS_SEED", "EDGE_CHAOS_SEEDS", &[1, 2, 3])
}

#[tokio::test]
async fn a_cloud_and_two_edges_converge_under_seeded_faults() -> Result<()> {
    for seed in chaos_seeds() {
        let started = std::time::Instant::now();
        chaos(seed).await.with_context(|| {
            format!(
                "seed {seed} failed (replay: EDGE_CHAOS_SEED={seed}); schedule {:?}",
                chaos_schedule(seed)
            )
        })?;
        eprintln!("chaos seed {seed}: converged ({:.1} s)", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The elements of a set document, in its order.
fn set_elems(document: &serde_json::Value) -> Vec<&str> {
    document["elems"].as_array().into_iter().flatten().filter_map(|e| e[0].as_str()).collect()
}

/// Reads `client`'s messages until one holds a whole state of the set `key` (`replace`) with
/// just the elements `want` (each within [`CONVERGE`]: a correction crosses the links).
async fn copy_replaced_by(client: &mut Client, key: &str, want: &[&str]) -> Result<()> {
    client
        .until_within(CONVERGE, |m| {
            crate::support::sync_actions(m).iter().any(|a| {
                a["type"] == "crdt/delta"
                    && a["key"] == key
                    && a["replace"] == true
                    && set_elems(&a["delta"]) == want
            })
        })
        .await
        .map(drop)
}

/// In cloud ← region ← sites, the cloud refuses an operation the region took from one site and
/// passed to the other: the author is told, and every tier's object and every copy of it lose
/// the operation, the sibling site's too (it got the operation from its upstream, not from
/// its own client).
#[tokio::test]
async fn an_operation_the_cloud_refuses_is_corrected_away_at_every_tier_of_a_chain() -> Result<()> {
    let cloud = cloud_where_only_bob_writes_objects().await?;
    let proxy = Proxy::start(cloud.addr).await?;
    let region = TestServer::region_of(&proxy.url()).await?;
    let site_a = TestServer::edge_of(&region.url()).await?;
    let site_b = TestServer::edge_of(&region.url()).await?;
    let mut alice = site_a.login("alice:a1:t").await?;
    subscribe(&mut alice, "crdt/tags").await?;
    let mut carol = site_b.login("carol:c1:t").await?;
    subscribe(&mut carol, "crdt/tags").await?;
    let mut bob = site_b.login("bob:b1:t").await?;
    // While the cloud is away, the region takes both and passes each to the other site.
    proxy.down(true);
    let refused = alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "alice"})).await?;
    alice.wait_processed(&refused).await?;
    let id = bob.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "bob"})).await?;
    bob.wait_processed(&id).await?;
    let tiers = [&region, &site_a, &site_b];
    converged_object(&tiers, "tags", |d| set_elems(d).len() == 2).await?;
    proxy.down(false);
    // Alice is told, and her copy is replaced: in either order (under load the region's undo
    // and its correction may reach site a in one write, the correction logged first).
    let (mut reason, mut replaced) = (None, false);
    alice
        .until_within(CONVERGE, |m| {
            for a in crate::support::sync_actions(m) {
                if a["type"] == "logux/undo" && a["id"] == refused {
                    reason = Some(a["reason"].clone());
                }
                replaced |= a["type"] == "crdt/delta"
                    && a["key"] == "tags"
                    && a["replace"] == true
                    && set_elems(&a["delta"]) == ["bob"];
            }
            reason.is_some() && replaced
        })
        .await?;
    assert_eq!(reason, Some(json!("denied")));
    let all = [&cloud, &region, &site_a, &site_b];
    converged_object(&all, "tags", |d| set_elems(d) == ["bob"]).await?;
    copy_replaced_by(&mut carol, "tags", &["bob"]).await?;
    // What comes after joins as usual, at every tier.
    let id = bob.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "later"})).await?;
    bob.wait_processed(&id).await?;
    converged_object(&all, "tags", |d| set_elems(d) == ["bob", "later"]).await?;
    // Nothing is left to correct anywhere.
    for server in [&region, &site_a, &site_b] {
        let db = rusqlite::Connection::open(server.db_path())?;
        let left: i64 = db.query_row("SELECT count(*) FROM object_resets", [], |r| r.get(0))?;
        assert_eq!(left, 0);
    }
    for server in [site_a, site_b, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

/// Rows of `server`'s `object_resets` (the objects it must still correct).
fn objects_to_correct(server: &TestServer) -> Result<Vec<String>> {
    let db = rusqlite::Connection::open(server.db_path())?;
    let mut stmt = db.prepare("SELECT key FROM object_resets ORDER BY key")?;
    let keys = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(keys)
}

/// A site asks its region for an object's state while the region, refused by the cloud too,
/// has not corrected its own yet: the region's state still holds the refused operation, so it
/// answers that it is correcting, and the site asks again until the region is done. The site
/// does not follow the object, so no whole state from the region would ever mend it.
#[tokio::test]
async fn a_site_waits_for_its_region_to_correct_an_object_before_taking_its_state() -> Result<()> {
    let listener = Arc::new(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    let region = TestServer::region_of(&format!("ws://{}/", listener.local_addr()?)).await?;
    let site = TestServer::edge_of(&region.url()).await?;
    let mut alice = site.login("alice:a1:t").await?;
    let refused = alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "alice"})).await?;
    alice.wait_processed(&refused).await?;
    // The cloud (a stand-in) refuses it and never answers the region's request for its state.
    let id = refused.clone();
    let cloud = tokio::spawn({
        let listener = listener.clone();
        async move {
            stand_in_upstream(&listener, "crdt/delta", |added, pairs| {
                let action = pairs.first().map(|(action, _)| action.clone()).unwrap_or_default();
                (vec![json!(["synced", added]), answers_of(&[(&id, Some("denied"), action)])], true)
            })
            .await
        }
    });
    let undo = alice.until(|m| has_answer(m, "logux/undo", &refused)).await?;
    let answer = crate::support::sync_actions(&undo).into_iter().find(|a| a["id"] == refused);
    assert_eq!(answer.map(|a| a["reason"].clone()), Some(json!("denied")), "{undo}");
    // The site has asked the region (and asked again) meanwhile: it is still to correct.
    for _ in 0..40 {
        alice.send_action(json!({"type": "inc", "id": "busy"})).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(objects_to_correct(&region)?, ["tags"]);
    assert_eq!(
        objects_to_correct(&site)?,
        ["tags"],
        "the site took the region's state before its correction"
    );
    // The cloud comes back and answers: it has no such object.
    cloud.abort();
    let state = json!(["sync", 1, {"type": "rhizome/state", "key": "tags"}, {"id": [0, 1], "time": 0}]);
    let cloud = stand_in_upstream(&listener, "rhizome/state", |added, _| {
        (vec![json!(["synced", added]), state.clone()], false)
    });
    tokio::time::timeout(CONVERGE, cloud).await??;
    // Alice keeps writing meanwhile: the site's link is never idle (it asks again all the same).
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !objects_to_correct(&region)?.is_empty() || !objects_to_correct(&site)?.is_empty() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the corrections are not done");
        alice.send_action(json!({"type": "inc", "id": "busy"})).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for server in [&region, &site] {
        let document = object_document(server, "reader:r1:t", "tags").await?;
        assert!(set_elems(&document).is_empty(), "{document}");
    }
    site.stop().await;
    region.stop().await;
    Ok(())
}

/// A site folds an author's two operations into one delta, which the region accepts while the
/// cloud is away; the site restarts (forgetting what it folded, in memory); then the cloud
/// refuses the fold. Its undo names one id, the fold's: the site undoes both operations (what
/// it folded, recorded with the region's answer) and tells their author of each.
#[tokio::test]
async fn a_fold_the_region_took_and_the_cloud_refused_later_is_undone_whole() -> Result<()> {
    let cloud = cloud_where_only_bob_writes_objects().await?;
    let to_cloud = Proxy::start(cloud.addr).await?;
    to_cloud.down(true);
    let region = TestServer::region_of(&to_cloud.url()).await?;
    let to_region = Proxy::start(region.addr).await?;
    to_region.down(true);
    let site = TestServer::edge_of(&to_region.url()).await?;
    let mut alice = site.login("alice:a1:t").await?;
    let mut ids = Vec::new();
    for elem in ["one", "two"] {
        let id = alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": elem})).await?;
        alice.wait_processed(&id).await?;
        ids.push(id);
    }
    alice.close().await;
    // One `sync` to the region, both operations folded under the last one's id.
    to_region.down(false);
    wait_forwarded(&site).await?;
    converged_object(&[&region, &site], "tags", |d| set_elems(d).len() == 2).await?;
    let region_ids = ids_of(&region, "alice:a1:t")?;
    assert_eq!(region_ids.into_keys().collect::<Vec<_>>(), [ids[1].clone()], "folded under the last id");
    let site = site.restart_edge(&to_region.url()).await?;
    to_cloud.down(false);
    // The cloud has no such object; the others end with it empty.
    converged_object(&[&region, &site], "tags", |d| d["elems"] == json!([])).await?;
    assert_eq!(object_document(&cloud, "reader:r9:t", "tags").await?, json!(null));
    let db = rusqlite::Connection::open(site.db_path())?;
    for id in &ids {
        let status: i64 = db.query_row("SELECT status FROM log WHERE id = ?1", [id], |r| r.get(0))?;
        assert_eq!(status, 2, "{id} is undone at the site");
    }
    // Alice is told of each.
    let mut alice = site.login("alice:a1:t").await?;
    let mut told = HashSet::new();
    alice
        .until(|m| {
            told.extend(ids.iter().filter(|id| has_answer(m, "logux/undo", id)).cloned());
            told.len() == ids.len()
        })
        .await?;
    assert_eq!(folds_kept(&site)?, 0, "refused, the fold's record goes");
    for server in [site, region, cloud] {
        server.stop().await;
    }
    Ok(())
}

/// The upstream sends, in one `sync`, a delta of an object and then its whole state without
/// it (its correction took the operation out): the edge's subscribers get the whole state and
/// nothing of the object after it, as the edge's own object has it.
#[tokio::test]
async fn a_whole_state_from_the_upstream_is_not_followed_by_the_deltas_it_replaced() -> Result<()> {
    let (listener, edge, _alice) = edge_of_stand_in().await?;
    let mut carol = edge.login("carol:c1:t").await?;
    subscribe(&mut carol, "crdt/tags").await?;
    let set = |elem: &str, actor: &str| json!({"context": {"vv": {actor: 1}}, "elems": [[elem, actor, 1]]});
    let delta =
        json!({"type": "crdt/delta", "key": "tags", "kind": "set", "delta": set("taken out", "x:1:t")});
    let state = json!({"type": "crdt/delta", "key": "tags", "kind": "set", "replace": true, "delta": set("kept", "y:1:t")});
    let sync = json!(["sync", 1, delta, {"id": [0, 1], "time": 0}, state, {"id": [0, 2], "time": 0}]);
    let upstream = stand_in_upstream(&listener, "logux/subscribe", |added, _| {
        (vec![json!(["synced", added]), sync.clone()], false)
    });
    tokio::time::timeout(CONVERGE, upstream).await??;
    // What carol is sent of the object, in order, until the whole state and a while after.
    let mut sent = Vec::new();
    let replaced = |sent: &[serde_json::Value]| sent.iter().any(|a| a["replace"] == true);
    while !replaced(&sent) {
        let message = carol.next_json().await?;
        sent.extend(crate::support::sync_actions(&message).into_iter().filter(|a| a["key"] == "tags"));
    }
    while let Ok(message) = tokio::time::timeout(Duration::from_millis(500), carol.next_json()).await {
        sent.extend(crate::support::sync_actions(&message?).into_iter().filter(|a| a["key"] == "tags"));
    }
    let last = sent.last().context("a delta")?;
    assert_eq!((last["replace"].clone(), set_elems(&last["delta"])), (json!(true), vec!["kept"]), "{sent:?}");
    assert_eq!(set_elems(&object_document(&edge, "reader:r1:t", "tags").await?), ["kept"]);
    edge.stop().await;
    Ok(())
}
