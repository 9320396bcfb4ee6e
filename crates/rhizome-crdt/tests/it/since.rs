//! Deltas since a version vector: for every kind, a replica R from a server's history that
//! says what it has seen receives exactly what it lacks (`R ⊔ delta_since(S, seen) == S`), with
//! removes and concurrent writes from other servers, and little when little is missing.

use crate::gossip::{node, Rng};
use crate::ops::{history, op, Step, SERVERS};
use proptest::prelude::*;
use rhizome_crdt::ops::{self, Change};
use rhizome_crdt::{catch_up_action, delta_action, Kind, Object, Scalar, VersionVector};
use serde_json::Value;

/// One server's history of one object: its state after each join, and the deltas it joined
/// (its own operations' and those gossiped from other servers), in order.
#[derive(Clone, Debug)]
struct Served {
    states: Vec<Object>,
    joined: Vec<Object>,
}

/// Plays `steps` as `ops::run` does, keeping each server's own history.
fn serve(kind: Kind, steps: &[Step]) -> Vec<Served> {
    let mut servers = vec![Served { states: vec![Object::bottom(kind)], joined: Vec::new() }; SERVERS];
    let mut produced: Vec<Vec<Object>> = vec![Vec::new(); SERVERS];
    for step in steps {
        let (to, deltas) = match step {
            Step::Apply { author, change, time_ms } => {
                let server = author % SERVERS;
                let state = servers[server].states.last().expect("a bottom state");
                match ops::apply(state, &op("k", change.clone()), &node(*author), *time_ms) {
                    Ok(delta) => {
                        produced[server].push(delta.clone());
                        (server, vec![delta])
                    }
                    // A map path may run into another kind of value; nothing else is refused.
                    Err(e) if kind == Kind::Map && e.reason() == "crdtTypeMismatch" => continue,
                    Err(e) => panic!("refused: {e}"),
                }
            }
            Step::Gossip { from, to, seed } => {
                let mut rng = Rng::new(*seed);
                let mut some: Vec<Object> =
                    produced[*from].iter().filter(|_| rng.below(2) == 0).cloned().collect();
                rng.shuffle(&mut some);
                (*to, some)
            }
        };
        for delta in deltas {
            let server = &mut servers[to];
            let mut state = server.states.last().expect("a bottom state").clone();
            state.join(&delta).expect("same kind");
            server.states.push(state);
            server.joined.push(delta);
        }
    }
    servers
}

/// A replica from `served`'s history: the state at a random point, joined with a random
/// subset of the deltas the server joined after it (a subscriber that received the state,
/// then some of the live deltas).
fn replica(served: &Served, rng: &mut Rng) -> Object {
    let at = rng.below(served.states.len());
    let mut replica = served.states[at].clone();
    for delta in &served.joined[at..] {
        if rng.below(3) != 0 {
            replica.join(delta).expect("same kind");
        }
    }
    replica
}

/// `vv` with each counter lowered at random: a stale `seen`, which must still work.
fn lowered(vv: &VersionVector, rng: &mut Rng) -> VersionVector {
    vv.iter().map(|(node, c)| (node.clone(), c - rng.below(c as usize + 1) as u64)).collect()
}

/// The dots held in a causal object's store, with what holds them, as JSON (for "nothing
/// held" checks): a set's and a map's entries, an MV register's values, a list's elements.
fn held(object: &Object) -> Value {
    let doc = object.to_json();
    match object.kind() {
        Kind::Mv => doc["values"].clone(),
        Kind::Set | Kind::List => doc["elems"].clone(),
        // A map's lists ship their retired elements whole (no dot is held there).
        Kind::Map if matches!(object, Object::Map(map) if map.dot_count() == 0) => Value::Null,
        Kind::Map => doc["entries"].clone(),
        _ => Value::Null,
    }
}

/// Whether the object's version vector covers every dot it has seen: a causal object whose
/// context has no cloud, a list whose nodes' elements are dense.
fn summarised(object: &Object) -> bool {
    let doc = object.to_json();
    match object.kind() {
        Kind::Mv | Kind::Set | Kind::Map => doc["context"].get("cloud").is_none(),
        Kind::List => {
            let dots: u64 = object.version_vector().iter().map(|(_, c)| c).sum();
            doc["elems"].as_array().map(Vec::len) == Some(dots as usize)
        }
        _ => false,
    }
}

fn is_empty(held: &Value) -> bool {
    match held {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_replica_joined_with_the_delta_since_its_vector_is_the_state((kind, steps) in history(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        for served in serve(kind, &steps) {
            let state = served.states.last().expect("a bottom state");
            for _ in 0..4 {
                let replica = replica(&served, &mut rng);
                let exact = replica.version_vector();
                for seen in [exact.clone(), lowered(&exact, &mut rng)] {
                    let delta = state.delta_since(&seen);
                    let mut joined = replica.clone();
                    joined.join(&delta).expect("same kind");
                    prop_assert_eq!(&joined, state, "replica {:?} seen {:?} delta {}", replica, seen, delta.to_json());
                    let mut over = state.clone();
                    over.join(&delta).expect("same kind");
                    prop_assert_eq!(&over, state, "the delta holds nothing the state lacks");
                    prop_assert_eq!(Object::from_json(kind, &delta.to_json()), Ok(delta.clone()), "round trip");

                    // What the server sends: never larger than the state, and it works too.
                    let action = catch_up_action("k", state, &seen);
                    prop_assert!(action.len() <= rhizome_crdt::state_action("k", state).len());
                    let action: Value = serde_json::from_str(&action).expect("json");
                    let sent = Object::from_json(kind, &action["delta"]).expect("a document");
                    let mut joined = replica.clone();
                    joined.join(&sent).expect("same kind");
                    prop_assert_eq!(&joined, state);
                }
                // A replica that has everything gets no entries (a list: no elements), when its
                // vector says so (every dot of the state is in its prefixes).
                if &replica == state && summarised(state) {
                    prop_assert!(is_empty(&held(&state.delta_since(&exact))), "{}", state.delta_since(&exact).to_json());
                }
            }
        }
    }
}

/// Serves `change` by `author` on `state` and joins its delta.
fn apply(state: &mut Object, change: Change, author: usize) {
    let delta = ops::apply(state, &op("k", change), &node(author), 0).expect("applies");
    state.join(&delta).expect("same kind");
}

/// A thousand-element set and a thousand-key map, of which a client misses a few adds, a
/// remove and an overwrite: the catch-up carries those, in a few percent of the state.
#[test]
fn little_missing_costs_little() {
    let mut set = Object::bottom(Kind::Set);
    let mut map = Object::bottom(Kind::Map);
    for i in 0..1000 {
        apply(&mut set, Change::SetAdd { elem: Scalar::Int(i) }, (i % 3) as usize);
        let path = vec![format!("field{i}")];
        apply(
            &mut map,
            Change::MapSet { path, value: Scalar::from("some text value"), seen: None },
            (i % 3) as usize,
        );
    }
    let (set_client, map_client) = (set.clone(), map.clone());
    apply(&mut set, Change::SetAdd { elem: Scalar::from("new") }, 4);
    apply(&mut set, Change::SetRemove { elem: Scalar::Int(500), seen: None }, 4);
    apply(
        &mut map,
        Change::MapSet { path: vec!["field7".into()], value: Scalar::from("changed"), seen: None },
        4,
    );
    apply(&mut map, Change::MapRemove { path: vec!["field8".into()] }, 4);
    for (client, state) in [(set_client, set), (map_client, map)] {
        let action = catch_up_action("k", &state, &client.version_vector());
        let whole = delta_action("k", &state);
        assert!(action.len() * 20 < whole.len(), "{} bytes of {}: {action}", action.len(), whole.len());
        let action: Value = serde_json::from_str(&action).expect("json");
        let mut joined = client;
        joined
            .join(&Object::from_json(state.kind(), &action["delta"]).expect("a document"))
            .expect("same kind");
        assert_eq!(joined, state);
    }
}
