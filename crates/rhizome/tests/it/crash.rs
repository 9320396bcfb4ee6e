//! SIGKILL during heavy ingest: every action acknowledged with `synced` survives, exactly
//! once, and re-sending everything after the restart processes nothing twice.

use crate::support::ServerProcess;
use futures_util::{SinkExt, StreamExt};
use rhizome_protocol::message::encode_connect;
use rhizome_protocol::{parse, ActionId, IdGenerator, Message, NodeId};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message as Ws;

const CONFIG: &str = r#"
[auth]
mode = "open"
[[channel]]
pattern = "counter/:id"
write = "everyone"
[[action]]
type = "inc"
channel = "counter/{id}"
[[channel]]
pattern = "crdt/*"
subscribe = "everyone"
write = "everyone"
[[action]]
type = "crdt/*"
channel = "crdt/{key}"
"#;

/// What the ingesting client sends.
#[derive(Clone, Copy)]
enum Kind {
    /// `{"type":"inc"}` actions.
    Plain,
    /// `crdt/counter/inc` by 1 on the object `crash`.
    Crdt,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

#[derive(Default)]
struct Ledger {
    /// Every action sent: id and creation time.
    sent: Vec<(ActionId, i64)>,
    /// `added` of each sync → the ids in it.
    syncs: HashMap<u64, Vec<String>>,
    /// Ids whose sync was answered with `synced`.
    acked: HashSet<String>,
    /// Ids answered with `logux/processed`.
    processed: HashSet<String>,
}

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, node: &str) -> (Stream, i64) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    ws.send(Ws::text(encode_connect(node, 0, Some("t"), 1))).await.expect("send connect");
    loop {
        let msg = ws.next().await.expect("open").expect("frame");
        if let Ws::Text(t) = msg {
            if let Ok(Message::Connected { time, .. }) = parse(t.as_str()) {
                return (ws, time[1]);
            }
        }
    }
}

fn encode(kind: Kind, batch: &[(ActionId, i64)], base: i64, added: u64) -> String {
    let mut frame = format!("[\"sync\",{added}");
    for (id, time) in batch {
        let shift = id.ms - base;
        let wire = if id.seq == 0 { shift.to_string() } else { format!("[{shift},{}]", id.seq) };
        let action = match kind {
            Kind::Plain => format!("{{\"type\":\"inc\",\"id\":\"c\",\"n\":{}}}", id.seq),
            Kind::Crdt => "{\"type\":\"crdt/counter/inc\",\"key\":\"crash\",\"by\":1}".to_owned(),
        };
        frame.push_str(&format!(",{action},{{\"id\":{wire},\"time\":{}}}", time - base));
    }
    frame.push(']');
    frame
}

/// Reads answers into the ledger until the socket dies.
async fn read_answers(mut rx: futures_util::stream::SplitStream<Stream>, ledger: Arc<Mutex<Ledger>>) {
    while let Some(Ok(msg)) = rx.next().await {
        let Ws::Text(text) = msg else { continue };
        let mut l = ledger.lock().expect("ledger");
        match parse(text.as_str()) {
            Ok(Message::Synced(added)) => {
                if let Some(ids) = l.syncs.get(&added).cloned() {
                    l.acked.extend(ids);
                }
            }
            Ok(Message::Sync { entries, .. }) => {
                for e in entries {
                    if e.action.kind() == "logux/processed" {
                        if let Some(id) = e.action.str_field("id") {
                            l.processed.insert(id.to_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Sends batches of 200 actions as fast as the server takes them until the socket dies.
async fn ingest(kind: Kind, url: String, node: String, ledger: Arc<Mutex<Ledger>>) {
    let (ws, base) = connect(&url, &node).await;
    let (mut tx, rx) = ws.split();
    let reader = tokio::spawn(read_answers(rx, ledger.clone()));
    let mut ids = IdGenerator::new(NodeId::from(node.as_str()));
    let mut added = 0;
    loop {
        let batch: Vec<(ActionId, i64)> = (0..200).map(|_| (ids.next(now_ms()), now_ms())).collect();
        added += 1;
        let frame = encode(kind, &batch, base, added);
        {
            let mut l = ledger.lock().expect("ledger");
            l.syncs.insert(added, batch.iter().map(|(id, _)| id.to_string()).collect());
            l.sent.extend(batch);
        }
        if tx.send(Ws::text(frame)).await.is_err() {
            break;
        }
    }
    let _ = reader.await;
}

fn count_ids(db: &std::path::Path, ids: &[String]) -> HashMap<String, i64> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open db");
    // Read whole once: the log has no index on id texts.
    let mut logged: HashMap<String, i64> = ids.iter().map(|id| (id.clone(), 0)).collect();
    let mut stmt = conn.prepare("SELECT id FROM log").expect("prepare");
    let mut rows = stmt.query([]).expect("query");
    while let Some(row) = rows.next().expect("row") {
        if let Some(count) = logged.get_mut(&row.get::<_, String>(0).expect("id")) {
            *count += 1;
        }
    }
    logged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_acknowledged_action_and_processes_none_twice() {
    sigkill_during_ingest(Kind::Plain).await;
}

/// The same with CRDT operations: after the re-sends, the counter holds exactly one increment
/// per distinct action, whatever was cached or snapshotted when the process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_crdt_ingest_applies_every_operation_exactly_once() {
    sigkill_during_ingest(Kind::Crdt).await;
}

/// Three rounds of SIGKILL during ingest, a restart, and a re-send of everything.
async fn sigkill_during_ingest(kind: Kind) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("rhizome.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let data = dir.path().join("data");
    let db = data.join("rhizome.db");
    let mut total_acked = 0;
    let mut total_sent = 0;
    for (round, kill_after_ms) in [400u64, 900, 1500].into_iter().enumerate() {
        let node = format!("crash:r{round}:t");
        let server = ServerProcess::start(&config, &data);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let writer = tokio::spawn(ingest(kind, server.url.clone(), node.clone(), ledger.clone()));
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        tokio::task::spawn_blocking(move || server.kill()).await.expect("kill");
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("client stops")
            .expect("client task");

        let (acked, sent): (Vec<String>, Vec<(ActionId, i64)>) = {
            let l = ledger.lock().expect("ledger");
            (l.acked.iter().cloned().collect(), l.sent.clone())
        };
        assert!(
            acked.len() >= 200,
            "round {round}: the server acknowledged too little to test ({})",
            acked.len()
        );
        total_acked += acked.len();

        // Restart and check the file: every acknowledged id is there exactly once.
        let server = ServerProcess::start(&config, &data);
        for (id, n) in count_ids(&db, &acked) {
            assert_eq!(n, 1, "round {round}: acknowledged action {id} is stored {n} times");
        }

        // The client re-sends everything it sent (it cannot know what was committed).
        let ledger2 = Arc::new(Mutex::new(Ledger::default()));
        let (ws, base) = connect(&server.url, &node).await;
        let (mut tx, rx) = ws.split();
        let reader = tokio::spawn(read_answers(rx, ledger2.clone()));
        for (i, chunk) in sent.chunks(500).enumerate() {
            tx.send(Ws::text(encode(kind, chunk, base, i as u64 + 1))).await.expect("re-send");
        }
        let all: HashSet<String> = sent.iter().map(|(id, _)| id.to_string()).collect();
        total_sent += all.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while ledger2.lock().expect("ledger").processed.len() < all.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: re-sent actions were not all answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(tx);
        reader.abort();
        let ids: Vec<String> = all.into_iter().collect();
        for (id, n) in count_ids(&db, &ids) {
            assert_eq!(n, 1, "round {round}: action {id} is stored {n} times after re-sending");
        }
        server.kill();
    }
    eprintln!("crash test: {total_acked} acknowledged actions survived 3 SIGKILLs");
    if let Kind::Crdt = kind {
        let server = ServerProcess::start(&config, &data);
        let value = read_counter(&server.url, "crash").await;
        assert_eq!(value, total_sent as i64, "one increment per distinct action, none lost or doubled");
        server.kill();
    }
}

/// Subscribes to the counter object at `key` and returns its value from the state delta.
async fn read_counter(url: &str, key: &str) -> i64 {
    let (mut ws, base) = connect(url, "reader:1:t").await;
    let subscribe = format!(
        "[\"sync\",1,{{\"type\":\"logux/subscribe\",\"channel\":\"crdt/{key}\"}},{{\"id\":{},\"time\":0}}]",
        now_ms() - base
    );
    ws.send(Ws::text(subscribe)).await.expect("subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.expect("a delta in time");
        let Some(Ok(Ws::Text(text))) = msg else { panic!("socket closed before the state arrived") };
        if let Ok(Message::Sync { entries, .. }) = parse(text.as_str()) {
            for e in entries {
                if e.action.kind() == "crdt/delta" {
                    let doc = e.action.fields().get("delta").and_then(|d| d.as_object()).expect("delta");
                    return doc
                        .values()
                        .map(|pn| pn[0].as_i64().expect("p") - pn[1].as_i64().expect("n"))
                        .sum();
                }
            }
        }
    }
}
