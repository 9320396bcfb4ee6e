//! The real `@logux/client` 0.23 (with `ws`) against `rhizome serve`: the scripts in
//! `interop/` (installed by `npm ci`, which `.ci/run` does).

use crate::support::{root, ServerProcess};
use std::process::Command;

fn run_script(name: &str) {
    let interop = root().join("interop");
    assert!(
        interop.join("node_modules/@logux/client").exists(),
        "the real @logux/client is not installed: run `npm ci` in {}",
        interop.display()
    );
    let data = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&interop.join("rhizome.toml"), data.path());
    let out = Command::new("node")
        .arg(interop.join(format!("{name}.mjs")))
        .arg(&server.url)
        .current_dir(&interop)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "interop/{name}.mjs failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(", 0 failed"), "no summary line in:\n{stdout}");
}

#[test]
fn real_client_syncs_1000_actions_and_a_second_client_receives_them() {
    run_script("basic");
}

#[test]
fn real_client_gets_undo_for_denied_actions_and_wrong_credentials() {
    run_script("denied");
}

#[test]
fn real_client_delivers_actions_made_offline_after_reconnecting() {
    run_script("offline");
}

#[test]
fn real_client_resubscribing_with_since_gets_what_it_missed() {
    run_script("since");
}

#[test]
fn real_client_crdt_operations_converge_on_a_subscriber_after_disconnections() {
    run_script("crdt");
}

#[test]
fn real_client_crdt_concurrent_offline_writers_converge() {
    run_script("crdt-concurrent");
}

#[test]
fn real_client_syncs_over_http_without_a_websocket() {
    run_script("http");
}

#[test]
fn real_client_over_http_resubscribes_with_since_and_a_new_client_resumes_from_it() {
    run_script("http-since");
}
