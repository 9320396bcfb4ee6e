//! `POST /v1/push`: Logux actions over plain HTTP, with the WebSocket's semantics (rules,
//! durability, at-most-once), over a real socket.

use crate::support::{sync_actions, token, token_bad_signature, token_expired, TestServer};
use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 `POST` on its own connection; returns the status and the JSON body.
pub async fn request(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> Result<(u16, Value)> {
    request_with(addr, "POST", path, authorization, body).await
}

/// One HTTP/1.1 request of `method` on its own connection; returns the status and the JSON body.
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // A body the server refuses early may not be read whole; the answer still comes.
    let _ = stream.write_all(body.as_bytes()).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .context("response")??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no head in {text:?}"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("{head}"))?;
    let json = serde_json::from_str(body).with_context(|| format!("body of {head}: {body:?}"))?;
    Ok((status, json))
}

/// `POST /v1/push` of `actions` (each `[action, meta]`) as `node`, with `user`'s token.
async fn push(
    server: &TestServer,
    node: &str,
    user: &str,
    actions: &[(Value, Value)],
) -> Result<(u16, Value)> {
    let actions: Vec<Value> = actions.iter().map(|(a, m)| json!({"action": a, "meta": m})).collect();
    let body = json!({"node": node, "actions": actions}).to_string();
    request(server.addr, "/v1/push", Some(&format!("Bearer {}", token(user))), &body).await
}

/// Full ids of `node`, from `ms` on.
pub fn meta(node: &str, ms: i64) -> Value {
    json!({"id": format!("{ms} {node} 0"), "time": ms})
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[tokio::test]
async fn pushed_actions_are_processed_once_and_a_retry_gets_the_same_answers() -> Result<()> {
    let server = TestServer::default().await?;
    let mut bob = server.login("bob:b1:t1").await?;
    bob.subscribe("counter/h").await?;
    let t = now_ms();
    let actions: Vec<(Value, Value)> =
        (0..3).map(|i| (json!({"type": "inc", "id": "h", "n": i}), meta("alice:a1:t1", t + i))).collect();
    let (status, body) = push(&server, "alice:a1:t1", "alice", &actions).await?;
    assert_eq!(status, 200, "{body}");
    let expected: Vec<Value> =
        (0..3).map(|i| json!({"id": format!("{} alice:a1:t1 0", t + i), "status": "processed"})).collect();
    assert_eq!(body["results"], Value::Array(expected.clone()));
    // A WebSocket subscriber receives what was pushed over HTTP.
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = bob.next_json().await?;
        got.extend(sync_actions(&m).into_iter().filter(|a| a["type"] == "inc").map(|a| a["n"].clone()));
    }
    assert_eq!(got, [json!(0), json!(1), json!(2)]);

    // The response was lost; the client pushes the same actions again: the same answers,
    // nothing processed or delivered twice.
    let (status, again) = push(&server, "alice:a1:t1", "alice", &actions).await?;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["results"], Value::Array(expected));
    let marker = (json!({"type": "inc", "id": "h", "n": 99}), meta("alice:a1:t1", t + 10));
    let (status, _) = push(&server, "alice:a1:t1", "alice", &[marker]).await?;
    assert_eq!(status, 200);
    let m = bob.until(|m| sync_actions(m).iter().any(|a| a["type"] == "inc")).await?;
    let ns: Vec<Value> = sync_actions(&m).into_iter().map(|a| a["n"].clone()).collect();
    assert_eq!(ns, [json!(99)], "only the marker comes after the retry");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn refused_actions_are_undone_with_their_reasons() -> Result<()> {
    let server = TestServer::default().await?;
    let t = now_ms();
    let actions = [
        (json!({"type": "post", "channel": "users/bob", "text": "hi"}), meta("alice:a1:t1", t)),
        (json!({"type": "nope"}), meta("alice:a1:t1", t + 1)),
        // Another client's id: forged.
        (json!({"type": "inc", "id": "1"}), meta("bob:b1:t1", t + 2)),
        (json!({"type": "post", "channel": "users/alice", "text": "mine"}), meta("alice:a1:t1", t + 3)),
    ];
    let (status, body) = push(&server, "alice:a1:t1", "alice", &actions).await?;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().context("results")?;
    let summary: Vec<(Value, Value)> =
        results.iter().map(|r| (r["status"].clone(), r["reason"].clone())).collect();
    assert_eq!(
        summary,
        [
            (json!("undone"), json!("denied")),
            (json!("undone"), json!("unknownType")),
            (json!("undone"), json!("denied")),
            (json!("processed"), Value::Null),
        ]
    );
    assert_eq!(results[1]["undo"]["action"], json!({"type": "nope"}), "the undo carries the action");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_a_clear_4xx_and_the_server_goes_on() -> Result<()> {
    let server = TestServer::default().await?;
    let addr = server.addr;
    let t = now_ms();
    let good = |node: &str| {
        json!({"node": node, "actions": [{"action": {"type": "inc", "id": "b"}, "meta": meta(node, t)}]})
            .to_string()
    };
    let alice = format!("Bearer {}", token("alice"));
    let cases: Vec<(Option<String>, String, u16, &str)> = vec![
        (Some(alice.clone()), "not json".into(), 400, "wrong-format"),
        (Some(alice.clone()), json!({"node": "alice:a1:t1"}).to_string(), 400, "wrong-format"),
        (
            Some(alice.clone()),
            json!({"node": "alice:a1:t1", "actions": [], "extra": 1}).to_string(),
            400,
            "wrong-format",
        ),
        (
            Some(alice.clone()),
            json!({"node": "alice:a1:t1", "actions": [{"action": {"type": "inc"}, "meta": {"time": 1}}]})
                .to_string(),
            400,
            "wrong-format",
        ),
        (Some(alice.clone()), "x".repeat(70_000), 413, "too-large"),
        (
            Some(alice.clone()),
            json!({"node": "alice:a1:t1", "actions": [{"action": {"type": "logux/subscribe", "channel": "counter/1"}, "meta": meta("alice:a1:t1", t)}]}).to_string(),
            400,
            "wrong-format",
        ),
        (None, good("alice:a1:t1"), 401, "wrong-credentials"),
        (Some("Basic abc".into()), good("alice:a1:t1"), 401, "wrong-credentials"),
        (
            Some(format!("Bearer {}", token_bad_signature("alice"))),
            good("alice:a1:t1"),
            401,
            "wrong-credentials",
        ),
        (Some(format!("Bearer {}", token_expired("alice"))), good("alice:a1:t1"), 401, "wrong-credentials"),
        (Some(format!("Bearer {}", token("bob"))), good("alice:a1:t1"), 401, "wrong-credentials"),
    ];
    for (authorization, body, status, error) in cases {
        let (got, answer) = request(addr, "/v1/push", authorization.as_deref(), &body).await?;
        let label = &body[..body.len().min(80)];
        assert_eq!(got, status, "{label}: {answer}");
        assert_eq!(answer["error"], error, "{label}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{label}: {answer}");
    }
    // The failed logins above trip the guard against guessing for a second (the test limits'
    // `auth_failure_window_ms`); it is per address and everything here comes from 127.0.0.1.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Too many actions for one request: the protocol's limit on a `sync`.
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"action": {"type": "inc", "id": "b"}, "meta": meta("carol:c1:t1", t + i)}))
        .collect();
    let body = json!({"node": "carol:c1:t1", "actions": many}).to_string();
    let (got, answer) = request(addr, "/v1/push", Some(&format!("Bearer {}", token("carol"))), &body).await?;
    assert_eq!(got, 400, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    // The server still serves, over HTTP and WebSocket.
    let (status, body) =
        request(addr, "/v1/push", Some(&format!("Bearer {}", token("dave"))), &good("dave:d1:t1")).await?;
    assert_eq!((status, body["results"][0]["status"].clone()), (200, json!("processed")), "{body}");
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}
