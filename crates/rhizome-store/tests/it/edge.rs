//! What an edge's link needs from the log: the upstream cursor, reads in log order with each
//! entry's status, relayed CRDT deltas joined as they are, and unsent deltas kept whole.

use crate::{crdt_append, entry, open};
use rhizome_core::{AppendOutcome, Routing, Status};
use rhizome_crdt::{Lattice, Object};
use rhizome_store::{
    Append, LogWriter, ObjectReset, SqliteStore, Store, UpstreamChannel, WriteBatch, UPSTREAM_SENT,
};
use std::sync::Arc;

fn commit(w: &mut rhizome_store::SqliteWriter, batch: WriteBatch) -> Vec<AppendOutcome> {
    let mut batches = [batch];
    w.commit(&mut batches, 1).expect("commit").remove(0).outcomes
}

fn cursor_to(position: u64) -> WriteBatch {
    WriteBatch { cursors: vec![(UPSTREAM_SENT.to_owned(), position)], ..WriteBatch::default() }
}

#[test]
fn a_cursor_is_created_by_its_first_write_only_rises_and_survives_reopening() {
    let (dir, store) = open();
    let mut w = store.writer().expect("writer");
    assert_eq!(store.cursor(UPSTREAM_SENT).expect("read"), None);
    commit(&mut w, cursor_to(0));
    assert_eq!(store.cursor(UPSTREAM_SENT).expect("read"), Some(0));
    commit(&mut w, cursor_to(7));
    commit(&mut w, cursor_to(3));
    assert_eq!(store.cursor(UPSTREAM_SENT).expect("read"), Some(7), "a late, lower write does not lower it");
    assert_eq!(store.cursor("other").expect("read"), None, "cursors are separate by name");
    drop(w);
    drop(store);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.cursor(UPSTREAM_SENT).expect("read"), Some(7));
}

#[test]
fn reads_from_a_position_give_entries_in_log_order_with_their_status() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let statuses = [Status::Processed, Status::Waiting, Status::Undone("denied".into()), Status::Processed];
    let appends = statuses
        .iter()
        .enumerate()
        .map(|(i, s)| Append::new(entry(&format!("{} a:b:c 0", i + 1), Routing::default(), s.clone())))
        .collect();
    commit(&mut w, WriteBatch { appends, ..WriteBatch::default() });
    let read = store.read_from(0, 10).expect("read");
    let got: Vec<(u64, Status)> = read.iter().map(|(e, s)| (e.added, s.clone())).collect();
    let want: Vec<(u64, Status)> =
        statuses.iter().cloned().enumerate().map(|(i, s)| (i as u64 + 1, s)).collect();
    assert_eq!(got, want);
    assert_eq!(read[1].0.id.text(), "2 a:b:c 0");
    let later: Vec<u64> = store.read_from(1, 2).expect("read").iter().map(|(e, _)| e.added).collect();
    assert_eq!(later, [2, 3], "after the position, at most the limit");
    assert!(store.read_from(4, 10).expect("read").is_empty());
}

/// The value of the counter at `key`.
fn counter_value(store: &SqliteStore, key: &str) -> i128 {
    match store.read_object(key).expect("read").expect("the object exists") {
        (Object::Counter(counter), _) => counter.value(),
        (other, _) => panic!("not a counter: {other:?}"),
    }
}

fn delta_append(id: &str, key: &str, delta: &Object) -> Append {
    let text = rhizome_crdt::delta_action(key, delta);
    let serde_json::Value::Object(fields) = serde_json::from_str(&text).expect("json") else {
        panic!("object")
    };
    let (key, delta) = rhizome_crdt::parse_delta(&fields).expect("delta");
    let mut e = entry(id, Routing::channel(format!("crdt/{}", key.as_str()).as_str()), Status::Processed);
    e.action_json = Arc::from(text);
    Append::crdt_delta(e, key, delta)
}

#[test]
fn a_relayed_delta_under_a_logged_id_is_rejoined_once_when_the_object_lacks_it() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let direct: rhizome_crdt::NodeId = "alice:phone:1".into();
    let at_edge: rhizome_crdt::NodeId = "server:edge:s1~alice:phone:1".into();
    // The author's operation, applied here from the author.
    let outcomes = commit(
        &mut w,
        WriteBatch {
            appends: vec![crdt_append(
                "5 alice:phone:1 0",
                serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1}),
            )],
            ..WriteBatch::default()
        },
    );
    assert!(matches!(outcomes[0], AppendOutcome::Added(1)), "{outcomes:?}");
    let held = Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&direct, 1));
    let relayed = Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&at_edge, 2));
    let rejoin = |delta: &Object| WriteBatch {
        appends: vec![delta_append("5 alice:phone:1 0", "k", delta)],
        ..WriteBatch::default()
    };
    // What the object holds already: a plain duplicate, nothing written.
    assert_eq!(commit(&mut w, rejoin(&held)), [AppendOutcome::Duplicate(Status::Processed)]);
    assert_eq!(store.last_position().expect("read"), 1);
    // The edge's own application: joined, under the rejoined id, the answer still a duplicate.
    let mut batches = [rejoin(&relayed)];
    let committed = w.commit(&mut batches, 1).expect("commit").remove(0);
    assert_eq!(committed.outcomes, [AppendOutcome::Duplicate(Status::Processed)]);
    let ids: Vec<String> = committed.entries.iter().map(|e| e.id.text()).collect();
    assert_eq!(ids, [format!("5 alice:phone:1 {}", 1u64 << 52)]);
    let to_author: Vec<String> = committed.entries[0].routing.clients.iter().map(|c| c.to_string()).collect();
    assert_eq!(to_author, ["alice:phone"], "the author's devices lack the other server's application");
    assert_eq!(counter_value(&store, "k"), 3);
    // Sent again: nothing more.
    assert_eq!(commit(&mut w, rejoin(&relayed)), [AppendOutcome::Duplicate(Status::Processed)]);
    assert_eq!(store.last_position().expect("read"), 2);
    // Another delta under the id: its rejoined id is taken, so it is only a duplicate.
    let plain = WriteBatch {
        appends: vec![delta_append(
            "5 alice:phone:1 0",
            "k",
            &Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&at_edge, 9)),
        )],
        ..WriteBatch::default()
    };
    assert_eq!(commit(&mut w, plain), [AppendOutcome::Duplicate(Status::Processed)]);
    assert_eq!(store.last_position().expect("read"), 2);
    // A peer's delta under an id refused here is refused with it; the upstream's is joined.
    let refused = entry("6 bob:phone:1 0", Routing::default(), Status::Undone("denied".into()));
    commit(&mut w, WriteBatch { appends: vec![Append::new(refused)], ..WriteBatch::default() });
    let bobs = || Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&"bob:phone:1".into(), 4));
    let relayed =
        WriteBatch { appends: vec![delta_append("6 bob:phone:1 0", "k", &bobs())], ..WriteBatch::default() };
    assert_eq!(commit(&mut w, relayed), [AppendOutcome::Duplicate(Status::Undone("denied".into()))]);
    let from_upstream = WriteBatch {
        appends: vec![delta_append("6 bob:phone:1 0", "k", &bobs()).from_upstream()],
        ..WriteBatch::default()
    };
    assert_eq!(commit(&mut w, from_upstream), [AppendOutcome::Duplicate(Status::Undone("denied".into()))]);
    assert_eq!(counter_value(&store, "k"), 7, "the upstream's application is the truth");
}

#[test]
fn the_ids_folded_into_a_relayed_delta_are_found_and_not_applied_again() {
    let (dir, store) = open();
    let mut w = store.writer().expect("writer");
    let at_edge: rhizome_crdt::NodeId = "server:edge:s1~alice:phone:1".into();
    let id = |text: &str| rhizome_protocol::ActionId::parse(text).expect("id");
    // The edge applied three increments of 1 and relays them as one delta under the last id;
    // one member's id is later than the fold's (the author's clock went back).
    let fold = Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&at_edge, 3));
    let members = vec![id("10 alice:phone:1 0"), id("11 alice:phone:1 0"), id("40 alice:phone:1 0")];
    let relayed = || WriteBatch {
        appends: vec![delta_append("12 alice:phone:1 0", "k", &fold).folded(members.clone())],
        ..WriteBatch::default()
    };
    assert_eq!(commit(&mut w, relayed()), [AppendOutcome::Added(1)]);
    assert_eq!(counter_value(&store, "k"), 3);
    // The device moved with its operations in flight and sends them here directly: each one
    // folded is a duplicate of the fold, the later one too, and nothing is applied again.
    for member in ["10 alice:phone:1 0", "11 alice:phone:1 0", "40 alice:phone:1 0", "12 alice:phone:1 0"] {
        let direct = WriteBatch {
            appends: vec![crdt_append(
                member,
                serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1}),
            )],
            ..WriteBatch::default()
        };
        assert_eq!(commit(&mut w, direct), [AppendOutcome::Duplicate(Status::Processed)], "{member}");
    }
    assert_eq!(counter_value(&store, "k"), 3, "each operation counts once");
    assert_eq!(store.position_of_id("11 alice:phone:1 0").expect("read"), Some(1));
    // The author's next operations, between the fold and its latest member and after it.
    for (n, member) in ["20 alice:phone:1 0", "41 alice:phone:1 0"].iter().enumerate() {
        let next = WriteBatch {
            appends: vec![crdt_append(
                member,
                serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1}),
            )],
            ..WriteBatch::default()
        };
        assert_eq!(commit(&mut w, next), [AppendOutcome::Added(n as u64 + 2)], "{member}");
    }
    assert_eq!(counter_value(&store, "k"), 5);
    // The same fold sent again is a duplicate; a region reads what was folded into it.
    assert_eq!(commit(&mut w, relayed()), [AppendOutcome::Duplicate(Status::Processed)]);
    let into: Vec<(u64, String)> = store.folded_into(1, 3).expect("read");
    let want: Vec<(u64, String)> = members.iter().map(|m| (1, m.text())).collect();
    assert_eq!(into, want, "the late id of the entry at 2 is its own, not folded into it");
    drop(w);
    drop(store);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    let mut w = store.writer().expect("writer");
    let again = WriteBatch {
        appends: vec![crdt_append(
            "40 alice:phone:1 0",
            serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1}),
        )],
        ..WriteBatch::default()
    };
    assert_eq!(commit(&mut w, again), [AppendOutcome::Duplicate(Status::Processed)], "after a restart too");
}

/// A counter operation applied here for a client, under `actor`, kept to yield.
fn own_inc(id: &str, actor: &str) -> Append {
    let action = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    let fields = action.as_object().expect("object").clone();
    let op = rhizome_crdt::ops::parse(&fields).expect("op");
    let mut e = entry(id, Routing::channel("crdt/k"), Status::Processed);
    e.action_json = Arc::from(action.to_string());
    Append::crdt(e, op, actor.into()).may_yield()
}

#[test]
fn an_own_application_yields_once_to_a_peers_and_not_after_it_was_taken_back() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let id = |text: &str| rhizome_protocol::ActionId::parse(text).expect("id");
    let region = "server:edge:r~alice:a1:t";
    let site = "server:edge:s~alice:a1:t";
    // Two operations applied here (a region, whose actor is not the author's node).
    let outcomes = commit(
        &mut w,
        WriteBatch {
            appends: vec![own_inc("5 alice:a1:t 0", region), own_inc("6 alice:a1:t 0", region)],
            ..WriteBatch::default()
        },
    );
    assert_eq!(outcomes, [AppendOutcome::Added(1), AppendOutcome::Added(2)]);
    assert!(store.counter_op(1).expect("read").is_some(), "kept while the upstream may refuse it");
    // The upstream refused the second: taken back here, it no longer yields.
    commit(&mut w, WriteBatch { applied_ops_done: vec![2], ..WriteBatch::default() });
    // A site's fold holds both (the device sent them there too), under a later id; and one
    // of another object names the first.
    let other = Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&site.into(), 9));
    let wrong = WriteBatch {
        appends: vec![delta_append("7 alice:a1:t 0", "other", &other).folded(vec![id("5 alice:a1:t 0")])],
        ..WriteBatch::default()
    };
    assert_eq!(commit(&mut w, wrong), [AppendOutcome::Added(3)]);
    assert_eq!(counter_value(&store, "k"), 2, "another object's delta takes nothing back");
    let fold = Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&site.into(), 2));
    let relay = |n: u64| WriteBatch {
        appends: vec![delta_append(&format!("{n} alice:a1:t 0"), "k", &fold)
            .folded(vec![id("5 alice:a1:t 0"), id("6 alice:a1:t 0")])],
        ..WriteBatch::default()
    };
    let mut batches = [relay(8)];
    let committed = w.commit(&mut batches, 1).expect("commit").remove(0);
    assert_eq!(
        committed.outcomes,
        [AppendOutcome::Added(4)],
        "one outcome per append: the taking back has none"
    );
    let ids: Vec<String> = committed.entries.iter().map(|e| e.id.text()).collect();
    assert_eq!(ids, ["8 alice:a1:t 0".to_owned(), format!("5 alice:a1:t {}", 1u64 << 50)]);
    // The site's two, the region's second, and not its first: it yielded.
    assert_eq!(counter_value(&store, "k"), 3);
    assert!(store.counter_op(1).expect("read").is_none(), "taken back once: no refusal takes it back again");
    // The same ids in another fold (the site restarted): nothing more is taken back.
    assert_eq!(commit(&mut w, relay(9)), [AppendOutcome::Added(6)]);
    assert_eq!(counter_value(&store, "k"), 3);
}

#[test]
fn the_ids_folded_into_a_rejoined_delta_are_the_new_entrys() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let id = |text: &str| rhizome_protocol::ActionId::parse(text).expect("id");
    // The author's operation applied here, then a site's fold under its id, with another.
    commit(
        &mut w,
        WriteBatch { appends: vec![own_inc("5 alice:a1:t 0", "alice:a1:t")], ..WriteBatch::default() },
    );
    let fold = Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&"server:edge:s~alice:a1:t".into(), 2));
    let relay = WriteBatch {
        appends: vec![delta_append("5 alice:a1:t 0", "k", &fold).folded(vec![id("4 alice:a1:t 0")])],
        ..WriteBatch::default()
    };
    let mut batches = [relay];
    let committed = w.commit(&mut batches, 1).expect("commit").remove(0);
    let rejoined = committed.entries.iter().find(|e| e.id.seq == 1 << 52).expect("rejoined").added;
    // What goes up from here names the folded one with the rejoined entry, not the old one.
    let into = store.folded_into(rejoined, rejoined).expect("read");
    assert_eq!(into, [(rejoined, "4 alice:a1:t 0".to_owned())]);
    assert_eq!(counter_value(&store, "k"), 2, "the site's two; this server's one taken back");
}

#[test]
fn a_relayed_delta_is_joined_as_it_is_and_joining_it_again_changes_nothing() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let author: rhizome_crdt::NodeId = "alice:phone:1".into();
    let first = rhizome_crdt::PnCounter::bottom().inc(&author, 5);
    let second = first.inc(&author, 2);
    let delta_of_second = Object::Counter(second.clone());
    let outcomes = commit(
        &mut w,
        WriteBatch {
            appends: vec![
                delta_append("1 alice:phone:1 0", "k", &Object::Counter(first.clone())),
                delta_append("2 alice:phone:1 0", "k", &delta_of_second),
                // The same state again under another id (a second edge relaying it): no change.
                delta_append("3 alice:phone:1 0", "k", &delta_of_second),
            ],
            ..WriteBatch::default()
        },
    );
    assert!(outcomes.iter().all(|o| matches!(o, AppendOutcome::Added(_))), "{outcomes:?}");
    let (object, _) = store.read_object("k").expect("read").expect("the object exists");
    let Object::Counter(counter) = object else { panic!("a counter") };
    assert_eq!(counter.value(), 7, "dots as assigned where applied: 5 then 7 in total, not 5 + 7 + 7");
    // An operation here goes on from the joined state with the author's entry.
    let outcome = commit(
        &mut w,
        WriteBatch {
            appends: vec![crdt_append(
                "4 alice:phone:1 0",
                serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1}),
            )],
            ..WriteBatch::default()
        },
    );
    assert!(matches!(outcome[0], AppendOutcome::Added(_)));
    assert_eq!(counter_value(&store, "k"), 8);
    // A delta of another kind is refused and stored undone.
    let set = rhizome_crdt::Orswot::<rhizome_crdt::Scalar>::new();
    let outcome = commit(
        &mut w,
        WriteBatch {
            appends: vec![delta_append("5 alice:phone:1 0", "k", &Object::Set(set))],
            ..WriteBatch::default()
        },
    );
    assert!(
        matches!(&outcome[0], AppendOutcome::Undone(_, reason) if reason == "crdtTypeMismatch"),
        "{outcome:?}"
    );
}

#[test]
fn a_delta_from_the_upstream_that_the_object_holds_already_is_not_kept() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let alice: rhizome_crdt::NodeId = "alice:phone:1".into();
    let bob: rhizome_crdt::NodeId = "bob:phone:1".into();
    let mine = rhizome_crdt::PnCounter::bottom().inc(&alice, 5);
    let from_upstream = |id: &str, delta: &Object| delta_append(id, "k", delta).from_upstream();
    let outcomes = commit(
        &mut w,
        WriteBatch {
            appends: vec![
                delta_append("1 alice:phone:1 0", "k", &Object::Counter(mine.clone())),
                // Sent back by the upstream (an echo), then with someone else's operation.
                from_upstream("2 server:cloud 0", &Object::Counter(mine.clone())),
                from_upstream("3 server:cloud 0", &Object::Counter(mine.inc(&bob, 2))),
                // A first delta of another object is kept, whatever it holds.
                delta_append(
                    "4 server:cloud 0",
                    "other",
                    &Object::Counter(rhizome_crdt::PnCounter::bottom()),
                )
                .from_upstream(),
            ],
            ..WriteBatch::default()
        },
    );
    assert!(matches!(outcomes[0], AppendOutcome::Added(1)), "{outcomes:?}");
    assert_eq!(outcomes[1], AppendOutcome::Duplicate(Status::Processed), "the echo is not kept");
    assert!(matches!(outcomes[2], AppendOutcome::Added(2)), "{outcomes:?}");
    assert!(matches!(outcomes[3], AppendOutcome::Added(3)), "{outcomes:?}");
    assert_eq!(counter_value(&store, "k"), 7);
    assert_eq!(store.status_of("2 server:cloud 0").expect("read"), None, "no row");
    // The same echo in a later transaction (the object from the writer's cache) and after a
    // reopening (from the database).
    let echo = || WriteBatch {
        appends: vec![from_upstream("5 server:cloud 0", &Object::Counter(mine.inc(&bob, 2)))],
        ..WriteBatch::default()
    };
    assert_eq!(commit(&mut w, echo()), [AppendOutcome::Duplicate(Status::Processed)]);
    drop(w);
    let mut w = store.writer().expect("writer");
    assert_eq!(commit(&mut w, echo()), [AppendOutcome::Duplicate(Status::Processed)]);
    assert_eq!(store.count().expect("count"), 3);
    // A client's delta is not checked (only a server's catch-up can hold the edge's own).
    let relayed = WriteBatch {
        appends: vec![from_upstream("6 bob:phone:1 0", &Object::Counter(mine.inc(&bob, 2)))],
        ..WriteBatch::default()
    };
    assert!(matches!(commit(&mut w, relayed)[..], [AppendOutcome::Added(_)]));
}

#[test]
fn a_correction_keeps_the_upstreams_state_and_what_it_may_lack_but_not_what_it_refused() {
    let (dir, store) = open();
    let mut w = store.writer().expect("writer");
    let set = set_of;
    // 1, 2: the edge's own (2 is refused upstream); 3: from the upstream before the request;
    // 4: the edge's own, not confirmed yet; 5: from the upstream after the request.
    let outcomes = commit(
        &mut w,
        WriteBatch {
            appends: vec![
                delta_append("1 a:1:t 0", "s", &set(&[("a", "a:1:t", 1)])),
                delta_append("2 b:1:t 0", "s", &set(&[("refused", "b:1:t", 1)])),
                delta_append("3 c:1:t 0", "s", &set(&[("c", "c:1:t", 1)])).from_upstream(),
                delta_append("4 a:1:t 0", "s", &set(&[("a2", "a:1:t", 2)])),
                delta_append("5 d:1:t 0", "s", &set(&[("d", "d:1:t", 1)])).from_upstream(),
            ],
            objects_to_reset: vec!["s".to_owned()],
            ..WriteBatch::default()
        },
    );
    assert!(outcomes.iter().all(|o| matches!(o, AppendOutcome::Added(_))), "{outcomes:?}");
    assert_eq!(store.objects_to_reset().expect("read"), ["s"], "kept until done");
    // The upstream had confirmed 1 when asked (its cursor), refused 2 since, and had 1 and 3.
    let reset = |upstream: Object| WriteBatch {
        statuses: vec![(2, Status::Undone("denied".into()))],
        object_resets: vec![ObjectReset {
            key: "s".into(),
            upstream: Some(upstream),
            own_after: 1,
            upstream_after: 4,
            entry: entry("9 server:edge 0", Routing::channel("crdt/s"), Status::Processed),
        }],
        ..WriteBatch::default()
    };
    let mut batches = [reset(set(&[("a", "a:1:t", 1), ("c", "c:1:t", 1)]))];
    let committed = w.commit(&mut batches, 2).expect("commit").remove(0);
    let elems = set_elems;
    let (object, _) = store.read_object("s").expect("read").expect("object");
    assert_eq!(elems(&object), ["a", "a2", "c", "d"]);
    assert!(committed.resets_incomplete.is_empty());
    let [corrected] = &committed.entries[..] else { panic!("{:?}", committed.entries) };
    assert!(corrected.action_json.contains("\"replace\":true"), "{}", corrected.action_json);
    assert!(store.objects_to_reset().expect("read").is_empty(), "done");
    // A subscriber behind the correction gets the whole state, and the correction is where
    // the object now starts: a reopened store reads the same.
    let read = store.catch_up_object("s", 5).expect("read");
    assert!(read.whole && read.reset_at == corrected.added, "{read:?}");
    drop(w);
    drop(store);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    let (object, _) = store.read_object("s").expect("read").expect("object");
    assert_eq!(elems(&object), ["a", "a2", "c", "d"]);
    // The same correction again changes nothing and appends nothing.
    let mut w = store.writer().expect("writer");
    let mut batches = [reset(set(&[("a", "a:1:t", 1), ("c", "c:1:t", 1)]))];
    batches[0].object_resets[0].entry =
        entry("10 server:edge 0", Routing::channel("crdt/s"), Status::Processed);
    let committed = w.commit(&mut batches, 3).expect("commit").remove(0);
    assert!(committed.entries.is_empty());
}

/// The elements of a set object, sorted.
fn set_elems(object: &Object) -> Vec<String> {
    let doc = object.to_json();
    let mut elems: Vec<String> = doc["elems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[0].as_str().map(str::to_owned))
        .collect();
    elems.sort();
    elems
}

/// A set of `(element, author, n)`, each element under the dot `(author, n)`.
fn set_of(elems: &[(&str, &str, u64)]) -> Object {
    let mut s = rhizome_crdt::Orswot::<rhizome_crdt::Scalar>::new();
    for (elem, author, n) in elems {
        s.join(&s.add(rhizome_crdt::Dot::new(*author, *n), rhizome_crdt::Scalar::from(*elem)));
    }
    Object::Set(s)
}

/// A whole state of set `s` from the upstream (`replace: true`), under `id`.
fn state_append(id: &str, state: &Object) -> Append {
    let text = rhizome_crdt::state_action("s", state);
    let mut e = entry(id, Routing::channel("crdt/s"), Status::Processed);
    e.action_json = Arc::from(text);
    let key = rhizome_crdt::ops::Key::parse("s").expect("key");
    Append::crdt_state(e, key, state.clone()).from_upstream()
}

#[test]
fn a_whole_state_from_the_upstream_replaces_the_object_keeping_only_what_the_edge_adds() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    // 1: the edge's own, relayed; 2: its own, refused upstream; 3: from the upstream (which
    // its own upstream refused since); 4: its own, not relayed yet.
    commit(
        &mut w,
        WriteBatch {
            appends: vec![
                delta_append("1 a:1:t 0", "s", &set_of(&[("a", "a:1:t", 1)])),
                delta_append("2 b:1:t 0", "s", &set_of(&[("refused", "b:1:t", 1)])),
                delta_append("3 c:1:t 0", "s", &set_of(&[("c", "c:1:t", 1)])).from_upstream(),
                delta_append("4 a:1:t 0", "s", &set_of(&[("a2", "a:1:t", 2)])),
            ],
            ..WriteBatch::default()
        },
    );
    // The upstream corrected its object: it holds 1 and someone else's `e`, not 3. A delta it
    // logged after that comes in the same write, and so does its undo of 2 (marked after the
    // appends).
    let upstream = set_of(&[("a", "a:1:t", 1), ("e", "e:1:t", 1)]);
    let mut batches = [WriteBatch {
        appends: vec![
            state_append("5 server:region 0", &upstream),
            delta_append("6 f:1:t 0", "s", &set_of(&[("f", "f:1:t", 1)])).from_upstream(),
        ],
        statuses: vec![(2, Status::Undone("denied".into()))],
        ..WriteBatch::default()
    }];
    let committed = w.commit(&mut batches, 2).expect("commit").remove(0);
    assert!(
        matches!(committed.outcomes[..], [AppendOutcome::Added(5), AppendOutcome::Added(6)]),
        "{committed:?}"
    );
    let (object, _) = store.read_object("s").expect("read").expect("object");
    assert_eq!(set_elems(&object), ["a", "a2", "e", "f"]);
    // The entry holds the state it became, to replace copies with; it is the object's snapshot.
    let replaced = &committed.entries[0];
    let action: serde_json::Value = serde_json::from_str(&replaced.action_json).expect("json");
    assert_eq!(action["replace"], true, "{action}");
    let state = Object::from_json(object.kind(), &action["delta"]).expect("state");
    assert_eq!(set_elems(&state), ["a", "a2", "e"]);
    let read = store.catch_up_object("s", 4).expect("read");
    assert!(read.whole && read.reset_at == 5, "{read:?}");
    assert!(committed.resets_incomplete.is_empty());
    // The upstream's state again, later (a catch-up that sends it whole): it changes nothing,
    // so it is not kept.
    let later = set_of(&[("a", "a:1:t", 1), ("e", "e:1:t", 1), ("f", "f:1:t", 1)]);
    let again =
        WriteBatch { appends: vec![state_append("7 server:region 0", &later)], ..WriteBatch::default() };
    assert_eq!(commit(&mut w, again), [AppendOutcome::Duplicate(Status::Processed)]);
    assert_eq!(store.count().expect("count"), 6);
    // An object not here yet is made from it.
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let outcomes = commit(
        &mut w,
        WriteBatch { appends: vec![state_append("1 server:region 0", &upstream)], ..WriteBatch::default() },
    );
    assert!(matches!(outcomes[..], [AppendOutcome::Added(1)]), "{outcomes:?}");
    let (object, _) = store.read_object("s").expect("read").expect("object");
    assert_eq!(set_elems(&object), ["a", "e"]);
}

#[test]
fn a_whole_state_takes_the_edges_deltas_emptied_by_cleaning_as_held_upstream() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    // 300 operations, ten to a write (one index run each, which a snapshot may cut in two),
    // all relayed and answered.
    commit(&mut w, cursor_to(1000));
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    for i in 0..30u32 {
        let appends =
            (0..10).map(|j| crdt_append(&format!("{} a:b:c 0", i * 10 + j + 1), inc.clone())).collect();
        commit(&mut w, WriteBatch { appends, ..WriteBatch::default() });
    }
    assert!(store.read_from(0, 1000).expect("read").len() < 300, "cleaning emptied some");
    // The upstream's state holds them, and someone else's.
    let a: rhizome_crdt::NodeId = "a:b:c".into();
    let x: rhizome_crdt::NodeId = "x:1:t".into();
    let upstream = Object::Counter(rhizome_crdt::PnCounter::bottom().inc(&a, 300).inc(&x, 5));
    let text = rhizome_crdt::state_action("k", &upstream);
    let mut e = entry("1 server:region 0", Routing::channel("crdt/k"), Status::Processed);
    e.action_json = Arc::from(text);
    let key = rhizome_crdt::ops::Key::parse("k").expect("key");
    let mut batches = [WriteBatch {
        appends: vec![Append::crdt_state(e, key, upstream).from_upstream()],
        ..WriteBatch::default()
    }];
    let committed = w.commit(&mut batches, 2).expect("commit").remove(0);
    assert!(committed.resets_incomplete.is_empty(), "{:?}", committed.resets_incomplete);
    assert!(matches!(committed.outcomes[..], [AppendOutcome::Added(_)]), "{:?}", committed.outcomes);
    assert_eq!(counter_value(&store, "k"), 305);
    assert!(store.objects_to_reset().expect("read").is_empty());
}

/// Runs 200 counter operations on one object (several snapshot rewrites, each cleaning the
/// deltas its predecessor holds) and returns how many of them still have their body.
fn deltas_kept(with_cursor: Option<u64>) -> usize {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    if let Some(position) = with_cursor {
        commit(&mut w, cursor_to(position));
    }
    let inc = serde_json::json!({"type": "crdt/counter/inc", "key": "k", "by": 1});
    for i in 1..=200u32 {
        let appends = vec![crdt_append(&format!("{i} a:b:c 0"), inc.clone())];
        commit(&mut w, WriteBatch { appends, ..WriteBatch::default() });
    }
    store.read_from(0, 1000).expect("read").len()
}

#[test]
fn deltas_the_upstream_lacks_are_not_cleaned() {
    assert!(deltas_kept(None) < 200, "without a link, cleaning empties old deltas");
    assert_eq!(deltas_kept(Some(0)), 200, "nothing sent upstream yet: every delta is kept");
    let kept = deltas_kept(Some(100));
    assert!((100..200).contains(&kept), "only deltas at or below the cursor may go: {kept}");
}

#[test]
fn entries_received_from_upstream_are_never_read_to_go_back_up() {
    let (_dir, store) = open();
    let mut w = store.writer().expect("writer");
    let mine = Append::new(entry("1 a:b:c 0", Routing::default(), Status::Processed));
    let theirs = Append::new(entry("2 z:y:x 0", Routing::default(), Status::Processed)).from_upstream();
    let later = Append::new(entry("3 a:b:c 0", Routing::default(), Status::Processed));
    commit(&mut w, WriteBatch { appends: vec![mine, theirs, later], ..WriteBatch::default() });
    let read: Vec<u64> = store.read_from(0, 10).expect("read").iter().map(|(e, _)| e.added).collect();
    assert_eq!(read, [1, 3]);
    assert_eq!(store.count().expect("count"), 3, "it is in the log all the same");
}

#[test]
fn upstream_channels_are_kept_with_their_latest_since() {
    let (dir, store) = open();
    let mut w = store.writer().expect("writer");
    let follow = |channel: &str, id: Option<&str>, time: i64| UpstreamChannel {
        channel: channel.to_owned(),
        since_id: id.map(str::to_owned),
        since_time: time,
    };
    let write = |w: &mut rhizome_store::SqliteWriter, channels: Vec<UpstreamChannel>| {
        commit(w, WriteBatch { upstream_channels: channels, ..WriteBatch::default() });
    };
    write(&mut w, vec![follow("counter/a", None, 1), follow("crdt/k", None, 2)]);
    write(&mut w, vec![follow("counter/a", Some("5 server:s 0"), 5)]);
    // Followed again (a client subscribed again): the answer's `since` stays.
    write(&mut w, vec![follow("counter/a", None, 6)]);
    write(&mut w, vec![follow("crdt/k", Some("7 server:s 0"), 7), follow("crdt/k", Some("9 server:s 0"), 9)]);
    write(&mut w, vec![follow("news", None, 10), follow("news", None, 11)]);
    drop(w);
    drop(store);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    let mut channels = store.upstream_channels().expect("read");
    channels.sort_by(|a, b| a.channel.cmp(&b.channel));
    let expected = [
        follow("counter/a", Some("5 server:s 0"), 5),
        follow("crdt/k", Some("9 server:s 0"), 9),
        follow("news", None, 10),
    ];
    assert_eq!(channels, expected, "a channel followed twice keeps the time it was first followed");
}

#[test]
fn a_log_of_format_three_gains_the_upstream_column_and_keeps_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = rusqlite::Connection::open(dir.path().join("rhizome.db")).expect("create");
        db.execute_batch(
            "CREATE TABLE log(added INTEGER PRIMARY KEY, id TEXT NOT NULL, time INTEGER NOT NULL,
                received INTEGER NOT NULL, action TEXT NOT NULL, subprotocol INTEGER NOT NULL,
                routing TEXT, status INTEGER NOT NULL, reason TEXT);
             INSERT INTO log VALUES (1, '1 a:b:c 0', 1, 1, '{\"type\":\"inc\"}', 1, '{}', 1, NULL);
             PRAGMA user_version = 3;",
        )
        .expect("a format-3 log");
    }
    let store = SqliteStore::open(dir.path()).expect("open");
    let read = store.read_from(0, 10).expect("read");
    assert_eq!(read.len(), 1, "the old row is kept and counts as the edge's own");
    assert_eq!(read[0].0.id.text(), "1 a:b:c 0");
}
