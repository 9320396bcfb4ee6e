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
//! The design leaves room for run-length encoding (Yjs-style items holding runs of
//! consecutive dots typed left to right): the tree's leaves would hold runs instead of
//! single elements and the id map would point at the run.

mod tree;

use crate::{Dot, Lattice};
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
        }
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
        let mut delta = Rga::new();
        if self.ids.contains_key(&dot) {
            return delta;
        }
        let index = index.min(self.len());
        // The new element goes after the visible element to its left. Its timestamp is the
        // greatest this replica knows, so it lands right after that element, before any
        // tombstones that follow it, which keeps it at `index`.
        let origin = index
            .checked_sub(1)
            .and_then(|left| self.tree.nth_visible(left))
            .map(|i| self.elems[i].id.clone());
        // Saturating: a state from a hostile peer could carry `u64::MAX`. Inserts then share
        // that seq (one after such an element is left unplaced by the rule in `place`), which
        // degrades the order but does not panic. Bounding seqs belongs to the decoder.
        let seq = self.max_seq.saturating_add(1);
        delta.add(Elem { id: dot, origin, seq, value, deleted: false });
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

    /// Adds an element not in the state yet, and places it (and whatever waited for it)
    /// if its origin is placed.
    fn add(&mut self, mut elem: Elem<T>) {
        elem.deleted = self.tombstones.contains(&elem.id);
        self.max_seq = self.max_seq.max(elem.seq);
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
}
