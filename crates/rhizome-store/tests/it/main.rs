//! Conformance tests of the log, run against the SQLite store. A new backend (PostgreSQL) must
//! pass the same `conformance` functions.

mod channels;
mod edge;
mod ids;

use rhizome_core::{AppendOutcome, NewEntry, Routing, Status};
use rhizome_protocol::{ActionId, Channel, NodeId};
use rhizome_store::{Append, LogWriter, SqliteStore, Store, WriteBatch};
use std::sync::Arc;

fn entry(id: &str, routing: Routing, status: Status) -> NewEntry {
    let id = ActionId::parse(id).expect("id");
    NewEntry {
        time: id.ms,
        id,
        action_json: Arc::from(r#"{"type":"inc","id":"1"}"#),
        subprotocol: 1,
        routing,
        status,
    }
}

fn batch(entries: Vec<NewEntry>) -> WriteBatch {
    WriteBatch { appends: entries.into_iter().map(Append::new).collect(), ..WriteBatch::default() }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open");
    (dir, store)
}

#[test]
fn appends_get_increasing_positions_and_duplicates_return_their_status() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let mut batches = vec![batch(vec![
        entry("1 a:b:c 0", Routing::channel("counter/1"), Status::Processed),
        entry("1 a:b:c 1", Routing::default(), Status::Waiting),
    ])];
    let done = w.commit(&mut batches, 100).expect("commit");
    assert_eq!(done[0].outcomes, [AppendOutcome::Added(1), AppendOutcome::Added(2)]);
    assert_eq!(done[0].entries.len(), 2);
    let mut again = vec![batch(vec![
        entry("1 a:b:c 0", Routing::default(), Status::Processed),
        entry("1 a:b:c 1", Routing::default(), Status::Processed),
        entry("2 a:b:c 0", Routing::default(), Status::Processed),
    ])];
    let done = w.commit(&mut again, 101).expect("commit");
    assert_eq!(
        done[0].outcomes[..2],
        [AppendOutcome::Duplicate(Status::Processed), AppendOutcome::Duplicate(Status::Waiting)]
    );
    // Positions only grow; a refused duplicate may leave a gap, never a reuse.
    let AppendOutcome::Added(third) = done[0].outcomes[2] else { panic!("{:?}", done[0].outcomes) };
    assert!(third > 2);
    assert_eq!(store.count().expect("count"), 3);
    assert_eq!(store.last_position().expect("position"), third);
}

#[test]
fn status_changes_and_crash_recovery() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let mut b = vec![batch(vec![
        entry("1 a:b:c 0", Routing::default(), Status::Waiting),
        entry("1 a:b:c 1", Routing::default(), Status::Waiting),
    ])];
    let done = w.commit(&mut b, 1).expect("commit");
    let AppendOutcome::Added(first) = done[0].outcomes[0] else { panic!("{:?}", done[0].outcomes) };
    let mut s = vec![WriteBatch { statuses: vec![(first, Status::Processed)], ..WriteBatch::default() }];
    w.commit(&mut s, 2).expect("commit");
    assert_eq!(w.recover_interrupted().expect("recover"), 1);
    assert_eq!(store.status_of("1 a:b:c 0").expect("status"), Some(Status::Processed));
    assert_eq!(store.status_of("1 a:b:c 1").expect("status"), Some(Status::Undone("error".into())));
    assert_eq!(store.status_of("9 a:b:c 1").expect("status"), None);
}

#[test]
fn reads_by_channel_and_target_respect_ranges_limits_and_exclusions() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let to_bob = Routing { users: vec!["bob".into()], ..Routing::default() };
    let to_bob_but_not_b1 =
        Routing { users: vec!["bob".into()], exclude_clients: vec!["bob:b1".into()], ..Routing::default() };
    let mut b = vec![batch(vec![
        entry("1 alice:a1:t 0", Routing::channel("c/1"), Status::Processed),
        entry("1 alice:a1:t 1", to_bob.clone(), Status::Processed),
        entry("1 alice:a1:t 2", Routing::channel("c/2"), Status::Processed),
        entry("1 alice:a1:t 3", to_bob_but_not_b1, Status::Processed),
        entry("1 bob:b1:t 0", to_bob, Status::Processed),
        entry("1 alice:a1:t 4", Routing::channel("c/1"), Status::Processed),
    ])];
    w.commit(&mut b, 1).expect("commit");
    let c1 = Channel::from("c/1");
    let all: Vec<u64> = store.read_channel(&c1, 0, 6, 100).expect("read").iter().map(|e| e.added).collect();
    assert_eq!(all, [1, 6]);
    let after: Vec<u64> = store.read_channel(&c1, 1, 6, 100).expect("read").iter().map(|e| e.added).collect();
    assert_eq!(after, [6]);
    let capped: Vec<u64> =
        store.read_channel(&c1, 0, 5, 100).expect("read").iter().map(|e| e.added).collect();
    assert_eq!(capped, [1]);
    assert_eq!(store.read_channel(&c1, 0, 6, 1).expect("read").len(), 1);

    let (entries, examined) = store.read_targeted(&NodeId::from("bob:b1:t"), 0, 6, 100).expect("read");
    let got: Vec<u64> = entries.iter().map(|e| e.added).collect();
    assert_eq!(got, [2], "excluded client and the author's own action are skipped");
    assert_eq!(examined, 6);
    let (entries, _) = store.read_targeted(&NodeId::from("bob:b2:t"), 0, 6, 100).expect("read");
    let got: Vec<u64> = entries.iter().map(|e| e.added).collect();
    assert_eq!(got, [2, 4, 5]);
    let (entries, examined) = store.read_targeted(&NodeId::from("bob:b2:t"), 0, 6, 2).expect("read");
    assert_eq!((entries.len(), examined), (2, 4), "a chunk reports how far it examined");
    assert_eq!(entries[0].routing.users, ["bob".into()] as [rhizome_protocol::UserId; 1]);
}

/// Routing to these users, clients and nodes.
fn to(users: &[&str], clients: &[&str], nodes: &[&str]) -> Routing {
    Routing {
        users: users.iter().map(|&u| u.into()).collect(),
        clients: clients.iter().map(|&c| c.into()).collect(),
        nodes: nodes.iter().map(|&n| NodeId::from(n)).collect(),
        ..Routing::default()
    }
}

#[test]
fn reads_for_a_user_find_its_users_clients_and_nodes_entries_only() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let mut b = vec![batch(vec![
        entry("1 x:1:t 0", to(&["bob"], &[], &[]), Status::Processed),
        entry("1 x:1:t 1", to(&[], &["bob:b1"], &[]), Status::Processed),
        entry("1 x:1:t 2", to(&[], &[], &["bob:b2:t"]), Status::Processed),
        // Other users whose ids start like bob's, and a channel.
        entry("1 x:1:t 3", to(&["bobby"], &["bob2:b1"], &["bo:b:t"]), Status::Processed),
        entry("1 x:1:t 4", Routing::channel("bob"), Status::Processed),
        entry("1 x:1:t 5", to(&["alice"], &["bob:b3"], &[]), Status::Processed),
    ])];
    w.commit(&mut b, 1).expect("commit");
    let bob = rhizome_protocol::UserId::from("bob");
    let (entries, examined) = store.read_addressed_to_user(&bob, 0, 6, 100).expect("read");
    let got: Vec<u64> = entries.iter().map(|e| e.added).collect();
    assert_eq!((got, examined), (vec![1, 2, 3, 6], 6));
    let (entries, examined) = store.read_addressed_to_user(&bob, 1, 5, 2).expect("read");
    let got: Vec<u64> = entries.iter().map(|e| e.added).collect();
    assert_eq!((got, examined), (vec![2, 3], 3), "a range and a chunk");
    let (entries, _) = store.read_addressed_to_user(&"bo".into(), 0, 6, 100).expect("read");
    assert_eq!(entries.iter().map(|e| e.added).collect::<Vec<_>>(), [4]);
}

#[test]
fn a_log_of_format_four_gains_the_user_index_of_its_addressed_entries() {
    let (dir, store) = open();
    let mut w = store.writer().expect("writer");
    let mut b = vec![batch(vec![
        entry("1 x:1:t 0", to(&["bob"], &[], &[]), Status::Processed),
        entry("1 x:1:t 1", to(&[], &["bob:b1"], &["carol:c1:t"]), Status::Processed),
        entry("1 x:1:t 2", to(&[], &["nouser"], &[]), Status::Processed),
    ])];
    w.commit(&mut b, 1).expect("commit");
    drop(w);
    drop(store);
    // As a build before the index left it.
    let db = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("open");
    db.execute_batch("DELETE FROM log_targets WHERE target LIKE 'a:%'; PRAGMA user_version = 4;")
        .expect("undo");
    drop(db);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    let found = |user: &str| -> Vec<u64> {
        let (entries, _) = store.read_addressed_to_user(&user.into(), 0, 10, 100).expect("read");
        entries.iter().map(|e| e.added).collect()
    };
    assert_eq!((found("bob"), found("carol"), found("nouser")), (vec![1, 2], vec![2], vec![]));
}

#[test]
fn what_a_client_confirmed_only_rises_and_an_older_logs_clients_are_trusted_up_to_its_end() {
    let (dir, store) = open();
    let mut w = store.writer().expect("writer");
    let positions = |list: &[(&str, u64)]| WriteBatch {
        client_positions: list.iter().map(|(c, p)| (c.to_string(), *p)).collect(),
        ..WriteBatch::default()
    };
    assert_eq!(store.confirmed_by("bob:b1").expect("read"), 0, "a new log: nothing for anyone");
    w.commit(&mut [positions(&[("bob:b1", 7), ("carol:c1", 3)])], 1).expect("commit");
    w.commit(&mut [positions(&[("bob:b1", 5)])], 1).expect("commit");
    assert_eq!(store.confirmed_by("bob:b1").expect("read"), 7, "a late, lower record does not lower it");
    assert_eq!(store.confirmed_by("carol:c1").expect("read"), 3);
    let mut b = vec![batch(
        (0..4).map(|n| entry(&format!("1 x:1:t {n}"), Routing::default(), Status::Processed)).collect(),
    )];
    w.commit(&mut b, 1).expect("commit");
    drop(w);
    drop(store);
    // As a build before the records left it: its clients' claims are trusted up to its end.
    let db = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("open");
    db.execute_batch("DROP TABLE client_positions; DELETE FROM cursors; PRAGMA user_version = 5;")
        .expect("undo");
    drop(db);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.confirmed_by("bob:b1").expect("read"), 4);
    assert_eq!(store.confirmed_by("dave:d1").expect("read"), 4);
}

#[test]
fn a_large_commit_indexes_every_channel_of_every_entry() {
    // More entries than the channel index is written in at once, on interleaved channels, some
    // on two channels, over two batches of one commit, with a duplicate among them.
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let routing = |n: usize| match n % 7 {
        0 => Routing { channels: vec!["c/x".into(), "c/y".into()], ..Routing::default() },
        k => Routing::channel(format!("c/{}", k % 3).as_str()),
    };
    let entries = |range: std::ops::Range<usize>| -> Vec<NewEntry> {
        range.map(|n| entry(&format!("5 a:b:c {n}"), routing(n), Status::Processed)).collect()
    };
    let mut second = entries(150..301);
    second.push(entry("5 a:b:c 3", routing(3), Status::Processed));
    let mut batches = vec![batch(entries(0..150)), batch(second)];
    let done = w.commit(&mut batches, 1).expect("commit");
    assert_eq!(done[1].outcomes.last(), Some(&AppendOutcome::Duplicate(Status::Processed)));
    for channel in ["c/0", "c/1", "c/2", "c/x", "c/y"] {
        let expected: Vec<u64> = (0..301)
            .filter(|n| match n % 7 {
                0 => channel == "c/x" || channel == "c/y",
                k => channel == format!("c/{}", k % 3),
            })
            .map(|n| n as u64 + 1)
            .collect();
        let got: Vec<u64> = store
            .read_channel(&Channel::from(channel), 0, 1_000, 1_000)
            .expect("read")
            .iter()
            .map(|e| e.added)
            .collect();
        assert_eq!(got, expected, "{channel}");
    }
}

#[test]
fn since_positions_come_from_ids_acks_or_time() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let mut b = vec![batch(vec![entry("1 a:b:c 0", Routing::default(), Status::Processed)])];
    w.commit(&mut b, 1_000).expect("commit");
    let mut b = vec![batch(vec![entry("2 a:b:c 0", Routing::default(), Status::Processed)])];
    w.commit(&mut b, 2_000).expect("commit");
    let mut b = vec![WriteBatch {
        owned_acks: vec![("5 server:x 0".into(), 1, "c:1".into())],
        ..WriteBatch::default()
    }];
    w.commit(&mut b, 3_000).expect("commit");
    assert_eq!(store.position_of_id("2 a:b:c 0").expect("id"), Some(2));
    assert_eq!(store.position_of_id("5 server:x 0").expect("ack"), Some(1));
    assert_eq!(store.position_of_id("6 server:x 0").expect("none"), None);
    assert_eq!(store.position_before_time(500).expect("time"), 0);
    assert_eq!(store.position_before_time(1_500).expect("time"), 1);
    assert_eq!(store.position_before_time(9_000).expect("time"), 2);
}

#[test]
fn subscription_acks_are_raised_and_never_lowered() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let ack = |position| WriteBatch {
        owned_acks: vec![("7 server:x 0".into(), position, "c:1".into())],
        ..WriteBatch::default()
    };
    let mut b = vec![ack(3)];
    w.commit(&mut b, 1).expect("commit");
    assert_eq!(store.position_of_id("7 server:x 0").expect("ack"), Some(3));
    let mut b = vec![ack(10)];
    w.commit(&mut b, 2).expect("commit");
    assert_eq!(store.position_of_id("7 server:x 0").expect("ack"), Some(10), "raised");
    // A lower or equal position (a late write, the original acknowledgement again) changes
    // nothing, in its own transaction or in the same one as a raise.
    let mut b = vec![ack(4)];
    w.commit(&mut b, 3).expect("commit");
    assert_eq!(store.position_of_id("7 server:x 0").expect("ack"), Some(10), "never lowered");
    let mut b = vec![ack(12), ack(5), ack(12)];
    w.commit(&mut b, 4).expect("commit");
    assert_eq!(store.position_of_id("7 server:x 0").expect("ack"), Some(12));
    // A raise for an id never recorded (its first write was dropped) records it.
    let mut b = vec![WriteBatch {
        owned_acks: vec![("8 server:x 0".into(), 6, "c:1".into())],
        ..WriteBatch::default()
    }];
    w.commit(&mut b, 5).expect("commit");
    assert_eq!(store.position_of_id("8 server:x 0").expect("ack"), Some(6));
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = SqliteStore::open(dir.path()).expect("open");
        let mut w = store.writer().expect("writer");
        let mut b = vec![batch(vec![entry("1 a:b:c 0", Routing::channel("x"), Status::Processed)])];
        w.commit(&mut b, 1).expect("commit");
    }
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.last_position().expect("position"), 1);
    let e = &store.read_channel(&Channel::from("x"), 0, 1, 10).expect("read")[0];
    assert_eq!(e.id.to_string(), "1 a:b:c 0");
    assert_eq!(&*e.action_json, r#"{"type":"inc","id":"1"}"#);
    assert_eq!(e.routing.channels, [Channel::from("x")]);
}

fn crdt_append(id: &str, action: serde_json::Value) -> Append {
    let fields = action.as_object().expect("object").clone();
    let op = rhizome_crdt::ops::parse(&fields).expect("op");
    let mut e = entry(id, Routing::channel(op.channel().as_str()), Status::Processed);
    e.action_json = Arc::from(action.to_string());
    let actor = e.id.node.clone();
    Append::crdt(e, op, actor)
}

#[test]
fn crdt_operations_are_applied_once_in_the_append_and_stored_as_deltas() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 2});
    let mut batches = vec![WriteBatch {
        appends: vec![
            crdt_append("1 a:b:c 0", inc.clone()),
            crdt_append("2 a:b:c 0", inc.clone()),
            // The same id again in the same transaction: a duplicate, not applied.
            crdt_append("2 a:b:c 0", inc.clone()),
            crdt_append("3 a:b:c 0", serde_json::json!({"type": "crdt/lww/set", "key": "k", "value": 1})),
        ],
        ..WriteBatch::default()
    }];
    let done = w.commit(&mut batches, 10).expect("commit");
    let outcomes = &done[0].outcomes;
    assert_eq!(outcomes[0], AppendOutcome::Added(1));
    assert_eq!(outcomes[1], AppendOutcome::Added(2));
    assert_eq!(outcomes[2], AppendOutcome::Duplicate(Status::Processed));
    assert_eq!(outcomes[3], AppendOutcome::Undone(3, "crdtTypeMismatch".into()));
    // What is stored and routed is the delta: the author's new total.
    let delta: serde_json::Value = serde_json::from_str(&done[0].entries[1].action_json).expect("json");
    assert_eq!(
        delta,
        serde_json::json!({"type": "crdt/delta", "key": "k", "kind": "counter", "delta": {"a:b:c": [4, 0]}})
    );
    assert_eq!(done[0].entries.len(), 2, "the refused operation is not routed");
    let (object, position) = store.read_object("k").expect("read").expect("object");
    assert_eq!(position, 2);
    assert_eq!(object.to_json(), serde_json::json!({"a:b:c": [4, 0]}));
    assert!(store.read_object("missing").expect("read").is_none());
    // Re-sent after the commit: still a duplicate, the state unchanged.
    let mut again =
        vec![WriteBatch { appends: vec![crdt_append("1 a:b:c 0", inc)], ..WriteBatch::default() }];
    let done = w.commit(&mut again, 11).expect("commit");
    assert_eq!(done[0].outcomes[0], AppendOutcome::Duplicate(Status::Processed));
    assert_eq!(
        store.read_object("k").expect("read").expect("object").0.to_json(),
        serde_json::json!({"a:b:c": [4, 0]})
    );
}

/// Operations on a set served by the writer, one refused among them: every stored delta and
/// the object read back are what `apply` and `join` give op by op (the refused one skipped), so
/// the writer's cached state was left as it was by the refusal.
#[test]
fn a_refused_operation_leaves_the_cached_object_as_it_was() {
    use rhizome_crdt::{ops, Kind, Object};
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let set = |verb: &str, elem: i64| serde_json::json!({"type": format!("crdt/set/{verb}"), "key": "s", "elem": elem});
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "s"});
    let rounds = [
        vec![("1 a:b:c 0", set("add", 1)), ("2 a:b:c 0", inc.clone()), ("3 d:e:f 0", set("add", 2))],
        vec![("4 a:b:c 0", set("add", 1)), ("5 d:e:f 0", set("remove", 1)), ("6 a:b:c 0", inc)],
        vec![("7 d:e:f 0", set("add", 3)), ("8 a:b:c 0", set("remove", 2))],
    ];
    let mut expected = Object::bottom(Kind::Set);
    let mut added = 0;
    for round in rounds {
        let appends = round.iter().map(|(id, action)| crdt_append(id, action.clone())).collect();
        let done = w.commit(&mut [WriteBatch { appends, ..WriteBatch::default() }], 10).expect("commit");
        let mut shipped = done[0].entries.iter();
        for (outcome, (id, action)) in done[0].outcomes.iter().zip(&round) {
            added += 1;
            let op = ops::parse(action.as_object().expect("object")).expect("op");
            let author = ActionId::parse(id).expect("id").node;
            match ops::apply(&expected, &op, &author, 0) {
                Ok(delta) => {
                    assert_eq!(*outcome, AppendOutcome::Added(added), "{id}");
                    let stored: serde_json::Value =
                        serde_json::from_str(&shipped.next().expect("routed").action_json).expect("json");
                    assert_eq!(stored["delta"], delta.to_json(), "{id}");
                    expected.join(&delta).expect("same kind");
                }
                Err(e) => assert_eq!(*outcome, AppendOutcome::Undone(added, e.reason().into()), "{id}"),
            }
        }
    }
    let (object, _) = store.read_object("s").expect("read").expect("object");
    assert_eq!(object, expected);
    assert_eq!(object.to_json()["elems"].as_array().map(Vec::len), Some(1), "only 3 is left");
}

/// A refused first operation on a key creates no object: an operation of another kind on the
/// same key afterwards is applied, in the same transaction or the next, as after a restart.
#[test]
fn a_refused_first_operation_creates_no_object() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    // Deleting an element of a list that does not exist yet is refused.
    let delete = serde_json::json!({"type": "crdt/list/delete", "key": "k", "id": ["a:b:c", 1]});
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    let mut b = vec![WriteBatch {
        appends: vec![crdt_append("1 a:b:c 0", delete), crdt_append("2 a:b:c 0", inc)],
        ..WriteBatch::default()
    }];
    let done = w.commit(&mut b, 1).expect("commit");
    assert_eq!(done[0].outcomes[0], AppendOutcome::Undone(1, "crdtUnknownElement".into()));
    assert_eq!(done[0].outcomes[1], AppendOutcome::Added(2), "the counter is the key's first object");
    // Alone in its transaction, on another key.
    let delete_other = serde_json::json!({"type": "crdt/list/delete", "key": "other", "id": ["a:b:c", 1]});
    let mut b =
        vec![WriteBatch { appends: vec![crdt_append("3 d:e:f 0", delete_other)], ..WriteBatch::default() }];
    let done = w.commit(&mut b, 2).expect("commit");
    assert_eq!(done[0].outcomes[0], AppendOutcome::Undone(3, "crdtUnknownElement".into()));
    let lww = serde_json::json!({"type": "crdt/lww/set", "key": "other", "value": 1});
    let mut b = vec![WriteBatch { appends: vec![crdt_append("4 d:e:f 0", lww)], ..WriteBatch::default() }];
    let done = w.commit(&mut b, 3).expect("commit");
    assert_eq!(done[0].outcomes[0], AppendOutcome::Added(4), "no list was left behind in the cache");
    assert!(store
        .read_object("other")
        .expect("read")
        .is_some_and(|(o, _)| o.kind() == rhizome_crdt::Kind::Lww));
    assert_eq!(
        store.read_object("k").expect("read").expect("object").0.to_json(),
        serde_json::json!({"a:b:c": [1, 0]})
    );
}

#[test]
fn an_unreadable_object_refuses_its_own_operations_and_nothing_else() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    w.commit(
        &mut [WriteBatch { appends: vec![crdt_append("1 a:b:c 0", inc.clone())], ..WriteBatch::default() }],
        1,
    )
    .expect("commit");
    // Something else damages the stored state while the server is down.
    drop(w);
    let raw = rusqlite::Connection::open(store.path()).expect("open");
    raw.execute("UPDATE crdt_objects SET state = '{\"a:b:c\": \"oops\"}' WHERE key = 'k'", [])
        .expect("damage");
    drop(raw);
    let mut w = store.writer().expect("writer");
    let mut batches = vec![WriteBatch {
        appends: vec![
            crdt_append("2 a:b:c 0", inc),
            Append::new(entry("3 a:b:c 0", Routing::channel("c"), Status::Processed)),
        ],
        ..WriteBatch::default()
    }];
    let done = w.commit(&mut batches, 2).expect("the transaction still commits");
    assert_eq!(done[0].outcomes[0], AppendOutcome::Undone(2, "error".into()));
    assert_eq!(done[0].outcomes[1], AppendOutcome::Added(3));
}

#[test]
fn objects_read_back_whole_between_snapshots_and_after_a_restart() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    // More operations than one snapshot interval, one per transaction.
    for i in 0..150u32 {
        let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
        let appends = vec![crdt_append(&format!("{} a:b:c 0", i + 1), inc)];
        w.commit(&mut [WriteBatch { appends, ..WriteBatch::default() }], i64::from(i)).expect("commit");
        // Readers join the deltas logged after the last snapshot.
        let (object, position) = store.read_object("k").expect("read").expect("object");
        assert_eq!(object.to_json(), serde_json::json!({"a:b:c": [i + 1, 0]}), "after {} operations", i + 1);
        assert_eq!(position, u64::from(i) + 1);
    }
    // Deltas that two snapshots hold are cleaned: their bodies and channel index go, their ids
    // stay (a re-sent early operation is still a duplicate).
    let raw = rusqlite::Connection::open(store.path()).expect("open");
    let indexed: i64 = raw
        .query_row(
            "SELECT count(*) FROM log_channel_runs AS r JOIN log ON added BETWEEN r.first AND r.last
             WHERE r.channel = 'crdt/k'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert!(indexed > 0 && indexed <= 2 * 64 + 1, "{indexed} deltas still indexed");
    let first: String =
        raw.query_row("SELECT action FROM log WHERE added = 1", [], |r| r.get(0)).expect("row");
    assert_eq!(first, "{}");
    drop(raw);
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    let appends = vec![crdt_append("1 a:b:c 0", inc)];
    let done = w.commit(&mut [WriteBatch { appends, ..WriteBatch::default() }], 999).expect("commit");
    assert_eq!(done[0].outcomes[0], AppendOutcome::Duplicate(Status::Processed));
    // A new writer (a restart) starts from the snapshot and the deltas after it.
    drop(w);
    let mut w = store.writer().expect("writer");
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    let appends = vec![crdt_append("1000 a:b:c 0", inc)];
    let done = w.commit(&mut [WriteBatch { appends, ..WriteBatch::default() }], 1000).expect("commit");
    let delta: serde_json::Value = serde_json::from_str(&done[0].entries[0].action_json).expect("json");
    assert_eq!(
        delta["delta"],
        serde_json::json!({"a:b:c": [151, 0]}),
        "the author's total survives the restart"
    );
}

#[test]
fn an_object_catch_up_is_the_join_of_later_deltas_or_the_whole_state_once_they_may_be_cleaned() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let add = |w: &mut rhizome_store::SqliteWriter, n: u32| {
        let op = serde_json::json!({"type": "crdt/set/add", "key": "s", "elem": n});
        let appends = vec![crdt_append(&format!("{} a:b:c 0", n), op)];
        w.commit(&mut [WriteBatch { appends, ..WriteBatch::default() }], i64::from(n)).expect("commit");
    };
    let elems = |object: &rhizome_crdt::Object| -> Vec<u64> {
        let mut elems: Vec<u64> = object.to_json()["elems"]
            .as_array()
            .expect("elems")
            .iter()
            .map(|e| e[0].as_u64().expect("number"))
            .collect();
        elems.sort_unstable();
        elems
    };
    for n in 1..=10 {
        add(&mut w, n);
    }
    let missing = store.catch_up_object("missing", 0).expect("read");
    assert_eq!((missing.object, missing.through), (None, 10));
    // The first operation stored the snapshot: a subscriber that has position 6 lacks 7 to 10.
    let read = store.catch_up_object("s", 6).expect("read");
    assert!(!read.whole);
    assert_eq!((elems(&read.object.expect("object")), read.through), ((7..=10).collect(), 10));
    let object = store.catch_up_object("s", 10).expect("read").object;
    assert_eq!(elems(&object.expect("object")), Vec::<u64>::new(), "nothing lacking");

    // Past two snapshot rewrites the early deltas are cleaned: a subscriber far behind gets
    // the whole state, not the few deltas still logged.
    for n in 11..=200 {
        add(&mut w, n);
    }
    let read = store.catch_up_object("s", 6).expect("read");
    assert!(read.whole, "the state, to replace a copy with");
    assert_eq!((elems(&read.object.expect("object")), read.through), ((1..=200).collect(), 200));
    // Snapshots are stored at operations 1, 66, 131 and 196 (each after 64 more): after the
    // last one, the join of the later deltas again.
    let object = store.catch_up_object("s", 197).expect("read").object;
    assert_eq!(elems(&object.expect("object")), (198..=200).collect::<Vec<_>>());
    let object = store.catch_up_object("s", 195).expect("read").object;
    assert_eq!(elems(&object.expect("object")).len(), 200, "before the last snapshot: all of it");
}

#[test]
fn snapshot_cleaning_keeps_what_goes_anywhere_but_the_objects_channel() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let commit = |w: &mut rhizome_store::SqliteWriter, append: Append, now: i64| {
        w.commit(&mut [WriteBatch { appends: vec![append], ..WriteBatch::default() }], now).expect("commit");
    };
    // Position 1: a delta the rules also send to a user; 2: another action on the channel.
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    let op = rhizome_crdt::ops::parse(inc.as_object().expect("object")).expect("op");
    let mut to_bob = entry("1 a:b:c 0", Routing::channel("crdt/k"), Status::Processed);
    to_bob.routing.users.push(rhizome_protocol::UserId::from("bob"));
    to_bob.action_json = Arc::from(inc.to_string());
    let actor = to_bob.id.node.clone();
    commit(&mut w, Append::crdt(to_bob, op, actor), 1);
    commit(&mut w, Append::new(entry("2 a:b:c 0", Routing::channel("crdt/k"), Status::Processed)), 2);
    // Two hundred more operations: several snapshot rewrites clean the deltas before them.
    for i in 3..=200u32 {
        commit(&mut w, crdt_append(&format!("{i} a:b:c 0"), inc.clone()), i64::from(i));
    }
    let raw = rusqlite::Connection::open(store.path()).expect("open");
    let body = |added: i64| -> String {
        raw.query_row("SELECT action FROM log WHERE added = ?1", [added], |r| r.get(0)).expect("row")
    };
    assert_ne!(body(1), "{}", "the delta also sent to bob is kept");
    assert_eq!(body(2), r#"{"type":"inc","id":"1"}"#, "another action on the channel is kept");
    assert_eq!(body(3), "{}", "a delta that went only to the channel is cleaned");
    let bob = rhizome_protocol::NodeId::parse("bob:phone:1").expect("node");
    let (entries, _) = store.read_targeted(&bob, 0, 1000, 1000).expect("read");
    assert_eq!(entries.iter().map(|e| e.added).collect::<Vec<_>>(), vec![1], "bob still gets it");
    let x = Channel::from("crdt/k");
    let on_channel = store.read_channel(&x, 0, 2, 10).expect("read");
    assert_eq!(on_channel.iter().map(|e| e.added).collect::<Vec<_>>(), vec![1, 2]);
}

/// A large object's snapshot is rewritten every `document bytes / 4096` operations (at least
/// 64, at most 4096), not every 64: an operation then costs about 4 KiB of snapshot, and the
/// state read back (snapshot joined with the deltas after it) stays exact in between.
#[test]
fn a_large_objects_snapshot_is_rewritten_less_often() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let add = |i: usize| serde_json::json!({"type": "crdt/set/add", "key": "big", "elem": format!("element number {i:08} of a large set")});
    let elements = 12_000;
    let appends = (0..elements).map(|i| crdt_append(&format!("1 a:b:c {i}"), add(i))).collect();
    w.commit(&mut [WriteBatch { appends, ..WriteBatch::default() }], 1).expect("commit");
    let raw = rusqlite::Connection::open(store.path()).expect("open");
    let snapshot = || -> (i64, usize) {
        raw.query_row("SELECT position, length(state) FROM crdt_objects WHERE key = 'big'", [], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as usize))
        })
        .expect("snapshot")
    };
    let (at, bytes) = snapshot();
    let interval = (bytes / 4096).clamp(64, 4096) as i64;
    assert!(interval > 100, "the premise: a {bytes}-byte document is rewritten every {interval} operations");
    // Operations one per commit: the snapshot moves exactly when `interval` operations
    // followed the last one.
    let mut position = elements as i64;
    let mut count = elements;
    while position < at + interval + 1 {
        position += 1;
        count += 1;
        let id = format!("2 a:b:c {position}");
        let done = w
            .commit(
                &mut [WriteBatch { appends: vec![crdt_append(&id, add(count))], ..WriteBatch::default() }],
                2,
            )
            .expect("commit");
        assert_eq!(done[0].outcomes[0], AppendOutcome::Added(position as u64));
        let expected = if position <= at + interval { at } else { position };
        assert_eq!(snapshot().0, expected, "after position {position}");
        if position == at + interval {
            // Between snapshots, readers join the logged deltas: the whole set.
            let (object, last) = store.read_object("big").expect("read").expect("object");
            assert_eq!(last, position as u64);
            assert_eq!(object.to_json()["elems"].as_array().map(Vec::len), Some(count));
        }
    }
}

/// Between two snapshots of a large map, the logged deltas a reader must parse and join stay
/// bounded by the object's size, not only by the operation count: overwriting one path of a
/// ~1 MiB map with 60 KiB values must not leave 15 MiB of deltas for every reader.
#[test]
fn deltas_between_snapshots_stay_bounded_by_the_object_size() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let big = "x".repeat(60 * 1024);
    let put = |path: usize, i: usize| serde_json::json!({"type": "crdt/map/put", "key": "m", "path": [format!("p{path}")], "value": format!("{i}{big}")});
    let mut n = 0;
    let mut commit = |w: &mut rhizome_store::SqliteWriter, action: serde_json::Value| {
        n += 1;
        let id = format!("1 a:b:c {n}");
        w.commit(&mut [WriteBatch { appends: vec![crdt_append(&id, action)], ..WriteBatch::default() }], 1)
            .expect("commit");
    };
    for p in 0..17 {
        commit(&mut w, put(p, p));
    }
    let raw = rusqlite::Connection::open(store.path()).expect("open");
    let measure = || -> (usize, usize) {
        let snap: i64 =
            raw.query_row("SELECT length(state) FROM crdt_objects WHERE key='m'", [], |r| r.get(0)).unwrap();
        let deltas: i64 = raw
            .query_row(
                "SELECT coalesce(sum(length(action)),0) FROM log WHERE added > (SELECT position FROM crdt_objects WHERE key='m')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (snap as usize, deltas as usize)
    };
    let mut worst = 0.0f64;
    for i in 0..300 {
        commit(&mut w, put(0, 100 + i));
        let (snap, deltas) = measure();
        if i >= 64 {
            worst = worst.max(deltas as f64 / snap as f64);
        }
    }
    assert!(worst <= 4.0, "a reader joins {worst:.1}x the object's size in deltas");
}

/// A log written before format version 1 loses its subscription acknowledgements once (they
/// may stand past deltas an author never received); a current log keeps them across restarts.
#[test]
fn opening_an_older_log_drops_its_subscription_acknowledgements_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ack = |position| WriteBatch {
        owned_acks: vec![("7 server:x 0".into(), position, "c:1".into())],
        ..WriteBatch::default()
    };
    {
        let store = SqliteStore::open(dir.path()).expect("open");
        store.writer().expect("writer").commit(&mut [ack(5)], 1).expect("commit");
    }
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.position_of_id("7 server:x 0").expect("ack"), Some(5), "a current log keeps them");
    drop(store);
    // As an earlier build left it.
    let raw = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("open");
    raw.pragma_update(None, "user_version", 0).expect("version");
    drop(raw);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.position_of_id("7 server:x 0").expect("ack"), None, "dropped on upgrade");
    store.writer().expect("writer").commit(&mut [ack(6)], 2).expect("commit");
    drop(store);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.position_of_id("7 server:x 0").expect("ack"), Some(6), "only once");
}

#[test]
fn push_targets_are_replaced_per_client_removed_and_survive_reopening() {
    use rhizome_store::{PushTarget, PushTargetChange};
    let dir = tempfile::tempdir().expect("temp dir");
    let target = |client: &str, node: &str, channels: &[&str], at: i64| PushTarget {
        client: client.into(),
        node: node.into(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        target: format!(r#"{{"type":"webhook","token":"{node}"}}"#),
        registered_ms: at,
    };
    {
        let store = SqliteStore::open(dir.path()).expect("open");
        let mut w = store.writer().expect("writer");
        let puts = vec![
            PushTargetChange::Put(target("alice:phone", "alice:phone:1", &["news"], 1)),
            PushTargetChange::Put(target("bob:tab", "bob:tab:1", &[], 2)),
            PushTargetChange::Put(target("carol:x", "carol:x:1", &["a", "b"], 3)),
        ];
        w.commit(&mut [WriteBatch { push_targets: puts, ..WriteBatch::default() }], 1).expect("commit");
        // The same client again replaces; a removal of one, and of one never registered.
        let changes = vec![
            PushTargetChange::Put(target("alice:phone", "alice:phone:2", &["news", "board/1"], 4)),
            PushTargetChange::Remove("bob:tab".into()),
            PushTargetChange::Remove("nobody:x".into()),
        ];
        w.commit(&mut [WriteBatch { push_targets: changes, ..WriteBatch::default() }], 2).expect("commit");
        assert_eq!(store.push_targets().expect("read").len(), 2);
    }
    let store = SqliteStore::open(dir.path()).expect("reopen");
    let read = store.push_targets().expect("read");
    assert_eq!(
        read,
        vec![
            target("alice:phone", "alice:phone:2", &["news", "board/1"], 4),
            target("carol:x", "carol:x:1", &["a", "b"], 3)
        ]
    );
}

#[test]
fn a_since_raises_only_an_acknowledgement_of_the_same_client_and_creates_none() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let owned = |id: &str, position, client: &str| WriteBatch {
        owned_acks: vec![(id.into(), position, client.into())],
        ..WriteBatch::default()
    };
    let resumed = |id: &str, position, client: &str| WriteBatch {
        resumed_acks: vec![(id.into(), position, client.into())],
        ..WriteBatch::default()
    };
    w.commit(&mut [owned("1 server:x 0", 3, "bob:b1")], 1).expect("commit");
    w.commit(&mut [resumed("1 server:x 0", 9, "mallory:m1")], 2).expect("commit");
    assert_eq!(store.position_of_id("1 server:x 0").expect("read"), Some(3), "another client's since");
    w.commit(&mut [resumed("1 server:x 0", 7, "bob:b1")], 3).expect("commit");
    assert_eq!(store.position_of_id("1 server:x 0").expect("read"), Some(7), "its own");
    w.commit(&mut [resumed("1 server:x 0", 5, "bob:b1")], 4).expect("commit");
    assert_eq!(store.position_of_id("1 server:x 0").expect("read"), Some(7), "never lowered");
    w.commit(&mut [resumed("2 server:x 0", 5, "bob:b1")], 5).expect("commit");
    assert_eq!(store.position_of_id("2 server:x 0").expect("read"), None, "an unknown id is not created");
}

#[test]
fn a_log_of_format_one_gains_acknowledgement_owners_and_keeps_its_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        // As format 1 left it: acknowledgements without an owner.
        let raw = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("open");
        raw.execute_batch(
            "CREATE TABLE subscription_acks(id TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO subscription_acks VALUES ('1 server:x 0', 4);
             PRAGMA user_version = 1;",
        )
        .expect("format 1");
    }
    let store = SqliteStore::open(dir.path()).expect("open");
    assert_eq!(store.position_of_id("1 server:x 0").expect("read"), Some(4), "kept");
    let mut w = store.writer().expect("writer");
    let batch = WriteBatch {
        resumed_acks: vec![("1 server:x 0".into(), 9, "bob:b1".into())],
        ..WriteBatch::default()
    };
    w.commit(&mut [batch], 1).expect("commit");
    assert_eq!(store.position_of_id("1 server:x 0").expect("read"), Some(4), "no owner: no since raises it");
    let batch =
        WriteBatch { owned_acks: vec![("1 server:x 0".into(), 6, "c:1".into())], ..WriteBatch::default() };
    w.commit(&mut [batch], 2).expect("commit");
    assert_eq!(
        store.position_of_id("1 server:x 0").expect("read"),
        Some(6),
        "its own subscription still does"
    );
}
