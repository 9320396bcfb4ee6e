//! A set of dots, as an add-wins flag or an ORSWOT element holds them.
//!
//! A server's own add leaves one dot per element (an add replaces the element's dots), so a
//! set of one dot is by far the most common: it is held inline, without an allocation, where a
//! `BTreeSet` would allocate a whole tree node for it. More dots (adds of one element assigned
//! concurrently by different servers) are kept in a sorted vector.

use crate::Dot;
use std::cmp::Ordering;
use std::fmt;

/// A set of [`Dot`]s, iterated in order.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct DotSet(Repr);

/// Invariant: `Many` holds at least two dots, sorted and without repeats, so that every set
/// has exactly one representation (and the derived equality is set equality).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
enum Repr {
    #[default]
    Empty,
    One(Dot),
    Many(Vec<Dot>),
}

impl DotSet {
    /// The empty set.
    pub fn new() -> DotSet {
        DotSet(Repr::Empty)
    }

    /// The dots, in order.
    pub fn as_slice(&self) -> &[Dot] {
        match &self.0 {
            Repr::Empty => &[],
            Repr::One(dot) => std::slice::from_ref(dot),
            Repr::Many(dots) => dots,
        }
    }

    /// The dots, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Dot> {
        self.as_slice().iter()
    }

    /// Number of dots.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the set holds no dot.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Repr::Empty)
    }

    /// Whether the set holds `dot`.
    pub fn contains(&self, dot: &Dot) -> bool {
        match &self.0 {
            Repr::Empty => false,
            Repr::One(held) => held == dot,
            Repr::Many(dots) => dots.binary_search(dot).is_ok(),
        }
    }

    /// Adds `dot`; whether it was not held yet.
    pub fn insert(&mut self, dot: Dot) -> bool {
        match &mut self.0 {
            Repr::Empty => {
                self.0 = Repr::One(dot);
                true
            }
            Repr::One(held) => match dot.cmp(held) {
                Ordering::Equal => false,
                Ordering::Less => {
                    let held = held.clone();
                    self.0 = Repr::Many(vec![dot, held]);
                    true
                }
                Ordering::Greater => {
                    let held = held.clone();
                    self.0 = Repr::Many(vec![held, dot]);
                    true
                }
            },
            Repr::Many(dots) => match dots.binary_search(&dot) {
                Ok(_) => false,
                Err(at) => {
                    dots.insert(at, dot);
                    true
                }
            },
        }
    }

    /// Removes `dot`; whether it was held.
    pub fn remove(&mut self, dot: &Dot) -> bool {
        match &mut self.0 {
            Repr::Empty => false,
            Repr::One(held) => {
                let found = held == dot;
                if found {
                    self.0 = Repr::Empty;
                }
                found
            }
            Repr::Many(dots) => match dots.binary_search(dot) {
                Ok(at) => {
                    dots.remove(at);
                    self.normalize();
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// Keeps the dots for which `keep` is true, visiting them in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&Dot) -> bool) {
        match &mut self.0 {
            Repr::Empty => {}
            Repr::One(held) => {
                if !keep(held) {
                    self.0 = Repr::Empty;
                }
            }
            Repr::Many(dots) => {
                dots.retain(|dot| keep(dot));
                self.normalize();
            }
        }
    }

    /// Restores the invariant of `Many` after it shrank.
    fn normalize(&mut self) {
        if let Repr::Many(dots) = &mut self.0 {
            match dots.len() {
                0 => self.0 = Repr::Empty,
                1 => {
                    let dot = dots.pop().expect("one dot");
                    self.0 = Repr::One(dot);
                }
                _ => {}
            }
        }
    }

    /// A set of `dots`, in any order and with repeats.
    fn from_vec(mut dots: Vec<Dot>) -> DotSet {
        match dots.len() {
            0 => DotSet(Repr::Empty),
            1 => DotSet(Repr::One(dots.pop().expect("one dot"))),
            _ => {
                dots.sort_unstable();
                dots.dedup();
                let mut set = DotSet(Repr::Many(dots));
                set.normalize();
                set
            }
        }
    }
}

impl PartialOrd for DotSet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Lexicographic over the dots in order, as for a `BTreeSet`.
impl Ord for DotSet {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl fmt::Debug for DotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Dot> for DotSet {
    fn from_iter<I: IntoIterator<Item = Dot>>(dots: I) -> DotSet {
        DotSet::from_vec(dots.into_iter().collect())
    }
}

impl Extend<Dot> for DotSet {
    fn extend<I: IntoIterator<Item = Dot>>(&mut self, dots: I) {
        for dot in dots {
            self.insert(dot);
        }
    }
}

impl<const N: usize> From<[Dot; N]> for DotSet {
    fn from(dots: [Dot; N]) -> DotSet {
        DotSet::from_vec(dots.into())
    }
}

impl<'a> IntoIterator for &'a DotSet {
    type Item = &'a Dot;
    type IntoIter = std::slice::Iter<'a, Dot>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The dots of a [`DotSet`], in order, by value.
#[derive(Debug)]
pub struct IntoIter(IntoIterRepr);

#[derive(Debug)]
enum IntoIterRepr {
    One(Option<Dot>),
    Many(std::vec::IntoIter<Dot>),
}

impl Iterator for IntoIter {
    type Item = Dot;

    fn next(&mut self) -> Option<Dot> {
        match &mut self.0 {
            IntoIterRepr::One(dot) => dot.take(),
            IntoIterRepr::Many(dots) => dots.next(),
        }
    }
}

impl IntoIterator for DotSet {
    type Item = Dot;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(match self.0 {
            Repr::Empty => IntoIterRepr::One(None),
            Repr::One(dot) => IntoIterRepr::One(Some(dot)),
            Repr::Many(dots) => IntoIterRepr::Many(dots.into_iter()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// One step on a set of dots.
    #[derive(Clone, Debug)]
    enum Step {
        Insert(u8, u64),
        Remove(u8, u64),
        Retain(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..3, 1u64..5).prop_map(|(n, c)| Step::Insert(n, c)),
            (0u8..3, 1u64..5).prop_map(|(n, c)| Step::Remove(n, c)),
            (1u64..5).prop_map(Step::Retain),
        ]
    }

    fn dot(node: u8, counter: u64) -> Dot {
        Dot::new(["a", "b", "c"][usize::from(node)], counter)
    }

    proptest! {
        /// Every operation agrees with a `BTreeSet` of the same dots, and a set equals
        /// (and orders as) any other set built with the same dots.
        #[test]
        fn behaves_as_a_btree_set(steps in prop::collection::vec(step(), 0..40)) {
            let mut ours = DotSet::new();
            let mut model = BTreeSet::new();
            for step in steps {
                match step {
                    Step::Insert(n, c) => prop_assert_eq!(ours.insert(dot(n, c)), model.insert(dot(n, c))),
                    Step::Remove(n, c) => prop_assert_eq!(ours.remove(&dot(n, c)), model.remove(&dot(n, c))),
                    Step::Retain(c) => {
                        ours.retain(|d| d.counter != c);
                        model.retain(|d| d.counter != c);
                    }
                }
                prop_assert!(ours.iter().eq(model.iter()));
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(ours.is_empty(), model.is_empty());
                for n in 0..3 {
                    for c in 1..5 {
                        prop_assert_eq!(ours.contains(&dot(n, c)), model.contains(&dot(n, c)));
                    }
                }
                let rebuilt: DotSet = model.iter().rev().cloned().chain(model.iter().cloned()).collect();
                prop_assert_eq!(&rebuilt, &ours);
                prop_assert_eq!(rebuilt.cmp(&ours), Ordering::Equal);
                prop_assert!(ours.clone().into_iter().eq(model.iter().cloned()));
            }
        }
    }

    #[test]
    fn orders_lexicographically_as_a_btree_set() {
        let sets = [vec![], vec![dot(0, 1)], vec![dot(0, 1), dot(0, 2)], vec![dot(0, 2)], vec![dot(1, 1)]];
        for a in &sets {
            for b in &sets {
                let (ours_a, ours_b): (DotSet, DotSet) =
                    (a.iter().cloned().collect(), b.iter().cloned().collect());
                let (model_a, model_b): (BTreeSet<Dot>, BTreeSet<Dot>) =
                    (a.iter().cloned().collect(), b.iter().cloned().collect());
                assert_eq!(ours_a.cmp(&ours_b), model_a.cmp(&model_b), "{a:?} against {b:?}");
            }
        }
    }
}
