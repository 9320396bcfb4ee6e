//! Authentication: refused tokens and the per-address brute-force guard.

use crate::support::{token, token_bad_signature, token_expired, TestServer};
use anyhow::Result;
use serde_json::json;
use std::time::Duration;

/// Tries `node` with `token`; expects `wrong-credentials` and the close.
async fn refused(server: &TestServer, node: &str, token: &str) -> Result<()> {
    let mut c = server.open().await?;
    c.send_connect(node, token).await?;
    c.expect_error_and_close(&json!(["error", "wrong-credentials"])).await?;
    Ok(())
}

#[tokio::test]
async fn bad_tokens_are_refused_and_then_everyone_from_that_address_for_a_while() -> Result<()> {
    let server = TestServer::start("auth_failure_window_ms = 1000\nauth_failures_max = 3").await?;
    // Failures 1 and 2: the address is not blocked yet.
    refused(&server, "alice:c1:t1", &token_bad_signature("alice")).await?;
    server.assert_healthy().await?;
    refused(&server, "alice:c1:t1", &token_expired("alice")).await?;
    server.assert_healthy().await?;
    // Failure 3: a token of another user.
    refused(&server, "alice:c1:t1", &token("bob")).await?;
    // Now even a valid token from this address is refused...
    refused(&server, "alice:c1:t1", &token("alice")).await?;
    // ...until the window has passed.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut c = server.login("alice:c1:t1").await?;
    let id = c.send_action(json!({"type": "inc", "id": "1"})).await?;
    c.wait_processed(&id).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn missing_or_garbage_tokens_are_refused() -> Result<()> {
    let server = TestServer::start("auth_failures_max = 100").await?;
    refused(&server, "alice:c1:t1", "not-a-jwt").await?;
    let mut c = server.open().await?;
    c.send(r#"["connect",5,"alice:c1:t1",0,{"subprotocol":1}]"#).await?;
    c.expect_error_and_close(&json!(["error", "wrong-credentials"])).await?;
    // A node id without a user part has no user to match `sub`.
    refused(&server, "alice", &token("alice")).await?;
    server.assert_healthy().await?;
    server.stop().await;
    Ok(())
}
