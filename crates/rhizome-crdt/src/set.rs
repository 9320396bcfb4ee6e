//! Sets: the add-wins observed-remove set without tombstones (ORSWOT, as a causal δ-CRDT)
//! and the causal-length set (Yu & Rostad 2020).

use crate::map::{join_causal, set_add, set_remove, DotMap, DotSet};
use crate::{CausalContext, Dot, Lattice, VersionVector};
use std::collections::{BTreeMap, BTreeSet};

/// An add-wins observed-remove set without tombstones: each element keeps the dots of the
/// adds that made it present, and one causal context covers the whole set.
///
/// A remove retires exactly the dots it saw, so an add concurrent with it (a dot it did not
/// see) keeps the element. A removed element leaves nothing behind but its dots in the
/// context, which compacts to one counter per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orswot<E> {
    entries: DotMap<E, DotSet>,
    context: CausalContext,
}

impl<E> Default for Orswot<E> {
    fn default() -> Self {
        Orswot { entries: DotMap::new(), context: CausalContext::new() }
    }
}

impl<E: Ord + Clone> Orswot<E> {
    /// The empty set.
    pub fn new() -> Orswot<E> {
        Orswot::default()
    }

    /// Delta of adding `elem` with the fresh `dot` (normally `context().next_dot(me)`): the
    /// element with that dot, and a context of that dot plus the element's current dots,
    /// which the add replaces. A dot already in the context gives the bottom delta (it is
    /// the same add again).
    pub fn add(&self, dot: Dot, elem: E) -> Orswot<E> {
        let (entries, context) = set_add(&self.entries, &self.context, dot, elem);
        Orswot { entries, context }
    }

    /// Delta of removing `elem`: no entries, and a context of the element's current dots.
    /// Removing an absent element gives the bottom delta.
    pub fn remove(&self, elem: &E) -> Orswot<E> {
        let (entries, context) = set_remove(&self.entries, elem);
        Orswot { entries, context }
    }

    /// Delta of removing `elem` as seen by someone whose view is `seen`: a context of the
    /// element's current dots that `seen` covers. Dots it does not cover are adds that the
    /// remover had not seen, and they keep the element (add wins).
    pub fn remove_seen(&self, elem: &E, seen: &VersionVector) -> Orswot<E> {
        let context = self.dots(elem).filter(|dot| seen.contains(dot)).cloned().collect();
        Orswot { entries: DotMap::new(), context }
    }

    /// In place: adds `elem` with the fresh `dot`, as joining [`Orswot::add`]'s delta would.
    /// Returns that delta, in a form built from what the state gave up (the element's old
    /// dots) rather than from new maps. Costs O(log n) for n elements, plus O(d log n) for an
    /// element held by d dots.
    pub fn apply_add(&mut self, dot: Dot, elem: E) -> OrswotDelta<E> {
        // The retired dots are in the context already, so the join's context is this one's
        // plus the new dot.
        if !self.context.insert_new(&dot) {
            return OrswotDelta { elem, added: None, retired: DotSet::new() };
        }
        // The state never holds a dot twice (`from_parts` refuses it, and a join never adds a
        // dot its context has seen), so the delta's context reaches no other element: the
        // join would retire these dots from this element only.
        let mut dots = DotSet::new();
        dots.insert(dot.clone());
        let retired = self.entries.replace_dots(elem.clone(), dots);
        OrswotDelta { elem, added: Some(dot), retired }
    }

    /// In place: removes `elem`, as joining [`Orswot::remove`]'s delta would. Returns that
    /// delta (its context is the element's dots, moved out of the state).
    pub fn apply_remove(&mut self, elem: &E) -> OrswotDelta<E> {
        let retired = self.entries.take_dots(elem);
        OrswotDelta { elem: elem.clone(), added: None, retired }
    }

    /// In place: removes `elem` as seen by someone whose view is `seen`, as joining
    /// [`Orswot::remove_seen`]'s delta would. Returns that delta.
    pub fn apply_remove_seen(&mut self, elem: &E, seen: &VersionVector) -> OrswotDelta<E> {
        let (retired, kept): (DotSet, DotSet) =
            self.entries.take_dots(elem).into_iter().partition(|dot| seen.contains(dot));
        if !kept.is_empty() {
            self.entries.replace_dots(elem.clone(), kept);
        }
        OrswotDelta { elem: elem.clone(), added: None, retired }
    }

    /// A set from its parts, as read back from storage or the network; `None` unless every
    /// element has at least one dot, every dot is a real event (counter above 0) recorded in
    /// `context`, and no dot is under two elements (one add adds one element).
    pub fn from_parts(entries: BTreeMap<E, DotSet>, context: CausalContext) -> Option<Orswot<E>> {
        let mut seen = BTreeSet::new();
        let valid = entries.values().all(|dots| {
            !dots.is_empty()
                && dots.iter().all(|dot| dot.counter > 0 && context.contains(dot) && seen.insert(dot))
        });
        valid.then(|| Orswot { entries: entries.into_iter().collect(), context })
    }

    /// Whether `elem` is in the set.
    pub fn contains(&self, elem: &E) -> bool {
        self.entries.contains_key(elem)
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &E> {
        self.entries.keys()
    }

    /// The elements, cloned into a set.
    pub fn elements(&self) -> BTreeSet<E> {
        self.entries.keys().cloned().collect()
    }

    /// The dots that keep `elem` present (none when absent).
    pub fn dots(&self, elem: &E) -> impl Iterator<Item = &Dot> {
        self.entries.get(elem).into_iter().flatten()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every dot this set has seen.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }
}

/// The delta of one operation applied in place to an [`Orswot`]: the same value as the delta
/// mutators return ([`OrswotDelta::to_orswot`] builds it), kept as its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrswotDelta<E> {
    /// The element the operation was about.
    pub elem: E,
    /// An add's fresh dot, now the element's only one; `None` for a remove or a replayed add.
    pub added: Option<Dot>,
    /// The element's dots that the operation retired.
    pub retired: DotSet,
}

impl<E: Ord + Clone> OrswotDelta<E> {
    /// The delta as a set, to join elsewhere or ship: the element with the added dot, and a
    /// context of the added and the retired dots.
    pub fn to_orswot(&self) -> Orswot<E> {
        let entries = match &self.added {
            Some(dot) => DotMap::from([(self.elem.clone(), DotSet::from([dot.clone()]))]),
            None => DotMap::new(),
        };
        let context = self.retired.iter().chain(&self.added).cloned().collect();
        Orswot { entries, context }
    }

    /// Whether the delta changes nothing anywhere (a replayed add, or a remove that retired
    /// no dot).
    pub fn is_bottom(&self) -> bool {
        self.added.is_none() && self.retired.is_empty()
    }
}

impl<E: Ord + Clone> Lattice for Orswot<E> {
    fn bottom() -> Self {
        Orswot::new()
    }

    fn join(&mut self, other: &Self) {
        join_causal(&mut self.entries, &mut self.context, &other.entries, &other.context);
    }
}

/// A causal-length set: each element ever added keeps one counter, its causal length; odd
/// means present. Add and remove each lengthen an element by one, only when that changes
/// its presence; the join is the pointwise maximum, so the longer history wins, and
/// concurrent identical changes (two adds of an absent element) agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClSet<E> {
    lengths: BTreeMap<E, u64>,
}

impl<E> Default for ClSet<E> {
    fn default() -> Self {
        ClSet { lengths: BTreeMap::new() }
    }
}

impl<E: Ord + Clone> ClSet<E> {
    /// The empty set.
    pub fn new() -> ClSet<E> {
        ClSet::default()
    }

    /// Delta of adding `elem`: its length plus one when absent, the bottom delta when present.
    pub fn add(&self, elem: E) -> ClSet<E> {
        let length = self.length(&elem);
        if is_present(length) {
            return ClSet::new();
        }
        ClSet { lengths: BTreeMap::from([(elem, length + 1)]) }
    }

    /// Delta of removing `elem`: its length plus one when present, the bottom delta when absent.
    pub fn remove(&self, elem: &E) -> ClSet<E> {
        let length = self.length(elem);
        if !is_present(length) {
            return ClSet::new();
        }
        ClSet { lengths: BTreeMap::from([(elem.clone(), length + 1)]) }
    }

    /// A set from every element ever added with its causal length, as read back from storage
    /// or the network; `None` if a length is 0 (the bottom of an element, never stored) or
    /// above [`crate::object::COUNTER_MAX`] (so that adding one never overflows).
    pub fn from_lengths(lengths: BTreeMap<E, u64>) -> Option<ClSet<E>> {
        let valid = 1..=crate::object::COUNTER_MAX;
        lengths.values().all(|length| valid.contains(length)).then_some(ClSet { lengths })
    }

    /// Number of elements ever added, present or not.
    pub fn element_count(&self) -> usize {
        self.lengths.len()
    }

    /// The causal length of `elem` (0 when never added).
    pub fn length(&self, elem: &E) -> u64 {
        self.lengths.get(elem).copied().unwrap_or(0)
    }

    /// Whether `elem` is in the set.
    pub fn contains(&self, elem: &E) -> bool {
        is_present(self.length(elem))
    }

    /// The present elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &E> {
        self.lengths.iter().filter(|(_, length)| is_present(**length)).map(|(elem, _)| elem)
    }

    /// Every element ever added with its causal length, in order.
    pub fn lengths(&self) -> impl Iterator<Item = (&E, u64)> {
        self.lengths.iter().map(|(elem, length)| (elem, *length))
    }
}

/// Whether a causal length means present: odd lengths end with an add.
fn is_present(length: u64) -> bool {
    length % 2 == 1
}

impl<E: Ord + Clone> Lattice for ClSet<E> {
    fn bottom() -> Self {
        ClSet::new()
    }

    fn join(&mut self, other: &Self) {
        for (elem, length) in &other.lengths {
            // A zero length is the bottom of that element; storing it would make equal
            // sets compare unequal.
            if *length == 0 {
                continue;
            }
            let mine = self.lengths.entry(elem.clone()).or_insert(0);
            *mine = (*mine).max(*length);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn next(set: &Orswot<&'static str>, node: &str) -> Dot {
        set.context().next_dot(&NodeId::from(node))
    }

    #[test]
    fn add_then_remove() {
        let mut s = Orswot::new();
        let d = s.add(next(&s, "a"), "x");
        s.join(&d);
        assert!(s.contains(&"x"));
        assert_eq!(s.len(), 1);
        let d = s.remove(&"x");
        s.join(&d);
        assert!(!s.contains(&"x"));
        assert!(s.is_empty());
        assert_eq!(s.context().vv().get(&"a".into()), 1, "the dot stays in the context");
    }

    #[test]
    fn an_add_replaces_the_elements_older_dots() {
        let mut s = Orswot::new();
        let d1 = s.add(Dot::new("a", 1), "x");
        let d2 = s.add(Dot::new("b", 1), "x");
        s.join(&d1);
        s.join(&d2);
        assert_eq!(s.dots(&"x").count(), 2);
        let d3 = s.add(next(&s, "a"), "x");
        s.join(&d3);
        assert_eq!(s.dots(&"x").collect::<Vec<_>>(), [&Dot::new("a", 2)]);
    }

    #[test]
    fn a_concurrent_add_wins_over_a_remove() {
        let mut a = Orswot::new();
        let d = a.add(next(&a, "a"), "x");
        a.join(&d);
        let mut b = a.clone();
        let removal = a.remove(&"x");
        a.join(&removal);
        let re_add = b.add(next(&b, "b"), "x");
        b.join(&re_add);
        a.join(&b);
        b.join(&removal);
        assert_eq!(a, b);
        assert!(a.contains(&"x"));
    }

    #[test]
    fn a_replayed_add_is_a_no_op() {
        let mut s = Orswot::new();
        let dot = next(&s, "a");
        let d = s.add(dot.clone(), "x");
        s.join(&d);
        let removal = s.remove(&"x");
        s.join(&removal);
        assert!(s.add(dot, "x").is_bottom());
    }

    #[test]
    fn a_remove_seen_keeps_the_adds_it_did_not_see() {
        let mut s = Orswot::new();
        for dot in [Dot::new("a", 1), Dot::new("b", 1)] {
            let d = s.add(dot, "x");
            s.join(&d);
        }
        let seen: VersionVector = [("a".into(), 1)].into_iter().collect();
        let d = s.remove_seen(&"x", &seen);
        s.join(&d);
        assert_eq!(s.dots(&"x").collect::<Vec<_>>(), [&Dot::new("b", 1)]);
        assert!(s.remove_seen(&"y", &seen).is_bottom());
    }

    #[test]
    fn from_parts_checks_the_dots() {
        let context: CausalContext = [Dot::new("a", 1), Dot::new("a", 2)].into_iter().collect();
        let ok = BTreeMap::from([("x", DotSet::from([Dot::new("a", 1)]))]);
        assert!(Orswot::from_parts(ok, context.clone()).is_some());
        for bad in [
            BTreeMap::from([("x", DotSet::new())]),
            BTreeMap::from([("x", DotSet::from([Dot::new("a", 3)]))]),
            BTreeMap::from([("x", DotSet::from([Dot::new("a", 0)]))]),
            BTreeMap::from([
                ("x", DotSet::from([Dot::new("a", 1)])),
                ("y", DotSet::from([Dot::new("a", 1)])),
            ]),
        ] {
            assert_eq!(Orswot::from_parts(bad, context.clone()), None);
        }
        assert!(ClSet::from_lengths(BTreeMap::from([("x", 0)])).is_none());
        assert!(
            ClSet::from_lengths(BTreeMap::from([("x", u64::MAX)])).is_none(),
            "adding one would overflow"
        );
        assert!(ClSet::from_lengths(BTreeMap::from([("x", crate::object::COUNTER_MAX + 1)])).is_none());
        assert_eq!(ClSet::from_lengths(BTreeMap::from([("x", 2)])).map(|s| s.element_count()), Some(1));
    }

    #[test]
    fn causal_lengths_follow_presence() {
        let mut s = ClSet::new();
        assert!(s.remove(&"x").is_bottom(), "removing an absent element does nothing");
        let d = s.add("x");
        s.join(&d);
        assert_eq!(s.length(&"x"), 1);
        assert!(s.add("x").is_bottom(), "adding a present element does nothing");
        let d = s.remove(&"x");
        s.join(&d);
        assert_eq!(s.length(&"x"), 2);
        assert!(!s.contains(&"x"));
        assert_eq!(s.iter().count(), 0);
        assert_eq!(s.lengths().collect::<Vec<_>>(), [(&"x", 2)]);
    }

    #[test]
    fn a_zero_length_is_bottom() {
        let mut s: ClSet<&str> = ClSet::new();
        s.join(&ClSet { lengths: BTreeMap::from([("x", 0)]) });
        assert!(s.is_bottom());
    }
}
