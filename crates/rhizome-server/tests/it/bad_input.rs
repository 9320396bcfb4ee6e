//! Malformed frames and refused handshakes: the exact `error` answer, then the close.

use crate::support::{token, Client, Event, TestServer};
use anyhow::Result;
use serde_json::{json, Value};

/// Sends `frame` on a fresh socket and expects `expected` and the close.
async fn refused(server: &TestServer, frame: &str, expected: &Value) -> Result<Option<u16>> {
    let mut c = server.open().await?;
    c.send(frame).await?;
    let code = c.expect_error_and_close(expected).await?;
    server.assert_healthy().await?;
    Ok(code)
}

#[tokio::test]
async fn not_json_is_wrong_format() -> Result<()> {
    let server = TestServer::default().await?;
    refused(&server, "hello", &json!(["error", "wrong-format", "hello"])).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn wrong_shapes_are_wrong_format_with_the_message_text() -> Result<()> {
    let server = TestServer::default().await?;
    for frame in [r#"["connect","5","u:c:t",0]"#, r#"["sync",1,{"type":"a"}]"#, "{}", "[]", "[1,2]"] {
        refused(&server, frame, &json!(["error", "wrong-format", frame])).await?;
    }
    // The same after authentication.
    let mut c = server.login("alice:c1:t1").await?;
    let frame = r#"["sync",1,{"type":"inc","id":"1"},{"id":"x","time":1}]"#;
    c.send(frame).await?;
    c.expect_error_and_close(&json!(["error", "wrong-format", frame])).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn unknown_message_is_refused() -> Result<()> {
    let server = TestServer::default().await?;
    refused(&server, r#"["foo",1]"#, &json!(["error", "unknown-message", "foo"])).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn other_protocol_versions_are_refused() -> Result<()> {
    let server = TestServer::default().await?;
    for version in [4, 7] {
        let frame =
            json!(["connect", version, "alice:c1:t1", 0, {"token": token("alice"), "subprotocol": 1}]);
        let expected = json!(["error", "wrong-protocol", {"supported": 5, "used": version}]);
        refused(&server, &frame.to_string(), &expected).await?;
    }
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn old_subprotocol_is_refused() -> Result<()> {
    let server = TestServer::default().await?;
    let expected = json!(["error", "wrong-subprotocol", {"supported": 1, "used": 0}]);
    let frame = json!(["connect", 5, "alice:c1:t1", 0, {"token": token("alice"), "subprotocol": 0}]);
    refused(&server, &frame.to_string(), &expected).await?;
    // No options at all means subprotocol 0.
    refused(&server, r#"["connect",5,"alice:c1:t1",0]"#, &expected).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn server_user_id_is_refused() -> Result<()> {
    let server = TestServer::default().await?;
    let frame = json!(["connect", 5, "server:c:t", 0, {"token": token("server"), "subprotocol": 1}]);
    refused(&server, &frame.to_string(), &json!(["error", "wrong-credentials"])).await?;
    server.stop().await;
    Ok(())
}

/// Sends a `sync` bigger than `frame_bytes_max` (65536) and checks the `error` frame; returns
/// what ended the socket.
async fn send_oversized(server: &TestServer, authenticated: bool) -> Result<Event> {
    let mut c = if authenticated { server.login("alice:c1:t1").await? } else { server.open().await? };
    let payload = "x".repeat(100_000);
    let frame = json!(["sync", 1, {"type": "inc", "id": "1", "p": payload}, {"id": 1, "time": 1}]);
    c.send(frame.to_string()).await?;
    let error = c.next_json().await?;
    assert_eq!(error, json!(["error", "wrong-format", "frame larger than 65536 bytes"]));
    let end = c.next_event().await?;
    assert!(!matches!(end, Event::Text(_)), "nothing after the error: {end:?}");
    Ok(end)
}

#[tokio::test]
async fn oversized_frame_is_refused_and_others_are_unaffected() -> Result<()> {
    let server = TestServer::default().await?;
    // A bystander, connected before, must not notice.
    let mut bystander = server.login("bob:c2:t1").await?;
    for authenticated in [false, true] {
        send_oversized(&server, authenticated).await?;
        server.assert_healthy().await?;
    }
    let id = bystander.send_action(json!({"type": "inc", "id": "2"})).await?;
    bystander.wait_processed(&id).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn oversized_frame_close_code_reaches_the_client() -> Result<()> {
    let server = TestServer::default().await?;
    for authenticated in [false, true] {
        let end = send_oversized(&server, authenticated).await?;
        assert_eq!(end, Event::Close(Some(1009)), "authenticated: {authenticated}");
    }
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn too_many_actions_in_one_sync_is_refused() -> Result<()> {
    let server = TestServer::default().await?;
    let mut c = server.login("alice:c1:t1").await?;
    // Exactly the limit is fine.
    let mut message = vec![json!("sync"), json!(1)];
    for i in 0..100 {
        message.push(json!({"type": "inc", "id": "1"}));
        message.push(json!({"id": [1, i], "time": 1}));
    }
    c.send_json(&Value::from(message.clone())).await?;
    c.until(|m| *m == json!(["synced", 1])).await?;
    message[1] = json!(2);
    message.push(json!({"type": "inc", "id": "1"}));
    message.push(json!({"id": [2, 0], "time": 2}));
    c.send_json(&Value::from(message)).await?;
    let error = c.until(|m| m[0] == "error").await?;
    assert_eq!(error, json!(["error", "wrong-format", "sync carries 101 actions; the limit is 100"]));
    c.expect_close().await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn silent_socket_is_closed_after_the_unauthenticated_timeout() -> Result<()> {
    let server = TestServer::start("unauthenticated_timeout_ms = 500").await?;
    let mut c = server.open().await?;
    let started = std::time::Instant::now();
    c.expect_error_and_close(&json!(["error", "timeout", 500])).await?;
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    // `headers` alone does not authenticate either.
    let mut c = Client::open(server.addr).await?;
    c.send(r#"["headers",{"lang":"en"}]"#).await?;
    c.expect_error_and_close(&json!(["error", "timeout", 500])).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn client_that_does_not_answer_ping_is_timed_out() -> Result<()> {
    let server = TestServer::start("ping_interval_ms = 300\ntimeout_ms = 500").await?;
    let mut silent = server.login("alice:c1:t1").await?;
    // A client that answers every ping, alongside, stays.
    let mut polite = server.login("bob:c2:t1").await?;
    let polite = tokio::spawn(async move {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        let mut pings = 0;
        while std::time::Instant::now() < until {
            let m = polite.next_json().await?;
            anyhow::ensure!(m[0] == "ping", "expected ping, got {m}");
            polite.send_json(&json!(["pong", 0])).await?;
            pings += 1;
        }
        anyhow::ensure!(pings >= 2, "only {pings} pings");
        anyhow::Ok(polite)
    });
    let ping = silent.next_json().await?;
    assert_eq!(ping[0], "ping", "{ping}");
    assert!(ping[1].is_u64(), "{ping}");
    silent.expect_error_and_close(&json!(["error", "timeout", 500])).await?;
    let mut polite = polite.await??;
    let id = polite.send_action(json!({"type": "inc", "id": "1"})).await?;
    polite.wait_processed(&id).await?;
    server.stop().await;
    Ok(())
}
