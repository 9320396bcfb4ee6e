//! Re-subscription with `since`: a subscriber gets exactly the channel actions it did not
//! confirm with `synced`, nothing it already received live and nothing less.

use crate::support::{has_answer, sync_pairs, Client, TestServer, DEFAULT_LIMITS};
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

const CHANNEL: &str = "counter/s";
const ALICE: &str = "alice:a1:t1";
const BOB: &str = "bob:b1:t1";

/// Subscribes to [`CHANNEL`] and returns the `since` a real client would send when it
/// re-subscribes: `{id, time}` of the meta of the `logux/processed` that answered it.
async fn subscribe_for_since(c: &mut Client) -> Result<Value> {
    let id = c.send_action(json!({"type": "logux/subscribe", "channel": CHANNEL})).await?;
    let m = c.until(|m| has_answer(m, "logux/processed", &id)).await?;
    acknowledge(c, &m).await?;
    let (_, meta) = sync_pairs(&m)
        .into_iter()
        .find(|(a, _)| a["type"] == "logux/processed" && a["id"] == id)
        .ok_or_else(|| anyhow!("no processed in {m}"))?;
    let time = meta["time"].as_i64().ok_or_else(|| anyhow!("no time in {meta}"))? + c.base_time;
    Ok(json!({"id": c.decode_id(&meta["id"])?, "time": time}))
}

/// Answers a `sync` frame with `synced`, as a real client does once it stored the actions.
async fn acknowledge(c: &mut Client, frame: &Value) -> Result<()> {
    if frame[0] == "sync" {
        c.send_json(&json!(["synced", frame[1]])).await?;
    }
    Ok(())
}

/// alice's `inc` actions numbered `ns`, each processed before the next is sent.
async fn send_incs(alice: &mut Client, ns: impl IntoIterator<Item = i64>) -> Result<()> {
    for n in ns {
        let id = alice.send_action(json!({"type": "inc", "id": "s", "n": n})).await?;
        alice.wait_processed(&id).await?;
    }
    Ok(())
}

/// The `n` of every `inc` in `frames`, in order.
fn incs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .flat_map(sync_pairs)
        .filter(|(a, _)| a["type"] == "inc")
        .filter_map(|(a, _)| a["n"].as_i64())
        .collect()
}

/// Reads `bob`'s frames until the `inc` numbered `last`; acknowledges those carrying only
/// `inc`s numbered up to `ack_through`. Returns the numbers read.
async fn receive_live(bob: &mut Client, last: i64, ack_through: i64) -> Result<Vec<i64>> {
    let mut seen = Vec::new();
    loop {
        let frame = bob.next_json().await?;
        let ns = incs(std::slice::from_ref(&frame));
        if ns.iter().all(|n| *n <= ack_through) {
            acknowledge(bob, &frame).await?;
        }
        seen.extend(&ns);
        if ns.contains(&last) {
            return Ok(seen);
        }
    }
}

/// Waits until the acknowledgement of subscription `since` is recorded through alice's `inc`
/// number `n`.
async fn wait_acknowledged(server: &TestServer, since: &Value, n: i64) -> Result<()> {
    let id = since["id"].as_str().ok_or_else(|| anyhow!("no id in {since}"))?.to_owned();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let db = rusqlite::Connection::open(server.db_path())?;
        let through: i64 = db.query_row(
            "SELECT added FROM log WHERE json_extract(action, '$.type') = 'inc' AND json_extract(action, '$.n') = ?1",
            [n],
            |r| r.get(0),
        )?;
        let acked: Option<i64> =
            db.query_row("SELECT position FROM subscription_acks WHERE id = ?1", [&id], |r| r.get(0)).ok();
        if acked.is_some_and(|p| p >= through) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the acknowledgement of {id} stayed at {acked:?}, below {through}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Reconnects bob, re-subscribes with `since` and returns the `inc` numbers he receives up to
/// alice's marker action sent after the re-subscription was answered (so late copies count).
async fn resubscribe(
    server: &TestServer,
    alice: &mut Client,
    since: &Value,
    marker: i64,
) -> Result<Vec<i64>> {
    let mut bob = server.login(BOB).await?;
    let action = json!({"type": "logux/subscribe", "channel": CHANNEL, "since": since});
    let id = bob.send_action(action).await?;
    let mut frames = bob.collect_until(|m| has_answer(m, "logux/processed", &id)).await?;
    send_incs(alice, [marker]).await?;
    frames.extend(bob.collect_until(|m| incs(std::slice::from_ref(m)).contains(&marker)).await?);
    bob.close().await;
    let mut got = incs(&frames);
    assert_eq!(got.pop(), Some(marker), "{frames:?}");
    Ok(got)
}

#[tokio::test]
async fn resubscribing_with_since_skips_what_the_client_acknowledged() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login(BOB).await?;
    let since = subscribe_for_since(&mut bob).await?;
    let mut alice = server.login(ALICE).await?;

    send_incs(&mut alice, 1..=5).await?;
    assert_eq!(receive_live(&mut bob, 5, 5).await?, [1, 2, 3, 4, 5]);
    // `synced` goes before the close on the same socket, so the server has read it.
    bob.close().await;
    // Once the hub forgot bob, the raise is queued to the writer ahead of alice's next writes,
    // so it is committed before they are processed and before bob re-subscribes.
    server.wait_connections(1).await?;
    send_incs(&mut alice, 6..=8).await?;

    let got = resubscribe(&server, &mut alice, &since, 100).await?;
    assert_eq!(got, [6, 7, 8], "exactly the missed actions, none received live before");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn resubscribing_with_since_resends_what_the_client_did_not_acknowledge() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login(ALICE).await?;

    // Never a `synced` after the subscription's answer: the replay starts where it went live.
    let mut bob = server.login(BOB).await?;
    let since = subscribe_for_since(&mut bob).await?;
    send_incs(&mut alice, 1..=3).await?;
    assert_eq!(receive_live(&mut bob, 3, 0).await?, [1, 2, 3]);
    bob.close().await;
    server.wait_connections(1).await?;
    send_incs(&mut alice, 4..=5).await?;
    let got = resubscribe(&server, &mut alice, &since, 100).await?;
    assert_eq!(got, [1, 2, 3, 4, 5], "nothing unconfirmed is lost");

    // Some frames confirmed, the last ones not: only the unconfirmed ones come back.
    server.wait_connections(1).await?;
    let mut bob = server.login(BOB).await?;
    let since = subscribe_for_since(&mut bob).await?;
    send_incs(&mut alice, 11..=15).await?;
    assert_eq!(receive_live(&mut bob, 15, 12).await?, [11, 12, 13, 14, 15]);
    bob.close().await;
    server.wait_connections(1).await?;
    // The hub records the acknowledgement without waiting for the writer (a late one only
    // makes a replay longer): the exact replay below is what follows once it is recorded.
    wait_acknowledged(&server, &since, 12).await?;
    send_incs(&mut alice, 16..=17).await?;
    let got = resubscribe(&server, &mut alice, &since, 200).await?;
    assert_eq!(got, [13, 14, 15, 16, 17]);
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn resubscribing_after_a_replaced_connection_loses_nothing() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login(ALICE).await?;
    let mut bob = server.login(BOB).await?;
    let since = subscribe_for_since(&mut bob).await?;
    send_incs(&mut alice, 1..=3).await?;
    assert_eq!(receive_live(&mut bob, 3, 3).await?, [1, 2, 3]);
    // bob's next connection arrives while the first is still registered: the first is
    // replaced, and the hub cannot learn what it confirmed. Duplicates are allowed there,
    // losses are not.
    let replacement = server.login(BOB).await?;
    assert_eq!(bob.expect_close().await?, Some(4001));
    replacement.close().await;
    server.wait_connections(1).await?;
    send_incs(&mut alice, 4..=5).await?;
    let got = resubscribe(&server, &mut alice, &since, 100).await?;
    assert!(got.ends_with(&[4, 5]), "{got:?}");
    let mut distinct = got.clone();
    distinct.dedup();
    assert_eq!(distinct, got, "each action at most once: {got:?}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_second_resubscription_with_the_first_since_resumes_after_the_second_absence() -> Result<()> {
    // The real client keeps the `since` of its first subscription for every re-subscription:
    // each close must raise what that id stands for, not only the latest answer's id.
    let server = TestServer::default().await?;
    let mut alice = server.login(ALICE).await?;
    let mut bob = server.login(BOB).await?;
    let since = subscribe_for_since(&mut bob).await?;
    send_incs(&mut alice, 1..=3).await?;
    assert_eq!(receive_live(&mut bob, 3, 3).await?, [1, 2, 3]);
    bob.close().await;
    server.wait_connections(1).await?;
    send_incs(&mut alice, 4..=5).await?;

    let mut bob = server.login(BOB).await?;
    let action = json!({"type": "logux/subscribe", "channel": CHANNEL, "since": since});
    bob.send_action(action).await?;
    assert_eq!(receive_live(&mut bob, 5, 5).await?, [4, 5], "the first absence");
    send_incs(&mut alice, 6..=7).await?;
    assert_eq!(receive_live(&mut bob, 7, 7).await?, [6, 7]);
    bob.close().await;
    server.wait_connections(1).await?;
    send_incs(&mut alice, 8..=9).await?;

    let got = resubscribe(&server, &mut alice, &since, 100).await?;
    assert_eq!(got, [8, 9], "only the second absence, nothing received live before it");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn another_clients_since_does_not_move_what_an_acknowledgement_stands_for() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login(ALICE).await?;
    let mut bob = server.login(BOB).await?;
    let since = subscribe_for_since(&mut bob).await?;
    send_incs(&mut alice, 1..=2).await?;
    assert_eq!(receive_live(&mut bob, 2, 2).await?, [1, 2]);
    bob.close().await;
    server.wait_connections(1).await?;
    send_incs(&mut alice, 3..=4).await?;

    // Mallory re-subscribes with Bob's `since` (an id she guessed), receives and confirms
    // more, and goes away: Bob's acknowledgement must not rise with hers.
    let mut mallory = server.login("mallory:m1:t1").await?;
    let action = json!({"type": "logux/subscribe", "channel": CHANNEL, "since": since});
    mallory.send_action(action).await?;
    assert_eq!(receive_live(&mut mallory, 4, 4).await?, [3, 4]);
    send_incs(&mut alice, 5..=6).await?;
    assert_eq!(receive_live(&mut mallory, 6, 6).await?, [5, 6]);
    mallory.close().await;
    server.wait_connections(1).await?;

    let got = resubscribe(&server, &mut alice, &since, 100).await?;
    assert_eq!(got, [3, 4, 5, 6], "everything Bob missed");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_resubscription_while_catching_up_goes_live_only_after_its_own_catch_up() -> Result<()> {
    // A subscription replaced while its catch-up job runs: that job's report must not make the
    // replacement live (and answer it) while the replacement's own, longer catch-up is still
    // sending. Otherwise the answer's acknowledgement is raised on close past entries the
    // client never received, and a `since` with it skips them.
    let server = TestServer::start(&format!("{DEFAULT_LIMITS}\ncatch_up_chunk_actions = 1")).await?;
    let mut alice = server.login(ALICE).await?;
    const K: i64 = 1500;
    let mut ids = Vec::new();
    for n in 1..=K {
        ids.push(alice.send_action(json!({"type": "inc", "id": "s", "n": n})).await?);
    }
    alice.wait_processed(ids.last().expect("ids")).await?;
    let since_of = |id: &str| -> Value {
        let ms: i64 = id.split(' ').next().and_then(|m| m.parse().ok()).unwrap_or(0);
        json!({"id": id, "time": ms})
    };

    let mut bob = server.login(BOB).await?;
    // The first catch-up is short (the last 20), the second long (everything after inc 1).
    let first =
        json!({"type": "logux/subscribe", "channel": CHANNEL, "since": since_of(&ids[K as usize - 21])});
    bob.send_action(first).await?;
    let second = json!({"type": "logux/subscribe", "channel": CHANNEL, "since": since_of(&ids[0])});
    let second_id = bob.send_action(second).await?;
    let mut received = Vec::new();
    let answer = loop {
        let frame = bob.next_json().await?;
        acknowledge(&mut bob, &frame).await?;
        received.extend(incs(std::slice::from_ref(&frame)));
        if has_answer(&frame, "logux/processed", &second_id) {
            break frame;
        }
    };
    let (_, meta) = sync_pairs(&answer)
        .into_iter()
        .find(|(a, _)| a["type"] == "logux/processed" && a["id"] == second_id)
        .ok_or_else(|| anyhow!("no processed in {answer}"))?;
    let time = meta["time"].as_i64().ok_or_else(|| anyhow!("no time in {meta}"))? + bob.base_time;
    let since = json!({"id": bob.decode_id(&meta["id"])?, "time": time});
    // One live action, confirmed, then bob goes away.
    send_incs(&mut alice, [K + 1]).await?;
    received.extend(receive_live(&mut bob, K + 1, K + 1).await?);
    bob.close().await;
    server.wait_connections(1).await?;

    received.extend(resubscribe(&server, &mut alice, &since, 10_000).await?);
    received.sort_unstable();
    received.dedup();
    let missing: Vec<i64> = (2..=K + 1).filter(|n| received.binary_search(n).is_err()).collect();
    assert!(
        missing.is_empty(),
        "{} actions never reached bob: {:?}…",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    server.stop().await;
    Ok(())
}
