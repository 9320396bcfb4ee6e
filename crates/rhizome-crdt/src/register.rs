//! Registers: last-writer-wins ([`LwwRegister`]) and multi-value ([`MvRegister`]).

use crate::{CausalContext, Dot, Lattice, VersionVector};
use std::collections::BTreeMap;

/// The timestamp of a [`LwwRegister`] write, totally ordered: by `time_ms`, then by the dot's
/// node id, then by the dot's counter (the derived order of the fields, in that sequence).
///
/// The dot makes stamps unique, so two different writes never tie: of two writes in the same
/// millisecond the one from the greater node id wins, and of two writes of one node in the same
/// millisecond the later one (greater counter) wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    /// Wall-clock or hybrid logical time of the write, in milliseconds.
    pub time_ms: i64,
    /// The write's dot: breaks ties between writes of the same millisecond.
    pub dot: Dot,
}

impl Stamp {
    /// A stamp.
    pub fn new(time_ms: i64, dot: Dot) -> Stamp {
        Stamp { time_ms, dot }
    }
}

/// A last-writer-wins register: the value of the write with the greatest [`Stamp`].
///
/// Concurrent writes are not merged: all but the one with the greatest stamp are lost. With
/// wall-clock times, clock skew decides which; a hybrid logical clock makes a write that
/// observed another always win. The bottom holds no value.
///
/// A stamp must identify one write: two different values under the same stamp break
/// commutativity (the join keeps whichever side it was called on).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LwwRegister<T> {
    current: Option<(Stamp, T)>,
}

impl<T> Default for LwwRegister<T> {
    fn default() -> Self {
        LwwRegister { current: None }
    }
}

impl<T: Clone + PartialEq> LwwRegister<T> {
    /// The empty register (the bottom).
    pub fn new() -> LwwRegister<T> {
        LwwRegister::default()
    }

    /// Delta mutator: writes `value` at `stamp`. The delta is the write itself, whatever the
    /// current state; joined in, it wins if and only if `stamp` is greater than [`Self::stamp`].
    pub fn set(&self, value: T, stamp: Stamp) -> LwwRegister<T> {
        LwwRegister { current: Some((stamp, value)) }
    }

    /// The current value, if any write happened.
    pub fn value(&self) -> Option<&T> {
        self.current.as_ref().map(|(_, value)| value)
    }

    /// The stamp of the current value, if any write happened.
    pub fn stamp(&self) -> Option<&Stamp> {
        self.current.as_ref().map(|(stamp, _)| stamp)
    }
}

impl<T: Clone + PartialEq> Lattice for LwwRegister<T> {
    fn bottom() -> Self {
        LwwRegister::new()
    }

    fn join(&mut self, other: &Self) {
        if let Some((theirs, value)) = &other.current {
            if self.stamp().is_none_or(|ours| theirs > ours) {
                self.current = Some((theirs.clone(), value.clone()));
            }
        }
    }

    fn is_bottom(&self) -> bool {
        self.current.is_none()
    }
}

/// A multi-value register: a write replaces every value it observed, and values written
/// concurrently all survive (as "siblings") until a write that observed them.
///
/// A causal delta-CRDT (Almeida et al.): a dot store mapping the dot of each surviving write
/// to its value (a DotFun), plus the causal context of every write ever seen. A dot that is in
/// the context but not in the store was overwritten, so the join drops it from the other side.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MvRegister<T> {
    values: BTreeMap<Dot, T>,
    context: CausalContext,
}

impl<T> Default for MvRegister<T> {
    fn default() -> Self {
        MvRegister { values: BTreeMap::new(), context: CausalContext::new() }
    }
}

impl<T: Clone + PartialEq> MvRegister<T> {
    /// The empty register (the bottom).
    pub fn new() -> MvRegister<T> {
        MvRegister::default()
    }

    /// Delta mutator: the write of `value` under `dot`. The delta holds `{dot: value}` and a
    /// context of `dot` plus every dot currently in the store, so once joined the write
    /// supersedes exactly the values it observed.
    ///
    /// `dot` must be fresh: in no replica's context yet, such as
    /// `self.context().next_dot(node)` on the writing node. A dot this register has already
    /// seen (and any dot with counter 0, which every context counts as seen) gives the bottom:
    /// the write has no effect. Joined, such a write would lose its own value yet still
    /// overwrite what it observed. A dot seen elsewhere but not here cannot be caught.
    pub fn write(&self, dot: Dot, value: T) -> MvRegister<T> {
        self.write_where(dot, value, |_| true)
    }

    /// Delta mutator: the write of `value` under `dot` by someone whose view was `seen`. Like
    /// [`MvRegister::write`], except that it supersedes only the values whose dots `seen`
    /// covers: values written concurrently with what the writer saw survive beside it.
    pub fn write_seen(&self, dot: Dot, value: T, seen: &VersionVector) -> MvRegister<T> {
        self.write_where(dot, value, |d| seen.contains(d))
    }

    /// The write superseding the current values whose dots `supersedes` accepts.
    fn write_where(&self, dot: Dot, value: T, supersedes: impl Fn(&Dot) -> bool) -> MvRegister<T> {
        if self.context.contains(&dot) {
            return MvRegister::new();
        }
        let observed = self.values.keys().filter(|d| supersedes(d)).cloned();
        let context = observed.chain([dot.clone()]).collect();
        MvRegister { values: BTreeMap::from([(dot, value)]), context }
    }

    /// A register from its parts, as read back from storage or the network; `None` unless
    /// every dot in `values` is a real event (counter above 0) recorded in `context`. A value
    /// whose dot the context lacks would break the join, which reads "in the context, not in
    /// the store" as "overwritten".
    pub fn from_parts(values: BTreeMap<Dot, T>, context: CausalContext) -> Option<MvRegister<T>> {
        let valid = values.keys().all(|dot| dot.counter > 0 && context.contains(dot));
        valid.then_some(MvRegister { values, context })
    }

    /// The concurrent values, in dot order: one after a write that observed everything, none
    /// before the first write.
    pub fn values(&self) -> Vec<&T> {
        self.values.values().collect()
    }

    /// The concurrent values with the dots that wrote them, in dot order.
    pub fn entries(&self) -> impl Iterator<Item = (&Dot, &T)> {
        self.values.iter()
    }

    /// Every write this register has seen, surviving or overwritten.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }
}

impl<T: Clone + PartialEq> Lattice for MvRegister<T> {
    fn bottom() -> Self {
        MvRegister::new()
    }

    /// The DotFun join: a value stays if both sides hold its dot, or if one side holds it and
    /// the other side has not seen it; a value one side has seen and no longer holds was
    /// overwritten there. The contexts are joined.
    ///
    /// A dot identifies one write, so both sides hold the same value under a shared dot; were
    /// they to differ, this side's value would be kept.
    fn join(&mut self, other: &Self) {
        self.values.retain(|dot, _| other.values.contains_key(dot) || !other.context.contains(dot));
        for (dot, value) in &other.values {
            if !self.values.contains_key(dot) && !self.context.contains(dot) {
                self.values.insert(dot.clone(), value.clone());
            }
        }
        self.context.join(&other.context);
    }

    fn is_bottom(&self) -> bool {
        self.values.is_empty() && self.context == CausalContext::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhizome_protocol::NodeId;

    fn node(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn stamp(time_ms: i64, node: &str, counter: u64) -> Stamp {
        Stamp::new(time_ms, Dot::new(node, counter))
    }

    #[test]
    fn stamps_order_by_time_then_node_then_counter() {
        assert!(stamp(1, "z", 9) < stamp(2, "a", 1), "time first");
        assert!(stamp(-5, "a", 1) < stamp(0, "a", 1), "times may be negative");
        assert!(stamp(1, "a", 9) < stamp(1, "b", 1), "then node");
        assert!(stamp(1, "a", 1) < stamp(1, "a", 2), "then counter");
    }

    #[test]
    fn lww_keeps_the_greatest_stamp() {
        let mut r = LwwRegister::new();
        assert!(r.is_bottom());
        assert_eq!(r.value(), None);
        let late = r.set("late", stamp(10, "a", 1));
        let early = r.set("early", stamp(5, "b", 1));
        r.join(&late);
        r.join(&early);
        assert_eq!(r.value(), Some(&"late"));
        assert_eq!(r.stamp(), Some(&stamp(10, "a", 1)));
        let mut other = LwwRegister::new();
        other.join(&early);
        other.join(&late);
        assert_eq!(other, r);
    }

    #[test]
    fn lww_breaks_time_ties_by_node_id() {
        let r = LwwRegister::new();
        let from_b = r.set(2, stamp(7, "b", 1));
        let from_a = r.set(1, stamp(7, "a", 3));
        let mut ab = from_a.clone();
        ab.join(&from_b);
        let mut ba = from_b.clone();
        ba.join(&from_a);
        assert_eq!(ab.value(), Some(&2));
        assert_eq!(ab, ba);
    }

    #[test]
    fn mv_sequential_writes_replace_and_concurrent_ones_coexist() {
        let (a, b) = (node("a"), node("b"));
        let mut ra = MvRegister::new();
        let d = ra.write(ra.context().next_dot(&a), "x");
        ra.join(&d);
        let d = ra.write(ra.context().next_dot(&a), "y");
        ra.join(&d);
        assert_eq!(ra.values(), vec![&"y"]);

        let mut rb = MvRegister::new();
        let d = rb.write(rb.context().next_dot(&b), "z");
        rb.join(&d);

        let mut merged = ra.clone();
        merged.join(&rb);
        assert_eq!(merged.values(), vec![&"y", &"z"], "concurrent: both, in dot order");
        let mut other = rb.clone();
        other.join(&ra);
        assert_eq!(merged, other);

        let d = merged.write(merged.context().next_dot(&b), "w");
        merged.join(&d);
        assert_eq!(merged.values(), vec![&"w"]);
        ra.join(&d);
        assert_eq!(ra.values(), vec![&"w"], "the delta alone overwrites what it observed");
        assert!(ra.context().contains(&Dot::new("b", 1)));
    }

    #[test]
    fn mv_write_delta_holds_the_value_and_the_observed_dots() {
        let a = node("a");
        let mut r = MvRegister::new();
        let first = r.write(Dot::new("a", 1), 1);
        r.join(&first);
        let second = r.write(r.context().next_dot(&a), 2);
        assert_eq!(second.entries().collect::<Vec<_>>(), vec![(&Dot::new("a", 2), &2)]);
        assert!(second.context().contains(&Dot::new("a", 1)));
        assert!(second.context().contains(&Dot::new("a", 2)));
        assert!(!second.context().contains(&Dot::new("a", 3)));
    }

    #[test]
    fn mv_a_stale_or_zero_dot_has_no_effect() {
        let mut r = MvRegister::new();
        let d = r.write(Dot::new("a", 1), 1);
        r.join(&d);
        assert!(r.write(Dot::new("a", 0), 9).is_bottom());
        assert!(r.write(Dot::new("a", 1), 9).is_bottom());
        assert!(!r.write(Dot::new("a", 2), 9).is_bottom());
    }

    #[test]
    fn mv_from_parts_requires_every_dot_in_the_context() {
        let context: CausalContext = [Dot::new("a", 1), Dot::new("b", 3)].into_iter().collect();
        let ok = MvRegister::from_parts(BTreeMap::from([(Dot::new("b", 3), 1)]), context.clone());
        assert_eq!(ok.map(|r| r.values().len()), Some(1));
        let unseen = BTreeMap::from([(Dot::new("b", 2), 1)]);
        assert_eq!(MvRegister::from_parts(unseen, context.clone()), None);
        let zero = BTreeMap::from([(Dot::new("a", 0), 1)]);
        assert_eq!(MvRegister::from_parts(zero, context), None, "counter 0 is no event");
    }

    #[test]
    fn mv_write_seen_supersedes_only_what_was_seen() {
        let mut r = MvRegister::new();
        for dot in [Dot::new("a", 1), Dot::new("b", 1)] {
            let d = r.write(dot, 0);
            r.join(&d);
        }
        let mut concurrent = MvRegister::new();
        concurrent.join(&concurrent.write(Dot::new("b", 1), 0));
        r.join(&concurrent);
        let seen: VersionVector = [(node("a"), 1)].into_iter().collect();
        let d = r.write_seen(Dot::new("c", 1), 1, &seen);
        r.join(&d);
        assert_eq!(r.entries().collect::<Vec<_>>(), [(&Dot::new("b", 1), &0), (&Dot::new("c", 1), &1)]);
        assert!(r.write_seen(Dot::new("c", 1), 2, &seen).is_bottom(), "a seen dot");
    }

    #[test]
    fn mv_bottom_is_empty() {
        let r: MvRegister<u8> = MvRegister::bottom();
        assert!(r.is_bottom());
        assert!(r.values().is_empty());
        let d = r.write(Dot::new("a", 1), 0);
        assert!(!d.is_bottom());
    }
}
