//! A small replica simulator for convergence tests: local deltas, then delivery in a seeded
//! shuffled order, with duplicates and with some deltas folded into groups first.

use proptest::prelude::*;
use rhizome_crdt::{fold, Lattice, NodeId};
use std::fmt::Debug;
use std::ops::Range;

/// The node id of replica `i`.
pub fn node(i: usize) -> NodeId {
    NodeId::from(format!("n{i}"))
}

/// A seeded generator (splitmix64): a proptest-chosen seed fixes a whole delivery schedule,
/// so a failure replays from the seed proptest prints.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0; the slight modulo bias does not matter here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Joins every one of `deltas` into `replica`: in shuffled order, some of them twice, and in
/// groups of one to three deltas folded together before the join.
pub fn deliver<L: Lattice>(replica: &mut L, deltas: &[L], rng: &mut Rng) {
    if deltas.is_empty() {
        return;
    }
    let mut order: Vec<usize> = (0..deltas.len()).collect();
    for _ in 0..rng.below(deltas.len() / 2 + 2) {
        order.push(rng.below(deltas.len()));
    }
    rng.shuffle(&mut order);
    let mut rest = &order[..];
    while !rest.is_empty() {
        let (group, tail) = rest.split_at((1 + rng.below(3)).min(rest.len()));
        replica.join(&fold(group.iter().map(|&i| deltas[i].clone())));
        rest = tail;
    }
}

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
