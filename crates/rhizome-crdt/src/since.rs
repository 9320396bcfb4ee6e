//! Deltas since a version vector: what a replica lacks, computed from the state alone (never
//! from a replay of operations), for a subscriber that says what it has seen.
//!
//! A replica R that holds a state S had at some point (or a join of some of the deltas that
//! built S) tells what it has seen as a version vector `seen`, normally the `vv` of its causal
//! context ([`Object::version_vector`]). For the causal kinds (MV register, ORSWOT, map) the
//! delta since `seen` is:
//!
//! - in the store: every dot of S that `seen` does not cover, with what it carries (a value, an
//!   element, the keys leading to it);
//! - as context: S's context minus the dots of S's store that `seen` covers.
//!
//! Joined into R, the new dots arrive; a dot `seen` covers that R holds and S no longer does
//! (a remove or an overwrite, which makes no dot of its own) is in the delta's context but not
//! its store, so the join drops it; a dot `seen` covers that S still holds is outside the
//! delta's context, so the join keeps R's copy. Hence `R ⊔ delta == S` whenever every dot of
//! S that `seen` covers is in R's context and R's context is within S's (R comes from S's
//! history). A `seen` below R's vector (a stale one) only makes the delta larger. The context
//! is the old one cut around the live dots, so it costs a run per live dot `seen` covers at
//! most, not a dot per removal ([`CausalContext::without`]).
//!
//! The list's elements carry dots but its deletes do not: its delta holds the elements `seen`
//! does not cover and every tombstone. Counters (per-node totals, one entry per node),
//! LWW registers (one stamp) and causal-length sets (a length per element, no dots) have no
//! vector to compare with: their delta is the whole state.

use crate::delta::{action, replacing};
use crate::map::{DotFun, DotList, DotMap, DotSet, DotStore, Scalar, Value};
use crate::object::vv_from_json;
use crate::ops::OpError;
use crate::{Dot, Kind, MvRegister, Object, OrMap, Orswot, Rga, VersionVector};
use std::collections::{BTreeMap, BTreeSet};
use std::io;

impl Object {
    /// The delta a replica that has seen `seen` (its [`Object::version_vector`], or less)
    /// needs to reach this state; see the module documentation. The whole state for the
    /// kinds without a version vector (counter, LWW register, causal-length set).
    pub fn delta_since(&self, seen: &VersionVector) -> Object {
        match self {
            Object::Mv(r) => Object::Mv(r.delta_since(seen)),
            Object::Set(s) => Object::Set(s.delta_since(seen)),
            Object::List(l) => Object::List(Box::new(l.delta_since(seen))),
            Object::Map(m) => Object::Map(Box::new(m.delta_since(seen))),
            whole => whole.clone(),
        }
    }

    /// What a replica holding this state has seen, as the `seen` it sends to get only what it
    /// lacks: the `vv` of the causal context (MV register, set, map); for a list, per node
    /// the highest `n` such that the list holds that node's elements 1 to `n`; empty for the
    /// kinds whose delta since anything is their whole state.
    pub fn version_vector(&self) -> VersionVector {
        match self {
            Object::Mv(r) => r.context().vv().clone(),
            Object::Set(s) => s.context().vv().clone(),
            Object::Map(m) => m.context().vv().clone(),
            Object::List(l) => {
                let mut counters: BTreeMap<_, BTreeSet<u64>> = BTreeMap::new();
                for elem in l.elements() {
                    counters.entry(elem.id.node.clone()).or_default().insert(elem.id.counter);
                }
                let dense =
                    |held: &BTreeSet<u64>| held.iter().zip(1..).take_while(|(c, n)| **c == *n).count();
                counters.into_iter().map(|(node, held)| (node, dense(&held) as u64)).collect()
            }
            _ => VersionVector::new(),
        }
    }
}

/// The `crdt/delta` action that brings a subscriber who has seen `seen` to `state`: the delta
/// since `seen` when its document is smaller than the state's, else the whole state (a state
/// is also a delta, and never worse to join). Both documents are measured as compact JSON,
/// which is what the subscriber receives.
pub fn catch_up_action(key: &str, state: &Object, seen: &VersionVector) -> String {
    let state_doc = state.to_json();
    if matches!(state.kind(), Kind::Mv | Kind::Set | Kind::List | Kind::Map) {
        let delta_doc = state.delta_since(seen).to_json();
        if encoded_bytes(&delta_doc) < encoded_bytes(&state_doc) {
            return action(key, state.kind(), delta_doc);
        }
    }
    replacing(key, state.kind(), state_doc)
}

/// Reads the `seen` of a subscription (a version vector `{"<node>": n}`, as the `seen` of a
/// `crdt/mv/set`): at most [`crate::object::NODES_MAX`] nodes, valid node ids, counters from
/// 1 to 2^53. A refusal's [`OpError::reason`] is the `logux/undo` reason.
pub fn parse_seen(doc: &serde_json::Value) -> Result<VersionVector, OpError> {
    vv_from_json(doc)
}

/// The length of `doc` as compact JSON, counted without writing it out.
fn encoded_bytes(doc: &serde_json::Value) -> usize {
    struct Meter(usize);
    impl io::Write for Meter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut meter = Meter(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut meter, doc);
    meter.0
}

impl<T: Clone + PartialEq> MvRegister<T> {
    /// The delta since `seen`: the values `seen` does not cover, and the context without the
    /// dots of the values it covers (see the module documentation).
    pub fn delta_since(&self, seen: &VersionVector) -> MvRegister<T> {
        let mut values = BTreeMap::new();
        let mut kept = BTreeSet::new();
        for (dot, value) in self.entries() {
            if seen.contains(dot) {
                kept.insert(dot.clone());
            } else {
                values.insert(dot.clone(), value.clone());
            }
        }
        // Every value left has its dot in the context (only covered dots were cut out), so
        // `from_parts` accepts it; the state itself is the fallback that is always right.
        MvRegister::from_parts(values, self.context().without(&kept)).unwrap_or_else(|| self.clone())
    }
}

impl<E: Ord + Clone> Orswot<E> {
    /// The delta since `seen`: each element with its dots that `seen` does not cover, and the
    /// context without the dots it covers that keep an element present.
    pub fn delta_since(&self, seen: &VersionVector) -> Orswot<E> {
        let mut kept = BTreeSet::new();
        let entries = self.iter().filter_map(|elem| {
            let fresh = split_dots(self.dots(elem), seen, &mut kept);
            (!fresh.is_empty()).then(|| (elem.clone(), fresh))
        });
        let entries: BTreeMap<E, DotSet> = entries.collect();
        Orswot::from_parts(entries, self.context().without(&kept)).unwrap_or_else(|| self.clone())
    }
}

impl<K: Ord + Clone> OrMap<K> {
    /// The delta since `seen`: at every depth, the set elements, register values, counter
    /// entries, last-writer-wins writes and causal-length set bumps whose dots `seen` does not cover (with the keys leading to them), and the context without the
    /// dots it covers that are still held.
    pub fn delta_since(&self, seen: &VersionVector) -> OrMap<K> {
        let mut kept = BTreeSet::new();
        let entries = entries_since(self.iter(), seen, &mut kept);
        OrMap::from_parts(entries, self.context().without(&kept)).unwrap_or_else(|| self.clone())
    }
}

/// The entries of a map (or a nested map) that hold a dot `seen` does not cover, with only
/// those dots; the covered dots go to `kept`.
fn entries_since<'a, K: Ord + Clone + 'a>(
    entries: impl Iterator<Item = (&'a K, &'a Value<K>)>,
    seen: &VersionVector,
    kept: &mut BTreeSet<Dot>,
) -> DotMap<K, Value<K>> {
    let mut out = DotMap::new();
    for (key, value) in entries {
        let map = entries_since(value.entries(), seen, kept);
        let mut set: DotMap<Scalar, DotSet> = DotMap::new();
        for (elem, dots) in value.set_entries() {
            let fresh = split_dots(dots.iter(), seen, kept);
            if !fresh.is_empty() {
                set.insert(elem.clone(), fresh);
            }
        }
        let mut register = DotFun::new();
        for (dot, scalar) in value.register_entries() {
            if seen.contains(dot) {
                kept.insert(dot.clone());
            } else {
                register.insert(dot.clone(), scalar.clone());
            }
        }
        let mut counter = DotFun::new();
        for (dot, totals) in value.counter_entries() {
            if seen.contains(dot) {
                kept.insert(dot.clone());
            } else {
                counter.insert(dot.clone(), *totals);
            }
        }
        let mut lww = DotFun::new();
        for (dot, entry) in value.lww_entries() {
            if seen.contains(dot) {
                kept.insert(dot.clone());
            } else {
                lww.insert(dot.clone(), entry.clone());
            }
        }
        let mut clset: DotMap<Scalar, DotFun<u64>> = DotMap::new();
        for (elem, bumps) in value.clset_entries() {
            let mut fresh = DotFun::new();
            for (dot, length) in bumps.iter() {
                if seen.contains(dot) {
                    kept.insert(dot.clone());
                } else {
                    fresh.insert(dot.clone(), *length);
                }
            }
            if !fresh.is_empty() {
                clset.insert(elem.clone(), fresh);
            }
        }
        let value = Value::from_parts(map, set, register)
            .with_counter(counter)
            .with_list(list_since(value.list(), seen, kept))
            .with_lww(lww)
            .with_clset(clset);
        if !DotStore::is_empty(&value) {
            out.insert(key.clone(), value);
        }
    }
    out
}

/// The elements of a map's list that a replica with `seen` may lack: the live ones whose
/// dots `seen` does not cover (the covered ones go to `kept`), and every retired one. A
/// retired element's dot stays in the context, which retires it at the receiver; its
/// structure is shipped even when `seen` covers its dot, because a replica may have seen
/// that dot only through a cut or a removal (a context) without the insert that carried the
/// element, and needs it to place the elements inserted after it. So, as a standalone list
/// ships its tombstones whole, a map ships its lists' retired elements whole.
fn list_since(list: &DotList, seen: &VersionVector, kept: &mut BTreeSet<Dot>) -> DotList {
    let mut elems = Vec::new();
    let mut retired = Vec::new();
    for e in list.elements() {
        if e.deleted {
            retired.push(e.id.clone());
        } else if seen.contains(e.id) {
            kept.insert(e.id.clone());
            continue;
        }
        elems.push((e.id.clone(), e.origin.cloned(), e.seq, e.value.clone()));
    }
    // Parts taken from a list are valid parts; should they not be, ship nothing of it.
    Rga::from_parts(elems, retired).ok().and_then(DotList::from_rga).unwrap_or_default()
}

/// The dots `seen` does not cover; the others go to `kept`.
fn split_dots<'a>(
    dots: impl Iterator<Item = &'a Dot>,
    seen: &VersionVector,
    kept: &mut BTreeSet<Dot>,
) -> DotSet {
    let mut fresh = DotSet::new();
    for dot in dots {
        if seen.contains(dot) {
            kept.insert(dot.clone());
        } else {
            fresh.insert(dot.clone());
        }
    }
    fresh
}

impl<T: Clone + PartialEq> Rga<T> {
    /// The delta since `seen`: the elements `seen` does not cover (deleted or not), and every
    /// tombstone, since deletes carry no dot to compare with `seen`.
    pub fn delta_since(&self, seen: &VersionVector) -> Rga<T> {
        let fresh = self.elements().filter(|e| !seen.contains(e.id));
        let elems = fresh.map(|e| (e.id.clone(), e.origin.cloned(), e.seq, e.value.clone()));
        let elems: Vec<_> = elems.collect();
        Rga::from_parts(elems, self.tombstones().cloned()).unwrap_or_else(|_| self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lattice, NodeId};
    use serde_json::json;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(node, c)| (NodeId::from(*node), *c)).collect()
    }

    #[test]
    fn a_set_delta_carries_new_adds_and_the_removes_as_context() {
        let mut s = Orswot::new();
        for (elem, counter) in [("x", 1), ("y", 2), ("z", 3)] {
            s.join(&s.add(Dot::new("a", counter), Scalar::from(elem)));
        }
        let client = s.clone();
        s.join(&s.remove(&Scalar::from("y")));
        s.join(&s.add(Dot::new("b", 1), Scalar::from("w")));
        let delta = s.delta_since(client.context().vv());
        let doc = Object::Set(delta.clone()).to_json();
        // a:1 and a:3 are live and seen: cut out of the context; a:2 (removed) stays in it.
        assert_eq!(doc, json!({"elems": [["w", "b", 1]], "context": {"vv": {"b": 1}, "cloud": [["a", 2]]}}));
        let mut joined = client;
        joined.join(&delta);
        assert_eq!(joined, s);
    }

    #[test]
    fn an_mv_delta_drops_the_overwritten_value() {
        let mut r = MvRegister::new();
        r.join(&r.write(Dot::new("a", 1), 1));
        let client = r.clone();
        r.join(&r.write(Dot::new("b", 1), 2));
        let delta = r.delta_since(client.context().vv());
        assert_eq!(delta.entries().collect::<Vec<_>>(), [(&Dot::new("b", 1), &2)]);
        let mut joined = client;
        joined.join(&delta);
        assert_eq!(joined, r);
        assert!(r.delta_since(r.context().vv()).entries().next().is_none(), "nothing missing");
    }

    #[test]
    fn a_list_delta_holds_new_elements_and_every_tombstone() {
        let mut l = Rga::new();
        l.join(&l.insert(0, Dot::new("a", 1), json!("x")));
        l.join(&l.insert(1, Dot::new("a", 2), json!("y")));
        let client = l.clone();
        let seen = Object::List(Box::new(client.clone())).version_vector();
        assert_eq!(seen, vv(&[("a", 2)]));
        l.join(&l.delete(0));
        l.join(&l.insert(0, Dot::new("b", 1), json!("z")));
        let delta = l.delta_since(&seen);
        assert_eq!(delta.element_count(), 1);
        assert_eq!(delta.tombstones().collect::<Vec<_>>(), [&Dot::new("a", 1)]);
        let mut joined = client;
        joined.join(&delta);
        assert_eq!(joined.to_vec(), [json!("z"), json!("y")]);
    }

    #[test]
    fn a_list_version_vector_stops_at_a_missing_element() {
        let l = Rga::from_parts(
            [(Dot::new("a", 1), None, 1, json!(0)), (Dot::new("a", 3), None, 2, json!(0))],
            [],
        );
        let l = l.expect("valid parts");
        assert_eq!(Object::List(Box::new(l)).version_vector(), vv(&[("a", 1)]));
    }

    #[test]
    fn the_catch_up_is_the_smaller_of_delta_and_state() {
        let mut s = Orswot::new();
        for i in 1..=100 {
            s.join(&s.add(Dot::new("a", i), Scalar::Int(i as i64)));
        }
        let client = Object::Set(s.clone());
        s.join(&s.add(Dot::new("b", 1), Scalar::from("new")));
        s.join(&s.remove(&Scalar::Int(50)));
        let state = Object::Set(s);
        let text = catch_up_action("k", &state, &client.version_vector());
        let action: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(action["delta"]["elems"], json!([["new", "b", 1]]));
        assert_eq!(action["delta"]["context"], json!({"vv": {"b": 1}, "cloud": [["a", 50]]}));
        assert!(text.len() * 10 < crate::delta_action("k", &state).len());
        assert!(!crate::replaces(action.as_object().expect("fields")), "a delta is joined");
        // With nothing seen the delta is the state, and the state is sent, to replace the copy.
        assert_eq!(catch_up_action("k", &state, &VersionVector::new()), crate::state_action("k", &state));
        let counter = Object::Counter(crate::PnCounter::new().inc(&NodeId::from("a"), 2));
        assert_eq!(catch_up_action("k", &counter, &vv(&[("a", 5)])), crate::state_action("k", &counter));
        let whole: serde_json::Value =
            serde_json::from_str(&crate::state_action("k", &counter)).expect("json");
        assert!(crate::replaces(whole.as_object().expect("fields")));
        assert_eq!(crate::parse_delta(whole.as_object().expect("fields")).map(|(_, o)| o), Ok(counter));
    }

    #[test]
    fn a_seen_is_checked() {
        assert_eq!(parse_seen(&json!({"a": 3, "b:1:1": 1})), Ok(vv(&[("a", 3), ("b:1:1", 1)])));
        assert_eq!(parse_seen(&json!({})), Ok(VersionVector::new()));
        for bad in [
            json!([]),
            json!({"a": 0}),
            json!({"a": -1}),
            json!({"a": "1"}),
            json!({"a b": 1}),
            json!({"a": 1.5}),
        ] {
            assert_eq!(parse_seen(&bad).map_err(|e| e.reason()), Err("crdtWrongShape"), "{bad}");
        }
        assert_eq!(
            parse_seen(&json!({"a": (1u64 << 53) + 1})).map_err(|e| e.reason()),
            Err("crdtWrongShape")
        );
        let many: serde_json::Map<String, serde_json::Value> =
            (0..=crate::object::NODES_MAX).map(|i| (format!("n{i}"), json!(1))).collect();
        assert_eq!(parse_seen(&serde_json::Value::Object(many)).map_err(|e| e.reason()), Err("crdtTooBig"));
    }
}
