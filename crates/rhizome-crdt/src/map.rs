//! Dot stores (DotSet, DotFun, DotMap) with their causal join, and the observed-remove map
//! built from them: a JSON-document shape whose values are nested maps, sets, multi-value
//! registers, last-writer-wins registers ([`LwwEntry`]), causal counters, RGA lists
//! ([`DotList`]) and causal-length sets ([`ValueRef::clset_add`]), all sharing the map's one causal context (Almeida, Shoker, Baquero 2018, section 6).
//!
//! A causal CRDT is a pair (store, context): the store holds the dots that are "alive", the
//! context every dot the replica has seen. A dot the context has seen but the store lacks was
//! removed, which is how removal works without tombstones. The join keeps a dot if both
//! sides have it, or one side has it and the other has never seen it. (A list keeps the
//! elements it retired, because RGA places elements after them: see [`DotList`].)

use crate::{CausalContext, Dot, Lattice, ListElem, NodeId, PnEntry, Rga, VersionVector};
use std::cmp::Ordering;
use std::collections::{btree_map, BTreeMap, BTreeSet};
use std::fmt;

/// The store half of a causal CRDT: a set of dots with data attached, joined under the two
/// sides' causal contexts.
pub trait DotStore: Clone + PartialEq + Default {
    /// Whether the store holds no dot (the bottom store).
    fn is_empty(&self) -> bool;

    /// Appends every dot held by the store to `out`.
    fn dots_into(&self, out: &mut Vec<Dot>);

    /// Number of dots held, each occurrence counted (what `dots_into` appends), in O(1).
    fn dot_count(&self) -> usize;

    /// Number of keys of nested maps, at every depth, in O(1); 0 for a store without keys.
    fn key_count(&self) -> usize {
        0
    }

    /// Number of retired elements of lists (see [`DotList`]) at every depth, in O(1): they
    /// hold no dot but stay, so they count against the map's limits like dots.
    fn retired_count(&self) -> usize {
        0
    }

    /// Bytes of compact JSON of the last-writer-wins values (see [`LwwEntry`]) at every depth,
    /// in O(1) for a map; 0 for a store without them.
    fn lww_bytes(&self) -> usize {
        0
    }

    /// Joins `(other, other_context)` into `(self, context)`, store half only: keeps what
    /// both hold, and what one holds that the other's context has not seen. `context` is
    /// `self`'s context before the join; the caller joins the contexts afterwards. Every dot
    /// the join adds to the store or removes from it is recorded in `changes`, so that a
    /// [`DotMap`] around it can keep its index of dots up to date.
    fn join_store(
        &mut self,
        context: &CausalContext,
        other: &Self,
        other_context: &CausalContext,
        changes: &mut DotChanges,
    );
}

/// The dots a join added to a store and removed from it, one entry per occurrence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DotChanges {
    /// Dots the store holds now and did not hold before.
    pub added: Vec<Dot>,
    /// Dots the store held before and does not hold now.
    pub removed: Vec<Dot>,
}

/// Joins the causal pair `(other, other_context)` into `(store, context)`.
pub fn join_causal<S: DotStore>(
    store: &mut S,
    context: &mut CausalContext,
    other: &S,
    other_context: &CausalContext,
) {
    store.join_store(context, other, other_context, &mut DotChanges::default());
    context.join(other_context);
}

pub use crate::dotset::DotSet;

impl DotStore for DotSet {
    fn is_empty(&self) -> bool {
        DotSet::is_empty(self)
    }

    fn dots_into(&self, out: &mut Vec<Dot>) {
        out.extend(self.iter().cloned());
    }

    fn dot_count(&self) -> usize {
        self.len()
    }

    fn join_store(
        &mut self,
        context: &CausalContext,
        other: &Self,
        other_context: &CausalContext,
        changes: &mut DotChanges,
    ) {
        self.retain(|dot| {
            let keep = other.contains(dot) || !other_context.contains(dot);
            if !keep {
                changes.removed.push(dot.clone());
            }
            keep
        });
        for dot in other {
            if !context.contains(dot) && self.insert(dot.clone()) {
                changes.added.push(dot.clone());
            }
        }
    }
}

/// A map from keys to nested dot stores; a key is present while its store holds a dot.
///
/// Beside the entries it keeps an index from every dot held anywhere under a key (nested
/// stores included) to that key, so that a join visits only the keys the other side names
/// and the keys holding a dot the other side's context covers (the only ones it can change),
/// found by point and range lookups: joining a delta of d dots into a map of n dots costs
/// about O(d log n), not O(n). The index costs one B-tree entry per dot held under each
/// level of map: a [`Dot`] (24 bytes) and a clone of the key (plus the key's heap data,
/// such as a string's bytes), about 60 to 100 bytes per dot with the tree's overhead.
/// It is derived from the entries, so equality and `Debug` look at the entries only, and it
/// is built by the first join into the map (O(n log n), once) and kept up to date from then
/// on: a map that only takes local operations, or is only joined into others (a delta), never
/// pays for it.
#[derive(Clone)]
pub struct DotMap<K, S> {
    entries: BTreeMap<K, S>,
    index: DotIndex<K>,
    /// The dots held under every key, each occurrence counted.
    dots: usize,
    /// The keys, plus the keys of the nested stores at every depth.
    keys: usize,
    /// The retired list elements under every key.
    retired: usize,
    /// The bytes of last-writer-wins values under every key.
    lww_bytes: usize,
}

/// Which keys of a [`DotMap`] hold each dot, as a multiset: a dot is held once in every
/// state a replica makes (one write, one dot), but joining forged or corrupt deltas that
/// reuse a dot can put it under two keys, or twice under one, and the join must then still
/// find every one of them.
///
/// `None` until the map's first join needs it (see [`DotMap`]); while `None`, adding and
/// removing do nothing, and building it reads the entries as they are then.
#[derive(Clone)]
struct DotIndex<K>(Option<BTreeMap<Dot, Holders<K>>>);

/// The keys holding one dot: almost always one, stored inline.
#[derive(Clone)]
enum Holders<K> {
    One(K),
    /// Two or more occurrences, repeated keys included.
    Many(Vec<K>),
}

impl<K: Ord + Clone> DotIndex<K> {
    // Each of `add` and `remove` searches the tree once in the common case (a dot held by one
    // key): local operations on a set call them once or twice each.
    fn add(&mut self, dot: Dot, key: &K) {
        if let Some(index) = &mut self.0 {
            add_holder(index, dot, key);
        }
    }

    fn remove(&mut self, dot: &Dot, key: &K) {
        let Some(index) = &mut self.0 else { return };
        let Some((dot, holders)) = index.remove_entry(dot) else { return };
        let kept = match holders {
            Holders::One(held) if held == *key => return,
            one @ Holders::One(_) => one,
            Holders::Many(mut keys) => {
                if let Some(at) = keys.iter().position(|k| k == key) {
                    keys.swap_remove(at);
                }
                match <[K; 1]>::try_from(keys) {
                    Ok([last]) => Holders::One(last),
                    Err(keys) => Holders::Many(keys),
                }
            }
        };
        index.insert(dot, kept);
    }

    /// The index, built from `entries` first if it is not yet.
    fn built<S: DotStore>(&mut self, entries: &BTreeMap<K, S>) -> &BTreeMap<Dot, Holders<K>> {
        self.0.get_or_insert_with(|| {
            let mut index = BTreeMap::new();
            let mut dots = Vec::new();
            for (key, store) in entries {
                store.dots_into(&mut dots);
                for dot in dots.drain(..) {
                    add_holder(&mut index, dot, key);
                }
            }
            index
        })
    }

    /// Appends to `out` the keys holding a dot that `context` covers: one range lookup per
    /// node of its vector and per run of its cloud (after building the index from `entries`
    /// if it is not yet).
    fn covered_keys_into<S: DotStore>(
        &mut self,
        entries: &BTreeMap<K, S>,
        context: &CausalContext,
        out: &mut Vec<K>,
    ) {
        let index = self.built(entries);
        let prefixes = context.vv().iter().map(|(node, counter)| (node, 0, counter));
        for (node, first, last) in prefixes.chain(context.cloud()) {
            let range =
                Dot { node: node.clone(), counter: first }..=Dot { node: node.clone(), counter: last };
            for (_, holders) in index.range(range) {
                match holders {
                    Holders::One(key) => out.push(key.clone()),
                    Holders::Many(keys) => out.extend(keys.iter().cloned()),
                }
            }
        }
    }
}

/// Records that `key` holds `dot`, searching the tree once.
fn add_holder<K: Clone>(index: &mut BTreeMap<Dot, Holders<K>>, dot: Dot, key: &K) {
    match index.entry(dot) {
        btree_map::Entry::Vacant(vacant) => {
            vacant.insert(Holders::One(key.clone()));
        }
        btree_map::Entry::Occupied(mut occupied) => {
            let holders = occupied.get_mut();
            match holders {
                Holders::One(first) => *holders = Holders::Many(vec![first.clone(), key.clone()]),
                Holders::Many(keys) => keys.push(key.clone()),
            }
        }
    }
}

impl<K, S> Default for DotMap<K, S> {
    fn default() -> Self {
        DotMap { entries: BTreeMap::new(), index: DotIndex(None), dots: 0, keys: 0, retired: 0, lww_bytes: 0 }
    }
}

impl<K: PartialEq, S: PartialEq> PartialEq for DotMap<K, S> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<K: Eq, S: Eq> Eq for DotMap<K, S> {}

impl<K: fmt::Debug, S: fmt::Debug> fmt::Debug for DotMap<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.entries.fmt(f)
    }
}

impl<K, S> DotMap<K, S> {
    /// The empty map.
    pub fn new() -> DotMap<K, S> {
        DotMap::default()
    }

    /// Keys and stores, in key order.
    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, K, S> {
        self.entries.iter()
    }

    /// The keys, in order.
    pub fn keys(&self) -> std::collections::btree_map::Keys<'_, K, S> {
        self.entries.keys()
    }

    /// The stores, in key order.
    pub fn values(&self) -> std::collections::btree_map::Values<'_, K, S> {
        self.entries.values()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Ord, S> DotMap<K, S> {
    /// The store at `key`.
    pub fn get(&self, key: &K) -> Option<&S> {
        self.entries.get(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

impl<K: Ord + Clone, S: DotStore> DotMap<K, S> {
    /// Sets the store at `key`, replacing any store there. An empty store is kept (the
    /// joins drop them; `from_parts` of the types built on this map refuses them).
    pub fn insert(&mut self, key: K, store: S) {
        let mut dots = Vec::new();
        if let Some(old) = self.take(&key) {
            old.dots_into(&mut dots);
            for dot in dots.drain(..) {
                self.index.remove(&dot, &key);
            }
        }
        store.dots_into(&mut dots);
        for dot in dots {
            self.index.add(dot, &key);
        }
        self.put(key, store);
    }

    /// Removes the store at `key` from the entries and the counts (not from the index).
    fn take(&mut self, key: &K) -> Option<S> {
        let store = self.entries.remove(key)?;
        self.dots -= store.dot_count();
        self.keys -= 1 + store.key_count();
        self.retired -= store.retired_count();
        self.lww_bytes -= store.lww_bytes();
        Some(store)
    }

    /// Puts `store` at the vacant `key` of the entries and the counts (not of the index).
    fn put(&mut self, key: K, store: S) {
        self.dots += store.dot_count();
        self.keys += 1 + store.key_count();
        self.retired += store.retired_count();
        self.lww_bytes += store.lww_bytes();
        self.entries.insert(key, store);
    }
}

/// A join walks both maps' keys in order, without the dot index, when the other side has at
/// least a `1/MERGE_WALK_RATIO` share of our keys: then most keys are visited anyway.
const MERGE_WALK_RATIO: usize = 8;

impl<K: Ord + Clone, S: DotStore> DotMap<K, S> {
    /// [`DotStore::join_store`] for an `other` of comparable size (a merge of two replicas, not
    /// a small delta): one ordered walk of both entry maps. The index is dropped rather than
    /// updated; the next small join rebuilds it.
    fn merge_walk(
        &mut self,
        context: &CausalContext,
        other: &Self,
        other_context: &CausalContext,
        changes: &mut DotChanges,
    ) {
        self.index = DotIndex(None);
        let mine = std::mem::take(&mut self.entries);
        (self.dots, self.keys, self.retired, self.lww_bytes) = (0, 0, 0, 0);
        // Keys come in order, so each `put` appends to the rebuilt entries.
        let mut join_put = |map: &mut Self, key: K, mut store: S, theirs: &S| {
            store.join_store(context, theirs, other_context, changes);
            if !store.is_empty() {
                map.put(key, store);
            }
        };
        let empty = S::default();
        let mut theirs = other.entries.iter().peekable();
        for (key, store) in mine {
            while let Some((k, s)) = theirs.next_if(|(k, _)| **k < key) {
                join_put(self, k.clone(), S::default(), s);
            }
            let same = theirs.next_if(|(k, _)| **k == key).map_or(&empty, |(_, s)| s);
            join_put(self, key, store, same);
        }
        for (k, s) in theirs {
            join_put(self, k.clone(), S::default(), s);
        }
    }
}

impl<K: Ord + Clone> DotMap<K, DotSet> {
    /// Removes `key` and returns its dots (none when absent), keeping the index and the
    /// counts: what joining a delta that retires exactly these dots does to a map in which no
    /// dot is held twice (an ORSWOT's: see [`crate::Orswot::apply_add`]).
    pub(crate) fn take_dots(&mut self, key: &K) -> DotSet {
        let Some(dots) = self.take(key) else { return DotSet::new() };
        for dot in &dots {
            self.index.remove(dot, key);
        }
        dots
    }

    /// Sets `key`'s dots to `dots` (not empty) and returns the dots it held (none when
    /// absent), keeping the index and the counts; one search of the entries.
    pub(crate) fn replace_dots(&mut self, key: K, dots: DotSet) -> DotSet {
        self.dots += dots.len();
        match self.entries.entry(key) {
            btree_map::Entry::Vacant(vacant) => {
                self.keys += 1;
                for dot in &dots {
                    self.index.add(dot.clone(), vacant.key());
                }
                vacant.insert(dots);
                DotSet::new()
            }
            btree_map::Entry::Occupied(mut occupied) => {
                let old = std::mem::replace(occupied.get_mut(), dots);
                self.dots -= old.len();
                for dot in &old {
                    self.index.remove(dot, occupied.key());
                }
                for dot in occupied.get() {
                    self.index.add(dot.clone(), occupied.key());
                }
                old
            }
        }
    }
}

impl<K: Ord + Clone, S: DotStore> FromIterator<(K, S)> for DotMap<K, S> {
    fn from_iter<I: IntoIterator<Item = (K, S)>>(iter: I) -> Self {
        let mut map = DotMap::new();
        for (key, store) in iter {
            map.insert(key, store);
        }
        map
    }
}

impl<K: Ord + Clone, S: DotStore, const N: usize> From<[(K, S); N]> for DotMap<K, S> {
    fn from(entries: [(K, S); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<K: Ord + Clone, S: DotStore> DotStore for DotMap<K, S> {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn dots_into(&self, out: &mut Vec<Dot>) {
        for store in self.entries.values() {
            store.dots_into(out);
        }
    }

    fn dot_count(&self) -> usize {
        self.dots
    }

    fn key_count(&self) -> usize {
        self.keys
    }

    fn retired_count(&self) -> usize {
        self.retired
    }

    fn lww_bytes(&self) -> usize {
        self.lww_bytes
    }

    fn join_store(
        &mut self,
        context: &CausalContext,
        other: &Self,
        other_context: &CausalContext,
        changes: &mut DotChanges,
    ) {
        if other.entries.len().saturating_mul(MERGE_WALK_RATIO) >= self.entries.len() {
            self.merge_walk(context, other, other_context, changes);
            return;
        }
        // Only these keys can change: a key neither side names joins its store with the
        // empty store, which removes the dots `other_context` covers, and it holds none.
        let mut keys: Vec<K> = other.entries.keys().cloned().collect();
        self.index.covered_keys_into(&self.entries, other_context, &mut keys);
        keys.sort_unstable();
        keys.dedup();
        let empty = S::default();
        for key in keys {
            // A key only we hold still loses the dots the other side has seen removed.
            let theirs = other.entries.get(&key).unwrap_or(&empty);
            let mut joined = self.take(&key).unwrap_or_default();
            let mut local = DotChanges::default();
            joined.join_store(context, theirs, other_context, &mut local);
            for dot in &local.removed {
                self.index.remove(dot, &key);
            }
            for dot in &local.added {
                self.index.add(dot.clone(), &key);
            }
            changes.added.append(&mut local.added);
            changes.removed.append(&mut local.removed);
            if !joined.is_empty() {
                self.put(key, joined);
            }
        }
    }
}

/// A map from dots to values: the store of a multi-value register (each concurrent write
/// keeps its own dot). A dot always carries the value written with it; should two stores
/// disagree on a dot's value (a forged or corrupt delta), the join keeps the greater one so
/// that it stays deterministic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotFun<V>(BTreeMap<Dot, V>);

impl<V> Default for DotFun<V> {
    fn default() -> Self {
        DotFun(BTreeMap::new())
    }
}

impl<V> DotFun<V> {
    /// The empty store.
    pub fn new() -> DotFun<V> {
        DotFun::default()
    }

    /// Sets the value of `dot`.
    pub fn insert(&mut self, dot: Dot, value: V) {
        self.0.insert(dot, value);
    }

    /// The value of `dot`.
    pub fn get(&self, dot: &Dot) -> Option<&V> {
        self.0.get(dot)
    }

    /// Dots and values, in dot order.
    pub fn iter(&self) -> impl Iterator<Item = (&Dot, &V)> {
        self.0.iter()
    }

    /// Number of dots.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no dot is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Ord + Clone> DotStore for DotFun<V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn dots_into(&self, out: &mut Vec<Dot>) {
        out.extend(self.0.keys().cloned());
    }

    fn dot_count(&self) -> usize {
        self.0.len()
    }

    fn join_store(
        &mut self,
        context: &CausalContext,
        other: &Self,
        other_context: &CausalContext,
        changes: &mut DotChanges,
    ) {
        self.0.retain(|dot, _| {
            let keep = other.0.contains_key(dot) || !other_context.contains(dot);
            if !keep {
                changes.removed.push(dot.clone());
            }
            keep
        });
        for (dot, theirs) in &other.0 {
            match self.0.get_mut(dot) {
                Some(mine) => {
                    if *theirs > *mine {
                        *mine = theirs.clone();
                    }
                }
                None => {
                    if !context.contains(dot) {
                        self.0.insert(dot.clone(), theirs.clone());
                        changes.added.push(dot.clone());
                    }
                }
            }
        }
    }
}

/// An ordered list (RGA, see [`Rga`]) as a dot store: each element is named by a dot of the
/// map's causal context, and is *live* while the store holds it undeleted. Deleting an
/// element, or removing the key (or a map above it), retires the element's dot in the
/// context; the join then treats a retired element as a set of dots treats a removed dot: it
/// stays live only where the other side holds it live or has never seen its dot. So a
/// removal kills exactly the elements it observed, and an element inserted concurrently
/// survives.
///
/// A retired element is not dropped: its id, origin and timestamp stay (a tombstone), because
/// RGA places an element after its origin, and a surviving element inserted after a retired
/// one (concurrently or not) must land where its author put it on every replica. So the
/// store is the list's elements, a grow-only set, plus which of them are live; every element,
/// retired or not, is in the context (it was inserted), so "in the context and retired" is
/// what "deleted" means. The dots of live elements are the store's dots ([`DotStore::dots_into`]);
/// retired ones are counted by [`DotStore::retired_count`]. A list whose elements are all
/// retired holds no dot, so the key reads as absent ([`Value::kinds`]), but the store is not
/// empty and stays, with its tombstones, as a standalone list's do.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DotList(Rga<serde_json::Value>);

impl DotList {
    /// The empty list.
    pub fn new() -> DotList {
        DotList::default()
    }

    /// The list from an [`Rga`] whose tombstones all name its elements (retired ones), as
    /// read back from storage or the network; `None` when a tombstone names no element.
    pub fn from_rga(list: Rga<serde_json::Value>) -> Option<DotList> {
        let named = list.tombstones().all(|id| list.contains_id(id));
        named.then_some(DotList(list))
    }

    /// The list, retired elements included as tombstones.
    pub fn rga(&self) -> &Rga<serde_json::Value> {
        &self.0
    }

    /// Every element, retired ones included, in list order (see [`Rga::elements`]).
    pub fn elements(&self) -> impl Iterator<Item = ListElem<'_, serde_json::Value>> + '_ {
        self.0.elements()
    }

    /// The live elements' values, in order.
    pub fn values(&self) -> impl Iterator<Item = &serde_json::Value> + '_ {
        self.0.iter()
    }

    /// Number of live elements (placed or waiting for an origin).
    pub fn live_count(&self) -> usize {
        self.0.element_count() - self.0.tombstone_count()
    }

    /// Number of elements, retired ones included.
    pub fn element_count(&self) -> usize {
        self.0.element_count()
    }
}

impl DotStore for DotList {
    /// No element at all, retired ones included: a list of tombstones is kept.
    fn is_empty(&self) -> bool {
        self.0.element_count() == 0
    }

    fn dots_into(&self, out: &mut Vec<Dot>) {
        out.extend(self.0.elements().filter(|e| !e.deleted).map(|e| e.id.clone()));
    }

    fn dot_count(&self) -> usize {
        self.live_count()
    }

    fn retired_count(&self) -> usize {
        self.0.tombstone_count()
    }

    fn join_store(
        &mut self,
        context: &CausalContext,
        other: &Self,
        other_context: &CausalContext,
        changes: &mut DotChanges,
    ) {
        // Live here, and the other side has seen it without holding it live: retired. Only
        // elements whose dots `other_context` covers can be, so a delta's small context
        // (an insert's one dot, a cut's) is walked dot by dot instead of the whole list.
        let retires = |mine: &ListElem<'_, serde_json::Value>| {
            !mine.deleted
                && other_context.contains(mine.id)
                && other.0.element(mine.id).is_none_or(|theirs| theirs.deleted)
        };
        let prefixes = other_context.vv().iter().map(|(node, last)| (node, 1, last));
        let runs: Vec<_> = prefixes.chain(other_context.cloud()).collect();
        let covered = runs.iter().fold(0u64, |sum, (_, first, last)| sum.saturating_add(last + 1 - first));
        let retired: Vec<Dot> = if covered < self.0.element_count() as u64 {
            let dots = runs.iter().flat_map(|(node, first, last)| {
                (*first..=*last).map(|counter| Dot { node: (*node).clone(), counter })
            });
            dots.filter(|dot| self.0.element(dot).is_some_and(|mine| retires(&mine))).collect()
        } else {
            self.0.elements().filter(|mine| retires(mine)).map(|mine| mine.id.clone()).collect()
        };
        for theirs in other.0.elements() {
            if self.0.contains_id(theirs.id) {
                continue;
            }
            // New here: live if live there and unseen here; otherwise a tombstone.
            let id = theirs.id.clone();
            self.0.add_element(id.clone(), theirs.origin.cloned(), theirs.seq, theirs.value.clone());
            if theirs.deleted || context.contains(&id) {
                self.0.retire(&id);
            } else {
                changes.added.push(id);
            }
        }
        for id in retired {
            self.0.retire(&id);
            changes.removed.push(id);
        }
    }
}

/// The delta of adding `elem` with the fresh `dot` to the set `entries`: the element with
/// just that dot, and a context of that dot plus the element's current dots, so the add
/// also retires them. A dot the context has already seen gives the bottom delta: it is the
/// same add applied again.
pub(crate) fn set_add<E: Ord + Clone>(
    entries: &DotMap<E, DotSet>,
    context: &CausalContext,
    dot: Dot,
    elem: E,
) -> (DotMap<E, DotSet>, CausalContext) {
    if context.contains(&dot) {
        return (DotMap::new(), CausalContext::new());
    }
    let mut seen = Vec::new();
    if let Some(dots) = entries.get(&elem) {
        dots.dots_into(&mut seen);
    }
    seen.push(dot.clone());
    (DotMap::from([(elem, DotSet::from([dot]))]), seen.into_iter().collect())
}

/// The delta of removing `elem` from the set `entries`: no entries, and a context of exactly
/// the element's current dots, so a concurrent add (a dot not seen here) survives.
pub(crate) fn set_remove<E: Ord>(
    entries: &DotMap<E, DotSet>,
    elem: &E,
) -> (DotMap<E, DotSet>, CausalContext) {
    let context = entries.get(elem).into_iter().flatten().cloned().collect();
    (DotMap::new(), context)
}

/// A JSON-like scalar held by a register or a set. Floats are kept as their IEEE-754 bits,
/// so equality and order are total (and bitwise: `-0.0 != 0.0`, each NaN is itself).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scalar {
    /// JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float, as the bits of an `f64` (see [`Scalar::float`]).
    Float(u64),
    /// A string.
    Str(String),
}

impl Scalar {
    /// A float scalar.
    pub fn float(value: f64) -> Scalar {
        Scalar::Float(value.to_bits())
    }

    /// The float, when this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Float(bits) => Some(f64::from_bits(*bits)),
            _ => None,
        }
    }

    /// The scalar as JSON. A NaN or infinite float, which JSON cannot write and
    /// [`Scalar::from_json`] never reads, becomes `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match self {
            Scalar::Null => Json::Null,
            Scalar::Bool(b) => Json::Bool(*b),
            Scalar::Int(i) => Json::from(*i),
            Scalar::Float(bits) => Json::from(f64::from_bits(*bits)),
            Scalar::Str(s) => Json::String(s.clone()),
        }
    }

    /// The scalar of a JSON `null`, boolean, number or string; `None` for an array, an object
    /// or an integer beyond `i64` (JSON floats read as [`Scalar::Float`], integers as
    /// [`Scalar::Int`], so `1` and `1.0` are different scalars).
    pub fn from_json(value: &serde_json::Value) -> Option<Scalar> {
        use serde_json::Value as Json;
        match value {
            Json::Null => Some(Scalar::Null),
            Json::Bool(b) => Some(Scalar::Bool(*b)),
            Json::Number(n) if n.is_f64() => n.as_f64().map(Scalar::float),
            Json::Number(n) => n.as_i64().map(Scalar::Int),
            Json::String(s) => Some(Scalar::Str(s.clone())),
            Json::Array(_) | Json::Object(_) => None,
        }
    }
}

impl From<bool> for Scalar {
    fn from(value: bool) -> Self {
        Scalar::Bool(value)
    }
}

impl From<i64> for Scalar {
    fn from(value: i64) -> Self {
        Scalar::Int(value)
    }
}

impl From<f64> for Scalar {
    fn from(value: f64) -> Self {
        Scalar::float(value)
    }
}

impl From<&str> for Scalar {
    fn from(value: &str) -> Self {
        Scalar::Str(value.to_owned())
    }
}

impl From<String> for Scalar {
    fn from(value: String) -> Self {
        Scalar::Str(value)
    }
}

/// The kinds of value an [`OrMap`] key can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A nested map.
    Map,
    /// An add-wins set of scalars (ORSWOT).
    Set,
    /// A multi-value register of scalars.
    Register,
    /// A causal counter: each node's totals under that node's latest dot (see
    /// [`ValueRef::counter_inc`]).
    Counter,
    /// An ordered list of JSON values (RGA, see [`DotList`]).
    List,
    /// A last-writer-wins register of any JSON value (see [`ValueRef::lww_put`]).
    Lww,
    /// A causal-length set of scalars, each length bump under its author's dot (see
    /// [`ValueRef::clset_add`]).
    ClSet,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Map => "map",
            Kind::Set => "set",
            Kind::Register => "register",
            Kind::Counter => "counter",
            Kind::List => "list",
            Kind::Lww => "last-writer-wins register",
            Kind::ClSet => "causal-length set",
        })
    }
}

/// Why a map mutator refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The mutator is for one kind of value, and the key holds another one (and not that one).
    TypeMismatch {
        /// The kind the mutator works on.
        expected: Kind,
        /// A kind the key holds.
        found: Kind,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::TypeMismatch { expected, found } => {
                write!(f, "expected a {expected} at this key, found a {found}")
            }
        }
    }
}

impl std::error::Error for MapError {}

/// The value at one key of an [`OrMap`]: one dot store per [`Kind`].
///
/// Normally exactly one kind is non-empty. Two replicas that write different kinds to the
/// same key concurrently (say a set and a register) both keep their write: the join is
/// per kind, so nothing is lost and the result does not depend on delivery order, and
/// [`Value::kinds`] then lists both. Local mutators refuse a kind the key does not hold
/// while it holds another ([`MapError::TypeMismatch`]); removing the key clears every kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value<K> {
    map: DotMap<K, Value<K>>,
    set: DotMap<Scalar, DotSet>,
    register: DotFun<Scalar>,
    /// The causal counter: each node's totals of increments and decrements under that
    /// node's latest dot (one dot per node, more only after concurrent servers numbered
    /// the same author, see [`Value::counter_totals`]).
    counter: DotFun<PnEntry>,
    /// The list: its elements, live and retired (see [`DotList`]).
    list: DotList,
    /// The last-writer-wins register: each write not yet superseded, under its dot (one,
    /// or several after concurrent writes; reads pick the winner, see [`Value::lww_value`]).
    lww: DotFun<LwwEntry>,
    /// The causal-length set: per element, its causal length under the dot of each bump
    /// not yet superseded (one, or several after concurrent bumps; the element's length is
    /// the greatest, see [`ValueRef::clset_add`]).
    clset: DotMap<Scalar, DotFun<u64>>,
}

impl<K> Default for Value<K> {
    fn default() -> Self {
        Value {
            map: DotMap::new(),
            set: DotMap::new(),
            register: DotFun::new(),
            counter: DotFun::new(),
            list: DotList::new(),
            lww: DotFun::new(),
            clset: DotMap::new(),
        }
    }
}

/// One write of a last-writer-wins register in a map: the value and the time its server
/// stamped it with. Among concurrent writes held at one path, the greatest `(time_ms, dot)`
/// wins ([`Value::lww_value`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LwwEntry {
    /// The write's time, in milliseconds since the Unix epoch (see [`ValueRef::lww_put`]).
    pub time_ms: i64,
    /// The value, any JSON.
    pub value: serde_json::Value,
}

// The dot-fun keeps the greater entry of a disputed dot (see `DotFun`), which needs an order.
// Only forged or corrupt deltas dispute a dot, so any deterministic total order consistent
// with equality will do: the time, then the value (see `json_cmp`).
impl PartialOrd for LwwEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LwwEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.time_ms.cmp(&other.time_ms).then_with(|| json_cmp(&self.value, &other.value))
    }
}

/// A total order on JSON values consistent with their equality: by type (null, booleans,
/// numbers, strings, arrays, objects), then by content; objects by their entries in key order.
fn json_cmp(a: &serde_json::Value, b: &serde_json::Value) -> Ordering {
    use serde_json::Value as Json;
    fn rank(v: &Json) -> u8 {
        match v {
            Json::Null => 0,
            Json::Bool(_) => 1,
            Json::Number(_) => 2,
            Json::String(_) => 3,
            Json::Array(_) => 4,
            Json::Object(_) => 5,
        }
    }
    match (a, b) {
        (Json::Bool(x), Json::Bool(y)) => x.cmp(y),
        (Json::Number(x), Json::Number(y)) => number_cmp(x, y),
        (Json::String(x), Json::String(y)) => x.cmp(y),
        (Json::Array(x), Json::Array(y)) => {
            let by_item = x.iter().zip(y).map(|(x, y)| json_cmp(x, y)).find(|o| o.is_ne());
            by_item.unwrap_or_else(|| x.len().cmp(&y.len()))
        }
        (Json::Object(x), Json::Object(y)) => {
            fn sorted(m: &serde_json::Map<String, Json>) -> Vec<(&String, &Json)> {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_unstable_by(|p, q| p.0.cmp(q.0));
                entries
            }
            let (x, y) = (sorted(x), sorted(y));
            let by_entry = x
                .iter()
                .zip(&y)
                .map(|((kx, vx), (ky, vy))| kx.cmp(ky).then_with(|| json_cmp(vx, vy)))
                .find(|o| o.is_ne());
            by_entry.unwrap_or_else(|| x.len().cmp(&y.len()))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// The length of `value` as compact JSON, counted while writing it (nothing is kept).
pub(crate) fn json_bytes(value: &serde_json::Value) -> usize {
    struct Meter(usize);
    impl std::io::Write for Meter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut meter = Meter(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut meter, value);
    meter.0
}

/// Numbers as serde_json tells them apart: unsigned integers, then negative ones, then floats
/// (never NaN in JSON, so `partial_cmp` is total on them).
fn number_cmp(x: &serde_json::Number, y: &serde_json::Number) -> Ordering {
    match (x.as_u64(), y.as_u64(), x.as_i64(), y.as_i64()) {
        (Some(x), Some(y), ..) => x.cmp(&y),
        (Some(_), None, ..) => Ordering::Less,
        (None, Some(_), ..) => Ordering::Greater,
        (None, None, Some(x), Some(y)) => x.cmp(&y),
        (None, None, Some(_), None) => Ordering::Less,
        (None, None, None, Some(_)) => Ordering::Greater,
        (None, None, None, None) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

// A counter's dot-fun keeps the greater entry of a disputed dot (see `DotFun`), which needs
// an order: increments, then decrements. Only forged or corrupt deltas dispute a dot (its
// author's server gives each dot one entry), so any total order that is deterministic will do.
impl PartialOrd for PnEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PnEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.p, self.n).cmp(&(other.p, other.n))
    }
}

impl<K: Ord + Clone> DotStore for Value<K> {
    fn is_empty(&self) -> bool {
        self.map.is_empty()
            && self.set.is_empty()
            && self.register.is_empty()
            && self.counter.is_empty()
            && DotStore::is_empty(&self.list)
            && self.lww.is_empty()
            && self.clset.is_empty()
    }

    fn dots_into(&self, out: &mut Vec<Dot>) {
        self.map.dots_into(out);
        self.set.dots_into(out);
        self.register.dots_into(out);
        self.counter.dots_into(out);
        self.list.dots_into(out);
        self.lww.dots_into(out);
        self.clset.dots_into(out);
    }

    fn dot_count(&self) -> usize {
        self.map.dot_count()
            + self.set.dot_count()
            + self.register.dot_count()
            + self.counter.dot_count()
            + self.list.dot_count()
            + self.lww.dot_count()
            + self.clset.dot_count()
    }

    fn retired_count(&self) -> usize {
        self.map.retired_count() + self.list.retired_count()
    }

    fn lww_bytes(&self) -> usize {
        self.map.lww_bytes() + self.lww.iter().map(|(_, entry)| json_bytes(&entry.value)).sum::<usize>()
    }

    /// The keys of the nested map only: a set's elements are not keys.
    fn key_count(&self) -> usize {
        self.map.key_count()
    }

    fn join_store(
        &mut self,
        context: &CausalContext,
        other: &Self,
        other_context: &CausalContext,
        changes: &mut DotChanges,
    ) {
        self.map.join_store(context, &other.map, other_context, changes);
        self.set.join_store(context, &other.set, other_context, changes);
        self.register.join_store(context, &other.register, other_context, changes);
        self.counter.join_store(context, &other.counter, other_context, changes);
        self.list.join_store(context, &other.list, other_context, changes);
        self.lww.join_store(context, &other.lww, other_context, changes);
        self.clset.join_store(context, &other.clset, other_context, changes);
    }
}

impl<K: Ord + Clone> Value<K> {
    /// The kinds this value holds: one, or several after concurrent writes of different kinds.
    /// None when it holds only retired list elements: the key then reads as absent.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        [Kind::Map, Kind::Set, Kind::Register, Kind::Counter, Kind::List, Kind::Lww, Kind::ClSet]
            .into_iter()
            .filter(|kind| self.holds(*kind))
    }

    /// Whether this value holds `kind` with a live dot (a nested map holding only retired
    /// list elements, or a list of them, does not count).
    pub fn holds(&self, kind: Kind) -> bool {
        match kind {
            Kind::Map => self.map.dot_count() > 0,
            Kind::Set => !self.set.is_empty(),
            Kind::Register => !self.register.is_empty(),
            Kind::Counter => !self.counter.is_empty(),
            Kind::List => self.list.live_count() > 0,
            Kind::Lww => !self.lww.is_empty(),
            Kind::ClSet => !self.clset.is_empty(),
        }
    }

    /// Whether the value holds a live dot: a key whose value holds none (only retired list
    /// elements) reads as absent.
    pub fn is_live(&self) -> bool {
        self.dot_count() > 0
    }

    /// Whether the nested map has entries, those holding only retired list elements included
    /// (documents keep them, see [`DotList`]).
    pub fn has_map_entries(&self) -> bool {
        !self.map.is_empty()
    }

    /// The list at this key, retired elements included.
    pub fn list(&self) -> &DotList {
        &self.list
    }

    /// The value at `key` of the nested map.
    pub fn get(&self, key: &K) -> Option<&Value<K>> {
        self.map.get(key)
    }

    /// The keys and values of the nested map, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&K, &Value<K>)> {
        self.map.iter()
    }

    /// Whether the set holds `elem`.
    pub fn contains(&self, elem: &Scalar) -> bool {
        self.set.contains_key(elem)
    }

    /// The elements of the set, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Scalar> {
        self.set.keys()
    }

    /// The register's values: one, or several after concurrent assignments (distinct, in order).
    pub fn values(&self) -> BTreeSet<&Scalar> {
        self.register.iter().map(|(_, value)| value).collect()
    }

    /// The set's elements with the dots that keep each present, in element order.
    pub fn set_entries(&self) -> impl Iterator<Item = (&Scalar, &DotSet)> {
        self.set.iter()
    }

    /// The register's values with the dots that wrote them, in dot order.
    pub fn register_entries(&self) -> impl Iterator<Item = (&Dot, &Scalar)> {
        self.register.iter()
    }

    /// The counter's dots with the totals each carries, in dot order.
    pub fn counter_entries(&self) -> impl Iterator<Item = (&Dot, &PnEntry)> {
        self.counter.iter()
    }

    /// Each node's totals in the counter: the totals under its dot, or, should it hold
    /// several (concurrent servers numbering one author), the larger of each total among
    /// them, since each carries the author's running totals from a common past.
    pub fn counter_totals(&self) -> BTreeMap<&NodeId, PnEntry> {
        let mut totals: BTreeMap<&NodeId, PnEntry> = BTreeMap::new();
        for (dot, entry) in self.counter.iter() {
            let node = totals.entry(&dot.node).or_default();
            node.p = node.p.max(entry.p);
            node.n = node.n.max(entry.n);
        }
        totals
    }

    /// The counter's value: every node's increments minus its decrements (0 when the value
    /// holds no counter).
    pub fn counter_value(&self) -> i128 {
        // Each total is below 2^64: the sums cannot overflow before 2^63 nodes.
        self.counter_totals().values().map(|e| i128::from(e.p) - i128::from(e.n)).sum()
    }

    /// A value from its three stores, as read back from storage or the network. Nothing is
    /// checked here: [`OrMap::from_parts`] checks the whole document it goes into.
    pub fn from_parts(
        map: DotMap<K, Value<K>>,
        set: DotMap<Scalar, DotSet>,
        register: DotFun<Scalar>,
    ) -> Value<K> {
        Value {
            map,
            set,
            register,
            counter: DotFun::new(),
            list: DotList::new(),
            lww: DotFun::new(),
            clset: DotMap::new(),
        }
    }

    /// The value with `counter` as its counter store (for values read back from storage or
    /// the network, after [`Value::from_parts`]; checked the same way).
    pub fn with_counter(self, counter: DotFun<PnEntry>) -> Value<K> {
        Value { counter, ..self }
    }

    /// The value with `list` as its list store (as [`Value::with_counter`]).
    pub fn with_list(self, list: DotList) -> Value<K> {
        Value { list, ..self }
    }

    /// The value with `lww` as its last-writer-wins register store (as [`Value::with_counter`]).
    pub fn with_lww(self, lww: DotFun<LwwEntry>) -> Value<K> {
        Value { lww, ..self }
    }

    /// The value with `clset` as its causal-length set store (as [`Value::with_counter`]).
    pub fn with_clset(self, clset: DotMap<Scalar, DotFun<u64>>) -> Value<K> {
        Value { clset, ..self }
    }

    /// The causal-length set's elements, each with its bumps held (the dots and the lengths
    /// they wrote: one, or several after concurrent bumps), in element order; removed
    /// elements included (even lengths).
    pub fn clset_entries(&self) -> impl Iterator<Item = (&Scalar, &DotFun<u64>)> {
        self.clset.iter()
    }

    /// The causal length of `elem` in the causal-length set: the greatest among its bumps
    /// held (0 when none: never added, or forgotten by a removal of the key).
    pub fn clset_length(&self, elem: &Scalar) -> u64 {
        self.clset.get(elem).map_or(0, clset_length)
    }

    /// Whether the causal-length set holds `elem` (its length is odd).
    pub fn clset_contains(&self, elem: &Scalar) -> bool {
        self.clset_length(elem) % 2 == 1
    }

    /// The causal-length set's present elements (odd lengths), in order.
    pub fn clset_elements(&self) -> impl Iterator<Item = &Scalar> {
        self.clset.iter().filter(|(_, bumps)| clset_length(bumps) % 2 == 1).map(|(elem, _)| elem)
    }

    /// The last-writer-wins register's writes held (one, or several after concurrent writes),
    /// in dot order.
    pub fn lww_entries(&self) -> impl Iterator<Item = (&Dot, &LwwEntry)> {
        self.lww.iter()
    }

    /// The last-writer-wins register's value: the held write with the greatest
    /// `(time_ms, dot)` (`None` when the value holds no such register).
    pub fn lww_value(&self) -> Option<&serde_json::Value> {
        let winner = self.lww.iter().max_by(|(a, x), (b, y)| (x.time_ms, *a).cmp(&(y.time_ms, *b)));
        winner.map(|(_, entry)| &entry.value)
    }

    /// Checks the value and everything nested in it for [`OrMap::from_parts`]: no empty store
    /// anywhere (a join drops them), every dot real, in `context`, and not in `seen` yet.
    fn check_parts<'a>(&'a self, context: &CausalContext, seen: &mut BTreeSet<&'a Dot>) -> bool {
        if DotStore::is_empty(self) {
            return false;
        }
        let mut fresh = |dot: &'a Dot| dot.counter > 0 && context.contains(dot) && seen.insert(dot);
        let sets_ok = self.set.values().all(|dots| !dots.is_empty() && dots.iter().all(&mut fresh));
        let register_ok = self.register.iter().all(|(dot, _)| fresh(dot));
        // A counter entry is made by an increment or a decrement of at least 1.
        let counter_ok = self.counter.iter().all(|(dot, e)| (e.p, e.n) != (0, 0) && fresh(dot));
        // Every element, retired or not, was inserted: its dot is in the context.
        let list_ok = self.list.elements().all(|e| fresh(e.id));
        let lww_ok = self.lww.iter().all(|(dot, _)| fresh(dot));
        // A bump writes a length of at least 1; an element is held by at least one bump.
        let clset_ok = self
            .clset
            .values()
            .all(|bumps| !bumps.is_empty() && bumps.iter().all(|(dot, length)| *length > 0 && fresh(dot)));
        sets_ok
            && register_ok
            && counter_ok
            && list_ok
            && lww_ok
            && clset_ok
            && self.map.values().all(|value| value.check_parts(context, seen))
    }
}

/// The value at one key read together with the map's causal context: what a delta mutator
/// of [`OrMap::update`] works on. Its mutators return the delta of the value, never change it.
#[derive(Debug)]
pub struct ValueRef<'a, K> {
    value: Option<&'a Value<K>>,
    context: &'a CausalContext,
}

impl<K> Clone for ValueRef<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for ValueRef<'_, K> {}

/// The delta produced by a mutator of a [`ValueRef`]: a value and the causal context it
/// covers (the dots it creates plus the dots it retires).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueDelta<K> {
    value: Value<K>,
    context: CausalContext,
}

impl<K: Ord + Clone> ValueDelta<K> {
    /// The delta's value.
    pub fn value(&self) -> &Value<K> {
        &self.value
    }

    /// The delta's causal context.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }
}

impl<'a, K: Ord + Clone> ValueRef<'a, K> {
    /// The value, or `None` when the key is absent.
    pub fn value(&self) -> Option<&'a Value<K>> {
        self.value
    }

    /// The map's causal context (shared by every nested value).
    pub fn context(&self) -> &'a CausalContext {
        self.context
    }

    /// The value at `key` of the nested map, with the same context.
    pub fn get(&self, key: &K) -> ValueRef<'a, K> {
        ValueRef { value: self.value.and_then(|v| v.map.get(key)), context: self.context }
    }

    /// Checks that a mutator of `expected` may run: the key is absent, or holds that kind.
    fn expect(&self, expected: Kind) -> Result<(), MapError> {
        let Some(value) = self.value else { return Ok(()) };
        if value.holds(expected) {
            return Ok(());
        }
        match value.kinds().next() {
            Some(found) => Err(MapError::TypeMismatch { expected, found }),
            None => Ok(()),
        }
    }

    /// Adds `elem` to the set with the fresh `dot` (see [`crate::Orswot::add`]).
    pub fn set_add(&self, dot: Dot, elem: impl Into<Scalar>) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::Set)?;
        let empty = DotMap::new();
        let entries = self.value.map_or(&empty, |v| &v.set);
        let (set, context) = set_add(entries, self.context, dot, elem.into());
        Ok(ValueDelta { value: Value { set, ..Value::default() }, context })
    }

    /// Removes `elem` from the set, observed-remove (see [`crate::Orswot::remove`]).
    pub fn set_remove(&self, elem: &Scalar) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::Set)?;
        let empty = DotMap::new();
        let entries = self.value.map_or(&empty, |v| &v.set);
        let (set, context) = set_remove(entries, elem);
        Ok(ValueDelta { value: Value { set, ..Value::default() }, context })
    }

    /// Assigns the register with the fresh `dot`: replaces every value seen here; values
    /// assigned concurrently stay beside it. A dot already seen gives the bottom delta.
    pub fn assign(&self, dot: Dot, scalar: impl Into<Scalar>) -> Result<ValueDelta<K>, MapError> {
        self.assign_where(dot, scalar.into(), |_| true)
    }

    /// Assigns the register with the fresh `dot` on behalf of a writer whose view was `seen`:
    /// like [`ValueRef::assign`], but replaces only the values whose dots `seen` covers, so
    /// values assigned concurrently with what the writer saw stay beside it.
    pub fn assign_seen(
        &self,
        dot: Dot,
        scalar: impl Into<Scalar>,
        seen: &VersionVector,
    ) -> Result<ValueDelta<K>, MapError> {
        self.assign_where(dot, scalar.into(), |d| seen.contains(d))
    }

    /// The register write replacing the current values whose dots `replaces` accepts.
    fn assign_where(
        &self,
        dot: Dot,
        scalar: Scalar,
        replaces: impl Fn(&Dot) -> bool,
    ) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::Register)?;
        if self.context.contains(&dot) {
            return Ok(ValueDelta { value: Value::default(), context: CausalContext::new() });
        }
        let mut observed = Vec::new();
        if let Some(value) = self.value {
            value.register.dots_into(&mut observed);
        }
        observed.retain(|d| replaces(d));
        observed.push(dot.clone());
        let mut register = DotFun::new();
        register.insert(dot, scalar);
        Ok(ValueDelta {
            value: Value { register, ..Value::default() },
            context: observed.into_iter().collect(),
        })
    }

    /// Adds `by` to the counter as the node of the fresh `dot`: the author's totals under
    /// its current dots (none after a removal of the key reset them), plus `by` increments,
    /// under `dot`, which retires those dots. A dot already seen gives the bottom delta.
    ///
    /// So each node keeps one dot, whatever the number of its operations; and removing the
    /// key ("observed reset") retires the dots it saw: a node's contribution the remover saw
    /// is gone, unless that node incremented or decremented concurrently: its new dot, which
    /// the remover did not see, survives with the running totals it carries, which include
    /// what the remover saw of that node (one dot holds a node's whole contribution).
    pub fn counter_inc(&self, dot: Dot, by: u64) -> Result<ValueDelta<K>, MapError> {
        self.counter_add(dot, PnEntry { p: by, n: 0 })
    }

    /// Subtracts `by` from the counter, as [`ValueRef::counter_inc`] adds.
    pub fn counter_dec(&self, dot: Dot, by: u64) -> Result<ValueDelta<K>, MapError> {
        self.counter_add(dot, PnEntry { p: 0, n: by })
    }

    /// The counter write of `dot` carrying its author's totals plus `added`.
    fn counter_add(&self, dot: Dot, added: PnEntry) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::Counter)?;
        if self.context.contains(&dot) {
            return Ok(ValueDelta { value: Value::default(), context: CausalContext::new() });
        }
        let mut own = Vec::new();
        let mut base = PnEntry::default();
        for (held, entry) in self.value.into_iter().flat_map(|v| v.counter.iter()) {
            if held.node == dot.node {
                own.push(held.clone());
                base.p = base.p.max(entry.p);
                base.n = base.n.max(entry.n);
            }
        }
        own.push(dot.clone());
        let mut counter = DotFun::new();
        // Saturating, like the PN-counter: 2^64 - 1 is far beyond any real counter.
        counter.insert(dot, PnEntry { p: base.p.saturating_add(added.p), n: base.n.saturating_add(added.n) });
        Ok(ValueDelta { value: Value { counter, ..Value::default() }, context: own.into_iter().collect() })
    }

    /// Writes `value` into the last-writer-wins register with the fresh `dot`, at
    /// `max(time_ms, the greatest time among the writes it supersedes)`: it supersedes every
    /// write held here (observed), so its stamp is never below theirs, and a write always
    /// supersedes what it saw whatever the writer's clock did. Writes made concurrently stay
    /// beside it until a later write supersedes them; reads pick the greatest `(time_ms, dot)`
    /// ([`Value::lww_value`]). A dot already seen gives the bottom delta.
    pub fn lww_put(
        &self,
        dot: Dot,
        time_ms: i64,
        value: serde_json::Value,
    ) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::Lww)?;
        if self.context.contains(&dot) {
            return Ok(ValueDelta { value: Value::default(), context: CausalContext::new() });
        }
        let mut observed = Vec::new();
        let mut time_ms = time_ms;
        for (held, entry) in self.value.into_iter().flat_map(|v| v.lww.iter()) {
            observed.push(held.clone());
            time_ms = time_ms.max(entry.time_ms);
        }
        observed.push(dot.clone());
        let mut lww = DotFun::new();
        lww.insert(dot, LwwEntry { time_ms, value });
        Ok(ValueDelta { value: Value { lww, ..Value::default() }, context: observed.into_iter().collect() })
    }

    /// Adds `elem` to the causal-length set with the fresh `dot`: when `elem` is absent (its
    /// length even), its length plus one under `dot`, which retires the element's bumps held
    /// here; when present, or for a dot already seen, the bottom delta.
    ///
    /// A causal-length set has no dots of its own, so in a map each length bump (add or
    /// remove) is a write under its author's dot, and the element's length is the greatest
    /// among its bumps held. Without key removals this is the causal-length set exactly: a
    /// bump only retires bumps it saw, all shorter than itself, so the greatest length is
    /// never retired. Removing the key retires the bumps it saw, like any value's dots: an
    /// element nobody bumped concurrently is forgotten (length 0, as never added), and a
    /// concurrent bump survives with the length its author gave it.
    pub fn clset_add(&self, dot: Dot, elem: impl Into<Scalar>) -> Result<ValueDelta<K>, MapError> {
        self.clset_bump(dot, elem.into(), 0)
    }

    /// Removes `elem` from the causal-length set with the fresh `dot`: when present (its
    /// length odd), its length plus one under `dot`, retiring its bumps held here; when
    /// absent, or for a dot already seen, the bottom delta (see [`ValueRef::clset_add`]).
    pub fn clset_remove(&self, dot: Dot, elem: &Scalar) -> Result<ValueDelta<K>, MapError> {
        self.clset_bump(dot, elem.clone(), 1)
    }

    /// The bump of `elem` to its length plus one, when its length's parity is `from`.
    fn clset_bump(&self, dot: Dot, elem: Scalar, from: u64) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::ClSet)?;
        let bumps = self.value.and_then(|v| v.clset.get(&elem));
        let length = bumps.map_or(0, clset_length);
        if self.context.contains(&dot) || length % 2 != from {
            return Ok(ValueDelta { value: Value::default(), context: CausalContext::new() });
        }
        let mut seen = Vec::new();
        if let Some(bumps) = bumps {
            bumps.dots_into(&mut seen);
        }
        seen.push(dot.clone());
        let mut bump = DotFun::new();
        // Saturating: a length near u64::MAX only comes from a forged document, and the server
        // refuses lengths past 2^53 before it gets here.
        bump.insert(dot, length.saturating_add(1));
        let clset = DotMap::from([(elem, bump)]);
        Ok(ValueDelta { value: Value { clset, ..Value::default() }, context: seen.into_iter().collect() })
    }

    /// The list at this key, or `None` when it holds none (retired elements count: an
    /// insert may name one as `after`).
    pub fn list(&self) -> Option<&'a DotList> {
        self.value.map(|v| &v.list).filter(|list| !DotStore::is_empty(*list))
    }

    /// Inserts `value` into the list at `index` among its live elements (past the end: at the
    /// end) with the fresh `dot` as its id (see [`Rga::insert`]). A dot already seen gives the
    /// bottom delta.
    pub fn list_insert(
        &self,
        dot: Dot,
        index: usize,
        value: serde_json::Value,
    ) -> Result<ValueDelta<K>, MapError> {
        self.list_insert_with(dot, |list, dot| list.insert(index, dot, value))
    }

    /// Inserts `value` into the list right after the element `after` (`None`: at the head)
    /// with the fresh `dot` as its id (see [`Rga::insert_after`]); `after` should be an
    /// element of the list ([`ValueRef::list`]).
    pub fn list_insert_after(
        &self,
        dot: Dot,
        after: Option<&Dot>,
        value: serde_json::Value,
    ) -> Result<ValueDelta<K>, MapError> {
        self.list_insert_with(dot, |list, dot| list.insert_after(after, dot, value))
    }

    fn list_insert_with(
        &self,
        dot: Dot,
        insert: impl FnOnce(&Rga<serde_json::Value>, Dot) -> Rga<serde_json::Value>,
    ) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::List)?;
        if self.context.contains(&dot) {
            return Ok(ValueDelta { value: Value::default(), context: CausalContext::new() });
        }
        let empty = Rga::new();
        let list = self.value.map_or(&empty, |v| &v.list.0);
        let delta = DotList(insert(list, dot.clone()));
        Ok(ValueDelta {
            value: Value { list: delta, ..Value::default() },
            context: [dot].into_iter().collect(),
        })
    }

    /// Deletes the live element at `index` of the list: the delta retires its dot (out of
    /// range: the bottom).
    pub fn list_delete(&self, index: usize) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::List)?;
        let id = self.value.and_then(|v| v.list.0.delete(index).tombstones().next().cloned());
        Ok(ValueDelta { value: Value::default(), context: id.into_iter().collect() })
    }

    /// Deletes the element `id` of the list: the delta retires its dot (already retired or
    /// unknown: the bottom).
    pub fn list_delete_id(&self, id: &Dot) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::List)?;
        let live = self.value.and_then(|v| v.list.0.element(id)).is_some_and(|e| !e.deleted);
        let context = if live { [id.clone()].into_iter().collect() } else { CausalContext::new() };
        Ok(ValueDelta { value: Value::default(), context })
    }

    /// Applies the delta mutator `f` to the value at `key` of the nested map.
    pub fn map_update<F>(&self, key: K, f: F) -> Result<ValueDelta<K>, MapError>
    where
        F: FnOnce(ValueRef<'_, K>) -> Result<ValueDelta<K>, MapError>,
    {
        self.expect(Kind::Map)?;
        let (map, context) = map_update(self.value.map(|v| &v.map), self.context, key, f)?;
        Ok(ValueDelta { value: Value { map, ..Value::default() }, context })
    }

    /// Removes `key` from the nested map, observed-remove (see [`OrMap::remove`]).
    pub fn map_remove(&self, key: &K) -> Result<ValueDelta<K>, MapError> {
        self.expect(Kind::Map)?;
        let (map, context) = map_remove(self.value.map(|v| &v.map), key);
        Ok(ValueDelta { value: Value { map, ..Value::default() }, context })
    }
}

/// The causal length of a causal-length set's element: the greatest among its bumps held.
fn clset_length(bumps: &DotFun<u64>) -> u64 {
    bumps.iter().map(|(_, length)| *length).max().unwrap_or(0)
}

/// The delta of applying `f` to the value at `key` of `entries`.
fn map_update<K, F>(
    entries: Option<&DotMap<K, Value<K>>>,
    context: &CausalContext,
    key: K,
    f: F,
) -> Result<(DotMap<K, Value<K>>, CausalContext), MapError>
where
    K: Ord + Clone,
    F: FnOnce(ValueRef<'_, K>) -> Result<ValueDelta<K>, MapError>,
{
    let delta = f(ValueRef { value: entries.and_then(|e| e.get(&key)), context })?;
    let mut map = DotMap::new();
    if !delta.value.is_empty() {
        map.insert(key, delta.value);
    }
    Ok((map, delta.context))
}

/// The delta of removing `key` from `entries`: the context of every dot under the key.
fn map_remove<K: Ord + Clone>(
    entries: Option<&DotMap<K, Value<K>>>,
    key: &K,
) -> (DotMap<K, Value<K>>, CausalContext) {
    let mut seen = Vec::new();
    if let Some(value) = entries.and_then(|e| e.get(key)) {
        value.dots_into(&mut seen);
    }
    (DotMap::new(), seen.into_iter().collect())
}

/// An observed-remove map (add-wins / update-wins keys) from `K` to nested maps, sets,
/// multi-value registers, last-writer-wins registers, causal counters, lists and
/// causal-length sets, with one causal context for the whole document.
///
/// A key is present while its value holds a dot. Removing a key retires exactly the dots
/// seen under it, so a concurrent update inside the key survives (with only what that
/// update wrote; for a counter, the updating node's running totals, see
/// [`ValueRef::counter_inc`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrMap<K> {
    entries: DotMap<K, Value<K>>,
    context: CausalContext,
}

impl<K> Default for OrMap<K> {
    fn default() -> Self {
        OrMap { entries: DotMap::new(), context: CausalContext::new() }
    }
}

impl<K: Ord + Clone> OrMap<K> {
    /// The empty map.
    pub fn new() -> OrMap<K> {
        OrMap::default()
    }

    /// Applies the delta mutator `f` to the value at `key` (absent keys read as empty) and
    /// returns the map's delta; `f`'s error (a [`MapError::TypeMismatch`]) is passed on.
    pub fn update<F>(&self, key: K, f: F) -> Result<OrMap<K>, MapError>
    where
        F: FnOnce(ValueRef<'_, K>) -> Result<ValueDelta<K>, MapError>,
    {
        let (entries, context) = map_update(Some(&self.entries), &self.context, key, f)?;
        Ok(OrMap { entries, context })
    }

    /// Removes `key`: the delta retires every dot seen under it, whatever its kind.
    pub fn remove(&self, key: &K) -> OrMap<K> {
        let (entries, context) = map_remove(Some(&self.entries), key);
        OrMap { entries, context }
    }

    /// The value at `key`, even one holding only retired list elements (see
    /// [`Value::is_live`]).
    pub fn get(&self, key: &K) -> Option<&Value<K>> {
        self.entries.get(key)
    }

    /// The value at `key` with the map's context, for reading before a mutation.
    pub fn entry(&self, key: &K) -> ValueRef<'_, K> {
        ValueRef { value: self.entries.get(key), context: &self.context }
    }

    /// Whether `key` is present: its value holds a live dot (a value holding only retired
    /// list elements is kept, see [`DotList`], but reads as absent).
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.get(key).is_some_and(Value::is_live)
    }

    /// Keys and values, in key order, those holding only retired list elements included.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Value<K>)> {
        self.entries.iter()
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every dot this map has seen.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    /// Number of keys at every depth (nested maps' keys included), in O(1).
    pub fn key_count(&self) -> usize {
        self.entries.key_count()
    }

    /// Number of dots held at every depth (each set element's dots and register value's
    /// dot), in O(1).
    pub fn dot_count(&self) -> usize {
        self.entries.dot_count()
    }

    /// Number of retired list elements at every depth, in O(1): they hold no dot but stay
    /// (see [`DotList`]), so the limits count them like dots.
    pub fn retired_count(&self) -> usize {
        self.entries.retired_count()
    }

    /// Bytes of compact JSON of the last-writer-wins values at every depth, in O(1).
    pub fn lww_bytes(&self) -> usize {
        self.entries.lww_bytes()
    }

    /// A map from its parts, as read back from storage or the network; `None` unless no value
    /// or nested store is empty (a join drops those, so no state holds one), and every dot
    /// is a real event (counter above 0), recorded in `context`, and held in one place only
    /// (one write writes one value).
    pub fn from_parts(entries: DotMap<K, Value<K>>, context: CausalContext) -> Option<OrMap<K>> {
        let mut seen = BTreeSet::new();
        let valid = entries.values().all(|value| value.check_parts(&context, &mut seen));
        valid.then_some(OrMap { entries, context })
    }
}

impl<K: Ord + Clone> Lattice for OrMap<K> {
    fn bottom() -> Self {
        OrMap::new()
    }

    fn join(&mut self, other: &Self) {
        join_causal(&mut self.entries, &mut self.context, &other.entries, &other.context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn apply(map: &mut OrMap<&'static str>, delta: &OrMap<&'static str>) {
        map.join(delta);
    }

    fn next(map: &OrMap<&'static str>, node: &str) -> Dot {
        map.context().next_dot(&NodeId::from(node))
    }

    #[test]
    fn dot_set_join_keeps_common_and_unseen_dots() {
        let (a1, a2, b1) = (Dot::new("a", 1), Dot::new("a", 2), Dot::new("b", 1));
        let mut left = DotSet::from([a1.clone(), a2.clone()]);
        let left_ctx: CausalContext = [a1.clone(), a2.clone()].into_iter().collect();
        // The right side saw a1 and a2 but kept only a2 (it removed a1), and added b1.
        let right = DotSet::from([a2.clone(), b1.clone()]);
        let right_ctx: CausalContext = [a1, a2.clone(), b1.clone()].into_iter().collect();
        left.join_store(&left_ctx, &right, &right_ctx, &mut DotChanges::default());
        assert_eq!(left, DotSet::from([a2, b1]));
    }

    #[test]
    fn dot_fun_join_keeps_the_greater_value_of_a_disputed_dot() {
        let dot = Dot::new("a", 1);
        let ctx: CausalContext = [dot.clone()].into_iter().collect();
        let mut left = DotFun::new();
        left.insert(dot.clone(), Scalar::Int(1));
        let mut right = DotFun::new();
        right.insert(dot.clone(), Scalar::Int(2));
        let mut right_first = right.clone();
        right_first.join_store(&ctx, &left, &ctx, &mut DotChanges::default());
        left.join_store(&ctx, &right, &ctx, &mut DotChanges::default());
        assert_eq!(left, right_first);
        assert_eq!(left.get(&dot), Some(&Scalar::Int(2)));
    }

    #[test]
    fn nested_values_are_written_and_read() {
        let mut doc = OrMap::new();
        let d = doc.update("title", |v| v.assign(next(&doc, "a"), "Buy milk")).unwrap();
        apply(&mut doc, &d);
        let d = doc.update("tags", |v| v.set_add(next(&doc, "a"), "urgent")).unwrap();
        apply(&mut doc, &d);
        let d = doc
            .update("meta", |v| v.map_update("owner", |o| o.assign(next(&doc, "a"), Scalar::Int(7))))
            .unwrap();
        apply(&mut doc, &d);
        assert_eq!(doc.len(), 3);
        let title = doc.get(&"title").unwrap();
        assert_eq!(title.values().into_iter().collect::<Vec<_>>(), [&Scalar::from("Buy milk")]);
        assert!(doc.get(&"tags").unwrap().contains(&"urgent".into()));
        let owner = doc.get(&"meta").unwrap().get(&"owner").unwrap();
        assert_eq!(owner.kinds().collect::<Vec<_>>(), [Kind::Register]);
        assert_eq!(doc.context().vv().get(&"a".into()), 3);
    }

    #[test]
    fn a_mutator_of_another_kind_is_refused() {
        let mut doc = OrMap::new();
        let d = doc.update("x", |v| v.assign(next(&doc, "a"), true)).unwrap();
        apply(&mut doc, &d);
        let err = doc.update("x", |v| v.set_add(next(&doc, "a"), 1i64)).unwrap_err();
        assert_eq!(err, MapError::TypeMismatch { expected: Kind::Set, found: Kind::Register });
        assert_eq!(err.to_string(), "expected a set at this key, found a register");
        // Removing the key first makes room for the other kind.
        let removal = doc.remove(&"x");
        apply(&mut doc, &removal);
        assert!(doc.update("x", |v| v.set_add(next(&doc, "a"), 1i64)).is_ok());
    }

    #[test]
    fn concurrent_writes_of_different_kinds_both_survive() {
        let base = OrMap::new();
        let as_set = base.update("x", |v| v.set_add(Dot::new("a", 1), 1i64)).unwrap();
        let as_register = base.update("x", |v| v.assign(Dot::new("b", 1), 2i64)).unwrap();
        let mut left = as_set.clone();
        left.join(&as_register);
        let mut right = as_register;
        right.join(&as_set);
        assert_eq!(left, right);
        let kinds: Vec<_> = left.get(&"x").unwrap().kinds().collect();
        assert_eq!(kinds, [Kind::Set, Kind::Register]);
        // Each kind can still be mutated; another kind is refused with the first one found.
        assert!(left.update("x", |v| v.assign(Dot::new("a", 2), 3i64)).is_ok());
        let err = left.update("x", |v| v.map_remove(&"y")).unwrap_err();
        assert_eq!(err, MapError::TypeMismatch { expected: Kind::Map, found: Kind::Set });
    }

    #[test]
    fn removing_a_key_keeps_a_concurrent_nested_update() {
        let mut a = OrMap::new();
        let d = a.update("tags", |v| v.set_add(next(&a, "a"), "old")).unwrap();
        apply(&mut a, &d);
        let mut b = a.clone();
        let removal = a.remove(&"tags");
        apply(&mut a, &removal);
        let added = b.update("tags", |v| v.set_add(next(&b, "b"), "new")).unwrap();
        apply(&mut b, &added);
        a.join(&b);
        b.join(&removal);
        assert_eq!(a, b);
        let tags: Vec<_> = a.get(&"tags").unwrap().elements().collect();
        assert_eq!(tags, [&Scalar::from("new")]);
    }

    #[test]
    fn a_counter_keeps_one_dot_per_node_and_its_removal_resets_what_it_saw() {
        let mut a = OrMap::new();
        for by in [2, 3] {
            let d = a.update("likes", |v| v.counter_inc(next(&a, "a"), by)).unwrap();
            apply(&mut a, &d);
        }
        let d = a.update("likes", |v| v.counter_inc(next(&a, "b"), 10)).unwrap();
        apply(&mut a, &d);
        let likes = a.get(&"likes").unwrap();
        assert_eq!((likes.counter_value(), likes.counter_entries().count()), (15, 2));
        assert_eq!(likes.kinds().collect::<Vec<_>>(), [Kind::Counter]);
        // The same increment again (a seen dot) changes nothing.
        let again = a.update("likes", |v| v.counter_inc(Dot::new("a", 1), 2)).unwrap();
        assert!(again.is_bottom());

        // c removes the key having seen everything; concurrently a decrements by 1.
        let mut c = a.clone();
        let removal = c.remove(&"likes");
        apply(&mut c, &removal);
        let dec = a.update("likes", |v| v.counter_dec(next(&a, "a"), 1)).unwrap();
        apply(&mut a, &dec);
        a.join(&c);
        c.join(&dec);
        assert_eq!(a, c);
        // b's contribution (seen) is reset; a's new dot carries a's running totals.
        let likes = a.get(&"likes").unwrap();
        assert_eq!(likes.counter_value(), 4);
        assert_eq!(
            likes.counter_totals().into_iter().collect::<Vec<_>>(),
            [(&NodeId::from("a"), PnEntry { p: 5, n: 1 })]
        );
        // Counting after a removal it saw starts b from zero.
        let d = a.update("likes", |v| v.counter_inc(next(&a, "b"), 1)).unwrap();
        apply(&mut a, &d);
        assert_eq!(a.get(&"likes").unwrap().counter_value(), 5);
        let err = a.update("likes", |v| v.assign(next(&a, "a"), 1i64)).unwrap_err();
        assert_eq!(err, MapError::TypeMismatch { expected: Kind::Register, found: Kind::Counter });
    }

    #[test]
    fn an_assignment_replaces_what_it_saw() {
        let mut doc = OrMap::new();
        let d1 = doc.update("x", |v| v.assign(next(&doc, "a"), 1i64)).unwrap();
        let concurrent = doc.update("x", |v| v.assign(Dot::new("b", 1), 2i64)).unwrap();
        apply(&mut doc, &d1);
        apply(&mut doc, &concurrent);
        assert_eq!(doc.get(&"x").unwrap().values().len(), 2, "siblings");
        let d2 = doc.update("x", |v| v.assign(next(&doc, "a"), 3i64)).unwrap();
        apply(&mut doc, &d2);
        assert_eq!(doc.get(&"x").unwrap().values().into_iter().collect::<Vec<_>>(), [&Scalar::Int(3)]);
        // The same assignment again (a seen dot) changes nothing.
        let again = doc.update("x", |v| v.assign(Dot::new("a", 1), 9i64)).unwrap();
        assert!(again.is_bottom());
    }

    #[test]
    fn an_assignment_with_seen_keeps_what_it_did_not_see() {
        let mut doc = OrMap::new();
        for node in ["a", "b"] {
            let d = doc.update("x", |v| v.assign(Dot::new(node, 1), node)).unwrap();
            apply(&mut doc, &d);
        }
        let seen: VersionVector = [(NodeId::from("a"), 1)].into_iter().collect();
        let d = doc.update("x", |v| v.assign_seen(next(&doc, "c"), "c", &seen)).unwrap();
        apply(&mut doc, &d);
        let values: Vec<_> = doc.get(&"x").unwrap().values().into_iter().collect();
        assert_eq!(values, [&Scalar::from("b"), &Scalar::from("c")], "b's value was not seen");
        let err = doc.update("x", |v| v.map_update("y", |y| y.assign_seen(Dot::new("c", 2), 1i64, &seen)));
        assert_eq!(err, Err(MapError::TypeMismatch { expected: Kind::Map, found: Kind::Register }));
    }

    #[test]
    fn from_parts_checks_every_dot_and_store() {
        let (a1, a2) = (Dot::new("a", 1), Dot::new("a", 2));
        let context: CausalContext = [a1.clone(), a2.clone()].into_iter().collect();
        let reg = |dot: &Dot| {
            let mut register = DotFun::new();
            register.insert(dot.clone(), Scalar::Int(1));
            Value::<&str>::from_parts(DotMap::new(), DotMap::new(), register)
        };
        let nested = |value: Value<&'static str>| {
            Value::from_parts(DotMap::from([("n", value)]), DotMap::new(), DotFun::new())
        };
        let set = |dots: DotSet| {
            Value::from_parts(DotMap::new(), DotMap::from([(Scalar::Null, dots)]), DotFun::new())
        };
        let good = DotMap::from([("x", reg(&a1)), ("y", nested(set(DotSet::from([a2.clone()]))))]);
        let map = OrMap::from_parts(good, context.clone()).expect("valid");
        assert_eq!(map.get(&"y").and_then(|y| y.get(&"n")).map(|n| n.contains(&Scalar::Null)), Some(true));
        for bad in [
            DotMap::from([("x", Value::default())]),
            DotMap::from([("x", nested(Value::default()))]),
            DotMap::from([("x", set(DotSet::new()))]),
            DotMap::from([("x", reg(&Dot::new("a", 3)))]),
            DotMap::from([("x", reg(&Dot::new("a", 0)))]),
            DotMap::from([("x", reg(&a1)), ("y", nested(reg(&a1)))]),
            DotMap::from([("x", reg(&a1)), ("y", set(DotSet::from([a1.clone()])))]),
        ] {
            assert_eq!(OrMap::from_parts(bad, context.clone()), None);
        }
    }

    #[test]
    fn scalars_convert_to_and_from_json() {
        use serde_json::json;
        for (doc, scalar) in [
            (json!(null), Scalar::Null),
            (json!(true), Scalar::Bool(true)),
            (json!(-3), Scalar::Int(-3)),
            (json!(1.5), Scalar::float(1.5)),
            (json!(1.0), Scalar::float(1.0)),
            (json!("x"), Scalar::from("x")),
        ] {
            assert_eq!(Scalar::from_json(&doc), Some(scalar.clone()), "{doc}");
            assert_eq!(scalar.to_json(), doc);
        }
        assert_ne!(Scalar::from_json(&json!(1)), Scalar::from_json(&json!(1.0)));
        for doc in [json!([]), json!({}), json!(u64::MAX)] {
            assert_eq!(Scalar::from_json(&doc), None, "{doc}");
        }
        assert_eq!(Scalar::float(f64::NAN).to_json(), json!(null));
    }

    #[test]
    fn floats_keep_their_bits() {
        assert_eq!(Scalar::float(1.5).as_f64(), Some(1.5));
        assert_ne!(Scalar::float(0.0), Scalar::float(-0.0));
        assert_eq!(Scalar::Int(1).as_f64(), None);
    }

    #[test]
    fn json_order_is_total_and_agrees_with_equality() {
        use serde_json::json;
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(0),
            json!(7),
            json!(u64::MAX),
            json!(-3),
            json!(-0.0),
            json!(0.0),
            json!(1.5),
            json!(""),
            json!("a"),
            json!([]),
            json!([1]),
            json!([1, 2]),
            json!({}),
            json!({"a": 1}),
            json!({"a": 1, "b": 2}),
            json!({"b": 0}),
        ];
        for a in &values {
            for b in &values {
                assert_eq!(json_cmp(a, b) == Ordering::Equal, a == b, "{a} vs {b}");
                assert_eq!(json_cmp(a, b), json_cmp(b, a).reverse(), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_put_supersedes_what_it_saw_and_reads_pick_the_greatest_time_and_dot() {
        use serde_json::json;
        let mut doc = OrMap::new();
        let d = doc.update("x", |v| v.lww_put(next(&doc, "a"), 10, json!({"v": 1}))).unwrap();
        apply(&mut doc, &d);
        // Concurrent: b did not see a's write. Same time: the greater dot, b's, wins.
        let concurrent = OrMap::new().update("x", |v| v.lww_put(Dot::new("b", 1), 10, json!([2]))).unwrap();
        apply(&mut doc, &concurrent);
        let x = doc.get(&"x").unwrap();
        assert_eq!((x.lww_entries().count(), x.lww_value()), (2, Some(&json!([2]))));
        assert_eq!(x.kinds().collect::<Vec<_>>(), [Kind::Lww]);
        // A put that saw both replaces both, at no lower time than theirs.
        let d = doc.update("x", |v| v.lww_put(next(&doc, "a"), 3, json!("three"))).unwrap();
        apply(&mut doc, &d);
        let x = doc.get(&"x").unwrap();
        let entries: Vec<_> = x.lww_entries().map(|(dot, e)| (dot.clone(), e.time_ms)).collect();
        assert_eq!(entries, [(Dot::new("a", 2), 10)]);
        assert_eq!(x.lww_value(), Some(&json!("three")));
        // The same put again (a seen dot) changes nothing; another kind is refused.
        let again = doc.update("x", |v| v.lww_put(Dot::new("a", 1), 99, json!(0))).unwrap();
        assert!(again.is_bottom());
        let err = doc.update("x", |v| v.assign(next(&doc, "a"), 1i64)).unwrap_err();
        assert_eq!(err, MapError::TypeMismatch { expected: Kind::Register, found: Kind::Lww });
        let err = doc.update("x", |v| v.map_remove(&"y")).unwrap_err();
        assert_eq!(err, MapError::TypeMismatch { expected: Kind::Map, found: Kind::Lww });
    }

    #[test]
    fn removing_a_key_keeps_a_concurrent_put_only() {
        use serde_json::json;
        let mut a = OrMap::new();
        let d = a.update("x", |v| v.lww_put(next(&a, "a"), 50, json!(1))).unwrap();
        apply(&mut a, &d);
        let mut b = a.clone();
        let removal = a.remove(&"x");
        apply(&mut a, &removal);
        let put = b.update("x", |v| v.lww_put(next(&b, "b"), 1, json!({"late": true}))).unwrap();
        apply(&mut b, &put);
        a.join(&b);
        b.join(&removal);
        assert_eq!(a, b);
        let x = a.get(&"x").unwrap();
        assert_eq!(x.lww_entries().count(), 1);
        assert_eq!(x.lww_value(), Some(&json!({"late": true})));
    }

    #[test]
    fn a_clset_bump_supersedes_what_it_saw_and_a_removal_keeps_concurrent_bumps() {
        let (x, y) = (Scalar::from("x"), Scalar::from("y"));
        let mut a = OrMap::new();
        for elem in ["x", "y"] {
            let d = a.update("tags", |v| v.clset_add(next(&a, "a"), elem)).unwrap();
            apply(&mut a, &d);
        }
        let tags = a.get(&"tags").unwrap();
        assert_eq!(tags.kinds().collect::<Vec<_>>(), [Kind::ClSet]);
        assert_eq!(tags.clset_elements().collect::<Vec<_>>(), [&x, &y]);
        // Adding a present element or removing an absent one is the bottom (no dot used).
        assert!(a.update("tags", |v| v.clset_add(next(&a, "a"), "x")).unwrap().is_bottom());
        assert!(a.update("tags", |v| v.clset_remove(next(&a, "a"), &Scalar::from("z"))).unwrap().is_bottom());
        let d = a.update("tags", |v| v.clset_remove(next(&a, "b"), &x)).unwrap();
        apply(&mut a, &d);
        let tags = a.get(&"tags").unwrap();
        assert_eq!((tags.clset_length(&x), tags.clset_contains(&x)), (2, false));
        assert_eq!(tags.clset_entries().map(|(_, bumps)| bumps.len()).sum::<usize>(), 2, "one bump each");
        // The same bump again (a seen dot) changes nothing.
        assert!(a.update("tags", |v| v.clset_add(Dot::new("b", 1), "x")).unwrap().is_bottom());

        // c removes the key having seen everything; concurrently d re-adds x (length 3).
        let mut c = a.clone();
        let removal = c.remove(&"tags");
        apply(&mut c, &removal);
        let re_add = a.update("tags", |v| v.clset_add(next(&a, "d"), "x")).unwrap();
        apply(&mut a, &re_add);
        a.join(&c);
        c.join(&re_add);
        assert_eq!(a, c);
        let tags = a.get(&"tags").unwrap();
        let lengths: Vec<_> = tags.clset_entries().map(|(e, _)| (e, tags.clset_length(e))).collect();
        assert_eq!(lengths, [(&x, 3)], "y is forgotten, x keeps the concurrent bump");
        let err = a.update("tags", |v| v.set_add(next(&a, "a"), 1i64)).unwrap_err();
        assert_eq!(err, MapError::TypeMismatch { expected: Kind::Set, found: Kind::ClSet });
        assert!(a.update("tags", |v| v.clset_add(next(&a, "a"), 1i64)).is_ok());
        let register = OrMap::new().update("r", |v| v.assign(Dot::new("a", 1), 1i64)).unwrap();
        let err = register.update("r", |v| v.clset_add(Dot::new("a", 2), 1i64)).unwrap_err();
        assert_eq!(err.to_string(), "expected a causal-length set at this key, found a register");
    }

    /// The example of docs/crdt.md ("Causal-length sets in a map"): lengths before and after
    /// a removal compare as numbers, so a concurrent remove outlasts an add made after a reset.
    #[test]
    fn a_clset_history_restarted_by_a_removal_is_compared_by_length() {
        let x = Scalar::from("x");
        let mut carol = OrMap::new();
        let d = carol.update("tags", |v| v.clset_add(Dot::new("alice", 1), "x")).unwrap();
        apply(&mut carol, &d);
        let mut dave = carol.clone();
        let removal = carol.remove(&"tags");
        apply(&mut carol, &removal);
        let re_add = carol.update("tags", |v| v.clset_add(next(&carol, "carol"), "x")).unwrap();
        apply(&mut carol, &re_add);
        let dave_removes = dave.update("tags", |v| v.clset_remove(next(&dave, "dave"), &x)).unwrap();
        apply(&mut dave, &dave_removes);
        carol.join(&dave);
        dave.join(&removal);
        dave.join(&re_add);
        assert_eq!(carol, dave);
        let tags = carol.get(&"tags").unwrap();
        assert_eq!(tags.clset_entries().map(|(_, bumps)| bumps.len()).sum::<usize>(), 2);
        assert_eq!((tags.clset_length(&x), tags.clset_contains(&x)), (2, false));
        // An add that saw both bumps retires them.
        let d = carol.update("tags", |v| v.clset_add(next(&carol, "carol"), "x")).unwrap();
        apply(&mut carol, &d);
        let tags = carol.get(&"tags").unwrap();
        assert_eq!((tags.clset_length(&x), tags.clset_entries().count()), (3, 1));
    }
}
