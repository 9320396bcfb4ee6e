//! Command-line settings the server refuses before it starts.

use std::process::Command;

#[test]
fn zero_workers_are_refused_with_a_clear_error() {
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_rhizome"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "0", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("run rhizome");
    assert!(!out.status.success(), "the server started with 0 workers");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("workers must be at least 1"), "stderr: {stderr}");
    assert!(std::fs::read_dir(data.path()).expect("data dir").next().is_none(), "nothing was written");
}
