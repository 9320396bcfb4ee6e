//! Load: a client flooding `sync` messages, and a subscriber that stops reading.

use crate::support::{sync_actions, Event, TestServer, READ_TIMEOUT};
use anyhow::{bail, Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const FLOOD_SYNCS: usize = 5_000;
const FLOOD_ACTIONS_PER_SYNC: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_flood_is_answered_fully_and_others_are_still_served() -> Result<()> {
    let server = TestServer::default().await?;
    let flooder = server.login("flood:c1:t1").await?;
    let base = flooder.base_time;
    let node = flooder.node.clone();
    let (mut sink, mut stream) = flooder.ws.split();

    // The writer sends everything as fast as the socket takes it and never looks at answers.
    let writer = tokio::spawn(async move {
        for s in 0..FLOOD_SYNCS {
            let mut message = vec![json!("sync"), json!(s + 1)];
            for a in 0..FLOOD_ACTIONS_PER_SYNC {
                let shift = (s * FLOOD_ACTIONS_PER_SYNC + a + 1) as i64;
                message.push(json!({"type": "inc", "id": "flood"}));
                message.push(json!({"id": shift, "time": shift}));
            }
            sink.feed(Message::text(Value::from(message).to_string())).await?;
        }
        sink.flush().await?;
        anyhow::Ok(sink)
    });

    // Meanwhile another client's round trip works.
    let started = Instant::now();
    server.assert_healthy().await.context("a client during the flood")?;
    let during = started.elapsed();

    let mut synced = HashSet::new();
    let mut processed = HashSet::new();
    let mut processed_total = 0usize;
    let expected = FLOOD_SYNCS * FLOOD_ACTIONS_PER_SYNC;
    while synced.len() < FLOOD_SYNCS || processed_total < expected {
        let next = tokio::time::timeout(READ_TIMEOUT, stream.next())
            .await
            .with_context(|| format!("stalled at {} synced, {} processed", synced.len(), processed_total))?;
        let text = match next {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("flood connection ended: {other:?}"),
        };
        let m: Value = serde_json::from_str(text.as_str())?;
        match m[0].as_str() {
            Some("synced") => {
                let added = m[1].as_u64().unwrap_or(0);
                assert!(synced.insert(added), "synced {added} twice");
            }
            Some("sync") => {
                for a in sync_actions(&m) {
                    assert_eq!(a["type"], "logux/processed", "{a}");
                    processed_total += 1;
                    processed.insert(a["id"].as_str().unwrap_or_default().to_owned());
                }
            }
            _ => bail!("unexpected {m}"),
        }
    }
    assert_eq!(processed_total, expected, "every action answered exactly once");
    assert_eq!(processed.len(), expected, "distinct processed ids");
    for i in 1..=expected {
        assert!(processed.contains(&format!("{} {node} 0", base + i as i64)), "action {i} answered");
    }
    assert_eq!(synced, (1..=FLOOD_SYNCS as u64).collect::<HashSet<_>>());
    let sink = writer.await??;
    drop((sink, stream));
    eprintln!("round trip during the flood: {during:?}");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

const SLOW_ACTIONS: usize = 3_000;
const SLOW_PAYLOAD_BYTES: usize = 4 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_stops_reading_is_dropped_and_the_producer_is_not() -> Result<()> {
    let limits = "outbound_queue_bytes_max = 262144\nwrite_timeout_ms = 2000\nframe_bytes_max = 65536";
    let server = TestServer::start(limits).await?;
    let mut silent = server.login("bob:c2:t1").await?;
    silent.subscribe("counter/1").await?;
    // From here on bob does not read his socket.

    let mut producer = server.login("alice:c1:t1").await?;
    let payload = "p".repeat(SLOW_PAYLOAD_BYTES);
    let started = Instant::now();
    // Twenty actions in flight at most, so every live frame to bob (at most 20 × 4 KiB) fits
    // in his queue: he is dropped for not reading, not for one frame bigger than the queue.
    for batch in 0..SLOW_ACTIONS / 20 {
        let mut last = String::new();
        for i in 0..20 {
            let n = batch * 20 + i;
            last = producer.send_action(json!({"type": "inc", "id": "1", "n": n, "p": payload})).await?;
        }
        producer.wait_processed(&last).await.with_context(|| format!("producer stalled in batch {batch}"))?;
    }
    eprintln!("{SLOW_ACTIONS} actions of {SLOW_PAYLOAD_BYTES} bytes produced in {:?}", started.elapsed());
    server.assert_healthy().await?;

    // Bob now reads what the kernel buffered, then must find his socket closed.
    let mut delivered = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        if Instant::now() > deadline {
            bail!("the silent subscriber was never disconnected ({delivered} actions read)");
        }
        match silent.next_event().await? {
            Event::Text(t) => {
                let m: Value = serde_json::from_str(&t)?;
                delivered += sync_actions(&m).len();
            }
            other => break other,
        }
    };
    eprintln!("silent subscriber read {delivered} actions, then {end:?}");
    assert!(delivered < SLOW_ACTIONS, "the silent subscriber was cut off");
    if let Event::Close(code) = end {
        assert_eq!(code, Some(4002), "a slow consumer is closed with 4002");
    }
    // The producer's connection is still fine.
    let id = producer.send_action(json!({"type": "inc", "id": "1", "n": -1})).await?;
    producer.wait_processed(&id).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_reads_keeps_up_with_a_pipelined_producer() -> Result<()> {
    // Twice the burst (about 1.1 MB): a subscriber that reads may fall behind by a whole
    // group commit while its task waits for a core, and must not be taken for a slow one.
    // `subscriber_that_stops_reading_is_dropped_and_the_producer_is_not` checks the limit.
    let limits = "outbound_queue_bytes_max = 2097152";
    let server = TestServer::start(limits).await?;
    let mut reader = server.login("bob:c2:t1").await?;
    reader.subscribe("counter/1").await?;
    let producer = server.login("alice:c1:t1").await?;
    let payload = "p".repeat(1024);
    const ACTIONS: usize = 1_000;
    // Pipelined, so that many actions share one group commit and one live frame.
    let (mut sink, mut stream) = producer.ws.split();
    let base = producer.base_time;
    let writer = tokio::spawn(async move {
        for n in 0..ACTIONS {
            let shift = n as i64 + 1;
            let action = json!({"type": "inc", "id": "1", "n": n, "p": payload});
            let message = json!(["sync", n + 1, action, {"id": shift, "time": shift}]);
            sink.feed(Message::text(message.to_string())).await?;
        }
        sink.flush().await?;
        anyhow::Ok(sink)
    });
    let acks = tokio::spawn(async move {
        let last = format!("{} alice:c1:t1 0", base + ACTIONS as i64);
        loop {
            let next = tokio::time::timeout(READ_TIMEOUT, stream.next()).await?;
            let Some(Ok(Message::Text(t))) = next else { bail!("producer socket ended: {next:?}") };
            let m: Value = serde_json::from_str(t.as_str())?;
            if crate::support::has_answer(&m, "logux/processed", &last) {
                return anyhow::Ok(());
            }
        }
    });
    let mut delivered = 0usize;
    while delivered < ACTIONS {
        match reader.next_event().await? {
            Event::Text(t) => delivered += sync_actions(&serde_json::from_str(&t)?).len(),
            other => bail!("a reading subscriber was dropped after {delivered} actions: {other:?}"),
        }
    }
    acks.await??;
    drop(writer.await??);
    server.stop().await;
    Ok(())
}

/// Sends `syncs` pipelined `sync`s of 10 actions from `node` without waiting; with `drop_after`,
/// the socket is dropped after that many, unanswered. Otherwise reads until every `sync` is
/// `synced` and every action processed once.
async fn stream_backlog(
    server: &TestServer,
    node: &str,
    syncs: usize,
    drop_after: Option<usize>,
) -> Result<()> {
    let client = server.login(node).await?;
    let (mut sink, mut stream) = client.ws.split();
    let sent = drop_after.unwrap_or(syncs);
    for s in 0..sent {
        let mut message = vec![json!("sync"), json!(s + 1)];
        for a in 0..10 {
            let shift = (s * 10 + a + 1) as i64;
            message.push(json!({"type": "inc", "id": node}));
            message.push(json!({"id": shift, "time": shift}));
        }
        sink.feed(Message::text(Value::from(message).to_string())).await?;
    }
    sink.flush().await?;
    if drop_after.is_some() {
        return Ok(());
    }
    let (mut synced, mut processed) = (0, HashSet::new());
    while synced < syncs || processed.len() < syncs * 10 {
        let next = tokio::time::timeout(READ_TIMEOUT, stream.next())
            .await
            .with_context(|| format!("{node} stalled at {synced} synced, {} processed", processed.len()))?;
        let m: Value = match next {
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str())?,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("{node} ended: {other:?}"),
        };
        match m[0].as_str() {
            Some("synced") => synced += 1,
            Some("sync") => {
                for a in sync_actions(&m) {
                    assert_eq!(a["type"], "logux/processed", "{a}");
                    assert!(processed.insert(a["id"].to_string()), "{a} answered twice");
                }
            }
            _ => bail!("unexpected {m}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogs_sharing_one_reader_turn_are_all_answered_and_online_clients_served() -> Result<()> {
    // One turn for every connection with syncs in flight: the backlogs take turns reading.
    let server = TestServer::start("backlog_readers_max = 1\ninflight_syncs_max = 4").await?;
    let mut streams = Vec::new();
    for n in 0..3 {
        let server = &server;
        streams.push(async move { stream_backlog(server, &format!("backlog{n}:c:t"), 400, None).await });
    }
    // One that vanishes in the middle of its backlog, holding or waiting for a turn.
    let vanishing = stream_backlog(&server, "gone:c:t", 400, Some(200));
    let (results, gone, healthy) =
        tokio::join!(futures_util::future::join_all(streams), vanishing, server.assert_healthy());
    gone?;
    healthy.context("an online client during the backlogs")?;
    for result in results {
        result?;
    }
    // A new backlog goes through after them.
    stream_backlog(&server, "after:c:t", 100, None).await?;
    server.stop().await;
    Ok(())
}
