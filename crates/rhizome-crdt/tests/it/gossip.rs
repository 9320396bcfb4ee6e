//! A small replica simulator for convergence tests: local deltas, then delivery in a seeded
//! shuffled order, with duplicates and with some deltas folded into groups first (the delivery
//! itself is `delivery.rs`'s, shared by every test of the crate).

use proptest::prelude::*;
use rhizome_crdt::Lattice;
use std::fmt::Debug;
use std::ops::Range;

pub use crate::delivery::{deliver, node, Rng};

/// Replicas of one object, each keeping the deltas it produced.
#[derive(Debug)]
pub struct Sim<L> {
    /// The replicas' states.
    pub replicas: Vec<L>,
    /// For each replica, the deltas of its local operations, in order.
    pub produced: Vec<Vec<L>>,
    rng: Rng,
}

impl<L: Lattice + Debug> Sim<L> {
    /// `n` replicas at the bottom; `seed` fixes every delivery schedule.
    pub fn new(n: usize, seed: u64) -> Sim<L> {
        Sim { replicas: vec![L::bottom(); n], produced: vec![Vec::new(); n], rng: Rng::new(seed) }
    }

    /// Replica `i` runs a delta mutator on its state, joins the delta and keeps it.
    pub fn local(&mut self, i: usize, mutator: impl FnOnce(&L) -> L) -> L {
        let delta = mutator(&self.replicas[i]);
        self.replicas[i].join(&delta);
        self.produced[i].push(delta.clone());
        delta
    }

    /// Every delta produced so far by the replicas in `group`.
    pub fn deltas_of(&self, group: Range<usize>) -> Vec<L> {
        self.produced[group].iter().flatten().cloned().collect()
    }

    /// Every replica in `group` receives every delta produced within `group`.
    pub fn exchange(&mut self, group: Range<usize>) {
        let deltas = self.deltas_of(group.clone());
        for i in group {
            deliver(&mut self.replicas[i], &deltas, &mut self.rng);
        }
    }

    /// Whether the replicas in `group` all hold the same state.
    pub fn agree(&self, group: Range<usize>) -> Result<(), TestCaseError> {
        let first = &self.replicas[group.start];
        for (i, replica) in self.replicas[group.clone()].iter().enumerate() {
            prop_assert_eq!(
                replica,
                first,
                "replica {} differs from replica {}",
                group.start + i,
                group.start
            );
        }
        Ok(())
    }
}

/// The join laws on `a`, `b` and `c`: commutative, associative, idempotent, with the bottom as
/// identity, and `a ⊔ b` an upper bound of `a` and `b`.
pub fn check_join_laws<L: Lattice + Debug>(a: &L, b: &L, c: &L) -> Result<(), TestCaseError> {
    let join = |x: &L, y: &L| {
        let mut z = x.clone();
        z.join(y);
        z
    };
    let ab = join(a, b);
    prop_assert_eq!(&ab, &join(b, a), "commutative");
    prop_assert_eq!(join(&ab, c), join(a, &join(b, c)), "associative");
    prop_assert_eq!(&join(a, a), a, "idempotent");
    prop_assert_eq!(&join(a, &L::bottom()), a, "bottom is the identity");
    prop_assert_eq!(&join(&ab, a), &ab, "a ⊔ b is above a");
    prop_assert_eq!(&join(&ab, b), &ab, "a ⊔ b is above b");
    Ok(())
}
