//! An ordered list: RGA, the Replicated Growable Array (Roh, Jeon, Kim, Lee, "Replicated
//! abstract data types: building blocks for collaborative applications", 2011), as a
//! delta-state CRDT.
//!
//! Every element ever inserted stays, with its identity (a [`Dot`]), its *left origin* (the
//! element it was inserted after, or the head) and its timestamp `(seq, dot)`, where `seq` is
//! a Lamport number: one more than the highest `seq` the inserting replica had seen. So an
//! element inserted after seeing another has a greater timestamp, and timestamps are totally
//! ordered (dots are unique). A delete hides the element (a tombstone) and keeps it, because
//! concurrent inserts may still name it as their origin.
//!
//! The state is two grow-only sets, the elements and the tombstones; join is their union.
//! Where an element goes is a function of the set alone: the elements form a tree by left
//! origin, and the list is that tree walked in pre-order, each node's children in descending
//! timestamp order. Inserting into such a list one element at a time (in any order in which
//! origins come before the elements naming them) gives that walk if the new element goes
//! right after its origin, before the first later element with a lower timestamp: everything
//! in between belongs to siblings with greater timestamps or to their subtrees, whose
//! timestamps are greater still. An element whose origin has not arrived waits in a buffer
//! (it is part of the state, just not placed), so joins need no causal delivery.
//!
//! Positions are kept in an order-statistic B-tree ([`tree`]) and element ids in a hash
//! map, so finding the n-th visible element, locating an origin and integrating a remote
//! insert or delete each take O(log n), not a scan of the list.
//!
//! Deletes carry no dot: a tombstone is the deleted element's id, and a list has no causal
//! context. So a version vector (the max counter per node of the elements, see
//! [`Rga::next_dot`]) summarises a replica's inserts but not its deletes: a sync that ships
//! "the delta since this version vector" must ship every tombstone (or the whole state), not
//! only the new ones. Giving deletes their own dots would fix that, at one dot per delete.
//!
//! The design leaves room for run-length encoding (Yjs-style items holding runs of
//! consecutive dots typed left to right): the tree's leaves would hold runs instead of
//! single elements and the id map would point at the run.

mod tree;

use crate::{Dot, Lattice, NodeId};
use std::collections::{HashMap, HashSet};
use std::fmt;
use tree::{Entry, Tree};

/// One element of the list: its identity, left origin, timestamp and value.
#[derive(Clone)]
struct Elem<T> {
    id: Dot,
    /// The element it was inserted after; `None` for the head of the list.
    origin: Option<Dot>,
    /// Lamport number: the timestamp is `(seq, id)`.
    seq: u64,
    value: T,
    /// Whether a tombstone for `id` is in the state (kept here to avoid a set lookup).
    deleted: bool,
}

/// A replicated list of `T` (records or characters) that merges concurrent inserts and
/// deletes by RGA's rules.
///
/// Mutators take `&self` and return a delta: join it into this state (and ship it to the
/// others). Indices count visible elements only.
#[derive(Clone)]
pub struct Rga<T> {
    /// Every element received, in arrival order (the order carries no meaning).
    elems: Vec<Elem<T>>,
    /// Element id → index in `elems`.
    ids: HashMap<Dot, usize>,
    /// Every tombstone received, including those of elements not received yet.
    tombstones: HashSet<Dot>,
    /// Origin id → elements that wait for that origin to be placed.
    waiting: HashMap<Dot, Vec<usize>>,
    /// The placed elements, by position.
    tree: Tree,
    /// The highest `seq` of any element received.
    max_seq: u64,
    /// Node → the highest counter of its elements' ids, for [`Rga::next_dot`].
    counters: HashMap<NodeId, u64>,
}

/// One element of a list as [`Rga::elements`] shows it, tombstoned or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListElem<'a, T> {
    /// Its identity.
    pub id: &'a Dot,
    /// The element it was inserted after; `None` for the head of the list.
    pub origin: Option<&'a Dot>,
    /// Its Lamport number: its timestamp is `(seq, id)`.
    pub seq: u64,
    /// Its value.
    pub value: &'a T,
    /// Whether a tombstone hides it.
    pub deleted: bool,
}

/// Why [`Rga::from_parts`] refused its parts.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartsError {
    /// Two elements share an id.
    DuplicateId,
    /// A tombstone is listed twice.
    DuplicateTombstone,
    /// A dot counter or a `seq` is 0.
    Zero,
    /// An element names itself as its origin.
    OwnOrigin,
    /// An element's `seq` is not above its origin's, which [`Rga::insert`] never makes.
    NotAfterOrigin,
}

impl<T: Clone + PartialEq> Rga<T> {
    /// The empty list.
    pub fn new() -> Rga<T> {
        Rga {
            elems: Vec::new(),
            ids: HashMap::new(),
            tombstones: HashSet::new(),
            waiting: HashMap::new(),
            tree: Tree::default(),
            max_seq: 0,
            counters: HashMap::new(),
        }
    }

    /// A list from its elements `(id, origin, seq, value)`, in any order, and its tombstones
    /// (which may name elements that are not among them, as a delete's delta does). Refuses
    /// what no history of [`Rga::insert`], [`Rga::delete`] and joins could build: an id or a
    /// tombstone listed twice, a counter or `seq` of 0, an element that is its own origin or
    /// whose `seq` is not above its origin's (when the origin is among the elements).
    pub fn from_parts(
        elems: impl IntoIterator<Item = (Dot, Option<Dot>, u64, T)>,
        tombstones: impl IntoIterator<Item = Dot>,
    ) -> Result<Rga<T>, PartsError> {
        let mut list = Rga::new();
        for id in tombstones {
            if id.counter == 0 {
                return Err(PartsError::Zero);
            }
            if list.tombstones.contains(&id) {
                return Err(PartsError::DuplicateTombstone);
            }
            list.tombstone(&id);
        }
        for (id, origin, seq, value) in elems {
            if id.counter == 0 || seq == 0 || origin.as_ref().is_some_and(|o| o.counter == 0) {
                return Err(PartsError::Zero);
            }
            if origin.as_ref() == Some(&id) {
                return Err(PartsError::OwnOrigin);
            }
            if list.ids.contains_key(&id) {
                return Err(PartsError::DuplicateId);
            }
            list.add(Elem { id, origin, seq, value, deleted: false });
        }
        let misplaced = list.elems.iter().any(|e| {
            e.origin.as_ref().and_then(|o| list.ids.get(o)).is_some_and(|&o| list.elems[o].seq >= e.seq)
        });
        if misplaced {
            return Err(PartsError::NotAfterOrigin);
        }
        Ok(list)
    }

    /// Every element, tombstoned ones included: the placed ones in list order, then those
    /// waiting for an origin that has not arrived (as in a delta), by timestamp.
    pub fn elements(&self) -> impl Iterator<Item = ListElem<'_, T>> + '_ {
        let mut unplaced = Vec::new();
        if self.tree.total() < self.elems.len() {
            let mut placed = vec![false; self.elems.len()];
            for e in self.tree.iter() {
                placed[e.elem] = true;
            }
            unplaced = (0..self.elems.len()).filter(|&i| !placed[i]).collect();
            unplaced.sort_by(|&x, &y| {
                (self.elems[x].seq, &self.elems[x].id).cmp(&(self.elems[y].seq, &self.elems[y].id))
            });
        }
        self.tree.iter().map(|e| e.elem).chain(unplaced).map(|i| {
            let e = &self.elems[i];
            ListElem { id: &e.id, origin: e.origin.as_ref(), seq: e.seq, value: &e.value, deleted: e.deleted }
        })
    }

    /// Every tombstone, including those of elements not received yet, in dot order.
    pub fn tombstones(&self) -> impl Iterator<Item = &Dot> + '_ {
        let mut tombstones: Vec<&Dot> = self.tombstones.iter().collect();
        tombstones.sort();
        tombstones.into_iter()
    }

    /// Number of elements, tombstoned ones included (they stay forever).
    pub fn element_count(&self) -> usize {
        self.elems.len()
    }

    /// Number of tombstones.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// The highest `seq` of any element (0 for an empty list): the next insert's is one more.
    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    /// The dot for `node`'s next insert: one past the highest counter of `node`'s elements.
    /// A list has no causal context; elements are never dropped, so this only grows, and on
    /// the server that applies all of `node`'s inserts it is dense.
    pub fn next_dot(&self, node: &NodeId) -> Dot {
        let counter = self.counters.get(node).copied().unwrap_or(0).saturating_add(1);
        Dot { node: node.clone(), counter }
    }

    /// Number of visible elements.
    pub fn len(&self) -> usize {
        self.tree.visible()
    }

    /// Whether no element is visible.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The visible element at `index`.
    pub fn get(&self, index: usize) -> Option<&T> {
        self.tree.nth_visible(index).map(|i| &self.elems[i].value)
    }

    /// The visible elements in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.tree.iter().filter(|e| e.visible).map(|e| &self.elems[e.elem].value)
    }

    /// The visible elements in order, copied into a vector.
    pub fn to_vec(&self) -> Vec<T> {
        self.iter().cloned().collect()
    }

    /// Delta mutator: inserts `value` at `index` (among visible elements; past the end means
    /// at the end) with identity `dot`, which must be new (the node's next dot). The delta is
    /// the one new element. If `dot` already names an element of this list, nothing is
    /// inserted and the delta is empty: a dot names one element.
    pub fn insert(&self, index: usize, dot: Dot, value: T) -> Rga<T> {
        let index = index.min(self.len());
        // The new element goes after the visible element to its left. Its timestamp is the
        // greatest this replica knows, so it lands right after that element, before any
        // tombstones that follow it, which keeps it at `index`.
        let origin =
            index.checked_sub(1).and_then(|left| self.tree.nth_visible(left)).map(|i| &self.elems[i].id);
        self.insert_after(origin, dot, value)
    }

    /// Whether `id` names an element of this list, deleted or not.
    pub fn contains_id(&self, id: &Dot) -> bool {
        self.ids.contains_key(id)
    }

    /// Delta mutator: inserts `value` right after the element `after` (`None`: at the head),
    /// wherever that element is now, with identity `dot` (new, as for [`Rga::insert`]). This
    /// is RGA's own operation: a replica that chose its place on an old copy lands next to the
    /// element it saw, not at an index others' inserts have since moved. `after` should name
    /// an element of this list ([`Rga::contains_id`]); an element after an unknown one waits
    /// for it, unplaced.
    pub fn insert_after(&self, after: Option<&Dot>, dot: Dot, value: T) -> Rga<T> {
        let mut delta = Rga::new();
        if self.ids.contains_key(&dot) {
            return delta;
        }
        // The greatest timestamp this replica knows: placed right after `after`, before its
        // other successors (all older). Saturating: a state from a hostile peer could carry
        // `u64::MAX`. Inserts then share that seq (one after such an element is left unplaced
        // by the rule in `place`), which degrades the order but does not panic. Bounding seqs
        // belongs to the decoder.
        let seq = self.max_seq.saturating_add(1);
        delta.add(Elem { id: dot, origin: after.cloned(), seq, value, deleted: false });
        delta
    }

    /// Delta mutator: deletes the element `id`, wherever it is. The delta is its tombstone;
    /// it is empty when the element is unknown or already deleted.
    pub fn delete_id(&self, id: &Dot) -> Rga<T> {
        let mut delta = Rga::new();
        if self.ids.get(id).is_some_and(|&i| !self.elems[i].deleted) {
            delta.tombstone(id);
        }
        delta
    }

    /// Delta mutator: deletes the visible element at `index`. The delta is its tombstone;
    /// it is empty when `index` is out of range.
    pub fn delete(&self, index: usize) -> Rga<T> {
        let mut delta = Rga::new();
        if let Some(i) = self.tree.nth_visible(index) {
            delta.tombstone(&self.elems[i].id);
        }
        delta
    }

    /// The element `id`, deleted or not.
    pub(crate) fn element(&self, id: &Dot) -> Option<ListElem<'_, T>> {
        self.ids.get(id).map(|&i| {
            let e = &self.elems[i];
            ListElem { id: &e.id, origin: e.origin.as_ref(), seq: e.seq, value: &e.value, deleted: e.deleted }
        })
    }

    /// Adds the element `id` (not in the list yet) with its origin, `seq` and value, as a
    /// join does; [`Rga::retire`] hides it.
    pub(crate) fn add_element(&mut self, id: Dot, origin: Option<Dot>, seq: u64, value: T) {
        if !self.ids.contains_key(&id) {
            self.add(Elem { id, origin, seq, value, deleted: false });
        }
    }

    /// Adds a tombstone for `id` (the element may arrive later).
    pub(crate) fn retire(&mut self, id: &Dot) {
        self.tombstone(id);
    }

    /// Adds an element not in the state yet, and places it (and whatever waited for it)
    /// if its origin is placed.
    fn add(&mut self, mut elem: Elem<T>) {
        elem.deleted = self.tombstones.contains(&elem.id);
        self.max_seq = self.max_seq.max(elem.seq);
        let counter = self.counters.entry(elem.id.node.clone()).or_insert(0);
        *counter = (*counter).max(elem.id.counter);
        let index = self.elems.len();
        self.ids.insert(elem.id.clone(), index);
        self.elems.push(elem);
        let mut ready = vec![index];
        while let Some(index) = ready.pop() {
            if self.place(index) {
                if let Some(children) = self.waiting.remove(&self.elems[index].id) {
                    ready.extend(children);
                }
            }
        }
    }

    /// Places element `index` in the list if its origin is placed; otherwise leaves it
    /// waiting for its origin. Returns whether it was placed.
    ///
    /// An element whose `seq` is not above its origin's was not made by [`Rga::insert`]
    /// (which always sees its origin) and would break the placement rule; it is never
    /// placed, nor is anything inserted after it. That depends only on the two elements,
    /// so every replica agrees.
    fn place(&mut self, index: usize) -> bool {
        let elem = &self.elems[index];
        let from = match &elem.origin {
            None => 0,
            Some(origin) => {
                let placed = self.ids.get(origin).and_then(|&o| self.tree.rank(o).map(|rank| (o, rank)));
                let Some((o, rank)) = placed else {
                    self.waiting.entry(origin.clone()).or_default().push(index);
                    return false;
                };
                if elem.seq <= self.elems[o].seq {
                    return false;
                }
                rank + 1
            }
        };
        // Right after the origin, skipping the elements with greater timestamps: the first
        // one with a lower timestamp is the first that must stay after this element.
        let (seq, id) = (elem.seq, &elem.id);
        let pos = self.tree.first_from(from, seq, |e| {
            let other = &self.elems[e.elem];
            (other.seq, &other.id) < (seq, id)
        });
        self.tree.insert(pos, Entry { elem: index, seq, visible: !elem.deleted });
        true
    }

    /// Adds a tombstone for `id`, hiding the element if it is here.
    fn tombstone(&mut self, id: &Dot) {
        if self.tombstones.contains(id) {
            return;
        }
        self.tombstones.insert(id.clone());
        if let Some(&index) = self.ids.get(id) {
            self.elems[index].deleted = true;
            self.tree.set_visible(index, false);
        }
    }
}

impl<T: Clone + PartialEq> Default for Rga<T> {
    fn default() -> Self {
        Rga::new()
    }
}

impl<T: Clone + PartialEq> Lattice for Rga<T> {
    fn bottom() -> Self {
        Rga::new()
    }

    fn join(&mut self, other: &Self) {
        for elem in &other.elems {
            if !self.ids.contains_key(&elem.id) {
                self.add(elem.clone());
            }
        }
        for id in &other.tombstones {
            self.tombstone(id);
        }
    }

    fn is_bottom(&self) -> bool {
        self.elems.is_empty() && self.tombstones.is_empty()
    }
}

/// Two lists are equal when they hold the same elements (ids, origins, timestamps and
/// values) and the same tombstones, whatever the order they arrived in.
impl<T: Clone + PartialEq> PartialEq for Rga<T> {
    fn eq(&self, other: &Self) -> bool {
        self.elems.len() == other.elems.len()
            && self.tombstones == other.tombstones
            && self.elems.iter().all(|mine| {
                other.ids.get(&mine.id).is_some_and(|&i| {
                    let theirs = &other.elems[i];
                    theirs.origin == mine.origin && theirs.seq == mine.seq && theirs.value == mine.value
                })
            })
    }
}

impl<T: Clone + Eq> Eq for Rga<T> {}

impl<T: Clone + PartialEq + fmt::Debug> fmt::Debug for Rga<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rga")
            .field("visible", &self.iter().collect::<Vec<_>>())
            .field("elements", &self.elems.len())
            .field("placed", &self.tree.total())
            .field("tombstones", &self.tombstones.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a delta mutator, joins its delta locally and returns it, as a replica does.
    fn apply(list: &mut Rga<char>, op: impl FnOnce(&Rga<char>) -> Rga<char>) -> Rga<char> {
        let delta = op(list);
        list.join(&delta);
        delta
    }

    fn text(list: &Rga<char>) -> String {
        list.iter().collect()
    }

    /// RGA's order computed from its definition, independently of the tree: the elements
    /// form a tree by origin (skipping elements not after their origin in time), walked in
    /// pre-order with each node's children in descending timestamp order.
    fn canonical_order<T: Clone + PartialEq>(list: &Rga<T>) -> Vec<usize> {
        let mut children: HashMap<Option<&Dot>, Vec<usize>> = HashMap::new();
        for (i, e) in list.elems.iter().enumerate() {
            let valid =
                e.origin.as_ref().is_none_or(|o| list.ids.get(o).is_some_and(|&p| list.elems[p].seq < e.seq));
            if valid {
                children.entry(e.origin.as_ref()).or_default().push(i);
            }
        }
        for kids in children.values_mut() {
            // Ascending, so that popping from the stack visits the greatest first.
            kids.sort_by(|&x, &y| {
                (list.elems[x].seq, &list.elems[x].id).cmp(&(list.elems[y].seq, &list.elems[y].id))
            });
        }
        let mut order = Vec::new();
        let mut stack: Vec<usize> = children.get(&None).cloned().unwrap_or_default();
        while let Some(i) = stack.pop() {
            order.push(i);
            stack.extend(children.get(&Some(&list.elems[i].id)).into_iter().flatten());
        }
        order
    }

    /// Checks the tree against the definition: order, visibility, and what is left unplaced.
    fn check_against_definition(list: &Rga<u32>) {
        let placed: Vec<usize> = list.tree.iter().map(|e| e.elem).collect();
        assert_eq!(placed, canonical_order(list));
        for e in list.tree.iter() {
            assert_eq!(e.visible, !list.tombstones.contains(&list.elems[e.elem].id));
        }
    }

    /// A small deterministic generator.
    fn next(x: &mut u64) -> usize {
        *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*x >> 33) as usize
    }

    #[test]
    fn large_concurrent_histories_follow_the_definition_in_any_delivery_order() {
        let mut x = 1;
        let nodes = ["a", "b", "c"];
        let mut replicas = vec![Rga::new(); 3];
        let mut counters = [0u64; 3];
        let mut deltas = Vec::new();
        let mut last_at = [0usize; 3];
        for n in 0..4000u32 {
            let r = next(&mut x) % 3;
            let list = &replicas[r];
            let roll = next(&mut x) % 100;
            let delta = if roll < 20 && !list.is_empty() {
                list.delete(next(&mut x) % list.len())
            } else {
                // Random positions, runs typed left to right, and typing backwards at the head.
                let at = match roll {
                    20..=49 => (last_at[r] + 1).min(list.len()),
                    50..=59 => 0,
                    _ => next(&mut x) % (list.len() + 1),
                };
                last_at[r] = at;
                counters[r] += 1;
                list.insert(at, Dot::new(nodes[r], counters[r]), n)
            };
            replicas[r].join(&delta);
            deltas.push(delta);
            if next(&mut x).is_multiple_of(400) {
                let from = replicas[next(&mut x) % 3].clone();
                replicas[next(&mut x) % 3].join(&from);
            }
        }
        let all = crate::fold(deltas.iter().cloned());
        assert!(all.tree.total() > 3000, "several tree levels");
        check_against_definition(&all);
        for _ in 0..3 {
            for i in (1..deltas.len()).rev() {
                deltas.swap(i, next(&mut x) % (i + 1));
            }
            let shuffled = crate::fold(deltas.iter().cloned());
            check_against_definition(&shuffled);
            assert_eq!(shuffled, all);
            assert_eq!(shuffled.to_vec(), all.to_vec());
        }
        for replica in &mut replicas {
            check_against_definition(replica);
            replica.join(&all);
            assert_eq!(replica.to_vec(), all.to_vec());
        }
    }

    #[test]
    fn inserts_and_deletes_by_visible_index() {
        let mut l = Rga::new();
        apply(&mut l, |s| s.insert(0, Dot::new("a", 1), 'b'));
        apply(&mut l, |s| s.insert(0, Dot::new("a", 2), 'a'));
        apply(&mut l, |s| s.insert(2, Dot::new("a", 3), 'd'));
        apply(&mut l, |s| s.insert(2, Dot::new("a", 4), 'c'));
        assert_eq!(text(&l), "abcd");
        apply(&mut l, |s| s.delete(1));
        assert_eq!(text(&l), "acd");
        apply(&mut l, |s| s.insert(1, Dot::new("a", 5), 'x'));
        assert_eq!(text(&l), "axcd");
        assert_eq!((l.len(), l.get(1), l.get(4)), (4, Some(&'x'), None));
        assert!(l.delete(4).is_bottom(), "out of range");
        apply(&mut l, |s| s.insert(99, Dot::new("a", 6), 'e'));
        assert_eq!(text(&l), "axcde", "past the end appends");
        assert!(l.insert(0, Dot::new("a", 6), 'z').is_bottom(), "a dot names one element");
    }

    #[test]
    fn a_delta_is_one_element_or_one_tombstone() {
        let mut l = Rga::new();
        let d = apply(&mut l, |s| s.insert(0, Dot::new("a", 1), 'x'));
        assert_eq!((d.elems.len(), d.tombstones.len()), (1, 0));
        let d = apply(&mut l, |s| s.insert(1, Dot::new("a", 2), 'y'));
        assert_eq!((d.elems.len(), d.tombstones.len()), (1, 0));
        assert_eq!(d.elems[0].origin, Some(Dot::new("a", 1)));
        let d = apply(&mut l, |s| s.delete(0));
        assert_eq!((d.elems.len(), d.tombstones.len()), (0, 1));
    }

    #[test]
    fn concurrent_inserts_at_one_place_order_by_descending_timestamp() {
        let mut base = Rga::new();
        apply(&mut base, |s| s.insert(0, Dot::new("a", 1), 'x'));
        let (mut a, mut b) = (base.clone(), base.clone());
        let da = apply(&mut a, |s| s.insert(1, Dot::new("a", 2), 'A'));
        let db = apply(&mut b, |s| s.insert(1, Dot::new("b", 1), 'B'));
        a.join(&db);
        b.join(&da);
        // Same seq (2); the dot breaks the tie and the greater timestamp goes first.
        assert_eq!(text(&a), "xBA");
        assert_eq!(a, b);
    }

    #[test]
    fn an_element_waits_for_its_origin() {
        let mut source = Rga::new();
        let d1 = apply(&mut source, |s| s.insert(0, Dot::new("a", 1), 'a'));
        let d2 = apply(&mut source, |s| s.insert(1, Dot::new("a", 2), 'b'));
        let d3 = apply(&mut source, |s| s.insert(2, Dot::new("a", 3), 'c'));
        let del = apply(&mut source, |s| s.delete(1));
        let mut l = Rga::new();
        l.join(&del);
        l.join(&d3);
        assert_eq!(text(&l), "", "c waits for b, b's tombstone waits for b");
        l.join(&d2);
        assert_eq!(text(&l), "");
        l.join(&d1);
        assert_eq!(text(&l), "ac");
        assert_eq!(l, source);
    }

    #[test]
    fn an_element_not_after_its_origin_in_time_is_never_placed() {
        let mut l = Rga::new();
        apply(&mut l, |s| s.insert(0, Dot::new("a", 1), 'a'));
        let mut forged = Rga::new();
        forged.add(Elem {
            id: Dot::new("b", 1),
            origin: Some(Dot::new("a", 1)),
            seq: 1,
            value: 'f',
            deleted: false,
        });
        let mut child = Rga::new();
        child.add(Elem {
            id: Dot::new("b", 2),
            origin: Some(Dot::new("b", 1)),
            seq: 2,
            value: 'g',
            deleted: false,
        });
        let mut one = l.clone();
        one.join(&forged);
        one.join(&child);
        let mut other = l.clone();
        other.join(&child);
        other.join(&forged);
        assert_eq!((text(&one), text(&other)), ("a".into(), "a".into()));
        assert_eq!(one, other);
    }

    #[test]
    fn equality_ignores_arrival_order_and_sees_tombstones() {
        let mut source = Rga::new();
        let deltas: Vec<_> = (0..200)
            .map(|i| {
                let index = (i * 7) % (source.len() + 1);
                apply(&mut source, |s| s.insert(index, Dot::new("a", i as u64 + 1), 'x'))
            })
            .collect();
        let mut reversed = Rga::new();
        for d in deltas.iter().rev() {
            reversed.join(d);
        }
        assert_eq!(reversed, source);
        assert_eq!(reversed.to_vec(), source.to_vec());
        let mut deleted = source.clone();
        deleted.join(&source.delete(0));
        assert_ne!(deleted, source);
        assert_eq!(crate::fold(deltas), source);
    }
    /// Elements `(id, origin, seq, value)`, as [`Rga::from_parts`] takes them.
    type ElemParts<T> = Vec<(Dot, Option<Dot>, u64, T)>;

    /// The parts of `list`, as [`Rga::from_parts`] takes them.
    fn parts<T: Clone + PartialEq>(list: &Rga<T>) -> (ElemParts<T>, Vec<Dot>) {
        let elems = list.elements().map(|e| (e.id.clone(), e.origin.cloned(), e.seq, e.value.clone()));
        (elems.collect(), list.tombstones().cloned().collect())
    }

    #[test]
    fn elements_come_in_list_order_then_the_unplaced_by_timestamp() {
        let mut l = Rga::new();
        let d1 = apply(&mut l, |s| s.insert(0, Dot::new("a", 1), 'a'));
        let d2 = apply(&mut l, |s| s.insert(1, Dot::new("b", 1), 'b'));
        apply(&mut l, |s| s.insert(0, Dot::new("a", 2), 'c'));
        apply(&mut l, |s| s.delete(1));
        let view: Vec<(char, bool)> = l.elements().map(|e| (*e.value, e.deleted)).collect();
        assert_eq!(view, [('c', false), ('a', true), ('b', false)]);
        assert_eq!(l.tombstones().collect::<Vec<_>>(), [&Dot::new("a", 1)]);
        let first = l.elements().nth(1);
        assert_eq!(first.map(|e| (e.origin, e.seq)), Some((None, 1)));

        // A delta of two inserts whose origins are elsewhere: none is placed.
        let mut delta = Rga::new();
        delta.join(&l.insert(3, Dot::new("b", 2), 'y'));
        delta.join(&d2.insert(0, Dot::new("a", 9), 'x'));
        let view: Vec<char> = delta.elements().map(|e| *e.value).collect();
        assert_eq!(view, ['x', 'y'], "by (seq, id): 2 before 4");
        assert_eq!(delta.tombstones().count(), 0);
        assert_eq!((d1.element_count(), l.element_count(), l.tombstone_count()), (1, 3, 1));
    }

    #[test]
    fn from_parts_rebuilds_a_list_in_any_order() {
        let mut l = Rga::new();
        for i in 0..50u64 {
            let index = (i as usize * 5) % (l.len() + 1);
            apply(&mut l, |s| {
                s.insert(
                    index,
                    Dot::new(["a", "b"][i as usize % 2], i + 1),
                    char::from(b'a' + (i % 26) as u8),
                )
            });
            if i % 7 == 0 {
                apply(&mut l, |s| s.delete(i as usize % s.len()));
            }
        }
        let (mut elems, tombstones) = parts(&l);
        assert_eq!(Rga::from_parts(elems.clone(), tombstones.clone()), Ok(l.clone()));
        elems.reverse();
        let rebuilt = Rga::from_parts(elems, tombstones).expect("valid parts");
        assert_eq!(rebuilt, l);
        assert_eq!(rebuilt.to_vec(), l.to_vec());
        assert_eq!(rebuilt.max_seq(), l.max_seq());
        let only_a_tombstone = Rga::<char>::from_parts([], [Dot::new("z", 1)]).expect("a delete's delta");
        assert_eq!(only_a_tombstone.tombstones().collect::<Vec<_>>(), [&Dot::new("z", 1)]);
        assert!(only_a_tombstone.is_empty() && !only_a_tombstone.is_bottom());
    }

    #[test]
    fn from_parts_refuses_what_no_history_builds() {
        let a = |n| Dot::new("a", n);
        let cases: [(ElemParts<char>, Vec<Dot>, PartsError); 8] = [
            (vec![(a(1), None, 1, 'x'), (a(1), None, 2, 'y')], vec![], PartsError::DuplicateId),
            (vec![], vec![a(1), a(1)], PartsError::DuplicateTombstone),
            (vec![(a(0), None, 1, 'x')], vec![], PartsError::Zero),
            (vec![(a(1), None, 0, 'x')], vec![], PartsError::Zero),
            (vec![(a(1), Some(a(0)), 1, 'x')], vec![], PartsError::Zero),
            (vec![], vec![a(0)], PartsError::Zero),
            (vec![(a(1), Some(a(1)), 1, 'x')], vec![], PartsError::OwnOrigin),
            (vec![(a(1), None, 2, 'x'), (a(2), Some(a(1)), 2, 'y')], vec![], PartsError::NotAfterOrigin),
        ];
        for (elems, tombstones, error) in cases {
            assert_eq!(Rga::from_parts(elems.clone(), tombstones).err(), Some(error), "{elems:?}");
        }
        let ok = Rga::from_parts([(a(2), Some(a(1)), 2, 'y'), (a(1), None, 1, 'x')], []);
        assert_eq!(ok.map(|l| l.to_vec()), Ok(vec!['x', 'y']));
    }

    #[test]
    fn next_dot_is_one_past_the_nodes_highest_counter() {
        let mut l = Rga::new();
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        assert_eq!(l.next_dot(&a), Dot::new("a", 1));
        apply(&mut l, |s| s.insert(0, s.next_dot(&a), 'x'));
        apply(&mut l, |s| s.insert(0, s.next_dot(&a), 'y'));
        apply(&mut l, |s| s.delete(0));
        assert_eq!(l.next_dot(&a), Dot::new("a", 3), "a deleted element keeps its dot");
        l.join(&Rga::from_parts([(Dot::new("b", 7), None, 9, 'z')], []).expect("valid"));
        assert_eq!((l.next_dot(&b), l.max_seq()), (Dot::new("b", 8), 9));
    }
}
