//! Delivery rules: at-most-once by action id, one connection per client id, the pre-auth
//! queue, and ping.

use crate::support::{has_answer, sync_pairs, token, Client, TestServer};
use anyhow::Result;
use serde_json::{json, Value};

/// Reads `subscriber` until the action with `"n": last` arrives; returns every action read.
async fn delivered_until(subscriber: &mut Client, last: i64) -> Result<Vec<(Value, Value)>> {
    let mut actions = Vec::new();
    loop {
        let m = subscriber.next_json().await?;
        let pairs = sync_pairs(&m);
        let done = pairs.iter().any(|(a, _)| a["n"] == last);
        actions.extend(pairs);
        if done {
            return Ok(actions);
        }
    }
}

#[tokio::test]
async fn same_action_id_is_acknowledged_every_time_but_delivered_once() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:c2:t1").await?;
    bob.subscribe("counter/7").await?;

    let mut alice = server.login("alice:c1:t1").await?;
    let ms = alice.next_id_ms();
    let action = json!({"type": "inc", "id": "7", "n": 1});
    for _ in 0..2 {
        let id = alice.send_action_at(action.clone(), ms).await?;
        let added = alice.added;
        let seen = alice.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
        assert!(seen.contains(&json!(["synced", added])), "{seen:?}");
    }
    // Across a reconnect of the same client: the id is the same, its shift is not.
    let base_before = alice.base_time;
    alice.close().await;
    let mut alice = server.login("alice:c1:t1").await?;
    assert!(alice.base_time >= base_before);
    let id = alice.send_action_at(action.clone(), ms).await?;
    assert_eq!(id, format!("{ms} alice:c1:t1 0"));
    let added = alice.added;
    let seen = alice.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    assert!(seen.contains(&json!(["synced", added])), "{seen:?}");
    // In one `sync` with itself, too.
    let shift = ms - alice.base_time;
    alice
        .send_json(
            &json!(["sync", 9, action, {"id": shift, "time": shift}, action, {"id": shift, "time": shift}]),
        )
        .await?;
    alice.until(|m| *m == json!(["synced", 9])).await?;

    let marker = alice.send_action(json!({"type": "inc", "id": "7", "n": 2})).await?;
    alice.wait_processed(&marker).await?;
    let got = delivered_until(&mut bob, 2).await?;
    let copies = got.iter().filter(|(a, _)| a["n"] == 1).count();
    assert_eq!(copies, 1, "delivered {copies} times: {got:?}");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn second_connection_of_a_client_replaces_the_first() -> Result<()> {
    let server = TestServer::default().await?;
    let mut first = server.login("alice:c1:t1").await?;
    let mut second = server.login("alice:c1:t2").await?;
    assert_eq!(first.expect_close().await?, Some(4001));
    let id = second.send_action(json!({"type": "inc", "id": "1"})).await?;
    second.wait_processed(&id).await?;
    // Another client of the same user is not affected.
    let mut other = server.login("alice:c2:t1").await?;
    let id = other.send_action(json!({"type": "inc", "id": "1"})).await?;
    other.wait_processed(&id).await?;
    let id = second.send_action(json!({"type": "inc", "id": "1"})).await?;
    second.wait_processed(&id).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn messages_before_connect_are_answered_after_it() -> Result<()> {
    let server = TestServer::default().await?;
    let mut c = server.open().await?;
    c.send(r#"["sync",1,{"type":"inc","id":"q"},{"id":1,"time":1}]"#).await?;
    c.send_connect("alice:c1:t1", &token("alice")).await?;
    let connected = c.next_json().await?;
    c.on_connected(&connected)?;
    c.expect(&json!(["synced", 1])).await?;
    let id = c.full_id(c.base_time + 1);
    let m = c.next_json().await?;
    assert!(has_answer(&m, "logux/processed", &id), "{m}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn too_many_messages_before_connect_are_refused() -> Result<()> {
    let server = TestServer::start("pre_auth_messages_max = 4").await?;
    let mut c = server.open().await?;
    for _ in 0..5 {
        c.send(r#"["ping",0]"#).await?;
    }
    let error = c.next_json().await?;
    assert_eq!((&error[0], &error[1]), (&json!("error"), &json!("wrong-format")), "{error}");
    c.expect_close().await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn ping_is_answered_with_pong() -> Result<()> {
    let server = TestServer::default().await?;
    let mut c = server.login("alice:c1:t1").await?;
    c.send(r#"["ping",0]"#).await?;
    let pong = c.next_json().await?;
    assert_eq!(pong[0], "pong", "{pong}");
    assert!(pong[1].is_u64() && pong.as_array().map(Vec::len) == Some(2), "{pong}");
    server.stop().await;
    Ok(())
}
