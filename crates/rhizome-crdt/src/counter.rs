//! The PN-counter: an integer that every node may raise and lower, as per-node totals.

use crate::Lattice;
use rhizome_protocol::NodeId;

/// One node's totals in a [`PnCounter`]: everything it ever added and everything it ever
/// subtracted. Both only grow, which is what makes "keep the larger" a safe merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PnEntry {
    /// Total of the node's increments.
    pub p: u64,
    /// Total of the node's decrements.
    pub n: u64,
}

impl PnEntry {
    fn is_zero(&self) -> bool {
        self.p == 0 && self.n == 0
    }
}

/// A counter that can go up and down (Shapiro et al.'s PN-counter, in delta-state form).
///
/// The state maps each node to its [`PnEntry`]; the value is the sum of all increments minus
/// the sum of all decrements. Join is the pointwise maximum of `p` and of `n`, so a delta that
/// carries a node's new *total* (not the amount added) can be joined any number of times, in
/// any order, alongside older deltas of the same node. A chain of operations by one node
/// therefore folds into one entry however long it is.
///
/// Totals saturate at `u64::MAX` instead of overflowing; past that point further operations of
/// that node in that direction are lost (2^64 − 1 is far beyond any real counter).
///
/// A delta is applied with [`Lattice::join`]. A replica's own operation can skip building the
/// delta first: [`PnCounter::apply_inc`] and [`PnCounter::apply_dec`] change the state in
/// place and return the same delta without allocating.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PnCounter {
    /// Sorted by node, only non-zero entries, so equal counters compare equal. A vector, not
    /// a tree: counters have few nodes, and a one-entry delta then costs one small allocation.
    entries: Vec<(NodeId, PnEntry)>,
}

impl PnCounter {
    /// The counter at zero, with no entries (the bottom).
    pub fn new() -> PnCounter {
        PnCounter::default()
    }

    /// The value: all increments minus all decrements.
    pub fn value(&self) -> i128 {
        // Each total is below 2^64, so the sums cannot overflow an i128 before there are 2^63
        // entries, far beyond what memory holds.
        let p: i128 = self.entries.iter().map(|(_, e)| i128::from(e.p)).sum();
        let n: i128 = self.entries.iter().map(|(_, e)| i128::from(e.n)).sum();
        p - n
    }

    /// Delta mutator: `node` adds `by`. Returns the delta, `node`'s entry with its new total of
    /// increments (and no decrements), to be joined into this state and shipped to others.
    pub fn inc(&self, node: &NodeId, by: u64) -> PnCounter {
        let p = self.entry(node).p.saturating_add(by);
        PnCounter::single(node, PnEntry { p, n: 0 })
    }

    /// Delta mutator: `node` subtracts `by`. Returns the delta, `node`'s entry with its new
    /// total of decrements (and no increments).
    pub fn dec(&self, node: &NodeId, by: u64) -> PnCounter {
        let n = self.entry(node).n.saturating_add(by);
        PnCounter::single(node, PnEntry { p: 0, n })
    }

    /// In place: `node` adds `by` to this state. Returns the delta, the same value as
    /// [`PnCounter::inc`] on the state before, in a form that costs no allocation
    /// ([`PnDelta::to_counter`] makes the counter to ship).
    #[inline]
    pub fn apply_inc<'n>(&mut self, node: &'n NodeId, by: u64) -> PnDelta<'n> {
        let p = self.entry_mut(node, by).map_or(0, |entry| {
            entry.p = entry.p.saturating_add(by);
            entry.p
        });
        PnDelta { node, entry: PnEntry { p, n: 0 } }
    }

    /// In place: `node` subtracts `by` from this state. Returns the delta, the same value as
    /// [`PnCounter::dec`] on the state before.
    #[inline]
    pub fn apply_dec<'n>(&mut self, node: &'n NodeId, by: u64) -> PnDelta<'n> {
        let n = self.entry_mut(node, by).map_or(0, |entry| {
            entry.n = entry.n.saturating_add(by);
            entry.n
        });
        PnDelta { node, entry: PnEntry { p: 0, n } }
    }

    /// `node`'s entry, inserted at zero to be raised by `by`; `None` when the node has none and
    /// `by` is 0 (a zero entry is never stored).
    #[inline]
    fn entry_mut(&mut self, node: &NodeId, by: u64) -> Option<&mut PnEntry> {
        match self.entries.binary_search_by(|(n, _)| n.cmp(node)) {
            Ok(i) => Some(&mut self.entries[i].1),
            Err(_) if by == 0 => None,
            Err(i) => Some(self.insert_zero(i, node)),
        }
    }

    /// Inserts a zero entry for `node` at `i`, to be raised at once. Kept out of line so that
    /// the common case, a node raising its own entry, inlines into the caller.
    #[inline(never)]
    fn insert_zero(&mut self, i: usize, node: &NodeId) -> &mut PnEntry {
        self.entries.insert(i, (node.clone(), PnEntry::default()));
        &mut self.entries[i].1
    }

    /// A counter from per-node totals, as read back from storage or the network. Any input
    /// gives a valid counter: zero entries are dropped, and a node given twice keeps the
    /// larger of each total (the join of the two entries).
    pub fn from_entries(entries: impl IntoIterator<Item = (NodeId, PnEntry)>) -> PnCounter {
        let mut counter = PnCounter::new();
        for (node, entry) in entries {
            counter.join(&PnCounter::single(&node, entry));
        }
        counter
    }

    /// Number of nodes that touched the counter (its non-zero entries).
    pub fn node_count(&self) -> usize {
        self.entries.len()
    }

    /// `node`'s totals (both zero when the node never touched the counter).
    pub fn entry(&self, node: &NodeId) -> PnEntry {
        match self.entries.binary_search_by(|(n, _)| n.cmp(node)) {
            Ok(i) => self.entries[i].1,
            Err(_) => PnEntry::default(),
        }
    }

    /// The nodes that touched the counter and their totals, in node order.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeId, PnEntry)> {
        self.entries.iter().map(|(node, e)| (node, *e))
    }

    /// A counter holding one entry, or none when the entry is zero (so that a zero delta is
    /// the bottom and compares equal to it).
    fn single(node: &NodeId, entry: PnEntry) -> PnCounter {
        let mut counter = PnCounter::new();
        if !entry.is_zero() {
            counter.entries.reserve_exact(1);
            counter.entries.push((node.clone(), entry));
        }
        counter
    }
}

/// The delta of one counter operation applied in place: `node`'s entry as [`PnCounter::inc`]
/// or [`PnCounter::dec`] would return it, borrowing the node id instead of cloning it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PnDelta<'n> {
    /// The node that made the operation.
    pub node: &'n NodeId,
    /// Its new total in the operation's direction (the other total is 0).
    pub entry: PnEntry,
}

impl PnDelta<'_> {
    /// The delta as a counter, to join elsewhere or ship (the bottom when the entry is zero).
    pub fn to_counter(&self) -> PnCounter {
        PnCounter::single(self.node, self.entry)
    }

    /// Whether the delta changes nothing anywhere (its entry is zero).
    pub fn is_bottom(&self) -> bool {
        self.entry.is_zero()
    }
}

impl Lattice for PnCounter {
    fn bottom() -> Self {
        PnCounter::new()
    }

    fn join(&mut self, other: &Self) {
        for (node, theirs) in &other.entries {
            if theirs.is_zero() {
                continue;
            }
            match self.entries.binary_search_by(|(n, _)| n.cmp(node)) {
                Ok(i) => {
                    let ours = &mut self.entries[i].1;
                    ours.p = ours.p.max(theirs.p);
                    ours.n = ours.n.max(theirs.n);
                }
                Err(i) => self.entries.insert(i, (node.clone(), *theirs)),
            }
        }
    }

    fn is_bottom(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::from(s)
    }

    #[test]
    fn increments_and_decrements_add_up() {
        let mut c = PnCounter::new();
        let d = c.inc(&node("a"), 5);
        c.join(&d);
        let d = c.dec(&node("b"), 7);
        c.join(&d);
        let d = c.inc(&node("a"), 1);
        c.join(&d);
        assert_eq!(c.value(), -1);
        assert_eq!(c.entry(&node("a")), PnEntry { p: 6, n: 0 });
        assert_eq!(c.entry(&node("b")), PnEntry { p: 0, n: 7 });
        assert_eq!(c.entry(&node("z")), PnEntry::default());
    }

    #[test]
    fn a_delta_carries_the_new_total_so_it_is_idempotent() {
        let mut c = PnCounter::new();
        let first = c.inc(&node("a"), 2);
        c.join(&first);
        let second = c.inc(&node("a"), 3);
        assert_eq!(second.entry(&node("a")), PnEntry { p: 5, n: 0 });
        c.join(&second);
        c.join(&second);
        c.join(&first);
        assert_eq!(c.value(), 5);
    }

    #[test]
    fn a_million_increments_fold_into_one_entry() {
        let a = node("a");
        let mut state = PnCounter::new();
        let mut group = PnCounter::new();
        for _ in 0..1_000_000 {
            let delta = state.inc(&a, 1);
            state.join(&delta);
            group.join(&delta);
        }
        assert_eq!(group.entries().count(), 1);
        assert_eq!(group.value(), 1_000_000);
        assert_eq!(group, state);
    }

    #[test]
    fn a_zero_delta_is_the_bottom() {
        let c = PnCounter::new();
        assert!(c.inc(&node("a"), 0).is_bottom());
        assert!(c.dec(&node("a"), 0).is_bottom());
        assert_eq!(c.inc(&node("a"), 0), PnCounter::bottom());
    }

    #[test]
    fn from_entries_drops_zeros_and_joins_repeated_nodes() {
        let c = PnCounter::from_entries([
            (node("a"), PnEntry { p: 3, n: 0 }),
            (node("z"), PnEntry::default()),
            (node("a"), PnEntry { p: 1, n: 2 }),
        ]);
        assert_eq!(c.node_count(), 1);
        assert_eq!(c.entry(&node("a")), PnEntry { p: 3, n: 2 });
        assert!(PnCounter::from_entries([(node("a"), PnEntry::default())]).is_bottom());
    }

    #[test]
    fn totals_saturate_instead_of_overflowing() {
        let mut c = PnCounter::new();
        let d = c.inc(&node("a"), u64::MAX);
        c.join(&d);
        let d = c.inc(&node("a"), 10);
        c.join(&d);
        assert_eq!(c.entry(&node("a")).p, u64::MAX);
        let d = c.dec(&node("b"), u64::MAX);
        c.join(&d);
        let d = c.inc(&node("c"), u64::MAX);
        c.join(&d);
        assert_eq!(c.value(), i128::from(u64::MAX));
    }
}
