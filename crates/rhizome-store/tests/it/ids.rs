//! Appending an id once, ever: the run index against a model, and a log of format 2 upgraded.

use proptest::prelude::*;
use rhizome_core::{AppendOutcome, NewEntry, Routing, Status};
use rhizome_protocol::Channel;
use rhizome_store::{Append, LogWriter, SqliteStore, Store, WriteBatch};
use std::collections::HashMap;

fn entry(id: &str) -> NewEntry {
    super::entry(id, Routing::channel("counter/1"), Status::Processed)
}

fn runs(dir: &std::path::Path) -> i64 {
    let raw = rusqlite::Connection::open(dir.join("rhizome.db")).expect("open");
    raw.query_row("SELECT count(*) FROM log_runs", [], |r| r.get(0)).expect("runs")
}

/// What happens to the log between two commits.
#[derive(Debug, Clone)]
enum Step {
    /// One transaction of `sync`s, each a list of ids.
    Commit(Vec<Vec<String>>),
    /// The server restarts: the writer's high-water marks are gone.
    Reopen,
    /// A transaction appends these ids, then fails: none of them is logged.
    Fail(Vec<String>),
}

/// An id the log refuses (by a trigger), failing its transaction.
const REFUSED: &str = "999 u:a:t 9";

fn id_text() -> impl Strategy<Value = String> {
    // Few nodes, few keys: ids repeat, and a node's clock goes back and forth.
    (0i64..12, prop::sample::select(vec!["u:a:t", "u:a:s", "v:b"]), 0u64..3)
        .prop_map(|(ms, node, seq)| format!("{ms} {node} {seq}"))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        9 => prop::collection::vec(prop::collection::vec(id_text(), 0..12), 1..4).prop_map(Step::Commit),
        1 => Just(Step::Reopen),
        2 => prop::collection::vec(id_text(), 0..6).prop_map(Step::Fail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Every id is added the first time it is appended and a duplicate ever after, whatever
    /// the order of ids, `sync`s, transactions, failed transactions and restarts; each is
    /// found at its position.
    #[test]
    fn an_id_is_appended_once_whatever_the_order(steps in prop::collection::vec(step(), 1..24)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = SqliteStore::open(dir.path()).expect("open");
        rusqlite::Connection::open(dir.path().join("rhizome.db"))
            .expect("open")
            .execute_batch(&format!(
                "CREATE TRIGGER refuse BEFORE INSERT ON log WHEN NEW.id = '{REFUSED}'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;"
            ))
            .expect("trigger");
        let mut writer = store.writer().expect("writer");
        let mut model: HashMap<String, u64> = HashMap::new();
        for (n, step) in steps.into_iter().enumerate() {
            match step {
                Step::Reopen => {
                    drop(writer);
                    drop(store);
                    store = SqliteStore::open(dir.path()).expect("reopen");
                    writer = store.writer().expect("writer");
                }
                Step::Fail(mut ids) => {
                    ids.push(REFUSED.to_owned());
                    let appends = ids.iter().map(|id| Append::new(entry(id))).collect();
                    let mut batches = [WriteBatch { appends, ..WriteBatch::default() }];
                    prop_assert!(writer.commit(&mut batches, n as i64).is_err());
                }
                Step::Commit(syncs) => {
                    let mut batches: Vec<WriteBatch> = syncs
                        .iter()
                        .map(|ids| WriteBatch {
                            appends: ids.iter().map(|id| Append::new(entry(id))).collect(),
                            ..WriteBatch::default()
                        })
                        .collect();
                    let done = writer.commit(&mut batches, n as i64).expect("commit");
                    for (ids, committed) in syncs.iter().zip(&done) {
                        for (id, outcome) in ids.iter().zip(&committed.outcomes) {
                            match (model.get(id), outcome) {
                                (None, AppendOutcome::Added(p)) => {
                                    model.insert(id.clone(), *p);
                                }
                                (Some(_), AppendOutcome::Duplicate(Status::Processed)) => {}
                                (known, outcome) => {
                                    prop_assert!(false, "{id}: logged at {known:?}, appended as {outcome:?}");
                                }
                            }
                        }
                    }
                }
            }
        }
        prop_assert_eq!(store.count().expect("count"), model.len() as u64);
        for (id, position) in &model {
            prop_assert_eq!(store.position_of_id(id).expect("find"), Some(*position), "{}", id);
            prop_assert_eq!(store.status_of(id).expect("status"), Some(Status::Processed));
        }
        prop_assert_eq!(store.position_of_id("99 u:a:t 0").expect("find"), None);
    }
}

/// A client's `sync` makes one index row per [`RUN_ROWS_MAX`] actions, not one per action;
/// every one of them is still found.
#[test]
fn a_clients_sync_costs_one_index_row_per_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let mut w = store.writer().expect("writer");
    let ids: Vec<String> = (0..1000).map(|i| format!("{} u:a:t {}", 1000 + i / 3, i % 3)).collect();
    let sync = || WriteBatch {
        appends: ids.iter().map(|id| Append::new(entry(id))).collect(),
        ..WriteBatch::default()
    };
    let done = w.commit(&mut [sync()], 1).expect("commit");
    assert!(done[0].outcomes.iter().all(|o| matches!(o, AppendOutcome::Added(_))));
    assert_eq!(runs(dir.path()), 4, "1000 actions in runs of at most 256");
    drop(w);
    // After a restart (no high-water mark in memory), the same sync again: all duplicates.
    let mut w = store.writer().expect("writer");
    let done = w.commit(&mut [sync()], 2).expect("commit");
    assert!(done[0].outcomes.iter().all(|o| *o == AppendOutcome::Duplicate(Status::Processed)));
    assert_eq!(store.count().expect("count"), 1000);
    // Two clients interleaving single actions: a run per action, as a per-action index would.
    let mut interleaved: Vec<WriteBatch> = (0..10)
        .map(|i| WriteBatch {
            appends: vec![Append::new(entry(&format!("{} x:{} 0", 5000 + i, i % 2)))],
            ..WriteBatch::default()
        })
        .collect();
    w.commit(&mut interleaved, 3).expect("commit");
    assert_eq!(runs(dir.path()), 14);
    assert_eq!(store.position_of_id("5009 x:1 0").expect("find"), Some(1010));
}

/// A log written by format 2 (a `UNIQUE` index on ids, a channel index row per action) is
/// rebuilt once: its ids are found, still appended only once, and its channels read back.
#[test]
fn a_log_of_format_two_is_indexed_by_runs_and_keeps_its_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let raw = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("open");
        raw.execute_batch(
            "CREATE TABLE log(
                added INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time INTEGER NOT NULL,
                received INTEGER NOT NULL, action TEXT NOT NULL, subprotocol INTEGER NOT NULL,
                routing TEXT, status INTEGER NOT NULL, reason TEXT
             );
             INSERT INTO log VALUES (1, '5 u:a:t 0', 5, 5, '{\"type\":\"a\"}', 1, NULL, 1, NULL);
             INSERT INTO log VALUES (2, '6 u:a:t 0', 6, 6, '{\"type\":\"b\"}', 1, NULL, 2, 'denied');
             INSERT INTO log VALUES (3, '2 u:a:t 0', 7, 7, '{\"type\":\"c\"}', 1, NULL, 1, NULL);
             INSERT INTO log VALUES (4, '7 v:b 0', 7, 7, '{\"type\":\"d\"}', 1, NULL, 1, NULL);
             CREATE TABLE log_channels(
                 channel TEXT NOT NULL, added INTEGER NOT NULL, PRIMARY KEY(channel, added)
             ) WITHOUT ROWID;
             INSERT INTO log_channels VALUES ('c/1', 1), ('c/1', 2), ('c/1', 4), ('c/2', 2);
             PRAGMA user_version = 2;",
        )
        .expect("format 2");
    }
    let store = SqliteStore::open(dir.path()).expect("open");
    assert_eq!(runs(dir.path()), 2, "one run per node's stretch");
    let raw = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("open");
    let sql: String =
        raw.query_row("SELECT sql FROM sqlite_master WHERE name = 'log'", [], |r| r.get(0)).expect("schema");
    assert!(!sql.contains("UNIQUE"), "{sql}");
    let read = |channel: &str| -> Vec<u64> {
        let entries = store.read_channel(&Channel::from(channel), 0, 10, 10).expect("read");
        entries.iter().map(|e| e.added).collect()
    };
    assert_eq!((read("c/1"), read("c/2")), (vec![1, 2, 4], vec![2]), "the channel index as runs");
    let old_index: i64 = raw
        .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'log_channels'", [], |r| r.get(0))
        .expect("schema");
    assert_eq!(old_index, 0);
    assert_eq!(store.position_of_id("2 u:a:t 0").expect("find"), Some(3));
    assert_eq!(store.status_of("6 u:a:t 0").expect("status"), Some(Status::Undone("denied".into())));
    let mut w = store.writer().expect("writer");
    let appends = ["2 u:a:t 0", "7 v:b 0", "8 u:a:t 0"].map(|id| Append::new(entry(id)));
    let done =
        w.commit(&mut [WriteBatch { appends: appends.into(), ..WriteBatch::default() }], 9).expect("commit");
    assert_eq!(
        done[0].outcomes,
        [
            AppendOutcome::Duplicate(Status::Processed),
            AppendOutcome::Duplicate(Status::Processed),
            AppendOutcome::Added(5)
        ]
    );
    assert_eq!(store.count().expect("count"), 5);
}

/// Two writers on one log (a second server started on the same data directory, or one
/// restarted while the old process still drains): an id appended by one is a duplicate for
/// the other, though the other's high-water mark of its node was read before.
#[test]
fn an_id_appended_by_another_writer_is_a_duplicate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let mut first = store.writer().expect("writer");
    let mut second = store.writer().expect("writer");
    let sync = |ids: &[&str]| WriteBatch {
        appends: ids.iter().map(|id| Append::new(entry(id))).collect(),
        ..WriteBatch::default()
    };
    // Both writers learn the node's mark.
    first.commit(&mut [sync(&["1 u:a:t 0"])], 1).expect("commit");
    let done = second.commit(&mut [sync(&["1 u:a:t 0"])], 2).expect("commit");
    assert_eq!(done[0].outcomes, [AppendOutcome::Duplicate(Status::Processed)]);
    // The first appends a newer id; the client re-sends it through the second.
    first.commit(&mut [sync(&["2 u:a:t 0"])], 3).expect("commit");
    let done = second.commit(&mut [sync(&["2 u:a:t 0"])], 4).expect("commit");
    assert_eq!(done[0].outcomes, [AppendOutcome::Duplicate(Status::Processed)]);
    assert_eq!(store.count().expect("count"), 2);
}

/// The runs of `node` by `last_key`, and whether each one's key range starts above the end of
/// the one before (then an id's key is in at most one run, the first ending at or above it).
fn runs_in_key_order(dir: &std::path::Path, node: &str) -> (usize, bool) {
    let raw = rusqlite::Connection::open(dir.join("rhizome.db")).expect("open");
    let mut stmt = raw
        .prepare("SELECT first_key, last_key FROM log_runs WHERE node = ?1 ORDER BY last_key")
        .expect("prepare");
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = stmt
        .query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    (ranges.len(), ranges.windows(2).all(|w| w[0].1 < w[1].0))
}

/// A client whose clock went back: its ids below what it logged before are looked up, and
/// found in at most one run each; a lookup that finds nothing does not read every later run
/// of the node (with 100,000 of them, each cost milliseconds of the one writer).
#[test]
fn a_clock_gone_back_leaves_one_run_to_look_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let mut w = store.writer().expect("writer");
    let mut n = 0;
    let mut commit = |ids: Vec<String>| {
        n += 1;
        let appends = ids.iter().map(|id| Append::new(entry(id))).collect();
        let done = w.commit(&mut [WriteBatch { appends, ..WriteBatch::default() }], n).expect("commit");
        assert!(
            done[0].outcomes.iter().all(|o| matches!(o, AppendOutcome::Added(_))),
            "{:?}",
            done[0].outcomes
        );
    };
    // The clock at 2000, then back at 1000 and going on from there, then a sync that goes
    // back and forth between the two clocks.
    commit((0..10).map(|i| format!("{} u:a:t 0", 2000 + i)).collect());
    commit((0..10).map(|i| format!("{} u:a:t 0", 1000 + i)).collect());
    commit(
        (0..10).flat_map(|i| [format!("{} u:a:t 1", 1100 + i), format!("{} u:a:t 1", 3000 + i)]).collect(),
    );
    let (runs, ordered) = runs_in_key_order(dir.path(), "u:a:t");
    assert!(ordered, "{runs} runs of one node overlap");
    for id in ["2000 u:a:t 0", "1005 u:a:t 0", "1109 u:a:t 1", "3009 u:a:t 1"] {
        assert!(store.position_of_id(id).expect("find").is_some(), "{id}");
    }
    assert_eq!(store.count().expect("count"), 40);
}

/// A transaction that fails after appending an id leaves its node's mark raised in memory;
/// an id below that mark appended next, then re-sent after a restart, is still a duplicate.
#[test]
fn an_id_after_a_failed_transaction_is_appended_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open");
    // Refuses one id, so that its transaction fails after appending the one before.
    let raw = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("open");
    raw.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON log WHEN NEW.id = '11 u:a:t 0'
         BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .expect("trigger");
    let sync = |ids: &[&str]| WriteBatch {
        appends: ids.iter().map(|id| Append::new(entry(id))).collect(),
        ..WriteBatch::default()
    };
    let mut w = store.writer().expect("writer");
    assert!(w.commit(&mut [sync(&["10 u:a:t 0", "11 u:a:t 0"])], 1).is_err());
    let done = w.commit(&mut [sync(&["5 u:a:t 0"])], 2).expect("commit");
    assert!(matches!(done[0].outcomes[..], [AppendOutcome::Added(_)]), "{:?}", done[0].outcomes);
    drop(w);
    let mut w = store.writer().expect("writer");
    let done = w.commit(&mut [sync(&["5 u:a:t 0"])], 3).expect("commit");
    assert_eq!(done[0].outcomes, [AppendOutcome::Duplicate(Status::Processed)]);
    assert_eq!(store.count().expect("count"), 1);
}
