//! `POST /v1/pull`: what a client missed on its channels, paged from a cursor, and a
//! long-poll that answers as soon as something arrives; over real sockets, with WebSocket
//! clients on the other side.

use crate::http_push::{meta, now_ms, request};
use crate::support::{token, token_expired, TestServer, DEFAULT_LIMITS};
use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `POST /v1/pull` as `node` with `user`'s token.
async fn pull(server: &TestServer, node: &str, user: &str, body: Value) -> Result<(u16, Value)> {
    let mut body = body;
    body["node"] = json!(node);
    request(server.addr, "/v1/pull", Some(&format!("Bearer {}", token(user))), &body.to_string()).await
}

/// The log position of a cursor a pull's answer gave (`<position>.<log tag>`).
fn position(cursor: &Value) -> Result<u64> {
    let text = cursor.as_str().context("a cursor")?;
    Ok(text.split('.').next().unwrap_or_default().parse()?)
}

/// The `n` of every `inc` in a pull's answer.
fn incs(answer: &Value) -> Vec<i64> {
    answer["actions"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|a| a["action"]["type"] == "inc")
                .filter_map(|a| a["action"]["n"].as_i64())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_client_away_pages_through_a_hundred_thousand_missed_actions() -> Result<()> {
    let limits = format!("{DEFAULT_LIMITS}\npull_actions_max = 1000\n")
        .replace("frame_bytes_max = 65536", "frame_bytes_max = 16777216")
        .replace("actions_per_sync_max = 100", "actions_per_sync_max = 100000");
    let server = TestServer::start(&limits).await?;
    // Bob starts following the channel, then goes away.
    let (status, first) = pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/far"]})).await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["actions"], json!([]), "no history without a cursor");
    let cursor = first["cursor"].clone();
    // Alice, over a WebSocket, sends 100,000 actions in one sync while bob is away.
    let mut alice = server.login("alice:a1:t1").await?;
    let mut message = String::from("[\"sync\",1");
    for i in 0..100_000 {
        message.push_str(&format!(
            ",{{\"type\":\"inc\",\"id\":\"far\",\"n\":{i}}},{{\"id\":[1,{i}],\"time\":1}}"
        ));
    }
    message.push(']');
    alice.send(message).await?;
    alice.until_within(Duration::from_secs(90), |m| *m == json!(["synced", 1])).await?;

    let mut cursor = cursor;
    let mut got = Vec::new();
    let mut pages = 0;
    let mut largest = 0;
    loop {
        let body = json!({"channels": ["counter/far"], "cursor": cursor});
        let (status, page) = pull(&server, "bob:b1:t1", "bob", body).await?;
        assert_eq!(status, 200, "{page}");
        let n = page["actions"].as_array().context("actions")?.len();
        assert!(n <= 1000, "a page of {n} actions");
        largest = largest.max(page.to_string().len());
        got.extend(incs(&page));
        pages += 1;
        cursor = page["cursor"].clone();
        if page["more"] == false {
            break;
        }
        assert!(pages <= 200, "no end after {pages} pages");
    }
    assert_eq!(got.len(), 100_000, "{pages} pages");
    assert!(got.iter().enumerate().all(|(i, n)| *n == i as i64), "in order, once each");
    assert!(pages >= 100, "{pages} pages");
    assert!(largest < 200_000, "the largest page is {largest} bytes");
    // Caught up: the same cursor gives nothing more.
    let (_, last) =
        pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/far"], "cursor": cursor})).await?;
    assert_eq!((last["actions"].clone(), last["more"].clone()), (json!([]), json!(false)));
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_long_poll_answers_when_an_action_arrives_and_an_idle_one_when_it_ends() -> Result<()> {
    let server = TestServer::default().await?;
    let (_, first) = pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/live"]})).await?;
    let cursor = first["cursor"].clone();

    // Nothing arrives: the poll ends after its wait, with the same cursor.
    let started = Instant::now();
    let body = json!({"channels": ["counter/live"], "cursor": cursor, "wait": 0.5});
    let (status, idle) = pull(&server, "bob:b1:t1", "bob", body).await?;
    assert_eq!(status, 200, "{idle}");
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    assert_eq!((idle["actions"].clone(), idle["cursor"].clone()), (json!([]), cursor.clone()));

    // An action from a WebSocket client ends a 20 s poll at once.
    let poller = {
        let body = json!({"channels": ["counter/live"], "cursor": cursor, "wait": 20});
        let addr = server.addr;
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = request(addr, "/v1/pull", Some(&format!("Bearer {}", token("bob"))), &{
                let mut b = body;
                b["node"] = json!("bob:b1:t1");
                b.to_string()
            })
            .await;
            (started.elapsed(), answer)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut alice = server.login("alice:a1:t1").await?;
    let id = alice.send_action(json!({"type": "inc", "id": "live", "n": 7})).await?;
    alice.wait_processed(&id).await?;
    let (took, answer) = poller.await?;
    let (status, answer) = answer?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(incs(&answer), [7]);
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    assert_eq!(answer["actions"][0]["meta"]["id"], json!(id));
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn pushes_and_pulls_see_websocket_clients_and_an_author_is_not_sent_its_own() -> Result<()> {
    let server = TestServer::default().await?;
    let (_, start) = pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/mix"]})).await?;
    let (_, mine) = pull(&server, "carol:c1:t1", "carol", json!({"channels": ["counter/mix"]})).await?;
    let mut ws = server.login("dave:d1:t1").await?;
    let id = ws.send_action(json!({"type": "inc", "id": "mix", "n": 1})).await?;
    ws.wait_processed(&id).await?;
    let t = now_ms();
    let pushed = json!({"node": "carol:c1:t1", "actions": [{"action": {"type": "inc", "id": "mix", "n": 2}, "meta": meta("carol:c1:t1", t)}]});
    let (status, _) =
        request(server.addr, "/v1/push", Some(&format!("Bearer {}", token("carol"))), &pushed.to_string())
            .await?;
    assert_eq!(status, 200);
    let (_, got) =
        pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/mix"], "cursor": start["cursor"]}))
            .await?;
    assert_eq!(incs(&got), [1, 2], "the WebSocket's and the HTTP push's");
    let (_, own) =
        pull(&server, "carol:c1:t1", "carol", json!({"channels": ["counter/mix"], "cursor": mine["cursor"]}))
            .await?;
    assert_eq!(incs(&own), [1], "carol's own push does not come back to her");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_object_comes_whole_first_then_as_one_delta_of_what_changed() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:a1:t1").await?;
    for elem in 0..50 {
        let id = alice.send_action(json!({"type": "crdt/set/add", "key": "tags", "elem": elem})).await?;
        alice.wait_processed(&id).await?;
    }
    let id = alice.send_action(json!({"type": "crdt/counter/inc", "key": "views"})).await?;
    alice.wait_processed(&id).await?;
    let (status, both) =
        pull(&server, "carol:c1:t1", "carol", json!({"channels": ["crdt/tags", "crdt/views"]})).await?;
    assert_eq!(status, 200, "{both}");
    let ids: Vec<Value> =
        both["actions"].as_array().context("actions")?.iter().map(|a| a["meta"]["id"].clone()).collect();
    assert_eq!(ids.len(), 2, "{both}");
    assert_ne!(ids[0], ids[1], "each object's delta is an action of its own, with its own id");
    let (status, first) = pull(&server, "bob:b1:t1", "bob", json!({"channels": ["crdt/tags"]})).await?;
    assert_eq!(status, 200, "{first}");
    let deltas = first["actions"].as_array().context("actions")?;
    assert_eq!(deltas.len(), 1, "{first}");
    assert_eq!(deltas[0]["action"]["delta"]["elems"].as_array().map(Vec::len), Some(50));
    for action in [
        json!({"type": "crdt/set/add", "key": "tags", "elem": "new"}),
        json!({"type": "crdt/set/remove", "key": "tags", "elem": 3}),
    ] {
        let id = alice.send_action(action).await?;
        alice.wait_processed(&id).await?;
    }
    let (_, next) =
        pull(&server, "bob:b1:t1", "bob", json!({"channels": ["crdt/tags"], "cursor": first["cursor"]}))
            .await?;
    let deltas = next["actions"].as_array().context("actions")?;
    assert_eq!(deltas.len(), 1, "one delta for the two operations: {next}");
    assert_eq!(deltas[0]["action"]["delta"]["elems"], json!([["new", "alice:a1:t1", 51]]), "{next}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_pulls_get_a_clear_4xx_and_another_users_data_stays_closed() -> Result<()> {
    let server = TestServer::default().await?;
    let cases = [
        (json!({"channels": ["users/bob"]}), 403, "denied"),
        (json!({"channels": ["nope/1"]}), 400, "wrongChannel"),
        (json!({"channels": ["counter/1"], "cursor": "abc"}), 400, "bad-cursor"),
        (json!({"channels": ["counter/1"], "cursor": "-1"}), 400, "bad-cursor"),
        (json!({"channels": ["counter/1"], "wait": -1}), 400, "wrong-format"),
        (json!({"channels": "counter/1"}), 400, "wrong-format"),
    ];
    for (body, status, error) in cases {
        let (got, answer) = pull(&server, "alice:a1:t1", "alice", body.clone()).await?;
        assert_eq!((got, answer["error"].clone()), (status, json!(error)), "{body}: {answer}");
    }
    let body = json!({"node": "alice:a1:t1", "channels": ["users/alice"]}).to_string();
    let (got, answer) =
        request(server.addr, "/v1/pull", Some(&format!("Bearer {}", token_expired("alice"))), &body).await?;
    assert_eq!((got, answer["error"].clone()), (401, json!("wrong-credentials")), "{answer}");
    // Her own user channel is hers.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (got, answer) = pull(&server, "alice:a1:t1", "alice", json!({"channels": ["users/alice"]})).await?;
    assert_eq!(got, 200, "{answer}");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

/// Several channels page together: a page is cut at the limit across them, and the next pull
/// goes on from the cut, so interleaved actions of two channels all arrive once, in order.
#[tokio::test]
async fn two_channels_page_together_without_losing_the_cut() -> Result<()> {
    let limits = format!("{DEFAULT_LIMITS}\npull_actions_max = 100\n");
    let server = TestServer::start(&limits).await?;
    let channels = json!(["counter/x", "counter/y"]);
    let (_, first) = pull(&server, "bob:b1:t1", "bob", json!({"channels": channels})).await?;
    let mut alice = server.login("alice:a1:t1").await?;
    let mut last = None;
    for n in 0..300 {
        let id = if n % 2 == 0 { "x" } else { "y" };
        last = Some(alice.send_action(json!({"type": "inc", "id": id, "n": n})).await?);
    }
    alice.wait_processed(&last.context("sent")?).await?;
    let mut cursor = first["cursor"].clone();
    let mut got = Vec::new();
    for _ in 0..10 {
        let (status, page) =
            pull(&server, "bob:b1:t1", "bob", json!({"channels": channels, "cursor": cursor})).await?;
        assert_eq!(status, 200, "{page}");
        assert!(page["actions"].as_array().is_some_and(|a| a.len() <= 100), "{page}");
        got.extend(incs(&page));
        cursor = page["cursor"].clone();
        if page["more"] == false {
            break;
        }
    }
    assert_eq!(got, (0..300).collect::<Vec<i64>>());
    server.stop().await;
    Ok(())
}

/// A waiting poll lets commits to other channels pass (moving its cursor past them) and still
/// answers with the first action on its own channel, nothing lost or repeated around it.
#[tokio::test]
async fn a_long_poll_lets_other_channels_pass_and_answers_for_its_own() -> Result<()> {
    let server = TestServer::default().await?;
    let (_, first) = pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/mine"]})).await?;
    let body =
        json!({"node": "bob:b1:t1", "channels": ["counter/mine"], "cursor": first["cursor"], "wait": 20});
    let addr = server.addr;
    let poller = tokio::spawn(async move {
        request(addr, "/v1/pull", Some(&format!("Bearer {}", token("bob"))), &body.to_string()).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut alice = server.login("alice:a1:t1").await?;
    for n in 0..50 {
        let id = alice.send_action(json!({"type": "inc", "id": "other", "n": n})).await?;
        alice.wait_processed(&id).await?;
    }
    let id = alice.send_action(json!({"type": "inc", "id": "mine", "n": 50})).await?;
    alice.wait_processed(&id).await?;
    for n in 51..55 {
        let id = alice.send_action(json!({"type": "inc", "id": "mine", "n": n})).await?;
        alice.wait_processed(&id).await?;
    }
    let (status, answer) = poller.await??;
    assert_eq!(status, 200, "{answer}");
    let got = incs(&answer);
    assert_eq!(got.first(), Some(&50), "{answer}");
    // Then the rest, once each, from the returned cursor.
    let (_, rest) =
        pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/mine"], "cursor": answer["cursor"]}))
            .await?;
    let mut all = got;
    all.extend(incs(&rest));
    assert_eq!(all, (50..55).collect::<Vec<i64>>());
    server.stop().await;
    Ok(())
}

/// Sends `inc` actions with these `n` on `counter/<id>` from a WebSocket client and waits
/// until each is processed.
async fn send_incs(client: &mut crate::support::Client, id: &str, ns: std::ops::Range<i64>) -> Result<()> {
    for n in ns {
        let sent = client.send_action(json!({"type": "inc", "id": id, "n": n})).await?;
        client.wait_processed(&sent).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_cursor_from_another_server_resumes_from_what_the_device_confirmed_here() -> Result<()> {
    // Two servers, each with positions of its own (an edge and the cloud, say).
    let here = TestServer::default().await?;
    let there = TestServer::default().await?;
    let channels = json!(["counter/m"]);
    // Bob follows the channel here first.
    let (status, first) = pull(&here, "bob:b1:t1", "bob", json!({"channels": channels})).await?;
    assert_eq!(status, 200, "{first}");
    // Three actions on his channel, then a longer log of another. He pulls once more, but the
    // answer is lost on the way (he goes elsewhere before it arrives).
    let mut alice = here.login("alice:a1:t1").await?;
    send_incs(&mut alice, "m", 0..3).await?;
    send_incs(&mut alice, "z", 0..60).await?;
    let body = json!({"channels": channels, "cursor": first["cursor"]});
    let (_, lost) = pull(&here, "bob:b1:t1", "bob", body).await?;
    assert_eq!(incs(&lost), [0, 1, 2], "{lost}");
    // There, he pulls a log of 40 actions: his cursor is past the three actions here, and
    // below what here gave him in the lost answer.
    let mut carol = there.login("carol:c1:t1").await?;
    send_incs(&mut carol, "m", 100..140).await?;
    let (_, away) = pull(&there, "bob:b1:t1", "bob", json!({"channels": channels, "cursor": "0"})).await?;
    assert_eq!(incs(&away).len(), 40, "{away}");
    let elsewhere = position(&away["cursor"])?;
    assert!(elsewhere > 3 && elsewhere < position(&lost["cursor"])?, "{away} {lost}");
    // Back here with that cursor: he gets what he never confirmed here.
    let body = json!({"channels": channels, "cursor": away["cursor"]});
    let (status, back) = pull(&here, "bob:b1:t1", "bob", body).await?;
    assert_eq!((status, incs(&back)), (200, vec![0, 1, 2]), "{back}");
    // So does a channel's own cursor from there.
    let body = json!({"channels": channels, "since": {"counter/m": away["cursor"]}});
    let (_, channel) = pull(&here, "bob:b1:t1", "bob", body).await?;
    assert_eq!(incs(&channel), [0, 1, 2], "{channel}");
    // A cursor this server gave is taken as it is: nothing twice, also after a restart.
    let body = json!({"channels": channels, "cursor": back["cursor"]});
    let (_, again) = pull(&here, "bob:b1:t1", "bob", body.clone()).await?;
    assert_eq!(incs(&again), Vec::<i64>::new(), "{again}");
    let here = here.restart(rhizome_server::wakeup::WakeupOptions::default()).await?;
    let (_, restarted) = pull(&here, "bob:b1:t1", "bob", body).await?;
    assert_eq!(incs(&restarted), Vec::<i64>::new(), "{restarted}");
    // What he brought back here is recorded as confirmed: a cursor from there is now trusted up
    // to it (only what was written after comes).
    send_incs(&mut carol, "m", 140..141).await?;
    let mut alice = here.login("alice:a1:t1").await?;
    send_incs(&mut alice, "m", 3..4).await?;
    let (_, away) =
        pull(&there, "bob:b1:t1", "bob", json!({"channels": channels, "cursor": away["cursor"]})).await?;
    let body = json!({"channels": channels, "cursor": away["cursor"]});
    let (_, back) = pull(&here, "bob:b1:t1", "bob", body).await?;
    assert_eq!(incs(&back), [3], "{back}");
    here.stop().await;
    there.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_since_with_a_pull_s_subscription_id_resumes_where_that_client_stopped() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:a1:t1").await?;
    let channels = json!(["counter/r"]);
    // Bob's first page follows the channel and asks for its subscription id.
    let body = json!({"channels": channels, "ids": {"counter/r": null}});
    let (status, first) = pull(&server, "bob:b1:t1", "bob", body).await?;
    assert_eq!(status, 200, "{first}");
    let id = first["ids"]["counter/r"].as_str().context("a subscription id")?.to_owned();
    assert_eq!(id.split(' ').count(), 3, "a Logux id: {id}");
    send_incs(&mut alice, "r", 0..3).await?;
    let body = json!({"channels": channels, "cursor": first["cursor"], "ids": {"counter/r": id}});
    let (_, live) = pull(&server, "bob:b1:t1", "bob", body).await?;
    assert_eq!(incs(&live), [0, 1, 2], "{live}");
    assert!(live.get("ids").is_none() && live.get("since").is_none(), "{live}");
    // This pull confirms the page above: the id now stands for its cursor.
    let body = json!({"channels": channels, "cursor": live["cursor"], "ids": {"counter/r": id}});
    let (_, quiet) = pull(&server, "bob:b1:t1", "bob", body).await?;
    assert_eq!(quiet["actions"], json!([]), "{quiet}");
    // Written after that acknowledgement, in the same lane of the writer: once processed,
    // the acknowledgement is committed too.
    send_incs(&mut alice, "r", 3..8).await?;
    // A new page of bob's, with nothing but the id its client kept.
    let since = json!({"counter/r": {"id": id, "time": now_ms()}});
    let body = json!({"channels": channels, "since": since, "ids": {"counter/r": null}});
    let (status, back) = pull(&server, "bob:b1:t2", "bob", body).await?;
    assert_eq!(status, 200, "{back}");
    assert_eq!(incs(&back), [3, 4, 5, 6, 7], "what bob missed, none he had: {back}");
    assert_eq!(back["more"], json!(false), "{back}");
    assert!(back.get("since").is_none(), "caught up with the cursor: {back}");
    let renewed = back["ids"]["counter/r"].as_str().context("a new subscription id")?;
    assert_ne!(renewed, id);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_since_with_an_unknown_id_loses_nothing() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:a1:t1").await?;
    send_incs(&mut alice, "u", 0..3).await?;
    let unknown = "1764970000000 server:gone 0";
    let cases = [
        // From a safe margin before `since.time`, as over a WebSocket.
        (json!({"id": unknown, "time": now_ms()}), vec![0, 1, 2]),
        // Without a time, from the start of the log.
        (json!({"id": unknown}), vec![0, 1, 2]),
        // The time counts: an hour ahead, the margin still starts after these.
        (json!({"id": unknown, "time": now_ms() + 3_600_000}), vec![]),
    ];
    for (since, expected) in cases {
        let body = json!({"channels": ["counter/u"], "since": {"counter/u": since}});
        let (status, answer) = pull(&server, "bob:b1:t1", "bob", body).await?;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(incs(&answer), expected, "{since}: {answer}");
    }
    // A cursor this server did not give (another server's, say) resumes from what bob
    // confirmed here: nothing yet, so from the start.
    let ahead = json!({"channels": ["counter/u"], "since": {"counter/u": "999999"}});
    let (status, answer) = pull(&server, "bob:b1:t1", "bob", ahead).await?;
    assert_eq!((status, incs(&answer)), (200, vec![0, 1, 2]), "{answer}");
    let bad = json!({"channels": ["counter/u"], "since": {"counter/u": "soon"}});
    let (status, answer) = pull(&server, "bob:b1:t1", "bob", bad).await?;
    assert_eq!((status, answer["error"].clone()), (400, json!("bad-cursor")), "{answer}");
    let stray = json!({"channels": ["counter/u"], "since": {"counter/v": "0"}});
    let (status, answer) = pull(&server, "bob:b1:t1", "bob", stray).await?;
    assert_eq!((status, answer["error"].clone()), (400, json!("wrong-format")), "{answer}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_since_on_an_object_brings_the_join_of_the_deltas_after_it() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:a1:t1").await?;
    let mut carol = server.login("carol:c1:t1").await?;
    for elem in ["a", "b"] {
        let id = alice.send_action(json!({"type": "crdt/set/add", "key": "s", "elem": elem})).await?;
        alice.wait_processed(&id).await?;
    }
    let body = json!({"channels": ["crdt/s"], "ids": {"crdt/s": null}});
    let (_, first) = pull(&server, "bob:b1:t1", "bob", body).await?;
    let whole = &first["actions"][0]["action"]["delta"]["elems"];
    assert_eq!(whole.as_array().map(Vec::len), Some(2), "the whole object first: {first}");
    let id = first["ids"]["crdt/s"].as_str().context("a subscription id")?.to_owned();
    let id_c = carol.send_action(json!({"type": "crdt/set/add", "key": "s", "elem": "c"})).await?;
    carol.wait_processed(&id_c).await?;
    let since = json!({"crdt/s": {"id": id, "time": now_ms()}});
    let (status, back) =
        pull(&server, "bob:b1:t2", "bob", json!({"channels": ["crdt/s"], "since": since})).await?;
    assert_eq!(status, 200, "{back}");
    let deltas = back["actions"].as_array().context("actions")?;
    assert_eq!(deltas.len(), 1, "{back}");
    assert_eq!(
        deltas[0]["action"]["delta"]["elems"],
        json!([["c", "carol:c1:t1", 1]]),
        "only what came after: {back}"
    );
    // An id the log does not know: the whole object.
    let since = json!({"crdt/s": {"id": "1764970000000 server:gone 0", "time": now_ms()}});
    let (_, whole) =
        pull(&server, "bob:b1:t3", "bob", json!({"channels": ["crdt/s"], "since": since})).await?;
    let elems = &whole["actions"][0]["action"]["delta"]["elems"];
    assert_eq!(elems.as_array().map(Vec::len), Some(3), "{whole}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_re_subscription_behind_the_cursor_pages_on_its_own_without_repeating_the_others() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:a1:t1").await?;
    // Bob follows counter/a; counter/b gets 5 actions he has not seen.
    let (_, first) = pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/a"]})).await?;
    send_incs(&mut alice, "b", 0..5).await?;
    send_incs(&mut alice, "a", 100..102).await?;
    let (_, live) =
        pull(&server, "bob:b1:t1", "bob", json!({"channels": ["counter/a"], "cursor": first["cursor"]}))
            .await?;
    assert_eq!(incs(&live), [100, 101], "{live}");
    send_incs(&mut alice, "a", 102..103).await?;
    // Now he subscribes to counter/b again, from before all of them, with pages of 2.
    let mut since = json!({"counter/b": {"id": "1764970000000 server:gone 0"}});
    let mut cursor = live["cursor"].clone();
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let body =
            json!({"channels": ["counter/a", "counter/b"], "cursor": cursor, "since": since, "limit": 2});
        let (status, page) = pull(&server, "bob:b1:t1", "bob", body).await?;
        assert_eq!(status, 200, "{page}");
        let (next, before) = (position(&page["cursor"])?, position(&cursor)?);
        assert!(next >= before, "the cursor never goes back: {before} then {page}");
        got.extend(incs(&page));
        cursor = page["cursor"].clone();
        since = page.get("since").cloned().unwrap_or(json!({}));
        pages += 1;
        if page["more"] == false {
            break;
        }
        assert!(pages < 10, "no end after {pages} pages");
    }
    assert!(since.as_object().is_some_and(|s| s.is_empty()), "caught up: {since}");
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3, 4, 102], "each once, none of counter/a's again");
    assert!(pages >= 3, "{pages} pages of at most 2");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn another_client_cannot_raise_a_pull_subscription_id_nor_make_up_one() -> Result<()> {
    let server = TestServer::default().await?;
    let mut alice = server.login("alice:a1:t1").await?;
    let channels = json!(["counter/m"]);
    let body = json!({"channels": channels, "ids": {"counter/m": null}});
    let (_, first) = pull(&server, "bob:b1:t1", "bob", body).await?;
    let id = first["ids"]["counter/m"].as_str().context("a subscription id")?.to_owned();
    send_incs(&mut alice, "m", 0..3).await?;
    // Mallory learned Bob's id: her pulls, past everything, send it back, and one made up.
    let made_up = format!("{} server:pull:{} 0", now_ms(), "f".repeat(32));
    let ids = json!({"counter/m": id});
    let (_, hers) =
        pull(&server, "mallory:m1:t1", "mallory", json!({"channels": channels, "cursor": "0"})).await?;
    for _ in 0..2 {
        let body = json!({"channels": channels, "cursor": hers["cursor"], "ids": ids});
        pull(&server, "mallory:m1:t1", "mallory", body).await?;
    }
    let body = json!({"channels": ["counter/n"], "cursor": hers["cursor"], "ids": {"counter/n": made_up}});
    pull(&server, "mallory:m1:t1", "mallory", body).await?;
    send_incs(&mut alice, "m", 3..4).await?;
    let since = json!({"counter/m": {"id": id, "time": now_ms()}});
    let (_, back) = pull(&server, "bob:b1:t2", "bob", json!({"channels": channels, "since": since})).await?;
    assert_eq!(incs(&back), [0, 1, 2, 3], "everything after where Bob's id was given: {back}");
    let db = rusqlite::Connection::open(server.db_path())?;
    let rows: i64 =
        db.query_row("SELECT count(*) FROM subscription_acks WHERE id = ?1", [&made_up], |r| r.get(0))?;
    assert_eq!(rows, 0, "a made-up id created a row");
    server.stop().await;
    Ok(())
}
