//! `rhizome bench`, the load generator, against a real `rhizome serve` with the benchmark's
//! app: every scenario of bench/run.sh on a small scale, with the counts checked.

use crate::support::{root, ServerProcess};
use std::process::Command;

/// Runs `rhizome bench` with `args`; returns its report line's `key=value` pairs.
fn bench(url: &str, args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_rhizome"))
        .args(["bench", "--url", url, "--timeout-secs", "60"])
        .args(args)
        .output()
        .expect("run rhizome bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line =
        stdout.lines().rfind(|l| l.starts_with("bench:")).unwrap_or_else(|| panic!("no report: {stdout}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn get<'a>(report: &'a [(String, String)], key: &str) -> &'a str {
    report.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn the_load_generator_counts_every_answer_and_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), dir.path());
    let url = server.url.clone();

    // a: one pipelined connection; every action answered, none undone.
    let a = bench(&url, &["--connections", "1", "--actions", "3000", "--batch", "100", "--window", "500"]);
    assert_eq!((get(&a, "processed"), get(&a, "undone")), ("3000", "0"));

    // b: several connections, a batch that does not divide the count.
    let b = bench(&url, &["--connections", "4", "--actions", "1001", "--batch", "7", "--window", "50"]);
    assert_eq!((get(&b, "processed"), get(&b, "undone")), ("4004", "0"));

    // c: fan-out: each of 3 subscribers receives every action of the shared counter.
    let c = bench(
        &url,
        &[
            "--actions",
            "2000",
            "--batch",
            "50",
            "--window",
            "400",
            "--channel",
            "shared",
            "--subscribers",
            "3",
        ],
    );
    assert_eq!((get(&c, "processed"), get(&c, "deliveries")), ("2000", "6000"));

    // CRDT increments on the benchmark's objects.
    let crdt = bench(&url, &["--actions", "1000", "--crdt"]);
    assert_eq!((get(&crdt, "processed"), get(&crdt, "undone")), ("1000", "0"));

    // d: idle connections, with the server's memory read from /proc. A fresh server, because the
    // memory the earlier scenarios freed is returned while the connections are idle, so the RSS
    // difference can be negative there; the check is that memory was read and reported as such.
    drop(server);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), dir.path());
    let pid = server.child.id().to_string();
    let d = bench(&server.url, &["--idle", "50", "--idle-secs", "1", "--pid", &pid]);
    assert_eq!(get(&d, "connections"), "50");
    let kib = |key| get(&d, key).parse::<f64>().unwrap_or_else(|e| panic!("{key}: {e}"));
    let (before, after, per_conn) = (kib("rss_before_kib"), kib("rss_after_kib"), kib("kib_per_conn"));
    assert!(before > 0.0 && after > 0.0, "rss {before} -> {after}");
    assert!((per_conn - (after - before) / 50.0).abs() < 0.01, "{per_conn} from {before} -> {after}");
}

/// The HTTP side: producers pushing over `POST /v1/push`, and idle clients each holding a
/// long-poll `POST /v1/pull` open, with the server's memory and CPU read from /proc.
#[test]
fn the_load_generator_pushes_over_http_and_holds_long_polls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&root().join("bench/rhizome-bench.toml"), dir.path());
    let push = bench(&server.url, &["--http", "--connections", "3", "--actions", "501", "--batch", "40"]);
    assert_eq!(
        (get(&push, "transport"), get(&push, "processed"), get(&push, "undone")),
        ("http", "1503", "0")
    );
    let pid = server.child.id().to_string();
    let idle = bench(&server.url, &["--idle-http", "40", "--idle-secs", "1", "--pid", &pid]);
    assert_eq!(get(&idle, "long-polls"), "40");
    let kib = |key| get(&idle, key).parse::<f64>().unwrap_or_else(|e| panic!("{key}: {e}"));
    let (before, after, per_conn) = (kib("rss_before_kib"), kib("rss_after_kib"), kib("kib_per_conn"));
    assert!((per_conn - (after - before) / 40.0).abs() < 0.01, "{per_conn} from {before} -> {after}");
    assert!(
        get(&idle, "idle_cpu_ms").parse::<u64>().is_ok(),
        "the server's CPU while idle is reported in ms"
    );
}

#[test]
fn a_refused_subscription_ends_the_run_with_its_reason() {
    // `inc` is accepted but no channel may be subscribed to: every producer fails while setting
    // up, before the others are ready.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("no-channels.toml");
    std::fs::write(&config, "[auth]\nmode = \"open\"\n[[action]]\ntype = \"inc\"\n").expect("config");
    let server = ServerProcess::start(&config, &dir.path().join("data"));
    let out = Command::new(env!("CARGO_BIN_EXE_rhizome"))
        .args([
            "bench",
            "--url",
            &server.url,
            "--timeout-secs",
            "60",
            "--connections",
            "2",
            "--actions",
            "10",
        ])
        .output()
        .expect("run rhizome bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the bench succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("subscription to counter/p") && stderr.contains("was undone"), "{stderr}");
}
