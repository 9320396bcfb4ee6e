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

/// A JWT of the interop config's secret for `user`.
fn interop_token(user: &str) -> String {
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    let claims = serde_json::json!({"sub": user, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(b"interop-secret");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
}

/// Runs the scripts `names` against an edge (docs/edge.md) of `upstream`, with the interop rules.
fn run_scripts_at_edge(names: &[&str], upstream: &str, data: &std::path::Path) {
    let interop = root().join("interop");
    assert!(interop.join("node_modules/@logux/client").exists(), "run `npm ci` in {}", interop.display());
    let token = interop_token("edge");
    let args = ["--upstream", upstream, "--upstream-node", "edge:interop:link", "--upstream-token", &token];
    let edge = ServerProcess::start_with(&interop.join("rhizome.toml"), data, &args);
    for name in names {
        let out = Command::new("node")
            .arg(interop.join(format!("{name}.mjs")))
            .arg(&edge.url)
            .current_dir(&interop)
            .output()
            .expect("run node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "interop/{name}.mjs at an edge failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains(", 0 failed"), "no summary line in:\n{stdout}");
    }
}

#[test]
fn real_client_works_against_an_edge_whose_cloud_is_unreachable() {
    // Nothing listens on the upstream's port: the internet link is down for the whole test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let upstream = format!("ws://{}/", listener.local_addr().expect("address"));
    drop(listener);
    let data = tempfile::tempdir().expect("temp dir");
    run_scripts_at_edge(&["basic", "since", "crdt"], &upstream, data.path());
}

#[test]
fn real_client_works_against_an_edge_and_its_actions_reach_the_cloud() {
    let interop = root().join("interop");
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = std::fs::read_to_string(interop.join("rhizome.toml")).expect("rules");
    let cloud_rules = rules.replacen("leeway_secs = 0\n", "leeway_secs = 0\npeers = [\"edge\"]\n", 1);
    assert_ne!(cloud_rules, rules, "the interop config has its [auth] as expected");
    let cloud_config = dir.path().join("cloud.toml");
    std::fs::write(&cloud_config, cloud_rules).expect("config");
    let cloud = ServerProcess::start(&cloud_config, &dir.path().join("cloud"));
    run_scripts_at_edge(&["basic", "crdt"], &cloud.url, &dir.path().join("edge"));
    // What the real clients wrote at the edge is in the cloud's log.
    let db = dir.path().join("cloud/rhizome.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the cloud's log");
        let relayed: i64 = conn
            .query_row("SELECT count(*) FROM log WHERE id NOT LIKE '% server:%'", [], |r| r.get(0))
            .expect("count");
        if relayed >= 1000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {relayed} actions reached the cloud");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
