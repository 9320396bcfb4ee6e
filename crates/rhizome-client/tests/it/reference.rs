//! The client against the reference `@logux/server` 0.14 (`bench/reference-server.mjs`, the
//! app `rhizome bench` measures it with), so the same client can drive either server.
//! Needs `npm ci` in `interop/` (which `./scripts/test` runs).

use crate::support::{open, options, wait_drained, wait_until};
use anyhow::{anyhow, bail, Context as _, Result};
use rhizome_client::Event;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Starts the reference server on a free port; it is killed when the child is dropped.
async fn reference_server() -> Result<(Child, String)> {
    let root = root();
    if !root.join("interop/node_modules/@logux/server").exists() {
        bail!("run `npm ci` in {} first", root.join("interop").display());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new("node")
        .arg(root.join("bench/reference-server.mjs"))
        .env("PORT", port.to_string())
        .env("NODE_ENV", "production")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting node")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| anyhow!("the reference server did not start"))??
        .unwrap_or_default();
    if !line.starts_with("listening") {
        bail!("unexpected output from the reference server: {line}");
    }
    Ok((child, format!("ws://127.0.0.1:{port}/")))
}

fn incs(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Action { action, .. } if action["type"] == "inc")).count()
}

#[tokio::test]
async fn the_client_works_against_the_reference_server() -> Result<()> {
    let (_server, url) = reference_server().await?;
    let dir = tempfile::tempdir()?;
    let (bob, bob_events) = open(options(&url, &dir.path().join("bob.sqlite"), "bob")).await?;
    bob.subscribe("counter/r").await?;
    wait_until("bob's subscription", || async {
        Ok(bob.subscriptions().await?.iter().any(|s| s.since.is_some()))
    })
    .await?;

    let mut o = options(&url, &dir.path().join("alice.sqlite"), "alice");
    o.sync_actions_max = 100;
    let (alice, alice_events) = open(o).await?;
    let ids = alice.add_many((0..500).map(|n| json!({"type": "inc", "id": "r", "n": n})).collect()).await?;
    wait_drained(&alice).await?;
    let is_processed = |e: &Event| matches!(e, Event::Processed { .. });
    wait_until("alice's answers", || async { Ok(alice_events.count(is_processed) == ids.len()) }).await?;
    wait_until("bob's deliveries", || async { Ok(incs(&bob_events.all()) == ids.len()) }).await?;
    assert_eq!(alice.session_stats().actions_sent, 500);
    alice.close().await;
    bob.close().await;
    Ok(())
}
