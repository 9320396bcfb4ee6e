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

/// A set of dots, kept as a version vector (the contiguous prefix of each node) plus the runs
/// of dots seen beyond it (the "dot cloud"). Always compact: runs of one node are disjoint and
/// apart (some counter between two runs is missing), and none touches the node's prefix, so
/// each set of dots has exactly one representation.
///
/// Runs keep a context small when it has holes: "everything of node a up to 1000 except 7 and
/// 40" is a prefix and two runs, not 997 dots. A run is never walked dot by dot, so a run of
/// 2^53 dots costs what a run of one does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CausalContext {
    vv: VersionVector,
    /// The first dot of each run → the run's last counter.
    cloud: BTreeMap<Dot, u64>,
}

impl CausalContext {
    /// The empty context.
    pub fn new() -> CausalContext {
        CausalContext::default()
    }

    /// A context of exactly the dots covered by `vv`.
    pub fn from_vv(vv: VersionVector) -> CausalContext {
        CausalContext { vv, cloud: BTreeMap::new() }
    }

    /// Whether `dot` is in the context.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.vv.contains(dot) || self.run_holding(dot).is_some()
    }

    /// The cloud run holding `dot`, as its first dot and last counter.
    fn run_holding(&self, dot: &Dot) -> Option<(&Dot, u64)> {
        let (first, last) = self.cloud.range(..=dot).next_back()?;
        (first.node == dot.node && dot.counter <= *last).then_some((first, *last))
    }

    /// Adds `dot`.
    pub fn insert(&mut self, dot: Dot) {
        self.insert_run(&dot.node, dot.counter, dot.counter);
    }

    /// Adds the dots of `node` from `first` to `last`, both included (none when `first` is
    /// above `last`). Costs O(log n) plus O(log n) per run it swallows.
    pub fn insert_run(&mut self, node: &NodeId, first: u64, last: u64) {
        let known = self.vv.get(node);
        if last <= known || first > last {
            return;
        }
        // `known < last`, so `known + 1` does not overflow.
        let (mut low, mut high) = (first.max(known + 1), last);
        // With no runs (the usual case: a server's own dots are dense) there is nothing to merge.
        if !self.cloud.is_empty() {
            (low, high) = self.swallow_runs(node, low, high);
        }
        if low == known + 1 {
            // It extends the prefix; every run it touched was swallowed above.
            self.vv.raise(node, high);
        } else {
            self.cloud.insert(Dot { node: node.clone(), counter: low }, high);
        }
    }

    /// Adds `dot` unless the context has it; returns whether it was new. With no runs (the
    /// usual case on a server) one lookup of the node, and no clone of the dot.
    pub(crate) fn insert_new(&mut self, dot: &Dot) -> bool {
        let known = self.vv.get(&dot.node);
        if dot.counter <= known {
            return false;
        }
        if self.cloud.is_empty() {
            if dot.counter == known + 1 {
                self.vv.raise(&dot.node, dot.counter);
            } else {
                self.cloud.insert(dot.clone(), dot.counter);
            }
            return true;
        }
        if self.run_holding(dot).is_some() {
            return false;
        }
        self.insert_run(&dot.node, dot.counter, dot.counter);
        true
    }

    /// Removes `node`'s runs that overlap or touch `low..=high` and returns the run they make
    /// together with it.
    fn swallow_runs(&mut self, node: &NodeId, mut low: u64, mut high: u64) -> (u64, u64) {
        let before = self.cloud.range(..=Dot { node: node.clone(), counter: low }).next_back();
        if let Some((start, end)) =
            before.filter(|(start, end)| start.node == *node && end.saturating_add(1) >= low)
        {
            let start = start.clone();
            (low, high) = (start.counter, high.max(*end));
            self.cloud.remove(&start);
        }
        // Runs that start inside or right after the new one join it.
        loop {
            let after = self.cloud.range(Dot { node: node.clone(), counter: low }..).next();
            let Some((start, end)) =
                after.filter(|(start, _)| start.node == *node && start.counter <= high.saturating_add(1))
            else {
                break;
            };
            let start = start.clone();
            high = high.max(*end);
            self.cloud.remove(&start);
        }
        (low, high)
    }

    /// The next dot of `node`: one past the highest counter of `node` in the context.
    pub fn next_dot(&self, node: &NodeId) -> Dot {
        let in_cloud = match self.cloud.is_empty() {
            true => None,
            false => {
                let last_run = self.cloud.range(..=Dot { node: node.clone(), counter: u64::MAX }).next_back();
                last_run.filter(|(first, _)| first.node == *node).map(|(_, last)| *last)
            }
        };
        let highest = in_cloud.unwrap_or_else(|| self.vv.get(node));
        // Saturates rather than wrapping to 0 (which every context contains): a counter near
        // u64::MAX only comes from a forged dot, and its node then stops making progress.
        Dot { node: node.clone(), counter: highest.saturating_add(1) }
    }

    /// The contiguous prefix per node.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// The runs of dots beyond the contiguous prefixes, as `(node, first, last)` counters
    /// (both included), in node and counter order.
    pub fn cloud(&self) -> impl Iterator<Item = (&NodeId, u64, u64)> {
        self.cloud.iter().map(|(first, last)| (&first.node, first.counter, *last))
    }

    /// Whether every dot of `self` is in `other`.
    pub fn le(&self, other: &CausalContext) -> bool {
        // `other` is compact: its cloud never holds the dot after its prefix, so a longer
        // prefix of `self`, or a run crossing the end of `other`'s prefix, is not covered.
        self.vv.le(&other.vv)
            && self.cloud().all(|(node, first, last)| {
                last <= other.vv.get(node)
                    || other
                        .run_holding(&Dot { node: node.clone(), counter: first })
                        .is_some_and(|(_, end)| last <= end)
            })
    }

    /// The context without `dots`: each run (and prefix) they fall in is cut around them.
    /// Costs O((r + h) log n) for r runs and prefixes and h of `dots` inside them.
    pub fn without(&self, dots: &BTreeSet<Dot>) -> CausalContext {
        let prefixes = self.vv.iter().map(|(node, last)| (node, 1, last));
        let mut out = CausalContext::new();
        for (node, first, last) in prefixes.chain(self.cloud()) {
            // `None` once a hole is the highest counter there is: nothing follows it.
            let mut from = Some(first);
            let holes = dots.range(
                Dot { node: node.clone(), counter: first }..=Dot { node: node.clone(), counter: last },
            );
            for hole in holes {
                if let Some(from) = from {
                    out.insert_run(node, from, hole.counter.saturating_sub(1));
                }
                from = hole.counter.checked_add(1);
            }
            if let Some(from) = from {
                out.insert_run(node, from, last);
            }
        }
        out
    }
}

impl Lattice for CausalContext {
    fn bottom() -> Self {
        CausalContext::new()
    }

    /// Costs O(d log n) for a `other` of d nodes and runs: only what `other` holds is
    /// inserted, so joining a small delta into a big context stays cheap.
    fn join(&mut self, other: &Self) {
        for (node, counter) in other.vv.iter() {
            self.insert_run(node, 1, counter);
        }
        for (node, first, last) in other.cloud() {
            self.insert_run(node, first, last);
        }
    }
}

impl FromIterator<Dot> for CausalContext {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut ctx = CausalContext::new();
        for dot in iter {
            ctx.insert(dot);
        }
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
