//! The OR-map: a lattice that converges whatever the kinds written at a key, whose key
//! removal is observed-remove (observed-reset for counters and causal-length sets), whose
//! mutators refuse a kind the key lacks, whose set- and register-valued reads match `crdts::Map`
//! of `crdts::Orswot`s and of `crdts::MVReg`s, whose causal context covers what it holds and
//! stays dense under causal delivery, and whose causal-length sets, without key removals, are
//! causal-length sets.

use crate::delivery::{
    as_map, deliver, elements, generic_laws, node, pointwise_max, Applied, Replicated, Rng, Run, Step,
};
use proptest::prelude::*;
use rhizome_crdt::{
    fold, CausalContext, Dot, DotStore, Lattice, MapError, NodeId, OrMap, Scalar, Value, ValueDelta,
    ValueKind as Kind, ValueRef, VersionVector,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// An op on a map of small integer keys: on a set, a register or a nested map at a key.
#[derive(Clone, Debug)]
pub enum MapOp {
    SetAdd(u8, u8),
    SetRemove(u8, u8),
    Assign(u8, i64),
    RemoveKey(u8),
    NestedAssign(u8, u8, i64),
    NestedRemove(u8, u8),
    /// Increment (positive) or decrement (negative) the counter at a key.
    Count(u8, i8),
    /// The same on the counter at a key of the nested map at a key.
    NestedCount(u8, u8, i8),
    /// Insert a value into the list at a key, at an index among its live elements.
    ListInsert(u8, u8, i64),
    /// Insert a value into the list at a key right after its n-th element, retired ones
    /// included (modulo their number; at the head when it has none).
    ListInsertAfter(u8, u8, i64),
    /// Delete the live element at an index of the list at a key.
    ListCut(u8, u8),
    /// Delete the n-th element (retired ones included, modulo their number) of the list at a
    /// key by its id.
    ListCutId(u8, u8),
    /// Write `{"v": x}` into the last-writer-wins register at a key, at a time in
    /// milliseconds (a small range, so that equal times are common).
    Put(u8, i64, i64),
    /// The same on the register at a key of the nested map at a key.
    NestedPut(u8, u8, i64, i64),
    /// Add an element to the causal-length set at a key.
    ClAdd(u8, u8),
    /// Remove an element from the causal-length set at a key.
    ClRemove(u8, u8),
    /// Add an element to the causal-length set at a key of the nested map at a key when it is
    /// absent there, else remove it (so the op always bumps).
    NestedClToggle(u8, u8, u8),
}

/// The structured value a put of `x` writes.
fn put_value(x: i64) -> serde_json::Value {
    serde_json::json!({"v": x, "tags": [x]})
}

impl MapOp {
    /// The key the op touches.
    fn key(&self) -> u8 {
        match self {
            MapOp::SetAdd(k, _)
            | MapOp::SetRemove(k, _)
            | MapOp::Assign(k, _)
            | MapOp::RemoveKey(k)
            | MapOp::NestedAssign(k, ..)
            | MapOp::NestedRemove(k, _)
            | MapOp::Count(k, _)
            | MapOp::NestedCount(k, ..)
            | MapOp::ListInsert(k, ..)
            | MapOp::ListInsertAfter(k, ..)
            | MapOp::ListCut(k, _)
            | MapOp::ListCutId(k, _)
            | MapOp::Put(k, ..)
            | MapOp::NestedPut(k, ..)
            | MapOp::ClAdd(k, _)
            | MapOp::ClRemove(k, _)
            | MapOp::NestedClToggle(k, ..) => *k,
        }
    }

    /// The kind of value the op works on (none for a key removal).
    fn kind(&self) -> Option<Kind> {
        match self {
            MapOp::SetAdd(..) | MapOp::SetRemove(..) => Some(Kind::Set),
            MapOp::Assign(..) => Some(Kind::Register),
            MapOp::NestedAssign(..)
            | MapOp::NestedRemove(..)
            | MapOp::NestedCount(..)
            | MapOp::NestedPut(..)
            | MapOp::NestedClToggle(..) => Some(Kind::Map),
            MapOp::ClAdd(..) | MapOp::ClRemove(..) => Some(Kind::ClSet),
            MapOp::Put(..) => Some(Kind::Lww),
            MapOp::Count(..) => Some(Kind::Counter),
            MapOp::ListInsert(..)
            | MapOp::ListInsertAfter(..)
            | MapOp::ListCut(..)
            | MapOp::ListCutId(..) => Some(Kind::List),
            MapOp::RemoveKey(_) => None,
        }
    }
}

fn map_op() -> impl Strategy<Value = MapOp> {
    let (key, small) = (0u8..3, 0u8..3);
    prop_oneof![
        3 => (key.clone(), small.clone()).prop_map(|(k, e)| MapOp::SetAdd(k, e)),
        2 => (key.clone(), small.clone()).prop_map(|(k, e)| MapOp::SetRemove(k, e)),
        3 => (key.clone(), 0i64..3).prop_map(|(k, v)| MapOp::Assign(k, v)),
        1 => key.clone().prop_map(MapOp::RemoveKey),
        2 => (key.clone(), small.clone(), 0i64..3).prop_map(|(k, s, v)| MapOp::NestedAssign(k, s, v)),
        1 => (key.clone(), small.clone()).prop_map(|(k, s)| MapOp::NestedRemove(k, s)),
        3 => (key.clone(), count()).prop_map(|(k, by)| MapOp::Count(k, by)),
        1 => (key.clone(), small.clone(), count()).prop_map(|(k, s, by)| MapOp::NestedCount(k, s, by)),
        2 => (key.clone(), 0u8..4, 0i64..9).prop_map(|(k, i, v)| MapOp::ListInsert(k, i, v)),
        2 => (key.clone(), 0u8..8, 0i64..9).prop_map(|(k, i, v)| MapOp::ListInsertAfter(k, i, v)),
        1 => (key.clone(), 0u8..4).prop_map(|(k, i)| MapOp::ListCut(k, i)),
        1 => (key.clone(), 0u8..8).prop_map(|(k, i)| MapOp::ListCutId(k, i)),
        3 => (key.clone(), 0i64..3, 0i64..3).prop_map(|(k, x, t)| MapOp::Put(k, x, t)),
        1 => (key.clone(), small.clone(), 0i64..3, 0i64..3).prop_map(|(k, s, x, t)| MapOp::NestedPut(k, s, x, t)),
        3 => (key.clone(), small.clone()).prop_map(|(k, e)| MapOp::ClAdd(k, e)),
        2 => (key.clone(), small.clone()).prop_map(|(k, e)| MapOp::ClRemove(k, e)),
        1 => (key, small.clone(), small).prop_map(|(k, s, e)| MapOp::NestedClToggle(k, s, e)),
    ]
}

/// The id of the n-th element (retired ones included, modulo their number) of the list at a
/// key, if it holds one.
fn nth_element(value: Option<ValueRef<'_, u8>>, n: u8) -> Option<rhizome_crdt::Dot> {
    let list = value?.list()?;
    let count = list.element_count();
    list.elements().nth(usize::from(n) % count).map(|e| e.id.clone())
}

/// An increment (positive) or a decrement (negative), never 0.
fn count() -> impl Strategy<Value = i8> {
    prop_oneof![1i8..4, -3i8..0]
}

/// The counter mutator of `by` (an increment when positive).
fn count_by(v: ValueRef<'_, u8>, dot: rhizome_crdt::Dot, by: i8) -> Result<ValueDelta<u8>, MapError> {
    if by > 0 {
        v.counter_inc(dot, by.unsigned_abs().into())
    } else {
        v.counter_dec(dot, by.unsigned_abs().into())
    }
}

/// An op on set values only, for the comparison with `crdts::Map`.
fn set_value_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        3 => (0u8..3, 0u8..3).prop_map(|(k, e)| MapOp::SetAdd(k, e)),
        2 => (0u8..3, 0u8..3).prop_map(|(k, e)| MapOp::SetRemove(k, e)),
        1 => (0u8..3).prop_map(MapOp::RemoveKey),
    ]
}

fn try_mutate(map: &OrMap<u8>, node: &NodeId, op: &MapOp) -> Result<OrMap<u8>, MapError> {
    let dot = map.context().next_dot(node);
    let f = |v: ValueRef<'_, u8>| -> Result<ValueDelta<u8>, MapError> {
        match op {
            MapOp::SetAdd(_, e) => v.set_add(dot, i64::from(*e)),
            MapOp::SetRemove(_, e) => v.set_remove(&Scalar::Int(i64::from(*e))),
            MapOp::Assign(_, x) => v.assign(dot, *x),
            MapOp::NestedAssign(_, s, x) => v.map_update(*s, |inner| inner.assign(dot, *x)),
            MapOp::NestedRemove(_, s) => v.map_remove(s),
            MapOp::Count(_, by) => count_by(v, dot, *by),
            MapOp::NestedCount(_, s, by) => v.map_update(*s, |inner| count_by(inner, dot, *by)),
            MapOp::ListInsert(_, i, x) => v.list_insert(dot, usize::from(*i), (*x).into()),
            MapOp::ListInsertAfter(_, i, x) => {
                v.list_insert_after(dot, nth_element(Some(v), *i).as_ref(), (*x).into())
            }
            MapOp::ListCut(_, i) => v.list_delete(usize::from(*i)),
            MapOp::ListCutId(_, i) => match nth_element(Some(v), *i) {
                Some(id) => v.list_delete_id(&id),
                None => v.list_delete(0),
            },
            MapOp::Put(_, x, t) => v.lww_put(dot, *t, put_value(*x)),
            MapOp::NestedPut(_, s, x, t) => v.map_update(*s, |inner| inner.lww_put(dot, *t, put_value(*x))),
            MapOp::ClAdd(_, e) => v.clset_add(dot, i64::from(*e)),
            MapOp::ClRemove(_, e) => v.clset_remove(dot, &Scalar::Int(i64::from(*e))),
            MapOp::NestedClToggle(_, s, e) => v.map_update(*s, |inner| {
                let e = Scalar::Int(i64::from(*e));
                match inner.value().is_some_and(|n| n.clset_contains(&e)) {
                    true => inner.clset_remove(dot, &e),
                    false => inner.clset_add(dot, e),
                }
            }),
            MapOp::RemoveKey(_) => unreachable!("handled below"),
        }
    };
    match op {
        MapOp::RemoveKey(k) => Ok(map.remove(k)),
        _ => map.update(op.key(), f),
    }
}

impl Replicated for OrMap<u8> {
    type Op = MapOp;

    /// A refused op (a type mismatch) makes no delta.
    fn mutate(&self, node: &NodeId, op: &MapOp) -> Self {
        try_mutate(self, node, op).unwrap_or_default()
    }
}

generic_laws!(ormap, OrMap<u8>, super::map_op());

/// `node`'s increments minus decrements in the counter of `value` (0 without one).
fn own_count(value: Option<&Value<u8>>, node: &NodeId) -> i128 {
    let totals = value.and_then(|v| v.counter_totals().get(node).copied());
    totals.map_or(0, |e| i128::from(e.p) - i128::from(e.n))
}

/// The (key, element) pairs of a map of sets.
fn pairs(map: &OrMap<u8>) -> BTreeSet<(u8, Scalar)> {
    map.iter().flat_map(|(k, v)| v.elements().map(move |e| (*k, e.clone()))).collect()
}

/// The op of the kind the value at `key` holds (the first, if several), else of `fallback`.
fn update_of_held_kind(value: Option<&Value<u8>>, key: u8, fallback: Kind, x: u8) -> MapOp {
    match value.and_then(|v| v.kinds().next()).unwrap_or(fallback) {
        Kind::Set => MapOp::SetAdd(key, x),
        Kind::Register => MapOp::Assign(key, i64::from(x)),
        // The nested key may hold a counter (a nested assignment there would be refused).
        Kind::Map if value.and_then(|v| v.get(&x)).is_some_and(|n| n.holds(Kind::Counter)) => {
            MapOp::NestedCount(key, x, x as i8 + 1)
        }
        Kind::Map if value.and_then(|v| v.get(&x)).is_some_and(|n| n.holds(Kind::Lww)) => {
            MapOp::NestedPut(key, x, i64::from(x), 0)
        }
        Kind::Map if value.and_then(|v| v.get(&x)).is_some_and(|n| n.holds(Kind::ClSet)) => {
            MapOp::NestedClToggle(key, x, x)
        }
        Kind::Map => MapOp::NestedAssign(key, x, i64::from(x)),
        Kind::Counter => MapOp::Count(key, x as i8 + 1),
        Kind::List => MapOp::ListInsert(key, x, i64::from(x)),
        // At time 0, below any other: the put still supersedes everything it saw.
        Kind::Lww => MapOp::Put(key, i64::from(x), 0),
        // The bump that changes the element's presence, so that it makes a dot.
        Kind::ClSet if value.is_some_and(|v| v.clset_contains(&Scalar::Int(i64::from(x)))) => {
            MapOp::ClRemove(key, x)
        }
        Kind::ClSet => MapOp::ClAdd(key, x),
    }
}

/// The oracle's map with values of type `V`, and its ops.
type TheirMap<V> = crdts::Map<u8, V, String>;
type TheirOp<V> = crdts::map::Op<u8, V, String>;
type TheirSet = crdts::Orswot<u8, String>;
type TheirRegister = crdts::MVReg<i64, String>;

/// One replica of a differential test: our map and the oracle's, fed the same ops.
struct Twin<V: crdts::map::Val<String>> {
    ours: OrMap<u8>,
    theirs: TheirMap<V>,
    /// The ops applied here, by index into the shared op table, in the order applied.
    log: Vec<usize>,
    applied: HashSet<usize>,
}

impl<V> Twin<V>
where
    V: crdts::map::Val<String> + std::fmt::Debug,
    V::Op: Clone,
{
    fn new() -> Twin<V> {
        Twin { ours: OrMap::new(), theirs: TheirMap::new(), log: Vec::new(), applied: HashSet::new() }
    }

    fn apply(&mut self, id: usize, ops: &[(TheirOp<V>, OrMap<u8>)]) {
        use crdts::CmRDT;
        if self.applied.insert(id) {
            let (theirs, ours) = &ops[id];
            self.theirs.apply(theirs.clone());
            self.ours.join(ours);
            self.log.push(id);
        }
    }
}

impl Twin<TheirSet> {
    /// The oracle's op for `op` made by `actor` here.
    fn their_op(&self, actor: String, op: &MapOp) -> TheirOp<TheirSet> {
        let map = &self.theirs;
        match op {
            MapOp::SetAdd(k, e) => {
                map.update(*k, map.read_ctx().derive_add_ctx(actor), |set, ctx| set.add(*e, ctx))
            }
            MapOp::SetRemove(k, e) => map.update(*k, map.read_ctx().derive_add_ctx(actor), |set, _| {
                set.rm(*e, set.contains(e).derive_rm_ctx())
            }),
            MapOp::RemoveKey(k) => map.rm(*k, map.get(k).derive_rm_ctx()),
            _ => unreachable!("set values only"),
        }
    }

    /// The oracle's (key, element) pairs.
    fn their_pairs(&self) -> BTreeSet<(u8, Scalar)> {
        let mut out = BTreeSet::new();
        for entry in self.theirs.iter() {
            let (k, set) = entry.val;
            for e in set.read().val {
                out.insert((*k, Scalar::Int(i64::from(e))));
            }
        }
        out
    }
}

impl Twin<TheirRegister> {
    /// The oracle's op for `op` made by `actor` here; a removal's context is the map's whole
    /// clock (see [`register_values_match_crdts_map`]).
    fn their_register_op(&self, actor: String, op: &MapOp) -> TheirOp<TheirRegister> {
        let map = &self.theirs;
        match op {
            MapOp::Assign(k, x) => {
                map.update(*k, map.read_ctx().derive_add_ctx(actor), |register, ctx| register.write(*x, ctx))
            }
            MapOp::RemoveKey(k) => map.rm(*k, map.read_ctx().derive_rm_ctx()),
            _ => unreachable!("register values only"),
        }
    }

    /// The oracle's keys, each with its register's values, sorted.
    fn their_registers(&self) -> BTreeMap<u8, Vec<Scalar>> {
        let entries = self.theirs.iter().map(|entry| {
            let (key, register) = entry.val;
            let mut values: Vec<Scalar> = register.read().val.into_iter().map(Scalar::Int).collect();
            values.sort();
            (*key, values)
        });
        entries.collect()
    }
}

/// Our keys, each with its register's values (every write held), sorted.
fn registers(map: &OrMap<u8>) -> BTreeMap<u8, Vec<Scalar>> {
    let entries = map.iter().map(|(key, value)| {
        let mut values: Vec<Scalar> = value.register_entries().map(|(_, x)| x.clone()).collect();
        values.sort();
        (*key, values)
    });
    entries.collect()
}

/// An op on register values only, for the comparison with `crdts::Map` of `MVReg`s.
fn register_value_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        3 => (0u8..3, 0i64..3).prop_map(|(k, x)| MapOp::Assign(k, x)),
        1 => (0u8..3).prop_map(MapOp::RemoveKey),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A mutator fails exactly when the key holds a value without the mutator's kind, and
    /// then reports the first kind the key holds; it never panics.
    #[test]
    fn mutators_refuse_exactly_a_kind_the_key_lacks(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 40),
        op in map_op(),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        for (r, state) in run.states.iter().enumerate() {
            let result = try_mutate(state, &node(r), &op);
            let value = state.get(&op.key());
            let mismatch = |kind: Option<Kind>, value: Option<&Value<u8>>| match (kind, value) {
                (Some(kind), Some(v)) if !v.holds(kind) => v
                    .kinds()
                    .next()
                    .map(|found| MapError::TypeMismatch { expected: kind, found }),
                _ => None,
            };
            // A nested op also meets the kind of the nested value it works on.
            let nested = match &op {
                MapOp::NestedAssign(_, s, _) => Some((s, Kind::Register)),
                MapOp::NestedCount(_, s, _) => Some((s, Kind::Counter)),
                MapOp::NestedPut(_, s, ..) => Some((s, Kind::Lww)),
                MapOp::NestedClToggle(_, s, _) => Some((s, Kind::ClSet)),
                _ => None,
            };
            let expected = mismatch(op.kind(), value).or_else(|| {
                nested.and_then(|(s, kind)| mismatch(Some(kind), value.and_then(|v| v.get(s))))
            });
            prop_assert_eq!(result.err(), expected);
        }
    }

    /// The counts the map keeps through joins equal a recount of its entries.
    #[test]
    fn kept_counts_equal_a_recount(replicas in 3usize..=4, steps in crate::delivery::steps(map_op(), 40)) {
        type Totals = (usize, usize, usize, usize);
        fn recount<'a>(entries: impl Iterator<Item = (&'a u8, &'a Value<u8>)>, totals: &mut Totals) {
            for (_, value) in entries {
                totals.0 += 1;
                totals.1 += value.set_entries().map(|(_, dots)| dots.len()).sum::<usize>();
                totals.1 += value.register_entries().count();
                totals.1 += value.counter_entries().count();
                totals.1 += value.list().live_count();
                totals.1 += value.lww_entries().count();
                totals.1 += value.clset_entries().map(|(_, bumps)| bumps.len()).sum::<usize>();
                totals.3 += value.lww_entries().map(|(_, e)| e.value.to_string().len()).sum::<usize>();
                totals.2 += value.list().element_count() - value.list().live_count();
                recount(value.entries(), totals);
            }
        }
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        for state in &run.states {
            let mut totals = (0, 0, 0, 0);
            recount(state.iter(), &mut totals);
            let kept = (state.key_count(), state.dot_count(), state.retired_count(), state.lww_bytes());
            prop_assert_eq!(kept, totals);
        }
    }

    /// A key removal concurrent with an update inside the key: the update survives, and only
    /// it (everything the removal saw is gone).
    #[test]
    fn removing_a_key_keeps_only_a_concurrent_nested_update(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 40),
        key in 0u8..3,
        fallback in prop::sample::select(vec![Kind::Set, Kind::Register, Kind::Map, Kind::Counter, Kind::List, Kind::Lww, Kind::ClSet]),
        x in 0u8..3,
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        run.sync_all();
        let update = update_of_held_kind(run.states[1].get(&key), key, fallback, x);
        let own_before = own_count(run.states[1].get(&key), &node(1));
        let own_nested_before = run.states[1].get(&key).and_then(|v| v.get(&x)).cloned();
        let length_before = run.states[1].get(&key).map_or(0, |v| v.clset_length(&Scalar::Int(i64::from(x))));
        let nested_length_before = own_nested_before.as_ref().map_or(0, |v| v.clset_length(&Scalar::Int(i64::from(x))));
        run.play(&[Step::Local(0, MapOp::RemoveKey(key)), Step::Local(1, update.clone())]);
        run.sync_all();
        let state = &run.states[0];
        let value = state.get(&key);
        prop_assert!(value.is_some(), "the concurrent update keeps the key");
        let value = value.unwrap();
        prop_assert_eq!(value.kinds().collect::<Vec<_>>(), update.kind().into_iter().collect::<Vec<_>>());
        let x_scalar = Scalar::Int(i64::from(x));
        match update {
            MapOp::SetAdd(..) => prop_assert_eq!(value.elements().collect::<Vec<_>>(), [&x_scalar]),
            MapOp::Assign(..) => prop_assert_eq!(value.values().into_iter().collect::<Vec<_>>(), [&x_scalar]),
            // The updater's new dot carries its running totals (observed-reset, see
            // `counter_inc`): what it counted before, plus this increment.
            MapOp::Count(..) => prop_assert_eq!(value.counter_value(), own_before + i128::from(x) + 1),
            // Every element the removal saw is retired; the concurrent insert is live.
            MapOp::ListInsert(..) => {
                let values: Vec<_> = value.list().values().cloned().collect();
                prop_assert_eq!(values, vec![serde_json::json!(x)]);
            }
            MapOp::NestedCount(..) => {
                let inner: Vec<_> = value.entries().map(|(k, v)| (*k, v.counter_value())).collect();
                let own = own_count(own_nested_before.as_ref(), &node(1));
                prop_assert_eq!(inner, vec![(x, own + i128::from(x) + 1)]);
            }
            // The removal retired every write it saw; only the concurrent put is left (it
            // superseded the writes its replica held, whatever its time).
            MapOp::Put(..) => {
                prop_assert_eq!(value.lww_entries().count(), 1);
                prop_assert_eq!(value.lww_value(), Some(&put_value(i64::from(x))));
            }
            MapOp::NestedPut(..) => {
                let inner: Vec<_> = value.entries().map(|(k, v)| (*k, v.lww_value().cloned())).collect();
                prop_assert_eq!(inner, vec![(x, Some(put_value(i64::from(x))))]);
            }
            // Every bump the removal saw is retired; the concurrent one stays, with the length
            // its author gave the element.
            MapOp::ClAdd(..) | MapOp::ClRemove(..) => {
                let lengths: Vec<_> = value.clset_entries().map(|(e, _)| (e, value.clset_length(e))).collect();
                prop_assert_eq!(lengths, vec![(&x_scalar, length_before + 1)]);
            }
            MapOp::NestedClToggle(..) => {
                let inner: Vec<_> = value.entries().map(|(k, v)| (*k, v.clset_length(&x_scalar))).collect();
                prop_assert_eq!(inner, vec![(x, nested_length_before + 1)]);
            }
            _ => {
                let inner: Vec<_> =
                    value.entries().filter(|(_, v)| v.is_live()).map(|(k, v)| (*k, v.values())).collect();
                prop_assert_eq!(inner, vec![(x, BTreeSet::from([&x_scalar]))]);
            }
        }
    }

    /// A key removal that saw every update of the key removes it everywhere.
    #[test]
    fn removing_a_key_after_observing_it_removes_it(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 40),
        key in 0u8..3,
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        run.sync_all();
        run.play(&[Step::Local(2, MapOp::RemoveKey(key))]);
        run.sync_all();
        for state in &run.states {
            prop_assert!(!state.contains_key(&key));
        }
    }

    /// Differential test against `crdts::Map<u8, crdts::Orswot<u8, _>, _>` (riak_dt-style
    /// op-based map with reset-remove of keys), with set values only, the same ops delivered
    /// in the same causal order to both. What is compared is the (key, element) pairs after
    /// every step. Key presence alone is not comparable: `crdts` spends a map dot on every
    /// update, a nested remove included, so a key whose set was emptied stays present there
    /// with an empty set, whereas here a key lives only while its value holds a dot. The
    /// contexts are not comparable either, for the same reason.
    #[test]
    fn set_values_match_crdts_map(replicas in 3usize..=4, steps in crate::delivery::steps(set_value_op(), 50)) {
        let mut twins: Vec<Twin<TheirSet>> = (0..replicas).map(|_| Twin::new()).collect();
        let mut ops = Vec::new();
        let ring: Vec<_> = (0..2 * replicas).map(|i| Step::Sync { from: i % replicas, to: (i + 1) % replicas }).collect();
        for step in steps.iter().chain(&ring) {
            match step {
                Step::Local(r, op) => {
                    let r = r % replicas;
                    let theirs = twins[r].their_op(format!("n{r}"), op);
                    ops.push((theirs, twins[r].ours.mutate(&node(r), op)));
                    twins[r].apply(ops.len() - 1, &ops);
                }
                Step::Sync { from, to } => {
                    let (from, to) = (from % replicas, to % replicas);
                    for id in twins[from].log.clone() {
                        twins[to].apply(id, &ops);
                    }
                }
            }
            for twin in &twins {
                prop_assert_eq!(pairs(&twin.ours), twin.their_pairs());
            }
        }
        for twin in &twins {
            prop_assert_eq!(&twin.ours, &twins[0].ours, "after the ring every replica has every op");
        }
    }

    /// Differential test against `crdts::Map<u8, crdts::MVReg<i64, _>, _>` with register
    /// values only, the same ops delivered in the same causal order to both, as in
    /// `set_values_match_crdts_map`. Compared after every step: the keys present and, per
    /// key, the multiset of values its register holds (one per write not superseded).
    ///
    /// A removal's context in the oracle is the map's whole clock (`read_ctx`), so it removes
    /// what the replica observed under the key, as ours does. The key's own clock
    /// (`get(key).derive_rm_ctx()`, as the set test uses) does not work with registers, and
    /// does not even converge in crdts 7.3: a value's clock holds every dot its writer had
    /// seen, other keys' included, and a reset by the key's clock leaves those, so a value the
    /// removal saw survives where a concurrent write recreated the entry first, and goes with
    /// the entry where the removal came first. Three replicas show it: n2 writes key 1; n0,
    /// having seen that, writes key 0 then removes key 0; n1 writes key 0 concurrently.
    #[test]
    fn register_values_match_crdts_map(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(register_value_op(), 50),
    ) {
        let mut twins: Vec<Twin<TheirRegister>> = (0..replicas).map(|_| Twin::new()).collect();
        let mut ops = Vec::new();
        let ring = (0..2 * replicas).map(|i| Step::Sync { from: i % replicas, to: (i + 1) % replicas });
        let ring: Vec<_> = ring.collect();
        for step in steps.iter().chain(&ring) {
            match step {
                Step::Local(r, op) => {
                    let r = r % replicas;
                    let theirs = twins[r].their_register_op(format!("n{r}"), op);
                    ops.push((theirs, twins[r].ours.mutate(&node(r), op)));
                    twins[r].apply(ops.len() - 1, &ops);
                }
                Step::Sync { from, to } => {
                    let (from, to) = (from % replicas, to % replicas);
                    for id in twins[from].log.clone() {
                        twins[to].apply(id, &ops);
                    }
                }
            }
            for (r, twin) in twins.iter().enumerate() {
                prop_assert_eq!(registers(&twin.ours), twin.their_registers(), "replica {}", r);
            }
        }
        for twin in &twins {
            prop_assert_eq!(&twin.ours, &twins[0].ours, "after the ring every replica has every op");
        }
    }

    /// Removing a key and writing it afresh, folded into one delta, replaces a value of one
    /// kind by another (the way out of a type mismatch).
    #[test]
    fn remove_then_write_replaces_the_kind(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 30),
        key in 0u8..3,
        x in 0i64..3,
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        let mut state = run.states[0].clone();
        let removal = state.remove(&key);
        state.join(&removal);
        let write = state.update(key, |v| v.assign(state.context().next_dot(&node(0)), x));
        prop_assert!(write.is_ok());
        let write = write.unwrap();
        let delta = rhizome_crdt::fold([removal, write]);
        let mut replaced = run.states[0].clone();
        replaced.join(&delta);
        prop_assert_eq!(replaced.get(&key).map(|v| v.kinds().collect::<Vec<_>>()), Some(vec![Kind::Register]));
        prop_assert!(!delta.is_bottom());
    }
}

/// The key of the counter in [`removing_a_counter_resets_what_it_saw_and_keeps_concurrent_counts`],
/// outside the keys `map_op` touches.
const COUNTER_KEY: u8 = 3;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Observed-reset: replica 0 removes the counter's key after seeing everything, while
    /// some other replicas count at it concurrently. Every contribution the removal saw is
    /// gone except those of the replicas that counted concurrently: each of those keeps its
    /// running totals (what it had counted, which the removal saw, plus its new count), and
    /// the key stays exactly when one of them counted.
    #[test]
    fn removing_a_counter_resets_what_it_saw_and_keeps_concurrent_counts(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 30),
        counts in crate::delivery::steps(count().prop_map(|by| MapOp::Count(COUNTER_KEY, by)), 20),
        concurrent in prop::collection::vec(prop::option::of(count()), 3),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        run.play(&counts);
        run.sync_all();
        let before = run.states[0].clone();
        let mut updates = vec![Step::Local(0, MapOp::RemoveKey(COUNTER_KEY))];
        let mut expected = 0i128;
        for (r, by) in concurrent.iter().enumerate().take(replicas - 1) {
            let Some(by) = by else { continue };
            let replica = r + 1;
            updates.push(Step::Local(replica, MapOp::Count(COUNTER_KEY, *by)));
            expected += own_count(before.get(&COUNTER_KEY), &node(replica)) + i128::from(*by);
        }
        let counted = updates.len() > 1;
        run.play(&updates);
        run.sync_all();
        for state in &run.states {
            prop_assert_eq!(state, &run.states[0]);
            let value = state.get(&COUNTER_KEY);
            prop_assert_eq!(value.is_some(), counted);
            prop_assert_eq!(value.map_or(0, Value::counter_value), expected);
            if let Some(value) = value {
                prop_assert_eq!(value.kinds().collect::<Vec<_>>(), [Kind::Counter]);
                // One dot per node that counted, whatever the number of its operations.
                prop_assert_eq!(value.counter_entries().count(), value.counter_totals().len());
            }
        }
    }

    /// A counter at a key is the sum of every count made at it since the last removal its
    /// replica saw: with no removal, the sum of all counts, as a PN-counter.
    #[test]
    fn a_counter_without_removals_sums_every_count(
        replicas in 3usize..=4,
        counts in crate::delivery::steps(count().prop_map(|by| MapOp::Count(COUNTER_KEY, by)), 40),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&counts);
        run.sync_all();
        let sum: i128 = counts
            .iter()
            .filter_map(|step| match step {
                Step::Local(_, MapOp::Count(_, by)) => Some(i128::from(*by)),
                _ => None,
            })
            .sum();
        for state in &run.states {
            prop_assert_eq!(state.get(&COUNTER_KEY).map_or(0, Value::counter_value), sum);
        }
    }
}

/// The key of the list in [`removing_a_list_keeps_exactly_the_concurrent_inserts`], outside
/// the keys `map_op` touches.
const LIST_KEY: u8 = 4;

/// An insert or a delete on the list at [`LIST_KEY`].
fn list_op() -> impl Strategy<Value = MapOp> {
    prop_oneof![
        2 => (0u8..4, 0i64..9).prop_map(|(i, v)| MapOp::ListInsert(LIST_KEY, i, v)),
        2 => (0u8..8, 0i64..9).prop_map(|(i, v)| MapOp::ListInsertAfter(LIST_KEY, i, v)),
        1 => (0u8..4).prop_map(|i| MapOp::ListCut(LIST_KEY, i)),
        1 => (0u8..8).prop_map(|i| MapOp::ListCutId(LIST_KEY, i)),
    ]
}

/// The ids of the live elements of the list at [`LIST_KEY`], in list order.
fn live_ids(map: &OrMap<u8>) -> Vec<rhizome_crdt::Dot> {
    let Some(value) = map.get(&LIST_KEY) else { return Vec::new() };
    value.list().elements().filter(|e| !e.deleted).map(|e| e.id.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Replica 0 removes the list's key after seeing everything, while other replicas insert
    /// concurrently (after any element, retired or not). Afterwards every replica holds the
    /// same state, the list holds exactly the concurrent inserts, in the order they have in
    /// the same history without the removal (a survivor inserted after a retired element
    /// lands where its author put it), and the key is present exactly when one was made.
    #[test]
    fn removing_a_list_keeps_exactly_the_concurrent_inserts(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 20),
        edits in crate::delivery::steps(list_op(), 30),
        concurrent in prop::collection::vec(prop::option::of((0u8..8, 0i64..9)), 3),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        run.play(&edits);
        run.sync_all();
        let mut inserts = Vec::new();
        for (r, insert) in concurrent.iter().enumerate().take(replicas - 1) {
            if let Some((after, v)) = insert {
                inserts.push(Step::Local(r + 1, MapOp::ListInsertAfter(LIST_KEY, *after, *v)));
            }
        }
        let mut kept = Run::<OrMap<u8>>::new(replicas);
        kept.states = run.states.clone();
        kept.play(&inserts);
        kept.sync_all();
        let before: BTreeSet<_> = live_ids(&run.states[0]).into_iter().collect();
        let expected: Vec<_> = live_ids(&kept.states[0]).into_iter().filter(|id| !before.contains(id)).collect();

        let mut updates = vec![Step::Local(0, MapOp::RemoveKey(LIST_KEY))];
        updates.extend(inserts.iter().cloned());
        run.play(&updates);
        run.sync_all();
        for state in &run.states {
            prop_assert_eq!(state, &run.states[0]);
            prop_assert_eq!(live_ids(state), expected.clone());
            prop_assert_eq!(state.contains_key(&LIST_KEY), !inserts.is_empty());
            let kinds: Vec<_> = state.get(&LIST_KEY).into_iter().flat_map(Value::kinds).collect();
            prop_assert_eq!(kinds, if inserts.is_empty() { vec![] } else { vec![Kind::List] });
        }
    }

    /// The order a map's list reaches through joins in any delivery order is the order its
    /// elements give a standalone list built from them alone (RGA's order is a function of
    /// the elements; the map's dots are just their ids).
    #[test]
    fn a_list_in_a_map_orders_as_its_elements_alone(
        replicas in 3usize..=4,
        edits in crate::delivery::steps(list_op(), 40),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&edits);
        run.sync_all();
        let state = &run.states[0];
        let Some(value) = state.get(&LIST_KEY) else { return Ok(()) };
        let list = value.list();
        // Rebuilt from its parts alone, the list orders its elements the same way.
        let parts = list.elements().map(|e| (e.id.clone(), e.origin.cloned(), e.seq, e.value.clone()));
        let retired = list.elements().filter(|e| e.deleted).map(|e| e.id.clone());
        let alone = rhizome_crdt::Rga::from_parts(parts.collect::<Vec<_>>(), retired.collect::<Vec<_>>());
        prop_assert!(alone.is_ok());
        let alone = alone.unwrap();
        prop_assert_eq!(alone.to_vec(), list.values().cloned().collect::<Vec<_>>());
        prop_assert_eq!(alone.len(), list.live_count());
    }
}

/// The key of the register in [`concurrent_puts_read_as_the_greatest_time_and_dot`], outside
/// the keys `map_op` touches.
const LWW_KEY: u8 = 5;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Replicas that have seen everything put at one key concurrently, each at its own time.
    /// Afterwards every replica holds the same state, keeps every concurrent put (none saw
    /// another), and reads the one with the greatest (time, dot), each time raised to the
    /// greatest time the put superseded. A put made after that supersedes them all, whatever
    /// its time.
    #[test]
    fn concurrent_puts_read_as_the_greatest_time_and_dot(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 20),
        puts in crate::delivery::steps((0i64..3, 0i64..4).prop_map(|(x, t)| MapOp::Put(LWW_KEY, x, t)), 20),
        concurrent in prop::collection::vec(prop::option::of((0i64..9, 0i64..4)), 4),
        late in 0i64..4,
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        run.play(&puts);
        run.sync_all();
        let before = run.states[0].clone();
        let base = before.get(&LWW_KEY).into_iter().flat_map(Value::lww_entries).map(|(_, e)| e.time_ms).max();
        let mut updates = Vec::new();
        let mut expected = None;
        for (r, put) in concurrent.iter().enumerate().take(replicas) {
            let Some((x, t)) = put else { continue };
            updates.push(Step::Local(r, MapOp::Put(LWW_KEY, *x, *t)));
            let stamp = ((*t).max(base.unwrap_or(*t)), run.states[r].context().next_dot(&node(r)));
            if expected.as_ref().is_none_or(|(best, _)| stamp > *best) {
                expected = Some((stamp, put_value(*x)));
            }
        }
        run.play(&updates);
        run.sync_all();
        for state in &run.states {
            prop_assert_eq!(state, &run.states[0]);
            let value = state.get(&LWW_KEY);
            match &expected {
                None => prop_assert_eq!(value, before.get(&LWW_KEY)),
                Some((_, winner)) => {
                    let value = value.unwrap();
                    prop_assert_eq!(value.kinds().collect::<Vec<_>>(), [Kind::Lww]);
                    prop_assert_eq!(value.lww_entries().count(), updates.len());
                    prop_assert_eq!(value.lww_value(), Some(winner));
                }
            }
        }
        run.play(&[Step::Local(replicas - 1, MapOp::Put(LWW_KEY, 7, late))]);
        run.sync_all();
        for state in &run.states {
            let value = state.get(&LWW_KEY).unwrap();
            prop_assert_eq!(value.lww_entries().count(), 1);
            prop_assert_eq!(value.lww_value(), Some(&put_value(7)));
        }
    }
}

/// The key of the causal-length set in the tests below, outside the keys `map_op` touches.
const CLSET_KEY: u8 = 6;

/// An add or a remove of one of a few elements, as the set tests' op.
fn cl_op() -> impl Strategy<Value = crate::set::SetOp> {
    use crate::set::SetOp;
    prop_oneof![(0u8..4).prop_map(SetOp::Add), (0u8..4).prop_map(SetOp::Remove)]
}

/// The map op at [`CLSET_KEY`] doing what `op` does to a causal-length set.
fn as_map_op(op: &crate::set::SetOp) -> MapOp {
    match op {
        crate::set::SetOp::Add(e) => MapOp::ClAdd(CLSET_KEY, *e),
        crate::set::SetOp::Remove(e) => MapOp::ClRemove(CLSET_KEY, *e),
    }
}

/// The causal lengths of the set at [`CLSET_KEY`], element by element (removed ones included).
fn map_lengths(map: &OrMap<u8>) -> Vec<(u8, u64)> {
    let Some(value) = map.get(&CLSET_KEY) else { return Vec::new() };
    let lengths = value.clset_entries().map(|(e, _)| (e.clone(), value.clset_length(e)));
    lengths
        .map(|(e, length)| {
            (
                u8::try_from(match e {
                    Scalar::Int(i) => i,
                    _ => -1,
                })
                .unwrap_or(u8::MAX),
                length,
            )
        })
        .collect()
}

/// The causal lengths of a causal-length set, element by element.
fn set_lengths(set: &rhizome_crdt::ClSet<u8>) -> Vec<(u8, u64)> {
    set.lengths().map(|(e, length)| (*e, length)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Without key removals, a causal-length set in a map is a causal-length set: replicas
    /// playing the same adds, removes and syncs on a map's set and on a standalone `ClSet`
    /// hold the same lengths at every step and after every delta reached every replica
    /// (each element's greatest bump is never retired: a bump retires only shorter ones).
    #[test]
    fn a_clset_in_a_map_without_removals_is_a_causal_length_set(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(cl_op(), 50),
        seed in any::<u64>(),
    ) {
        let as_map: Vec<Step<MapOp>> = steps
            .iter()
            .map(|step| match step {
                Step::Local(r, op) => Step::Local(*r, as_map_op(op)),
                Step::Sync { from, to } => Step::Sync { from: *from, to: *to },
            })
            .collect();
        let mut ours = Run::<OrMap<u8>>::new(replicas);
        let mut theirs = Run::<rhizome_crdt::ClSet<u8>>::new(replicas);
        for (step, map_step) in steps.iter().zip(&as_map) {
            ours.play(std::slice::from_ref(map_step));
            theirs.play(std::slice::from_ref(step));
            for (map, set) in ours.states.iter().zip(&theirs.states) {
                prop_assert_eq!(map_lengths(map), set_lengths(set));
            }
        }
        let (converged, _) = crate::delivery::converge::<OrMap<u8>>(replicas, &as_map, seed);
        ours.sync_all();
        theirs.sync_all();
        for (map, set) in converged.iter().chain(&ours.states).zip(theirs.states.iter().cycle()) {
            prop_assert_eq!(map_lengths(map), set_lengths(set));
            let present: Vec<_> = map.get(&CLSET_KEY).into_iter().flat_map(Value::clset_elements).cloned().collect();
            let expected: Vec<_> = set.iter().map(|e| Scalar::Int(i64::from(*e))).collect();
            prop_assert_eq!(present, expected);
        }
    }

    /// Observed reset: replica 0 removes the set's key after seeing everything, while other
    /// replicas add or remove elements concurrently. Afterwards every replica holds the same
    /// state, an element keeps exactly the greatest length a concurrent bump gave it (its
    /// length before plus one; elements nobody bumped are forgotten), and the key is present
    /// exactly when some concurrent operation changed an element's presence.
    #[test]
    fn removing_a_clset_keeps_exactly_the_concurrent_bumps(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 20),
        edits in crate::delivery::steps(cl_op().prop_map(|op| as_map_op(&op)), 30),
        concurrent in prop::collection::vec(prop::option::of(cl_op()), 3),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        run.play(&edits);
        run.sync_all();
        let before = run.states[0].clone();
        let mut updates = vec![Step::Local(0, MapOp::RemoveKey(CLSET_KEY))];
        let mut expected: std::collections::BTreeMap<u8, u64> = std::collections::BTreeMap::new();
        for (r, op) in concurrent.iter().enumerate().take(replicas - 1) {
            let Some(op) = op else { continue };
            updates.push(Step::Local(r + 1, as_map_op(op)));
            let (e, adds) = match op {
                crate::set::SetOp::Add(e) => (*e, true),
                crate::set::SetOp::Remove(e) => (*e, false),
            };
            let length = before.get(&CLSET_KEY).map_or(0, |v| v.clset_length(&Scalar::Int(i64::from(e))));
            if (length % 2 == 1) != adds {
                let best = expected.entry(e).or_default();
                *best = (*best).max(length + 1);
            }
        }
        run.play(&updates);
        run.sync_all();
        for state in &run.states {
            prop_assert_eq!(state, &run.states[0]);
            prop_assert_eq!(map_lengths(state), expected.iter().map(|(e, l)| (*e, *l)).collect::<Vec<_>>());
            prop_assert_eq!(state.contains_key(&CLSET_KEY), !expected.is_empty());
            let kinds: Vec<_> = state.get(&CLSET_KEY).into_iter().flat_map(Value::kinds).collect();
            prop_assert_eq!(kinds, if expected.is_empty() { vec![] } else { vec![Kind::ClSet] });
        }
    }
}

/// Every dot held at any depth of `map`, each occurrence.
fn held_dots(map: &OrMap<u8>) -> Vec<Dot> {
    let mut out = Vec::new();
    for (_, value) in map.iter() {
        value.dots_into(&mut out);
    }
    out
}

/// The ids of every list element, live or retired, at any depth of `entries`.
fn list_element_ids<'a>(entries: impl Iterator<Item = (&'a u8, &'a Value<u8>)>, out: &mut Vec<Dot>) {
    for (_, value) in entries {
        out.extend(value.list().elements().map(|e| e.id.clone()));
        list_element_ids(value.entries(), out);
    }
}

/// Checks that `map`'s context covers every dot its stores hold, each held once, and the id
/// of every list element, retired ones included.
fn context_covers_the_stores(map: &OrMap<u8>) -> Result<(), TestCaseError> {
    let held = held_dots(map);
    let distinct: BTreeSet<&Dot> = held.iter().collect();
    prop_assert_eq!(distinct.len(), held.len(), "a dot held twice in {:?}", map);
    let mut ids = Vec::new();
    list_element_ids(map.iter(), &mut ids);
    for dot in held.iter().chain(&ids) {
        prop_assert!(map.context().contains(dot), "{:?} is held but not in the context of {:?}", dot, map);
    }
    Ok(())
}

/// Per node, the highest counter among the dots of `ctx` (prefix and runs).
fn highest(ctx: &CausalContext) -> BTreeMap<NodeId, u64> {
    let mut out = as_map(ctx.vv());
    for (node, _, last) in ctx.cloud() {
        let c = out.entry(node.clone()).or_default();
        *c = (*c).max(last);
    }
    out
}

/// Whether `applied` made a dot: its delta's context holds the dot its node would make next.
fn made_a_dot(applied: &Applied<OrMap<u8>>) -> bool {
    applied.delta.context().contains(&applied.before.context().next_dot(&node(applied.replica)))
}

/// Whether `vv` covers every dot `other` covers.
fn covers(vv: &VersionVector, other: &VersionVector) -> bool {
    other.iter().all(|(node, c)| vv.get(node) >= c)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Causal contexts under any delivery. The invariants: the context of every state and
    /// delta covers every dot its stores hold (each dot held once) and every list element's
    /// id, retired ones included; so does the context of a replica that received a random
    /// part of the deltas in any order (with gaps in its context). Once every delta is
    /// delivered the context has no gap: per node it is exactly the dots 1 to k, k the
    /// node's ops that made a dot (a removal or a cut makes none), so its version vector
    /// says everything it has seen.
    #[test]
    fn a_maps_context_covers_its_stores_and_fills_in_once_all_is_delivered(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 40),
        seed in any::<u64>(),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        run.play(&steps);
        for map in elements(&run) {
            context_covers_the_stores(&map)?;
        }
        let mut made: BTreeMap<NodeId, u64> = BTreeMap::new();
        for applied in run.log.iter().filter(|a| made_a_dot(a)) {
            *made.entry(node(applied.replica)).or_default() += 1;
        }
        let deltas = run.deltas();
        let mut rng = Rng::new(seed);
        for state in &run.states {
            let mut replica = state.clone();
            let some: Vec<OrMap<u8>> = deltas.iter().filter(|_| rng.below(2) == 0).cloned().collect();
            deliver(&mut replica, &some, &mut rng);
            context_covers_the_stores(&replica)?;
            deliver(&mut replica, &deltas, &mut rng);
            context_covers_the_stores(&replica)?;
            prop_assert_eq!(replica.context().cloud().count(), 0, "a gap once everything is delivered");
            prop_assert_eq!(as_map(replica.context().vv()), made.clone());
        }
    }

    /// Causal contexts under causal delivery. The invariants: with local ops and syncs of
    /// whole states every replica's context stays dense (no gap); a local op raises the
    /// version vector by one at its own node exactly when it makes a dot; a sync leaves the
    /// receiver with the pointwise maximum of both vectors. Then every delta goes to each
    /// replica and to a fresh one, one at a time in a random causal order (a delta once the
    /// receiver's vector covers what its maker had seen): the context stays dense, each join
    /// raises the vector to the pointwise maximum of the receiver's and the delta's highest
    /// dots, and every receiver ends at the fold of all deltas.
    #[test]
    fn causal_delivery_keeps_map_contexts_dense(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(map_op(), 40),
        seed in any::<u64>(),
    ) {
        let mut run = Run::<OrMap<u8>>::new(replicas);
        for step in &steps {
            let before: Vec<_> = run.states.iter().map(|s| as_map(s.context().vv())).collect();
            run.play(std::slice::from_ref(step));
            match step {
                Step::Local(r, _) => {
                    let r = r % replicas;
                    let mut expected = before[r].clone();
                    if run.log.last().is_some_and(made_a_dot) {
                        *expected.entry(node(r)).or_default() += 1;
                    }
                    prop_assert_eq!(as_map(run.states[r].context().vv()), expected);
                }
                Step::Sync { from, to } => {
                    let (from, to) = (from % replicas, to % replicas);
                    let expected = pointwise_max(&before[to], &before[from]);
                    prop_assert_eq!(as_map(run.states[to].context().vv()), expected);
                }
            }
            for state in &run.states {
                prop_assert_eq!(state.context().cloud().count(), 0, "a gap in {:?}", state.context());
            }
        }
        let mut rng = Rng::new(seed);
        let all = fold(run.deltas());
        let mut receivers = run.states.clone();
        receivers.push(OrMap::new());
        for mut receiver in receivers {
            let mut pending: Vec<&Applied<OrMap<u8>>> = run.log.iter().collect();
            while !pending.is_empty() {
                let vv = receiver.context().vv();
                let ready: Vec<usize> =
                    (0..pending.len()).filter(|&i| covers(vv, pending[i].before.context().vv())).collect();
                prop_assert!(!ready.is_empty(), "the oldest pending delta is always ready");
                let applied = pending.remove(ready[rng.below(ready.len())]);
                let expected = pointwise_max(&as_map(vv), &highest(applied.delta.context()));
                receiver.join(&applied.delta);
                prop_assert_eq!(receiver.context().cloud().count(), 0, "a gap in {:?}", receiver.context());
                prop_assert_eq!(as_map(receiver.context().vv()), expected);
            }
            prop_assert_eq!(&receiver, &all);
        }
    }
}
