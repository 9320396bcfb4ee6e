//! The action vocabulary: `parse` on arbitrary JSON, JSON documents of every reachable state,
//! folding a client's queue, and the deltas `apply` produces.

use crate::gossip::{node, Rng};
use proptest::prelude::*;
use proptest::sample::select;
use rhizome_crdt::ops::{
    self, Change, Key, Op, BY_MAX, ELEM_BYTES_MAX, KEY_BYTES_MAX, MAP_DEPTH_MAX, MAP_KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
};
use rhizome_crdt::{Kind, Object, Scalar, VersionVector};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Servers in a history. Author `a` is served by server `a % SERVERS`, so one server assigns
/// all of an author's dots, as in Rhizome.
pub const SERVERS: usize = 3;

/// Authors in a history.
pub const AUTHORS: usize = 6;

/// Any JSON, small; with floats or without (a float may not survive a trip through text).
fn json(floats: bool) -> impl Strategy<Value = Value> {
    let number = if floats {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from)
        ]
        .boxed()
    } else {
        prop_oneof![any::<i64>().prop_map(Value::from), any::<u64>().prop_map(Value::from)].boxed()
    };
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number,
        ".{0,6}".prop_map(Value::from)
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A map shaped like a CRDT action, each field present or not and of the right type or not.
fn action() -> impl Strategy<Value = Map<String, Value>> {
    const KNOWN: [&str; 21] = [
        "crdt/counter/inc",
        "crdt/counter/dec",
        "crdt/lww/set",
        "crdt/mv/set",
        "crdt/set/add",
        "crdt/set/remove",
        "crdt/clset/add",
        "crdt/clset/remove",
        "crdt/list/insert",
        "crdt/list/delete",
        "crdt/map/set",
        "crdt/map/remove",
        "crdt/map/add",
        "crdt/map/delete",
        "crdt/map/inc",
        "crdt/map/dec",
        "crdt/map/insert",
        "crdt/map/cut",
        "crdt/map/put",
        "crdt/map/cladd",
        "crdt/map/cldelete",
    ];
    const UNKNOWN: [&str; 5] = ["crdt/set/put", "crdt/counter", "crdt/", "", "crdt/counter/inc "];
    let action_type = prop_oneof![
        4 => select(&KNOWN[..]).prop_map(Value::from),
        1 => select(&UNKNOWN[..]).prop_map(Value::from),
        1 => json(true),
    ];
    let key = prop_oneof![
        4 => "[a-z0-9/]{0,8}".prop_map(Value::from),
        1 => Just(Value::from("k".repeat(KEY_BYTES_MAX))),
        1 => Just(Value::from("k".repeat(KEY_BYTES_MAX + 1))),
        1 => json(true),
    ];
    let by = prop_oneof![
        4 => (0u64..4).prop_map(Value::from),
        1 => select(&[BY_MAX, BY_MAX + 1, u64::MAX][..]).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => json(true),
    ];
    let value = prop_oneof![8 => json(true), 1 => Just(Value::from("x".repeat(VALUE_BYTES_MAX)))];
    let elem = prop_oneof![8 => json(true), 1 => Just(Value::from("x".repeat(ELEM_BYTES_MAX)))];
    let index = prop_oneof![
        4 => (0u64..4).prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        1 => any::<i64>().prop_map(Value::from),
        1 => json(true),
    ];
    let seen = prop_oneof![
        4 => prop::collection::btree_map("[a-c]|a b|", 0u64..4, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, Value::from(v))).collect())),
        1 => json(true),
    ];
    let path = prop_oneof![
        4 => prop::collection::vec("[a-c]{0,2}", 0..3).prop_map(Value::from),
        1 => Just(Value::from(vec!["p"; MAP_DEPTH_MAX + 1])),
        1 => Just(Value::from(vec!["p".repeat(MAP_KEY_BYTES_MAX + 1)])),
        1 => json(true),
    ];
    let extra = (
        prop_oneof![
            select(&["type", "key", "by", "value", "elem", "seen", "index", "path"][..])
                .prop_map(String::from),
            "[a-z]{1,4}"
        ],
        json(true),
    );
    let fields = (
        // Weighted so that about one action in five is well-formed.
        prop::option::weighted(0.95, action_type),
        prop::option::weighted(0.9, key),
        prop::option::weighted(0.35, by),
        prop::option::weighted(0.45, value),
        prop::option::weighted(0.45, elem),
        prop::option::weighted(0.2, seen),
        prop::option::weighted(0.35, index),
        prop::option::weighted(0.35, path),
        prop::option::weighted(0.1, extra),
    );
    fields.prop_map(|(action_type, key, by, value, elem, seen, index, path, extra)| {
        let mut action = Map::new();
        let named = [
            ("type", action_type),
            ("key", key),
            ("by", by),
            ("value", value),
            ("elem", elem),
            ("seen", seen),
            ("index", index),
            ("path", path),
        ];
        for (name, field) in named {
            if let Some(field) = field {
                action.insert(name.to_owned(), field);
            }
        }
        if let Some((name, field)) = extra {
            action.insert(name, field);
        }
        action
    })
}

/// `by`: mostly small, sometimes the largest.
fn by() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..5, 1 => Just(BY_MAX), 1 => 1..=BY_MAX]
}

/// A set element: a few small scalars, so that adds and removes meet.
fn elem() -> impl Strategy<Value = Scalar> {
    prop_oneof![
        (0i64..3).prop_map(Scalar::Int),
        select(&["x", "y"][..]).prop_map(Scalar::from),
        Just(Scalar::Null),
        Just(Scalar::float(0.5)),
    ]
}

/// What a client may have seen: a few of the history's authors, small counters.
fn seen() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((0..AUTHORS, 1u64..4), 0..3)
        .prop_map(|entries| entries.into_iter().map(|(author, counter)| (node(author), counter)).collect())
}

/// The kinds with actions.
const KINDS: &[Kind] = Kind::ALL;

/// A change on an object of `kind`.
fn change(kind: Kind) -> BoxedStrategy<Change> {
    match kind {
        Kind::Counter => prop_oneof![
            by().prop_map(|by| Change::CounterInc { by }),
            by().prop_map(|by| Change::CounterDec { by })
        ]
        .boxed(),
        Kind::Lww => json(false).prop_map(|value| Change::LwwSet { value }).boxed(),
        Kind::Mv => (json(false), prop::option::of(seen()))
            .prop_map(|(value, seen)| Change::MvSet { value, seen })
            .boxed(),
        Kind::Set => prop_oneof![
            elem().prop_map(|elem| Change::SetAdd { elem }),
            (elem(), prop::option::of(seen())).prop_map(|(elem, seen)| Change::SetRemove { elem, seen })
        ]
        .boxed(),
        Kind::ClSet => prop_oneof![
            elem().prop_map(|elem| Change::ClSetAdd { elem }),
            elem().prop_map(|elem| Change::ClSetRemove { elem })
        ]
        .boxed(),
        Kind::List => prop_oneof![
            2 => (list_index(), json(false)).prop_map(|(index, value)| Change::ListInsert { index, value }),
            1 => list_index().prop_map(|index| Change::ListDelete { index })
        ]
        .boxed(),
        Kind::Map => prop_oneof![
            3 => (map_path(), elem(), prop::option::of(seen()))
                .prop_map(|(path, value, seen)| Change::MapSet { path, value, seen }),
            1 => map_path().prop_map(|path| Change::MapRemove { path }),
            2 => (map_path(), elem()).prop_map(|(path, elem)| Change::MapAdd { path, elem }),
            1 => (map_path(), elem()).prop_map(|(path, elem)| Change::MapDelete { path, elem }),
            2 => (map_path(), by()).prop_map(|(path, by)| Change::MapInc { path, by }),
            1 => (map_path(), by()).prop_map(|(path, by)| Change::MapDec { path, by }),
            2 => (map_path(), list_index(), json(false))
                .prop_map(|(path, index, value)| Change::MapInsert { path, index, value }),
            1 => (map_path(), json(false))
                .prop_map(|(path, value)| Change::MapInsertAfter { path, after: None, value }),
            1 => (map_path(), list_index()).prop_map(|(path, index)| Change::MapCut { path, index }),
            2 => (map_path(), json(false)).prop_map(|(path, value)| Change::MapPut { path, value }),
            2 => (map_path(), elem()).prop_map(|(path, elem)| Change::MapClAdd { path, elem }),
            2 => (map_path(), elem()).prop_map(|(path, elem)| Change::MapClDelete { path, elem }),
        ]
        .boxed(),
        other => panic!("no changes for {other} yet"),
    }
}

/// A map path: one to three keys out of a few, so that paths meet, nest and clash.
fn map_path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(select(&["p", "q", ""][..]).prop_map(String::from), 1..4)
}

/// A list index: mostly within a short list, sometimes far past its end.
fn list_index() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..6, 1 => Just(u64::MAX)]
}

/// A change on an object of any kind.
fn any_change() -> impl Strategy<Value = Change> {
    select(KINDS).prop_flat_map(change)
}

pub fn op(key: &str, change: Change) -> Op {
    Op::new(Key::parse(key).expect("a valid key"), change).expect("a valid op")
}

/// One step of a history of one object over [`SERVERS`] servers.
#[derive(Clone, Debug)]
pub enum Step {
    /// The author's server applies its change at `time_ms` (in a small range, so that equal
    /// times are common).
    Apply { author: usize, change: Change, time_ms: i64 },
    /// Server `to` joins some of the deltas server `from` produced, in a seeded order (so
    /// contexts get clouds).
    Gossip { from: usize, to: usize, seed: u64 },
}

pub fn steps(kind: Kind) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0..AUTHORS, change(kind), 0i64..4)
            .prop_map(|(author, change, time_ms)| Step::Apply { author, change, time_ms }),
        1 => (0..SERVERS, 0..SERVERS, any::<u64>()).prop_map(|(from, to, seed)| Step::Gossip { from, to, seed }),
    ];
    prop::collection::vec(step, 0..30)
}

/// A history of one object of some kind.
pub fn history() -> impl Strategy<Value = (Kind, Vec<Step>)> {
    select(KINDS).prop_flat_map(|kind| (Just(kind), steps(kind)))
}

/// What a history met: every state, and every `apply` with the state it applied to.
#[derive(Debug, Default)]
struct Met {
    states: Vec<Object>,
    applied: Vec<(Object, Object)>,
}

fn run(kind: Kind, steps: &[Step]) -> Met {
    let mut servers = vec![Object::bottom(kind); SERVERS];
    let mut produced: Vec<Vec<Object>> = vec![Vec::new(); SERVERS];
    let mut met = Met { states: vec![Object::bottom(kind)], applied: Vec::new() };
    for step in steps {
        match step {
            Step::Apply { author, change, time_ms } => {
                let server = author % SERVERS;
                let state = &mut servers[server];
                let delta = match ops::apply(state, &op("k", change.clone()), &node(*author), *time_ms) {
                    Ok(delta) => delta,
                    // A map path may run into another kind of value; nothing else is refused.
                    Err(e) if kind == Kind::Map && e.reason() == "crdtTypeMismatch" => continue,
                    Err(e) => panic!("refused: {e}"),
                };
                met.applied.push((state.clone(), delta.clone()));
                state.join(&delta).expect("same kind");
                produced[server].push(delta);
                met.states.push(state.clone());
            }
            Step::Gossip { from, to, seed } => {
                let mut rng = Rng::new(*seed);
                let mut some: Vec<&Object> = produced[*from].iter().filter(|_| rng.below(2) == 0).collect();
                rng.shuffle(&mut some);
                for delta in some {
                    servers[*to].join(delta).expect("same kind");
                    met.states.push(servers[*to].clone());
                }
            }
        }
    }
    met
}

/// Plays a history twice on [`SERVERS`] servers, with `apply` then `join` and with
/// `apply_in_place`, and checks that they agree: the same delta or the same refusal, a refused
/// op leaves the state unchanged, and the states stay equal. Every third op is also tried as
/// an op of another kind or by an invalid author, which both paths refuse.
fn check_in_place(kind: Kind, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut by_join = vec![Object::bottom(kind); SERVERS];
    let mut in_place = by_join.clone();
    let mut produced: Vec<Vec<Object>> = vec![Vec::new(); SERVERS];
    let other_kind = if kind == Kind::Counter {
        Change::ClSetAdd { elem: Scalar::Int(1) }
    } else {
        Change::CounterInc { by: 1 }
    };
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Apply { author, change, time_ms } => {
                let server = author % SERVERS;
                let mut tries = vec![(op("k", change.clone()), node(*author))];
                if i % 3 == 0 {
                    tries.push((op("k", other_kind.clone()), node(*author)));
                    tries.push((op("k", change.clone()), rhizome_crdt::NodeId::from("a b")));
                }
                for (op, author) in tries {
                    let expected = ops::apply(&by_join[server], &op, &author, *time_ms);
                    let before = in_place[server].clone();
                    let got = ops::apply_in_place(&mut in_place[server], &op, &author, *time_ms);
                    prop_assert_eq!(&got, &expected, "{:?}", op);
                    match expected {
                        Ok(delta) => {
                            by_join[server].join(&delta).expect("same kind");
                            produced[server].push(delta);
                        }
                        Err(_) => prop_assert_eq!(&in_place[server], &before, "refused {:?}", op),
                    }
                    prop_assert_eq!(&in_place[server], &by_join[server], "{:?}", op);
                }
            }
            Step::Gossip { from, to, seed } => {
                let mut rng = Rng::new(*seed);
                let mut some: Vec<&Object> = produced[*from].iter().filter(|_| rng.below(2) == 0).collect();
                rng.shuffle(&mut some);
                for delta in some {
                    by_join[*to].join(delta).expect("same kind");
                    in_place[*to].join(delta).expect("same kind");
                }
            }
        }
    }
    Ok(())
}

/// The value a user sees, without the metadata: a counter's sum, a register's value(s).
pub fn value(object: &Object) -> Value {
    match object {
        Object::Counter(c) => Value::from(c.value().to_string()),
        Object::Lww(r) => r.value().cloned().unwrap_or(Value::Null),
        Object::Mv(r) => Value::from(r.values().into_iter().cloned().collect::<Vec<_>>()),
        Object::Set(s) => Value::from(s.iter().map(Scalar::to_json).collect::<Vec<_>>()),
        Object::ClSet(s) => Value::from(s.iter().map(Scalar::to_json).collect::<Vec<_>>()),
        Object::List(l) => Value::from(l.to_vec()),
        Object::Map(m) => map_value(m.iter()),
        other => panic!("no value for {other:?} yet"),
    }
}

/// A map's entries without their dots: `{key: {"map": …, "set": [elements], "reg": [values],
/// "counter": value, "list": [live values], "lww": winner, "clset": [[element, length]]}}` (a
/// counter's value as a string, 0 when there is none; `list` only where a list was, `lww`
/// only where an LWW register is, `clset` only where a causal-length set is, with every
/// element it holds and its causal length, removed ones included).
fn map_value<'a>(entries: impl Iterator<Item = (&'a String, &'a rhizome_crdt::Value<String>)>) -> Value {
    let entry = |value: &rhizome_crdt::Value<String>| {
        let mut doc = serde_json::json!({
            "map": map_value(value.entries()),
            "set": value.elements().map(Scalar::to_json).collect::<Vec<_>>(),
            "reg": value.values().into_iter().map(Scalar::to_json).collect::<Vec<_>>(),
            "counter": value.counter_value().to_string(),
        });
        if value.list().element_count() > 0 {
            doc["list"] = value.list().values().cloned().collect();
        }
        if let Some(lww) = value.lww_value() {
            doc["lww"] = lww.clone();
        }
        if value.clset_entries().next().is_some() {
            let lengths =
                value.clset_entries().map(|(e, _)| serde_json::json!([e.to_json(), value.clset_length(e)]));
            doc["clset"] = lengths.collect();
        }
        doc
    };
    Value::Object(entries.map(|(key, value)| (key.clone(), entry(value))).collect())
}

/// A server's objects by key; an op that the server refuses changes nothing.
fn serve(objects: &mut BTreeMap<Key, Object>, op: &Op, author: usize, time_ms: i64) {
    let state = objects.get(op.key()).cloned().unwrap_or_else(|| Object::bottom(op.kind()));
    if let Ok(delta) = ops::apply(&state, op, &node(author), time_ms) {
        let mut state = state;
        state.join(&delta).expect("same kind");
        objects.insert(op.key().clone(), state);
    }
}

proptest! {
    #[test]
    fn parse_never_panics_and_reads_back_what_it_accepts(action in action()) {
        match ops::parse(&action) {
            Ok(op) => {
                prop_assert_eq!(ops::parse(&op.to_action()), Ok(op.clone()));
                prop_assert!(!op.key().as_str().is_empty() && op.key().as_str().len() <= KEY_BYTES_MAX);
                prop_assert_eq!(op.channel().to_string(), format!("crdt/{}", op.key()));
            }
            Err(e) => {
                let reasons = ["crdtUnknownType", "crdtWrongShape", "crdtTooBig"];
                prop_assert!(reasons.contains(&e.reason()), "{}", e);
            }
        }
    }

    #[test]
    fn parse_reads_every_op_it_writes(key in "[a-z0-9/]{1,12}", change in any_change()) {
        let op = op(&key, change);
        prop_assert_eq!(ops::parse(&op.to_action()), Ok(op));
    }

    #[test]
    fn every_reachable_state_and_delta_round_trips_through_json((kind, steps) in history()) {
        let met = run(kind, &steps);
        let deltas = met.applied.iter().map(|(_, delta)| delta);
        for object in met.states.iter().chain(deltas) {
            let doc = object.to_json();
            prop_assert_eq!(&Object::from_json(kind, &doc), &Ok(object.clone()), "{}", doc);
            let text = serde_json::to_string(&doc).expect("a Value always writes");
            let reread: Value = serde_json::from_str(&text).expect("what serde_json wrote");
            prop_assert_eq!(Object::from_json(kind, &reread), Ok(object.clone()), "through text");
        }
    }

    #[test]
    fn deltas_of_apply_join_idempotently((kind, steps) in history()) {
        for (state, delta) in run(kind, &steps).applied {
            let mut once = state.clone();
            once.join(&delta).expect("same kind");
            let mut twice = once.clone();
            twice.join(&delta).expect("same kind");
            prop_assert_eq!(&twice, &once, "joined twice");
            let mut doubled = delta.clone();
            doubled.join(&delta).expect("same kind");
            prop_assert_eq!(&doubled, &delta, "a delta joined with itself");
            let mut other_way = delta.clone();
            other_way.join(&state).expect("same kind");
            prop_assert_eq!(&other_way, &once, "delta ⊔ state = state ⊔ delta");
        }
    }

    /// The store's path, `apply_in_place`, is `apply` then `join` for every kind of object.
    #[test]
    fn apply_in_place_is_apply_then_join((kind, steps) in history()) {
        check_in_place(kind, &steps)?;
    }

    /// A client's queue (author `client`, three keys of mixed kinds) served op by op or folded
    /// leaves every object with the same value, and every counter in the same state.
    #[test]
    fn a_folded_queue_gives_the_same_objects(
        before in prop::collection::vec((0..3usize, 0..AUTHORS, any_change(), 0i64..4), 0..12),
        client in 0..AUTHORS,
        queue in prop::collection::vec((0..3usize, any_change()), 0..24),
        time_ms in 0i64..4,
    ) {
        let mut objects = BTreeMap::new();
        for (key, author, change, time_ms) in before {
            serve(&mut objects, &op(&format!("k{key}"), change), author, time_ms);
        }
        let queue: Vec<Op> = queue.into_iter().map(|(key, change)| op(&format!("k{key}"), change)).collect();
        let folded = ops::fold_queue(&queue);
        prop_assert!(folded.len() <= queue.len());

        let (mut one_by_one, mut at_once) = (objects.clone(), objects);
        for op in &queue {
            serve(&mut one_by_one, op, client, time_ms);
        }
        for op in &folded {
            serve(&mut at_once, op, client, time_ms);
        }
        prop_assert_eq!(one_by_one.keys().collect::<Vec<_>>(), at_once.keys().collect::<Vec<_>>());
        for (key, ours) in &one_by_one {
            let theirs = &at_once[key];
            prop_assert_eq!(ours.kind(), theirs.kind());
            prop_assert_eq!(value(ours), value(theirs), "{:?}", key);
            if ours.kind() == Kind::Counter {
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}

/// The set object's elements.
fn elements(object: &Object) -> Vec<Scalar> {
    match object {
        Object::Set(s) => s.iter().cloned().collect(),
        other => panic!("not a set: {other:?}"),
    }
}

/// What a server has seen of a set object.
fn set_seen(object: &Object) -> VersionVector {
    match object {
        Object::Set(s) => s.context().vv().clone(),
        other => panic!("not a set: {other:?}"),
    }
}

proptest! {
    /// Author 0 adds `x` on server 0 while author 1, on server 1, removes `x` with `seen`
    /// from its own view, which lacks the add: once the servers exchange their deltas, both
    /// hold `x` (add wins), whether the remove is applied on another server or, as an
    /// offline client's queued remove, on the same server after the add.
    #[test]
    fn a_remove_with_seen_does_not_remove_an_add_it_did_not_see(
        before in prop::collection::vec((0..AUTHORS, change(Kind::Set)), 0..10),
        elem in elem(),
    ) {
        let mut base = Object::bottom(Kind::Set);
        for (author, change) in before {
            if let Ok(delta) = ops::apply(&base, &op("k", change), &node(author), 0) {
                base.join(&delta).expect("same kind");
            }
        }
        let add = op("k", Change::SetAdd { elem: elem.clone() });
        let remove = op("k", Change::SetRemove { elem: elem.clone(), seen: Some(set_seen(&base)) });

        let (mut left, mut right) = (base.clone(), base.clone());
        let added = ops::apply(&left, &add, &node(0), 0).expect("applied");
        left.join(&added).expect("same kind");
        let removed = ops::apply(&right, &remove, &node(1), 0).expect("applied");
        right.join(&removed).expect("same kind");
        left.join(&removed).expect("same kind");
        right.join(&added).expect("same kind");
        prop_assert_eq!(&left, &right);
        prop_assert!(elements(&left).contains(&elem), "add wins across servers");

        let mut one = base;
        for (op, author) in [(&add, 0), (&remove, 1)] {
            let delta = ops::apply(&one, op, &node(author), 0).expect("applied");
            one.join(&delta).expect("same kind");
        }
        prop_assert!(elements(&one).contains(&elem), "add wins on one server");
        prop_assert_eq!(elements(&one), elements(&left));
    }
}

/// The MV register object's values.
fn mv_values(object: &Object) -> Vec<Value> {
    match object {
        Object::Mv(r) => r.values().into_iter().cloned().collect(),
        other => panic!("not an MV register: {other:?}"),
    }
}

proptest! {
    /// Authors 1 and 2 read the register in the same state and write offline with `seen`:
    /// both values survive, whether their servers differ or one server applies both.
    #[test]
    fn two_concurrent_mv_writes_with_seen_both_survive(
        before in prop::collection::vec((0..AUTHORS, change(Kind::Mv)), 0..10),
        (v1, v2) in (any::<i64>(), any::<i64>()),
    ) {
        let mut base = Object::bottom(Kind::Mv);
        for (author, change) in before {
            let delta = ops::apply(&base, &op("k", change), &node(author), 0).expect("applied");
            base.join(&delta).expect("same kind");
        }
        let Object::Mv(register) = &base else { panic!("an MV register") };
        let seen = Some(register.context().vv().clone());
        let w1 = op("k", Change::MvSet { value: Value::from(v1), seen: seen.clone() });
        let w2 = op("k", Change::MvSet { value: Value::from(v2), seen });
        let expected = vec![Value::from(v1), Value::from(v2)];

        let mut one = base.clone();
        for (w, author) in [(&w1, 1), (&w2, 2)] {
            let delta = ops::apply(&one, w, &node(author), 0).expect("applied");
            one.join(&delta).expect("same kind");
        }
        prop_assert_eq!(mv_values(&one), expected.clone(), "one server");

        let (mut left, mut right) = (base.clone(), base);
        let d1 = ops::apply(&left, &w1, &node(1), 0).expect("applied");
        let d2 = ops::apply(&right, &w2, &node(2), 0).expect("applied");
        left.join(&d1).expect("same kind");
        right.join(&d2).expect("same kind");
        left.join(&d2).expect("same kind");
        right.join(&d1).expect("same kind");
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(mv_values(&left), expected, "two servers");
    }
}

/// The map object's dotless value.
fn map_of(object: &Object) -> Value {
    match object {
        Object::Map(m) => map_value(m.iter()),
        other => panic!("not a map: {other:?}"),
    }
}

/// Applies `op` as `author` and joins the delta into `state`; returns the delta.
fn serve_one(state: &mut Object, op: &Op, author: usize) -> Object {
    let delta = ops::apply(state, op, &node(author), 0).expect("applied");
    state.join(&delta).expect("same kind");
    delta
}

proptest! {
    /// Authors 1 and 2 read the map in the same state and write one path offline with `seen`:
    /// both values survive, whether their servers differ or one server applies both.
    #[test]
    fn two_concurrent_map_sets_with_seen_at_one_path_both_survive(
        before in prop::collection::vec((0..AUTHORS, change(Kind::Map)), 0..10),
        (v1, v2) in (any::<i64>(), any::<i64>()),
    ) {
        let mut base = Object::bottom(Kind::Map);
        for (author, change) in before {
            if let Ok(delta) = ops::apply(&base, &op("k", change), &node(author), 0) {
                base.join(&delta).expect("same kind");
            }
        }
        // A path no change of `before` can write: its keys are longer than theirs.
        let path = vec!["doc".to_owned(), "title".to_owned()];
        let Object::Map(map) = &base else { panic!("a map") };
        let seen = Some(map.context().vv().clone());
        let w1 = op("k", Change::MapSet { path: path.clone(), value: Scalar::Int(v1), seen: seen.clone() });
        let w2 = op("k", Change::MapSet { path, value: Scalar::Int(v2), seen });
        let mut expected = vec![Value::from(v1), Value::from(v2)];
        expected.sort_by_key(|v| v.as_i64());
        expected.dedup();

        let mut one = base.clone();
        serve_one(&mut one, &w1, 1);
        serve_one(&mut one, &w2, 2);
        prop_assert_eq!(&map_of(&one)["doc"]["map"]["title"]["reg"], &Value::from(expected.clone()), "one server");

        let (mut left, mut right) = (base.clone(), base);
        let d1 = serve_one(&mut left, &w1, 1);
        let d2 = serve_one(&mut right, &w2, 2);
        left.join(&d2).expect("same kind");
        right.join(&d1).expect("same kind");
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(&map_of(&left)["doc"]["map"]["title"]["reg"], &Value::from(expected), "two servers");
    }
}

/// Author 1 removes the key `doc` on one server while author 2 writes inside it on another:
/// the nested write survives the removal, alone.
#[test]
fn removing_a_key_keeps_a_concurrent_nested_update() {
    let set = |path: &[&str], v: i64| {
        let path = path.iter().map(|k| k.to_string()).collect();
        op("k", Change::MapSet { path, value: Scalar::Int(v), seen: None })
    };
    let mut base = Object::bottom(Kind::Map);
    serve_one(&mut base, &set(&["doc", "title"], 1), 0);
    serve_one(&mut base, &set(&["doc", "body"], 2), 0);
    let (mut left, mut right) = (base.clone(), base);
    let removal = serve_one(&mut left, &op("k", Change::MapRemove { path: vec!["doc".into()] }), 1);
    let update = serve_one(&mut right, &set(&["doc", "meta", "owner"], 3), 2);
    left.join(&update).expect("same kind");
    right.join(&removal).expect("same kind");
    assert_eq!(left, right);
    assert_eq!(
        map_of(&left),
        serde_json::json!({"doc": {"map": {"meta": {
            "map": {"owner": {"map": {}, "set": [], "reg": [3], "counter": "0"}},
            "set": [], "reg": [], "counter": "0"
        }}, "set": [], "reg": [], "counter": "0"}})
    );
}
