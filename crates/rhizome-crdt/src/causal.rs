//! Dots, version vectors and causal contexts: what a replica has seen.

use crate::Lattice;
use rhizome_protocol::NodeId;
use std::collections::{BTreeMap, BTreeSet};

/// One event of one node: the node and its dense per-node counter (starting at 1).
///
/// The derived order is (node, counter), field order matters: contexts rely on a node's dots
/// being adjacent and ascending.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dot {
    /// The node that made the event.
    pub node: NodeId,
    /// Its counter: the node's n-th event on this object, from 1 with no gaps (a context
    /// compacts a node's dots into one integer only when they are dense). Counter 0 means
    /// "no event": it is in every context and is never stored.
    pub counter: u64,
}

impl Dot {
    /// A dot.
    pub fn new(node: impl Into<NodeId>, counter: u64) -> Dot {
        Dot { node: node.into(), counter }
    }
}

/// For each node, the highest counter up to which every event is known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The empty vector.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The counter known for `node` (0 when none).
    pub fn get(&self, node: &NodeId) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Whether `dot` is covered.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(&dot.node)
    }

    /// Raises `node`'s counter to `counter` (never lowers it).
    pub fn raise(&mut self, node: &NodeId, counter: u64) {
        if counter == 0 {
            return;
        }
        // Looked up before inserting, so raising a known node does not clone its id.
        match self.0.get_mut(node) {
            Some(known) => *known = (*known).max(counter),
            None => {
                self.0.insert(node.clone(), counter);
            }
        }
    }

    /// Whether every event covered by `self` is covered by `other`.
    pub fn le(&self, other: &VersionVector) -> bool {
        self.0.iter().all(|(node, c)| *c <= other.get(node))
    }

    /// The nodes and counters, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, u64)> {
        self.0.iter().map(|(n, c)| (n, *c))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no node is covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (node, c) in iter {
            vv.raise(&node, c);
        }
        vv
    }
}

impl Lattice for VersionVector {
    fn bottom() -> Self {
        VersionVector::new()
    }

    fn join(&mut self, other: &Self) {
        for (node, c) in other.iter() {
            self.raise(node, c);
        }
    }
}

/// A set of dots, kept as a version vector (the contiguous prefix of each node) plus the dots
/// seen beyond it (the "dot cloud"). Always compact: no cloud dot is covered by the vector or
/// directly follows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CausalContext {
    vv: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// The empty context.
    pub fn new() -> CausalContext {
        CausalContext::default()
    }

    /// A context of exactly the dots covered by `vv`.
    pub fn from_vv(vv: VersionVector) -> CausalContext {
        CausalContext { vv, cloud: BTreeSet::new() }
    }

    /// Whether `dot` is in the context.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.vv.contains(dot) || self.cloud.contains(dot)
    }

    /// Adds `dot`.
    pub fn insert(&mut self, dot: Dot) {
        let known = self.vv.get(&dot.node);
        if dot.counter <= known {
            return;
        }
        if dot.counter == known + 1 {
            // A node's next event: it extends the prefix, and so may the node's cloud dots.
            self.vv.raise(&dot.node, dot.counter);
            self.absorb(&dot.node);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Adds `dot` unless the context has it; returns whether it was new. One lookup of the
    /// node, and no clone of the dot unless it lands in the cloud.
    pub(crate) fn insert_new(&mut self, dot: &Dot) -> bool {
        let known = self.vv.get(&dot.node);
        if dot.counter <= known || self.cloud.contains(dot) {
            return false;
        }
        if dot.counter == known + 1 {
            self.vv.raise(&dot.node, dot.counter);
            self.absorb(&dot.node);
        } else {
            self.cloud.insert(dot.clone());
        }
        true
    }

    /// Moves `node`'s cloud dots that now extend its prefix into the vector.
    fn absorb(&mut self, node: &NodeId) {
        while !self.cloud.is_empty() {
            let next = Dot { node: node.clone(), counter: self.vv.get(node) + 1 };
            if !self.cloud.remove(&next) {
                break;
            }
            self.vv.raise(node, next.counter);
        }
    }

    /// The next dot of `node`: one past the highest counter of `node` in the context.
    pub fn next_dot(&self, node: &NodeId) -> Dot {
        let in_cloud = match self.cloud.is_empty() {
            true => None,
            false => self.cloud.range(Dot::new(node.clone(), 0)..).take_while(|d| d.node == *node).last(),
        };
        let highest = in_cloud.map_or(self.vv.get(node), |d| d.counter);
        // Saturates rather than wrapping to 0 (which every context contains): a counter near
        // u64::MAX only comes from a forged dot, and its node then stops making progress.
        Dot { node: node.clone(), counter: highest.saturating_add(1) }
    }

    /// The contiguous prefix per node.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// Dots beyond the contiguous prefixes.
    pub fn cloud(&self) -> impl Iterator<Item = &Dot> {
        self.cloud.iter()
    }

    /// Whether every dot of `self` is in `other`.
    pub fn le(&self, other: &CausalContext) -> bool {
        // `other` is compact: its cloud never holds the dot after its prefix, so a longer
        // prefix of `self` cannot be covered by `other`'s cloud.
        self.vv.le(&other.vv) && self.cloud.iter().all(|d| other.contains(d))
    }

    /// Moves cloud dots that extend a node's prefix into the vector. One pass in (node,
    /// counter) order suffices: a dot raised into the vector is followed by its successor.
    fn compact(&mut self) {
        let mut kept = BTreeSet::new();
        for dot in std::mem::take(&mut self.cloud) {
            let known = self.vv.get(&dot.node);
            if dot.counter == known + 1 {
                self.vv.raise(&dot.node, dot.counter);
            } else if dot.counter > known {
                kept.insert(dot);
            }
        }
        self.cloud = kept;
    }
}

impl Lattice for CausalContext {
    fn bottom() -> Self {
        CausalContext::new()
    }

    /// Costs O(d log n) for a `other` of d nodes and cloud dots: only the nodes `other`
    /// raises are compacted again, so joining a small delta into a big context stays cheap.
    fn join(&mut self, other: &Self) {
        for (node, counter) in other.vv.iter() {
            if counter <= self.vv.get(node) {
                continue;
            }
            self.vv.raise(node, counter);
            let covered: Vec<Dot> = self
                .cloud
                .range(Dot { node: node.clone(), counter: 0 }..=Dot { node: node.clone(), counter })
                .cloned()
                .collect();
            for dot in &covered {
                self.cloud.remove(dot);
            }
            self.absorb(node);
        }
        for dot in &other.cloud {
            self.insert(dot.clone());
        }
    }
}

impl FromIterator<Dot> for CausalContext {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut ctx = CausalContext::new();
        ctx.cloud.extend(iter);
        ctx.compact();
        ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_compact_into_the_vector() {
        let mut c = CausalContext::new();
        c.insert(Dot::new("a", 2));
        c.insert(Dot::new("a", 4));
        assert!(!c.contains(&Dot::new("a", 1)));
        assert_eq!(c.vv().get(&"a".into()), 0);
        c.insert(Dot::new("a", 1));
        assert_eq!(c.vv().get(&"a".into()), 2, "1 and 2 are contiguous");
        c.insert(Dot::new("a", 3));
        assert_eq!(c.vv().get(&"a".into()), 4);
        assert_eq!(c.cloud().count(), 0);
        assert_eq!(c.next_dot(&"a".into()), Dot::new("a", 5));
        c.insert(Dot::new("a", 9));
        assert_eq!(c.next_dot(&"a".into()), Dot::new("a", 10));
        assert_eq!(c.next_dot(&"b".into()), Dot::new("b", 1));
    }
}
