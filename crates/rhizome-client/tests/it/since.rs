//! A subscriber that goes offline while another client writes catches up after it comes back,
//! through the `since` it persisted: every missed action once, nothing it already had.

use crate::support::{open, options, wait_drained, wait_until, TestServer};
use anyhow::Result;
use rhizome_client::Event;
use serde_json::json;
use std::collections::BTreeSet;

const MISSED: i64 = 2_000;

fn incs(events: &[Event]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Action { action, .. } if action["type"] == "inc" => action["n"].as_i64(),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_subscriber_back_after_a_long_absence_catches_up_with_since() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let alice_path = dir.path().join("alice.sqlite");
    let (alice, alice_events) = open(options(&server.url(), &alice_path, "alice")).await?;
    let (bob, _bob_events) = open(options(&server.url(), &dir.path().join("bob.sqlite"), "bob")).await?;

    alice.subscribe("counter/s").await?;
    wait_until("the subscription to be answered", || async {
        Ok(alice.subscriptions().await?.iter().any(|s| s.since.is_some()))
    })
    .await?;
    // Live: alice receives bob's first ten actions while online.
    bob.add_many((0..10).map(|n| json!({"type": "inc", "id": "s", "n": n})).collect()).await?;
    wait_until("live delivery", || async { Ok(incs(&alice_events.all()).len() == 10) }).await?;
    alice.close().await;

    // Offline: bob writes many more.
    bob.add_many((10..10 + MISSED).map(|n| json!({"type": "inc", "id": "s", "n": n})).collect()).await?;
    wait_drained(&bob).await?;

    let (alice, events) = open(options(&server.url(), &alice_path, "alice")).await?;
    wait_until("the catch-up", || async { Ok(incs(&events.all()).len() as i64 >= MISSED) }).await?;
    // Let anything extra arrive: bob's marker action sent after the catch-up is the last.
    let marker = bob.add(json!({"type": "inc", "id": "s", "n": -1})).await?;
    wait_until("the marker", || async { Ok(incs(&events.all()).contains(&-1)) }).await?;
    let got = incs(&events.all());
    let expected: Vec<i64> = (10..10 + MISSED).chain([-1]).collect();
    assert_eq!(got, expected, "each missed action once, in order, nothing received before");
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), got.len());
    assert!(events.all().iter().any(|e| matches!(e, Event::Action { id, .. } if *id == marker)));
    assert_eq!(alice.subscriptions().await?.len(), 1);
    alice.close().await;
    bob.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn unsubscribing_stops_delivery_and_is_not_renewed() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let alice_path = dir.path().join("alice.sqlite");
    let (alice, events) = open(options(&server.url(), &alice_path, "alice")).await?;
    let (bob, _bob_events) = open(options(&server.url(), &dir.path().join("bob.sqlite"), "bob")).await?;
    alice.subscribe("counter/u").await?;
    alice.subscribe("counter/v").await?;
    wait_until("both subscriptions", || async { Ok(server.subscriptions().await? == 2) }).await?;
    bob.add(json!({"type": "inc", "id": "u", "n": 1})).await?;
    wait_until("live delivery", || async { Ok(incs(&events.all()) == [1]) }).await?;

    assert!(alice.unsubscribe("counter/u").await?);
    assert!(!alice.unsubscribe("counter/u").await?, "nothing left to forget");
    wait_until("the server to drop it", || async { Ok(server.subscriptions().await? == 1) }).await?;
    bob.add_many(vec![json!({"type": "inc", "id": "u", "n": 2}), json!({"type": "inc", "id": "v", "n": 3})])
        .await?;
    // Entries reach a connection in log order: once 3 (counter/v) is in, 2 would be too.
    wait_until("the marker", || async { Ok(incs(&events.all()).contains(&3)) }).await?;
    assert_eq!(incs(&events.all()), [1, 3]);

    // After a restart only counter/v is renewed.
    alice.close().await;
    wait_until("the hub to forget alice", || async { Ok(server.subscriptions().await? == 0) }).await?;
    let (alice, _events) = open(options(&server.url(), &alice_path, "alice")).await?;
    wait_until("the renewal", || async { Ok(server.subscriptions().await? == 1) }).await?;
    let channels: Vec<String> = alice.subscriptions().await?.into_iter().map(|s| s.channel).collect();
    assert_eq!(channels, ["counter/v"]);
    alice.close().await;
    bob.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn actions_addressed_to_an_offline_user_arrive_once_after_reconnect() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let bob_path = dir.path().join("bob.sqlite");
    // Bob connects once (the server learns nothing it needs; `synced` starts at 0), leaves.
    let (bob, _events) = open(options(&server.url(), &bob_path, "bob")).await?;
    wait_until("bob online", || async { Ok(bob.session_stats().connections == 1) }).await?;
    bob.close().await;

    let (alice, _alice_events) =
        open(options(&server.url(), &dir.path().join("alice.sqlite"), "alice")).await?;
    let notes = (0..50).map(|n| json!({"type": "notify", "to": "bob", "n": n})).collect();
    alice.add_many(notes).await?;
    wait_drained(&alice).await?;

    // Back: the `synced` of `connect` (0) lets the server send everything addressed to him.
    let notes_of = |events: &[Event]| -> Vec<i64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Action { action, .. } if action["type"] == "notify" => action["n"].as_i64(),
                _ => None,
            })
            .collect()
    };
    let (bob, events) = open(options(&server.url(), &bob_path, "bob")).await?;
    wait_until("the notes", || async { Ok(notes_of(&events.all()).len() == 50) }).await?;
    assert_eq!(notes_of(&events.all()), (0..50).collect::<Vec<_>>());
    let seen = bob.log_stats().await?.last_received;
    assert!(seen > 0);
    bob.close().await;

    // Again: now `connect` carries the last `added` received, so nothing comes twice.
    let (bob, events) = open(options(&server.url(), &bob_path, "bob")).await?;
    alice.add(json!({"type": "notify", "to": "bob", "n": 50})).await?;
    wait_until("the new note", || async { Ok(notes_of(&events.all()).contains(&50)) }).await?;
    assert_eq!(notes_of(&events.all()), [50]);
    assert_eq!(bob.session_stats().actions_received, 1, "the old notes were not sent again");
    assert_eq!(bob.log_stats().await?.received, 51);
    bob.close().await;
    alice.close().await;
    server.stop().await;
    Ok(())
}
