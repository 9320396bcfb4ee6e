//! `rhizome sim`, the reconnect-storm simulator, against a real `rhizome serve` with the
//! benchmark's app: a small storm, its JSON result checked against the server's log and its
//! chart against the JSON.

use crate::support::{root, ServerProcess};
use serde_json::Value;
use std::process::Command;

/// Runs `rhizome sim` with `args` and `--out`; returns the JSON result and the summary line.
fn sim(args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("result.json");
    let run = Command::new(env!("CARGO_BIN_EXE_rhizome"))
        .args(["sim", "--timeout-secs", "120", "--out"])
        .arg(&out)
        .args(args)
        .output()
        .expect("run rhizome sim");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "sim {args:?} failed: {stdout}{}", String::from_utf8_lossy(&run.stderr));
    let summary =
        stdout.lines().find(|l| l.starts_with("sim: ")).unwrap_or_else(|| panic!("no summary: {stdout}"));
    let text = std::fs::read_to_string(&out).expect("the JSON result");
    (serde_json::from_str(&text).expect("valid JSON"), summary.to_owned())
}

fn u64_at(report: &Value, pointer: &str) -> u64 {
    report.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {pointer} in {report}"))
}

#[test]
fn a_small_storm_is_synced_with_nothing_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), dir.path());
    let pid = server.child.id().to_string();
    let db = dir.path().join("rhizome.db");
    let db = db.to_str().expect("utf-8 path");
    let chart = dir.path().join("storm.svg");

    let (report, summary) = sim(&[
        "--url",
        &server.url,
        "--clients",
        "20",
        "--actions-per-client",
        "200",
        "--crdt-share",
        "0.25",
        "--probes",
        "2",
        "--pid",
        &pid,
        "--server-db",
        db,
        "--return-mode",
        "ramp",
        "--chart",
        chart.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(report["scenario"]["return_mode"], "ramp");
    assert_eq!(report["server_log_checked"], true);
    assert!(summary.contains("server_log_missing=0 server_log_waiting=0"), "{summary}");
    for (key, want) in [
        ("/queued", 4000),
        ("/processed", 4000),
        ("/undone", 0),
        ("/lost", 0),
        ("/duplicate_answers", 0),
        ("/clients_synced", 20),
        ("/server_log/checked", 4000),
        ("/server_log/missing", 0),
        ("/server_log/processed", 4000),
        ("/server_log/waiting", 0),
    ] {
        assert_eq!(u64_at(&report, key), want, "{key} in {report}");
    }
    let throughput: u64 = report["throughput_per_second"]
        .as_array()
        .expect("throughput")
        .iter()
        .map(|v| v.as_u64().expect("count"))
        .sum();
    assert_eq!(throughput, 4000, "every answer is in a bucket");
    assert!(u64_at(&report, "/time_to_sync_ms") > 0);
    // Two probes for about a second: some answered samples, all with latencies.
    assert!(u64_at(&report, "/probes/samples") >= 2, "{report}");
    assert_eq!(u64_at(&report, "/probes/unanswered"), 0);
    let (p50, p99, max) = (
        u64_at(&report, "/probes/p50_ms"),
        u64_at(&report, "/probes/p99_ms"),
        u64_at(&report, "/probes/max_ms"),
    );
    assert!(p50 <= p99 && p99 <= max, "{report}");
    assert!(u64_at(&report, "/server/peak_rss_kib") > 0);
    assert!(report.pointer("/server/cpu_ms").and_then(Value::as_u64).is_some());
    assert!(report.pointer("/sim_cpu_ms").and_then(Value::as_u64).is_some());

    // The chart: a point for every second of answers and every second a probe was answered.
    let svg = std::fs::read_to_string(&chart).expect("the chart");
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    let points = |class: &str| {
        doc.descendants().filter(|n| n.has_tag_name("circle") && n.attribute("class") == Some(class)).count()
    };
    let seconds_with =
        |key: &str| report["probes"][key].as_array().expect(key).iter().filter(|v| !v.is_null()).count();
    assert_eq!(points("throughput"), report["throughput_per_second"].as_array().expect("throughput").len());
    assert_eq!(points("probe-p50"), seconds_with("p50_ms_per_second"));
    assert_eq!(points("probe-max"), seconds_with("max_ms_per_second"));
    assert!(points("throughput") > 0 && points("probe-max") > 0, "{svg}");
    assert!(
        svg.contains("20 clients × 200 queued actions, returning on a ramp within 1000 ms, 2 probes"),
        "{svg}"
    );
}

#[test]
fn clients_sharing_crdt_objects_converge_on_the_servers_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), dir.path());
    // 60 clients, 3 objects: twenty writers per object, each also receiving the others'
    // deltas. 100 operations each, 2,000 per object: the server rewrites each object's
    // snapshot and cleans the deltas it holds many times while clients catch up (a catch-up
    // that read the cleaned deltas one by one left clients without some nodes' operations).
    let (report, _) = sim(&[
        "--url",
        &server.url,
        "--clients",
        "60",
        "--actions-per-client",
        "200",
        "--crdt-share",
        "0.5",
        "--objects",
        "3",
        "--return-within-ms",
        "300",
    ]);
    assert_eq!((u64_at(&report, "/processed"), u64_at(&report, "/lost")), (12000, 0));
    for (key, want) in [
        ("/convergence/objects", 3),
        ("/convergence/missing", 0),
        ("/convergence/clients_checked", 60),
        ("/convergence/diverged", 0),
    ] {
        assert_eq!(u64_at(&report, key), want, "{key} in {report}");
    }
}

#[test]
fn a_scenario_file_sets_the_fields_and_flags_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), dir.path());
    let file = dir.path().join("scenario.toml");
    let text =
        format!("url = \"{}\"\nclients = 3\nactions_per_client = 50\nreturn_within_ms = 200\nreturn_mode = \"burst\"\n", server.url);
    std::fs::write(&file, text).expect("write the scenario");
    let (report, summary) = sim(&["--scenario", file.to_str().expect("utf-8 path"), "--clients", "4"]);
    assert_eq!(u64_at(&report, "/scenario/clients"), 4);
    assert_eq!(u64_at(&report, "/scenario/return_within_ms"), 200);
    assert_eq!(report["scenario"]["return_mode"], "burst");
    assert_eq!((u64_at(&report, "/processed"), u64_at(&report, "/lost")), (200, 0));
    // Without --server-db the report says the log was not checked, not that nothing is missing.
    assert!(report["server_log"].is_null() && report["server"].is_null());
    assert_eq!(report["server_log_checked"], false);
    assert!(summary.contains("server_log=not_checked") && !summary.contains("missing"), "{summary}");
    assert!(report["convergence"].is_null(), "no CRDT operations, nothing to converge");
}

#[test]
fn a_storm_without_a_server_reports_every_action_lost_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("result.json");
    // A port nobody listens on: the clients keep retrying until the storm's timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let run = Command::new(env!("CARGO_BIN_EXE_rhizome"))
        .args(["sim", "--url", &format!("ws://127.0.0.1:{port}/"), "--clients", "2"])
        .args(["--actions-per-client", "10", "--return-within-ms", "0", "--timeout-secs", "2", "--out"])
        .arg(&out)
        .output()
        .expect("run rhizome sim");
    assert!(!run.status.success(), "a run with lost actions must fail");
    assert!(String::from_utf8_lossy(&run.stderr).contains("20 queued actions never answered"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("the JSON result")).expect("JSON");
    assert_eq!((u64_at(&report, "/lost"), u64_at(&report, "/clients_synced")), (20, 0));
    assert!(report["time_to_sync_ms"].is_null());
}
