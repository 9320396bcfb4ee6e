//! CRDT objects in the server: operations are applied by the store in the append's
//! transaction, subscribers get the object's state as one delta and then live deltas, bad
//! operations are undone with their reason, and a re-sent operation is applied once. A
//! subscriber that sends its version vector (`seen`) gets only what it lacks.

use crate::support::{has_answer, sync_actions, Client, TestServer, DEFAULT_LIMITS};
use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// Subscribes to the object at `key`; returns the `crdt/delta` actions received with the
/// answer (the snapshot).
async fn subscribe_object(c: &mut Client, key: &str) -> Result<Vec<Value>> {
    let id = c.send_action(json!({"type": "logux/subscribe", "channel": format!("crdt/{key}")})).await?;
    let seen = c.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    Ok(seen.iter().flat_map(sync_actions).filter(|a| a["type"] == "crdt/delta").collect())
}

/// The `crdt/delta` actions `c` receives until the counter they carry reaches `total`, and
/// the value the last one carries.
async fn live_counter_deltas(c: &mut Client, total: i64) -> Result<(Vec<Value>, i64)> {
    let mut deltas = Vec::new();
    let mut value = 0;
    while value < total {
        let m = c.next_json().await?;
        for delta in sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta") {
            value = counter_value(&delta["delta"])?;
            deltas.push(delta);
        }
    }
    Ok((deltas, value))
}

/// The value of a counter document `{node: [p, n]}`.
fn counter_value(doc: &Value) -> Result<i64> {
    let mut total = 0;
    for (_, pn) in doc.as_object().context("counter document")? {
        total += pn[0].as_i64().context("p")? - pn[1].as_i64().context("n")?;
    }
    Ok(total)
}

#[tokio::test]
async fn operations_fold_into_the_object_and_subscribers_get_one_delta_then_live_ones() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    for _ in 0..300 {
        alice.send_action(json!({"type": "crdt/counter/inc", "key": "posts/7/likes", "by": 1})).await?;
    }
    let id = alice.send_action(json!({"type": "crdt/counter/dec", "key": "posts/7/likes", "by": 2})).await?;
    alice.wait_processed(&id).await?;

    // One delta carries the whole state, not 301 operations.
    let mut bob = server.login("bob:c2:t1").await?;
    let snapshot = subscribe_object(&mut bob, "posts/7/likes").await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot[0]["kind"], "counter");
    assert_eq!(snapshot[0]["delta"], json!({"alice:c1:t1": [300, 2]}));
    assert_eq!(counter_value(&snapshot[0]["delta"])?, 298);

    // Then each new operation arrives as its delta: alice's new totals.
    let id = alice.send_action(json!({"type": "crdt/counter/inc", "key": "posts/7/likes", "by": 5})).await?;
    alice.wait_processed(&id).await?;
    let live = bob.until(|m| sync_actions(m).iter().any(|a| a["type"] == "crdt/delta")).await?;
    let delta = sync_actions(&live).into_iter().find(|a| a["type"] == "crdt/delta").context("delta")?;
    assert_eq!(delta["key"], "posts/7/likes");
    assert_eq!(delta["delta"], json!({"alice:c1:t1": [305, 0]}), "the author's new increment total");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn registers_assign_dots_on_the_server() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let id =
        alice.send_action(json!({"type": "crdt/mv/set", "key": "tasks/1/owner", "value": "alice"})).await?;
    alice.wait_processed(&id).await?;
    let id = alice
        .send_action(json!({"type": "crdt/lww/set", "key": "tasks/1/title", "value": "Buy milk"}))
        .await?;
    alice.wait_processed(&id).await?;
    let mut bob = server.login("bob:c2:t1").await?;
    let mv = subscribe_object(&mut bob, "tasks/1/owner").await?;
    assert_eq!(mv[0]["kind"], "mv");
    assert_eq!(mv[0]["delta"]["values"], json!([["alice:c1:t1", 1, "alice"]]), "{}", mv[0]);
    let lww = subscribe_object(&mut bob, "tasks/1/title").await?;
    assert_eq!(lww[0]["kind"], "lww");
    assert_eq!(lww[0]["delta"]["value"], "Buy milk");
    assert_eq!(lww[0]["delta"]["dot"], json!(["alice:c1:t1", 1]));
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_operations_are_undone_with_their_reason_and_resent_ones_apply_once() -> Result<()> {
    let limits = DEFAULT_LIMITS.replace("frame_bytes_max = 65536", "frame_bytes_max = 200000");
    let server = TestServer::start(&limits).await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let cases = [
        (json!({"type": "crdt/counter/mul", "key": "k", "by": 2}), "crdtUnknownType"),
        (json!({"type": "crdt/counter/inc", "key": "k", "by": "two"}), "crdtWrongShape"),
        (json!({"type": "crdt/counter/inc", "key": "k", "by": 1, "bye": 1}), "crdtWrongShape"),
        (json!({"type": "crdt/lww/set", "key": "k", "value": "x".repeat(70_000)}), "crdtTooBig"),
    ];
    for (action, reason) in cases {
        let id = alice.send_action(action).await?;
        let undo = alice.wait_undo(&id).await?;
        assert_eq!(undo["reason"], reason, "{undo}");
    }

    // The object at "k" becomes a counter; a register write to it is refused, durably.
    let id = alice.send_action(json!({"type": "crdt/counter/inc", "key": "k"})).await?;
    alice.wait_processed(&id).await?;
    let ms = alice.next_id_ms();
    let wrong = json!({"type": "crdt/lww/set", "key": "k", "value": 1});
    for _ in 0..2 {
        let id = alice.send_action_at(wrong.clone(), ms).await?;
        let undo = alice.wait_undo(&id).await?;
        assert_eq!(undo["reason"], "crdtTypeMismatch", "{undo}");
    }

    // The same increment sent twice (same id) counts once.
    let ms = alice.next_id_ms();
    let inc = json!({"type": "crdt/counter/inc", "key": "k", "by": 10});
    for _ in 0..2 {
        let id = alice.send_action_at(inc.clone(), ms).await?;
        alice.wait_processed(&id).await?;
    }
    let mut bob = server.login("bob:c2:t1").await?;
    let snapshot = subscribe_object(&mut bob, "k").await?;
    assert_eq!(counter_value(&snapshot[0]["delta"])?, 11);
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_burst_of_operations_reaches_a_live_subscriber_as_few_joined_deltas() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:c2:t1").await?;
    assert!(subscribe_object(&mut bob, "posts/9/likes").await?.is_empty(), "a new object has no state");
    let mut alice = server.login("alice:c1:t1").await?;
    // 10 `sync` messages of 100 increments each, pipelined.
    for batch in 1..=10i64 {
        let mut message = vec![json!("sync"), json!(batch)];
        for i in 0..100 {
            message.push(json!({"type": "crdt/counter/inc", "key": "posts/9/likes", "by": 1}));
            message.push(json!({"id": [batch, i], "time": batch}));
        }
        alice.send_json(&Value::from(message)).await?;
    }
    alice.until(|m| *m == json!(["synced", 10])).await?;

    let (deltas, value) = live_counter_deltas(&mut bob, 1000).await?;
    assert_eq!(value, 1000, "the last delta carries alice's total");
    assert!(deltas.len() <= 10, "1000 operations arrived as {} deltas", deltas.len());
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn sets_are_add_wins_objects_with_server_dots() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    for action in [
        json!({"type": "crdt/set/add", "key": "boards/3/tags", "elem": "urgent"}),
        json!({"type": "crdt/set/add", "key": "boards/3/tags", "elem": "later"}),
        json!({"type": "crdt/set/remove", "key": "boards/3/tags", "elem": "urgent"}),
        json!({"type": "crdt/clset/add", "key": "rooms/9/members", "elem": "u5"}),
    ] {
        let id = alice.send_action(action).await?;
        alice.wait_processed(&id).await?;
    }
    let mut bob = server.login("bob:c2:t1").await?;
    let set = subscribe_object(&mut bob, "boards/3/tags").await?;
    assert_eq!(set[0]["kind"], "set");
    assert_eq!(set[0]["delta"]["elems"], json!([["later", "alice:c1:t1", 2]]), "{}", set[0]);
    let clset = subscribe_object(&mut bob, "rooms/9/members").await?;
    assert_eq!(clset[0]["delta"]["elems"], json!([["u5", 1]]));
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn channel_rules_decide_who_writes_and_reads_an_object() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let mut bob = server.login("bob:c2:t1").await?;
    let inc = json!({"type": "crdt/counter/inc", "key": "private/alice/steps", "by": 3});
    let id = bob.send_action(inc.clone()).await?;
    assert_eq!(bob.wait_undo(&id).await?["reason"], "denied", "bob may not write alice's object");
    let id = alice.send_action(inc).await?;
    alice.wait_processed(&id).await?;
    let id =
        bob.send_action(json!({"type": "logux/subscribe", "channel": "crdt/private/alice/steps"})).await?;
    assert_eq!(bob.wait_undo(&id).await?["reason"], "denied", "nor read it");
    let snapshot = subscribe_object(&mut alice, "private/alice/steps").await?;
    assert_eq!(counter_value(&snapshot[0]["delta"])?, 3);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn lists_take_inserts_and_deletes_by_position() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    for action in [
        json!({"type": "crdt/list/insert", "key": "todo", "index": 0, "value": "milk"}),
        json!({"type": "crdt/list/insert", "key": "todo", "index": 1, "value": "eggs"}),
        json!({"type": "crdt/list/insert", "key": "todo", "index": 0, "value": "bread"}),
        json!({"type": "crdt/list/delete", "key": "todo", "index": 1}),
    ] {
        let id = alice.send_action(action).await?;
        alice.wait_processed(&id).await?;
    }
    let mut bob = server.login("bob:c2:t1").await?;
    let list = subscribe_object(&mut bob, "todo").await?;
    assert_eq!(list[0]["kind"], "list");
    let visible: Vec<&Value> = list[0]["delta"]["elems"]
        .as_array()
        .context("elems")?
        .iter()
        .filter(|e| !list[0]["delta"]["deleted"].as_array().is_some_and(|d| d.contains(&json!([e[0], e[1]]))))
        .map(|e| &e[4])
        .collect();
    assert_eq!(visible, [&json!("bread"), &json!("eggs")], "{}", list[0]);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn maps_hold_nested_registers_and_sets() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    for action in [
        json!({"type": "crdt/map/set", "key": "tasks/1", "path": ["title"], "value": "Buy milk"}),
        json!({"type": "crdt/map/set", "key": "tasks/1", "path": ["meta", "priority"], "value": 2}),
        json!({"type": "crdt/map/add", "key": "tasks/1", "path": ["tags"], "elem": "home"}),
        json!({"type": "crdt/map/set", "key": "tasks/1", "path": ["title"], "value": "Buy oat milk"}),
    ] {
        let id = alice.send_action(action).await?;
        alice.wait_processed(&id).await?;
    }
    // A set operation where a register is: refused, nothing changes.
    let id = alice
        .send_action(json!({"type": "crdt/map/add", "key": "tasks/1", "path": ["title"], "elem": "x"}))
        .await?;
    assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtTypeMismatch");
    let mut bob = server.login("bob:c2:t1").await?;
    let map = subscribe_object(&mut bob, "tasks/1").await?;
    assert_eq!(map[0]["kind"], "map");
    let entries = &map[0]["delta"]["entries"];
    assert_eq!(entries["title"]["reg"], json!([["alice:c1:t1", 4, "Buy oat milk"]]), "{}", map[0]);
    assert_eq!(entries["meta"]["map"]["priority"]["reg"][0][2], 2);
    assert_eq!(entries["tags"]["set"][0][0], "home");
    server.stop().await;
    Ok(())
}

/// The counter at `path` of a map object, as a subscriber that joined `deltas` reads it.
fn map_counter(deltas: &[Value], path: &[&str]) -> Result<i128> {
    use rhizome_crdt::{Kind, Object};
    let mut state = Object::bottom(Kind::Map);
    for delta in deltas {
        state.join(&Object::from_json(Kind::Map, &delta["delta"])?)?;
    }
    let Object::Map(map) = state else { anyhow::bail!("not a map") };
    let (first, rest) = path.split_first().context("a path")?;
    let mut value = map.get(&first.to_string());
    for key in rest {
        value = value.and_then(|v| v.get(&key.to_string()));
    }
    Ok(value.map_or(0, |v| v.counter_value()))
}

#[tokio::test]
async fn two_clients_count_in_a_map_and_a_subscriber_sees_the_sum() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:c2:t1").await?;
    assert!(subscribe_object(&mut bob, "posts/1").await?.is_empty(), "a new object has no state");
    let mut alice = server.login("alice:c1:t1").await?;
    let mut carol = server.login("carol:c3:t1").await?;
    let (inc, dec) = ("crdt/map/inc", "crdt/map/dec");
    let count =
        |kind: &str, by: u64| json!({"type": kind, "key": "posts/1", "path": ["stats", "likes"], "by": by});
    // Both clients' operations interleave on the server.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push((0, alice.send_action(count(inc, 1)).await?));
        ids.push((1, carol.send_action(count(if i % 5 == 4 { dec } else { inc }, 2)).await?));
    }
    for (who, id) in ids {
        let client = if who == 0 { &mut alice } else { &mut carol };
        client.wait_processed(&id).await?;
    }
    // 20 from alice, 16 × 2 - 4 × 2 from carol.
    let expected = 20 + 32 - 8;

    let mut live = Vec::new();
    while map_counter(&live, &["stats", "likes"])? != expected {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    assert!(live.iter().all(|d| d["kind"] == "map" && d["key"] == "posts/1"), "{live:?}");

    // A new subscriber gets one delta: one dot per client, each with its totals.
    let mut dave = server.login("dave:c4:t1").await?;
    let snapshot = subscribe_object(&mut dave, "posts/1").await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(map_counter(&snapshot, &["stats", "likes"])?, expected);
    let likes = &snapshot[0]["delta"]["entries"]["stats"]["map"]["likes"]["counter"];
    assert_eq!(likes, &json!([["alice:c1:t1", 20, 20, 0], ["carol:c3:t1", 20, 32, 8]]), "{}", snapshot[0]);

    // A register write where the counter is: refused.
    let set = json!({"type": "crdt/map/set", "key": "posts/1", "path": ["stats", "likes"], "value": 1});
    let id = alice.send_action(set).await?;
    assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtTypeMismatch");

    // Removing the counter resets it; counting again starts from zero.
    let remove = json!({"type": "crdt/map/remove", "key": "posts/1", "path": ["stats", "likes"]});
    let id = carol.send_action(remove).await?;
    carol.wait_processed(&id).await?;
    let id = alice.send_action(count(inc, 3)).await?;
    alice.wait_processed(&id).await?;
    while map_counter(&live, &["stats", "likes"])? != 3 {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// The map object `deltas` join into, and the live values of the list at `path` in it.
fn map_list(deltas: &[Value], path: &[&str]) -> Result<(rhizome_crdt::Object, Vec<Value>)> {
    use rhizome_crdt::{Kind, Object};
    let mut state = Object::bottom(Kind::Map);
    for delta in deltas {
        state.join(&Object::from_json(Kind::Map, &delta["delta"])?)?;
    }
    let Object::Map(map) = &state else { anyhow::bail!("not a map") };
    let (first, rest) = path.split_first().context("a path")?;
    let mut value = map.get(&first.to_string());
    for key in rest {
        value = value.and_then(|v| v.get(&key.to_string()));
    }
    let values = value.map(|v| v.list().values().cloned().collect()).unwrap_or_default();
    Ok((state, values))
}

#[tokio::test]
async fn two_clients_insert_into_a_list_in_a_map_and_a_subscriber_converges() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:c2:t1").await?;
    assert!(subscribe_object(&mut bob, "boards/1").await?.is_empty(), "a new object has no state");
    let mut alice = server.login("alice:c1:t1").await?;
    let mut carol = server.login("carol:c3:t1").await?;
    let path = json!(["board", "cards"]);
    let insert = |index: u64, value: Value| json!({"type": "crdt/map/insert", "key": "boards/1", "path": path, "index": index, "value": value});
    let after = |after: Value, value: Value| json!({"type": "crdt/map/insert", "key": "boards/1", "path": path, "after": after, "value": value});
    // Alice appends a0..a9; Carol writes c0..c9, each after Alice's first card (an element
    // id names it wherever it is), so the operations interleave on the server.
    let id = alice.send_action(insert(0, json!({"title": "a0"}))).await?;
    alice.wait_processed(&id).await?;
    let first = json!(["alice:c1:t1", 1]);
    let mut ids = Vec::new();
    for i in 1..10 {
        ids.push((0, alice.send_action(insert(u64::MAX, json!({"title": format!("a{i}")}))).await?));
        ids.push((1, carol.send_action(after(first.clone(), json!(format!("c{i}")))).await?));
    }
    for (who, id) in ids {
        let client = if who == 0 { &mut alice } else { &mut carol };
        client.wait_processed(&id).await?;
    }

    let mut live = Vec::new();
    while map_list(&live, &["board", "cards"])?.1.len() < 19 {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    let (state, cards) = map_list(&live, &["board", "cards"])?;
    // Carol's cards follow Alice's first one, latest first (RGA: each is placed right after
    // it); Alice's appended cards come after them, in order.
    let mut expected = vec![json!({"title": "a0"})];
    expected.extend((1..10).rev().map(|i| json!(format!("c{i}"))));
    expected.extend((1..10).map(|i| json!({"title": format!("a{i}")})));
    assert_eq!(cards, expected);

    // A new subscriber gets the same state in one delta.
    let mut dave = server.login("dave:c4:t1").await?;
    let snapshot = subscribe_object(&mut dave, "boards/1").await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(map_list(&snapshot, &["board", "cards"])?.0, state);

    // Refusals: another kind where the list is, an unknown element.
    let set = json!({"type": "crdt/map/set", "key": "boards/1", "path": ["board", "cards"], "value": 1});
    let id = alice.send_action(set).await?;
    assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtTypeMismatch");
    let id = alice.send_action(after(json!(["nobody", 1]), json!(1))).await?;
    assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtUnknownElement");

    // Carol cuts Alice's first card by id; then the board is removed and Alice adds a card:
    // only that one is left.
    let cut = json!({"type": "crdt/map/cut", "key": "boards/1", "path": ["board", "cards"], "id": first});
    let id = carol.send_action(cut).await?;
    carol.wait_processed(&id).await?;
    while map_list(&live, &["board", "cards"])?.1.len() != 18 {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    let remove = json!({"type": "crdt/map/remove", "key": "boards/1", "path": ["board"]});
    let id = carol.send_action(remove).await?;
    carol.wait_processed(&id).await?;
    let id = alice.send_action(insert(0, json!("fresh"))).await?;
    alice.wait_processed(&id).await?;
    while map_list(&live, &["board", "cards"])?.1 != [json!("fresh")] {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// The last-writer-wins register at `path` of a map object, as a subscriber that joined
/// `deltas` reads it: the winning value and every write held, as `[node, n, time, value]`.
fn map_lww(deltas: &[Value], path: &[&str]) -> Result<(Option<Value>, Vec<Value>)> {
    use rhizome_crdt::{Kind, Object};
    let mut state = Object::bottom(Kind::Map);
    for delta in deltas {
        state.join(&Object::from_json(Kind::Map, &delta["delta"])?)?;
    }
    let Object::Map(map) = state else { anyhow::bail!("not a map") };
    let (first, rest) = path.split_first().context("a path")?;
    let mut value = map.get(&first.to_string());
    for key in rest {
        value = value.and_then(|v| v.get(&key.to_string()));
    }
    let Some(value) = value else { return Ok((None, Vec::new())) };
    let held =
        value.lww_entries().map(|(dot, e)| json!([dot.node.as_str(), dot.counter, e.time_ms, e.value]));
    Ok((value.lww_value().cloned(), held.collect()))
}

#[tokio::test]
async fn two_clients_put_structured_values_in_a_map_and_a_subscriber_converges_to_the_winner() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:c2:t1").await?;
    assert!(subscribe_object(&mut bob, "docs/1").await?.is_empty(), "a new object has no state");
    let mut alice = server.login("alice:c1:t1").await?;
    let mut carol = server.login("carol:c3:t1").await?;
    let put = |font: &str, size: u64| {
        json!({"type": "crdt/map/put", "key": "docs/1", "path": ["doc", "style"],
               "value": {"font": font, "size": size, "marks": [{"bold": size.is_multiple_of(2)}]}})
    };
    // Alice's clock runs a minute ahead of carol's; they take turns, carol last.
    for size in 0..4 {
        let ms = alice.next_id_ms() + 60_000;
        let id = alice.send_action_at(put("serif", size), ms).await?;
        alice.wait_processed(&id).await?;
        let id = carol.send_action(put("sans", size)).await?;
        carol.wait_processed(&id).await?;
    }
    let winner = put("sans", 3)["value"].clone();

    // The live subscriber converges to carol's last put: each put superseded the one before
    // it (the server held it), whatever the clocks said.
    let mut live = Vec::new();
    while map_lww(&live, &["doc", "style"])?.0.as_ref() != Some(&winner) {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    assert!(live.iter().all(|d| d["kind"] == "map" && d["key"] == "docs/1"), "{live:?}");
    let (_, held) = map_lww(&live, &["doc", "style"])?;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0][0], "carol:c3:t1");
    // Carol's write took the time of alice's, which it superseded (a minute ahead of its own).
    let alice_times: Vec<i64> = live
        .iter()
        .filter_map(|d| d["delta"]["entries"]["doc"]["map"]["style"]["lww"][0].as_array().cloned())
        .filter(|w| w[0] == "alice:c1:t1")
        .filter_map(|w| w[2].as_i64())
        .collect();
    assert_eq!(held[0][2].as_i64(), alice_times.last().copied(), "{live:?}");

    // A new subscriber gets the same single write in one delta.
    let mut dave = server.login("dave:c4:t1").await?;
    let snapshot = subscribe_object(&mut dave, "docs/1").await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(map_lww(&snapshot, &["doc", "style"])?, (Some(winner), held));

    // A register write where the LWW register is: refused; so is a put through it.
    let set = json!({"type": "crdt/map/set", "key": "docs/1", "path": ["doc", "style"], "value": 1});
    let id = alice.send_action(set).await?;
    assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtTypeMismatch");
    let deeper = json!({"type": "crdt/map/put", "key": "docs/1", "path": ["doc", "style", "x"], "value": 1});
    let id = alice.send_action(deeper).await?;
    assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtTypeMismatch");

    // Removing the path retires the write; a put there afterwards is the only one.
    let remove = json!({"type": "crdt/map/remove", "key": "docs/1", "path": ["doc", "style"]});
    let id = carol.send_action(remove).await?;
    carol.wait_processed(&id).await?;
    let id = alice.send_action(put("mono", 9)).await?;
    alice.wait_processed(&id).await?;
    let fresh = put("mono", 9)["value"].clone();
    while map_lww(&live, &["doc", "style"])?.0.as_ref() != Some(&fresh) {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    assert_eq!(map_lww(&live, &["doc", "style"])?.1.len(), 1);
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// A causal-length set as a subscriber reads it: its present elements, and every element it
/// holds with its causal length.
type ClSetRead = (Vec<Value>, Vec<(Value, u64)>);

/// The causal-length set at `path` of a map object, as a subscriber that joined `deltas`
/// reads it.
fn map_clset(deltas: &[Value], path: &[&str]) -> Result<ClSetRead> {
    use rhizome_crdt::{Kind, Object};
    let mut state = Object::bottom(Kind::Map);
    for delta in deltas {
        state.join(&Object::from_json(Kind::Map, &delta["delta"])?)?;
    }
    let Object::Map(map) = state else { anyhow::bail!("not a map") };
    let (first, rest) = path.split_first().context("a path")?;
    let mut value = map.get(&first.to_string());
    for key in rest {
        value = value.and_then(|v| v.get(&key.to_string()));
    }
    let Some(value) = value else { return Ok((Vec::new(), Vec::new())) };
    let present = value.clset_elements().map(|e| e.to_json()).collect();
    let lengths = value.clset_entries().map(|(e, _)| (e.to_json(), value.clset_length(e))).collect();
    Ok((present, lengths))
}

#[tokio::test]
async fn two_clients_edit_a_causal_length_set_in_a_map_and_a_subscriber_converges() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:c2:t1").await?;
    assert!(subscribe_object(&mut bob, "boards/1").await?.is_empty(), "a new object has no state");
    let mut alice = server.login("alice:c1:t1").await?;
    let mut carol = server.login("carol:c3:t1").await?;
    let cl = |kind: &str, elem: Value| json!({"type": format!("crdt/map/{kind}"), "key": "boards/1", "path": ["board", "tags"], "elem": elem});
    // Alice adds three tags; carol removes one of them and re-adds it; alice adds "urgent"
    // again (already present: nothing) and removes 7.
    for (by_carol, action) in [
        (false, cl("cladd", json!("urgent"))),
        (false, cl("cladd", json!(7))),
        (false, cl("cladd", json!(null))),
        (true, cl("cldelete", json!("urgent"))),
        (true, cl("cladd", json!("urgent"))),
        (false, cl("cladd", json!("urgent"))),
        (false, cl("cldelete", json!(7))),
    ] {
        let client = if by_carol { &mut carol } else { &mut alice };
        let id = client.send_action(action).await?;
        client.wait_processed(&id).await?;
    }
    let expected_lengths = vec![(json!(null), 1), (json!(7), 2), (json!("urgent"), 3)];
    let mut live = Vec::new();
    while map_clset(&live, &["board", "tags"])?.1 != expected_lengths {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    assert!(live.iter().all(|d| d["kind"] == "map" && d["key"] == "boards/1"), "{live:?}");
    assert_eq!(map_clset(&live, &["board", "tags"])?.0, [json!(null), json!("urgent")]);

    // A new subscriber gets the same set in one delta: one bump per element, the last.
    let mut dave = server.login("dave:c4:t1").await?;
    let snapshot = subscribe_object(&mut dave, "boards/1").await?;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(map_clset(&snapshot, &["board", "tags"])?.1, expected_lengths);
    let bumps = snapshot[0]["delta"]["entries"]["board"]["map"]["tags"]["clset"].clone();
    assert_eq!(bumps.as_array().map(Vec::len), Some(3), "{bumps}");
    assert_eq!(bumps[2], json!(["urgent", "carol:c3:t1", 2, 3]));

    // Other kinds where the set is, the set where another kind is, and bad shapes: undone.
    let set = json!({"type": "crdt/map/set", "key": "boards/1", "path": ["board", "tags"], "value": 1});
    let add = json!({"type": "crdt/map/add", "key": "boards/1", "path": ["board", "tags"], "elem": 1});
    let through = cl("cladd", json!(1));
    let through =
        json!({"type": through["type"], "key": "boards/1", "path": ["board", "tags", "x"], "elem": 1});
    let title = json!({"type": "crdt/map/set", "key": "boards/1", "path": ["board", "title"], "value": "t"});
    let id = alice.send_action(title).await?;
    alice.wait_processed(&id).await?;
    let on_title =
        json!({"type": "crdt/map/cladd", "key": "boards/1", "path": ["board", "title"], "elem": 1});
    for action in [set, add, through, on_title] {
        let id = alice.send_action(action.clone()).await?;
        assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtTypeMismatch", "{action}");
    }
    for action in [
        cl("cladd", json!([1])),
        cl("cldelete", json!({"a": 1})),
        json!({"type": "crdt/map/cladd", "key": "boards/1", "path": [], "elem": 1}),
        json!({"type": "crdt/map/cladd", "key": "boards/1", "path": ["tags"]}),
        json!({"type": "crdt/map/cldelete", "key": "boards/1", "path": ["tags"], "elem": 1, "seen": {}}),
    ] {
        let id = alice.send_action(action.clone()).await?;
        assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtWrongShape", "{action}");
    }
    let counter = json!({"type": "crdt/counter/inc", "key": "boards/1"});
    let id = alice.send_action(counter).await?;
    assert_eq!(alice.wait_undo(&id).await?["reason"], "crdtTypeMismatch");

    // Removing the set's key forgets it; an add afterwards starts a new history.
    let remove = json!({"type": "crdt/map/remove", "key": "boards/1", "path": ["board", "tags"]});
    let id = carol.send_action(remove).await?;
    carol.wait_processed(&id).await?;
    let id = alice.send_action(cl("cladd", json!(7))).await?;
    alice.wait_processed(&id).await?;
    while map_clset(&live, &["board", "tags"])?.1 != [(json!(7), 1)] {
        let m = bob.next_json().await?;
        live.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
    }
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// Subscribes to the object at `key` with `seen`; returns the `crdt/delta` actions received
/// with the answer.
async fn subscribe_seen(c: &mut Client, key: &str, seen: &Value) -> Result<Vec<Value>> {
    let subscribe = json!({"type": "logux/subscribe", "channel": format!("crdt/{key}"), "seen": seen});
    let id = c.send_action(subscribe).await?;
    let got = c.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    Ok(got.iter().flat_map(sync_actions).filter(|a| a["type"] == "crdt/delta").collect())
}

#[tokio::test]
async fn a_subscriber_with_a_version_vector_gets_only_what_it_lacks() -> Result<()> {
    use rhizome_crdt::{Kind, Object};
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let mut last = None;
    for i in 0..200 {
        last = Some(alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": i})).await?);
    }
    alice.wait_processed(&last.context("sent")?).await?;

    // Bob holds the set as it is now, then goes away.
    let mut bob = server.login("bob:c2:t1").await?;
    let first = subscribe_object(&mut bob, "tags").await?;
    let mut copy = Object::from_json(Kind::Set, &first[0]["delta"]).context("a set document")?;
    let seen = first[0]["delta"]["context"]["vv"].clone();
    assert_eq!(seen, json!({"alice:c1:t1": 200}), "the vector a client sends is its context's");
    bob.close().await;

    // Meanwhile: a new element, a removed one, one re-added by someone else.
    let mut carol = server.login("carol:c3:t1").await?;
    for action in [
        json!({"type": "crdt/set/add", "key": "tags", "elem": "new"}),
        json!({"type": "crdt/set/remove", "key": "tags", "elem": 7}),
    ] {
        let id = alice.send_action(action).await?;
        alice.wait_processed(&id).await?;
    }
    let id = carol.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": 100})).await?;
    carol.wait_processed(&id).await?;

    // Bob comes back with his vector: one small delta that brings him to the state.
    let mut bob = server.login("bob:c2:t1").await?;
    let caught_up = subscribe_seen(&mut bob, "tags", &seen).await?;
    assert_eq!(caught_up.len(), 1, "{caught_up:?}");
    let delta = &caught_up[0]["delta"];
    assert_eq!(delta["elems"], json!([[100, "carol:c3:t1", 1], ["new", "alice:c1:t1", 201]]), "{delta}");
    // The context holds what bob must drop (7's and 100's old dots) and the new dots, not
    // the live ones he has.
    let context = json!({"vv": {"carol:c3:t1": 1}, "cloud": [["alice:c1:t1", 8], ["alice:c1:t1", 101], ["alice:c1:t1", 201]]});
    assert_eq!(delta["context"], context);
    copy.join(&Object::from_json(Kind::Set, delta).context("a set delta")?)?;
    let mut dave = server.login("dave:c4:t1").await?;
    let whole = subscribe_object(&mut dave, "tags").await?;
    let state = Object::from_json(Kind::Set, &whole[0]["delta"]).context("a set document")?;
    assert_eq!(copy, state, "bob's copy joined with the delta is the state");
    let (small, full) = (caught_up[0].to_string().len(), whole[0].to_string().len());
    assert!(small * 10 < full, "{small} bytes against {full}");

    // Then the live deltas, as for any subscriber.
    let id = alice.send_action(json!({"type": "crdt/set/remove", "key": "tags", "elem": "new"})).await?;
    alice.wait_processed(&id).await?;
    let live = bob.until(|m| sync_actions(m).iter().any(|a| a["type"] == "crdt/delta")).await?;
    let live = sync_actions(&live).into_iter().find(|a| a["type"] == "crdt/delta").context("delta")?;
    assert_eq!(live["delta"]["context"], json!({"vv": {}, "cloud": [["alice:c1:t1", 201]]}));
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_malformed_or_absurd_version_vector_is_undone() -> Result<()> {
    let limits = DEFAULT_LIMITS.replace("frame_bytes_max = 65536", "frame_bytes_max = 2000000");
    let server = TestServer::start(&limits).await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let id = alice.send_action(json!({"type": "crdt/counter/inc", "key": "k"})).await?;
    alice.wait_processed(&id).await?;
    let huge: serde_json::Map<String, Value> = (0..=65_536).map(|i| (format!("n{i}"), json!(1))).collect();
    let cases = [
        (json!([1]), "crdtWrongShape"),
        (json!({"alice:c1:t1": 0}), "crdtWrongShape"),
        (json!({"alice:c1:t1": "3"}), "crdtWrongShape"),
        (json!({"a b": 1}), "crdtWrongShape"),
        (Value::Object(huge), "crdtTooBig"),
    ];
    for (seen, reason) in cases {
        let id =
            alice.send_action(json!({"type": "logux/subscribe", "channel": "crdt/k", "seen": seen})).await?;
        assert_eq!(alice.wait_undo(&id).await?["reason"], reason);
    }
    // A kind without a vector (a counter) gets its state, whatever `seen` says.
    let snapshot = subscribe_seen(&mut alice, "k", &json!({"alice:c1:t1": 1})).await?;
    assert_eq!(snapshot[0]["delta"], json!({"alice:c1:t1": [1, 0]}));
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_hundred_thousand_queued_increments_cost_a_live_subscriber_one_small_delta() -> Result<()> {
    // The real client sends its whole offline queue in one `sync` when it reconnects.
    let limits = "frame_bytes_max = 16777216\nactions_per_sync_max = 100000\n";
    let server = TestServer::start(limits).await?;
    let mut bob = server.login("bob:c2:t1").await?;
    assert!(subscribe_object(&mut bob, "posts/9/likes").await?.is_empty(), "a new object has no state");
    let mut alice = server.login("alice:c1:t1").await?;
    let mut message = String::from("[\"sync\",100000");
    for i in 0..100_000 {
        message.push_str(&format!(
            ",{{\"type\":\"crdt/counter/inc\",\"key\":\"posts/9/likes\"}},{{\"id\":[1,{i}],\"time\":1}}"
        ));
    }
    message.push(']');
    alice.send(message).await?;
    // 100,000 operations in one transaction take seconds in a debug build under a loaded run.
    alice.until_within(Duration::from_secs(60), |m| *m == json!(["synced", 100000])).await?;

    let (deltas, value) = live_counter_deltas(&mut bob, 100_000).await?;
    assert_eq!(value, 100_000, "the last delta carries alice's total");
    assert_eq!(deltas.len(), 1, "100,000 operations arrived as {} deltas", deltas.len());
    assert_eq!(deltas[0]["delta"], json!({"alice:c1:t1": [100_000, 0]}));
    let size = deltas[0].to_string().len();
    assert!(size < 200, "the delta is {size} bytes: {}", deltas[0]);
    server.stop().await;
    Ok(())
}

/// Subscribes to the object at `key` (with `since`, if given), confirming every frame with
/// `synced` as a real client does once it stored them; returns the `crdt/delta` actions that
/// came with the answer, and the `since` a real client would send when it re-subscribes
/// (`{id, time}` of the meta of the `logux/processed` that answered).
async fn subscribe_confirmed(
    c: &mut Client,
    key: &str,
    since: Option<&Value>,
) -> Result<(Vec<Value>, Value)> {
    let mut action = json!({"type": "logux/subscribe", "channel": format!("crdt/{key}")});
    if let Some(since) = since {
        action["since"] = since.clone();
    }
    let id = c.send_action(action).await?;
    let mut deltas = Vec::new();
    loop {
        let m = c.next_json().await?;
        if m[0] == "sync" {
            c.send_json(&json!(["synced", m[1]])).await?;
        }
        deltas.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "crdt/delta"));
        let answer = crate::support::sync_pairs(&m)
            .into_iter()
            .find(|(a, _)| a["type"] == "logux/processed" && a["id"] == id);
        if let Some((_, meta)) = answer {
            let time = meta["time"].as_i64().context("time")? + c.base_time;
            return Ok((deltas, json!({"id": c.decode_id(&meta["id"])?, "time": time})));
        }
    }
}

/// Waits until the log records the position a subscription's answer `id` stands for.
async fn wait_recorded(server: &TestServer, id: &str) -> Result<()> {
    let db = rusqlite::Connection::open(server.db_path())?;
    for _ in 0..500 {
        let found: i64 =
            db.query_row("SELECT count(*) FROM subscription_acks WHERE id = ?1", [id], |r| r.get(0))?;
        if found == 1 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("the acknowledgement {id} was never recorded")
}

/// The real client re-subscribes with `since` after a reconnection. It then gets one delta:
/// the join of the object's deltas after the point where its subscription held everything,
/// not the whole state again. Its own operations are in it (an author is not sent its own
/// deltas live), and nothing comes when nothing changed.
#[tokio::test]
async fn a_resubscription_with_since_gets_the_join_of_the_deltas_after_it() -> Result<()> {
    use rhizome_crdt::{Kind, Object};
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:c1:t1").await?;
    let mut last = None;
    for i in 0..500 {
        last = Some(alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": i})).await?);
    }
    alice.wait_processed(&last.context("sent")?).await?;

    // Bob holds the set, adds an element himself while subscribed, receives alice's next
    // add live, and goes away.
    let mut bob = server.login("bob:c2:t1").await?;
    let (first, since) = subscribe_confirmed(&mut bob, "tags", None).await?;
    let mut copy = Object::from_json(Kind::Set, &first[0]["delta"]).context("a set document")?;
    let id = bob.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "mine"})).await?;
    bob.wait_processed(&id).await?;
    let id = alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "live"})).await?;
    alice.wait_processed(&id).await?;
    let live = bob.until(|m| sync_actions(m).iter().any(|a| a["type"] == "crdt/delta")).await?;
    bob.send_json(&json!(["synced", live[1]])).await?;
    for delta in sync_actions(&live).into_iter().filter(|a| a["type"] == "crdt/delta") {
        copy.join(&Object::from_json(Kind::Set, &delta["delta"]).context("a set delta")?)?;
    }
    bob.close().await;

    // Meanwhile: a new element and a removed one.
    for action in [
        json!({"type": "crdt/set/add", "key": "tags", "elem": "new"}),
        json!({"type": "crdt/set/remove", "key": "tags", "elem": 7}),
    ] {
        let id = alice.send_action(action).await?;
        alice.wait_processed(&id).await?;
    }

    let mut bob = server.login("bob:c2:t1").await?;
    let (caught_up, _) = subscribe_confirmed(&mut bob, "tags", Some(&since)).await?;
    assert_eq!(caught_up.len(), 1, "{caught_up:?}");
    let delta = Object::from_json(Kind::Set, &caught_up[0]["delta"]).context("a set delta")?;
    let mut elems: Vec<String> =
        delta.to_json()["elems"].as_array().context("elems")?.iter().map(|e| e[0].to_string()).collect();
    elems.sort();
    assert_eq!(elems, ["\"live\"", "\"mine\"", "\"new\""], "{}", caught_up[0]);
    copy.join(&delta)?;
    let mut dave = server.login("dave:c4:t1").await?;
    let whole = subscribe_object(&mut dave, "tags").await?;
    let state = Object::from_json(Kind::Set, &whole[0]["delta"]).context("a set document")?;
    assert_eq!(copy, state, "bob's copy joined with the delta is the state, his own add included");
    let (small, full) = (caught_up[0].to_string().len(), whole[0].to_string().len());
    assert!(small * 20 < full, "{small} bytes against {full}");

    // Nothing changed since dave subscribed: his re-subscription brings no delta.
    let mut erin = server.login("erin:c5:t1").await?;
    let (_, erin_since) = subscribe_confirmed(&mut erin, "tags", None).await?;
    erin.close().await;
    // The hub records what the answer's id stands for without waiting for the writer.
    wait_recorded(&server, erin_since["id"].as_str().context("id")?).await?;
    let mut erin = server.login("erin:c5:t1").await?;
    let (nothing, _) = subscribe_confirmed(&mut erin, "tags", Some(&erin_since)).await?;
    assert!(nothing.is_empty(), "{nothing:?}");
    // An unknown id with a time before the object: the whole state.
    let old = json!({"id": "1 nobody:x:y 0", "time": 1});
    let (again, _) = subscribe_confirmed(&mut erin, "tags", Some(&old)).await?;
    assert_eq!(Object::from_json(Kind::Set, &again[0]["delta"]).context("a set document")?, state);
    server.stop().await;
    Ok(())
}

/// A `since` whose id the log does not know (its acknowledgement was not recorded: the hub
/// does not wait for the writer) gets an object's whole state: `since.time` is in the client's
/// clock, so a position found from it could be past operations the client never received (its
/// own, which are not sent to it live).
#[tokio::test]
async fn an_unknown_since_id_gets_an_object_whole_whatever_the_clients_clock() -> Result<()> {
    use rhizome_crdt::{Kind, Object};
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:c2:t1").await?;
    let id = bob.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "first"})).await?;
    bob.wait_processed(&id).await?;
    let (first, since) = subscribe_confirmed(&mut bob, "tags", None).await?;
    let mut copy = Object::from_json(Kind::Set, &first[0]["delta"]).context("a set document")?;
    let id = bob.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": "mine"})).await?;
    bob.wait_processed(&id).await?;
    bob.close().await;
    // The answer's id as if its acknowledgement was dropped, and the client's clock 10 min ahead.
    let text = since["id"].as_str().context("id")?;
    let unknown = format!("{} 999999", &text[..text.rfind(' ').context("seq")?]);
    let skewed = json!({"id": unknown, "time": since["time"].as_i64().context("time")? + 10 * 60 * 1000});
    let mut bob = server.login("bob:c2:t1").await?;
    let (caught_up, _) = subscribe_confirmed(&mut bob, "tags", Some(&skewed)).await?;
    for delta in &caught_up {
        copy.join(&Object::from_json(Kind::Set, &delta["delta"]).context("a set delta")?)?;
    }
    let mut dave = server.login("dave:c4:t1").await?;
    let whole = subscribe_object(&mut dave, "tags").await?;
    let state = Object::from_json(Kind::Set, &whole[0]["delta"]).context("a set document")?;
    assert_eq!(copy, state, "bob's copy lacks his own add");
    server.stop().await;
    Ok(())
}
