//! The PN-counter: join laws, convergence under any delivery, folding, its value, and the
//! `crdts` crate's `PNCounter` as an oracle.

use crate::delivery::{check_in_place, InPlace, Replicated};
use crate::gossip::{check_join_laws, node, Sim};
use crdts::{CmRDT, CvRDT};
use proptest::prelude::*;
use proptest::sample::Index;
use rhizome_crdt::{fold, Lattice, NodeId, PnCounter};

/// A local operation on a counter.
#[derive(Clone, Debug)]
pub enum Op {
    Inc(u64),
    Dec(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![(0u64..1000).prop_map(Op::Inc), (0u64..1000).prop_map(Op::Dec)]
}

/// Ops for the in-place test: small amounts, zero, and amounts that saturate a total.
fn in_place_op() -> impl Strategy<Value = Op> {
    let by = prop_oneof![4 => 0u64..1000, 1 => Just(0), 1 => Just(u64::MAX / 2 + 1)];
    prop_oneof![by.clone().prop_map(Op::Inc), by.prop_map(Op::Dec)]
}

/// Runs `op` as `node` on `state`: the delta.
fn run(state: &PnCounter, node: &NodeId, op: &Op) -> PnCounter {
    match *op {
        Op::Inc(by) => state.inc(node, by),
        Op::Dec(by) => state.dec(node, by),
    }
}

/// What `op` adds to the value.
fn signed(op: &Op) -> i128 {
    match *op {
        Op::Inc(by) => i128::from(by),
        Op::Dec(by) => -i128::from(by),
    }
}

/// One step of a history over four replicas: a local operation, or one replica joining
/// another's full state.
#[derive(Clone, Debug)]
enum Step {
    Local(usize, Op),
    Sync { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..4usize, op()).prop_map(|(i, op)| Step::Local(i, op)),
        1 => (0..4usize, 0..4usize).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// Every state and delta met along `steps`, starting with the bottom.
fn reachable(steps: &[Step]) -> Vec<PnCounter> {
    let mut sim = Sim::new(4, 0);
    let mut seen = vec![PnCounter::bottom()];
    for step in steps {
        match step {
            Step::Local(i, op) => {
                seen.push(sim.local(*i, |s| run(s, &node(*i), op)));
                seen.push(sim.replicas[*i].clone());
            }
            Step::Sync { from, to } => {
                let state = sim.replicas[*from].clone();
                sim.replicas[*to].join(&state);
                seen.push(sim.replicas[*to].clone());
            }
        }
    }
    seen
}

/// Local operations for `n` replicas, 3 or 4 of them, twice: before and after a partial
/// exchange.
fn two_rounds() -> impl Strategy<Value = (Vec<Vec<Op>>, Vec<Vec<Op>>)> {
    (3usize..=4).prop_flat_map(|n| {
        let round = || prop::collection::vec(prop::collection::vec(op(), 0..8), n);
        (round(), round())
    })
}

/// Each replica runs its operations of `round` locally.
fn play(sim: &mut Sim<PnCounter>, round: &[Vec<Op>]) {
    for (i, ops) in round.iter().enumerate() {
        for op in ops {
            sim.local(i, |s| run(s, &node(i), op));
        }
    }
}

impl Replicated for PnCounter {
    type Op = Op;

    fn mutate(&self, node: &NodeId, op: &Op) -> Self {
        run(self, node, op)
    }
}

impl InPlace for PnCounter {
    fn mutate_in_place(&mut self, node: &NodeId, op: &Op) -> Self {
        let delta = match *op {
            Op::Inc(by) => self.apply_inc(node, by),
            Op::Dec(by) => self.apply_dec(node, by),
        };
        delta.to_counter()
    }
}

proptest! {
    /// Increments and decrements applied in place give the states and deltas of the delta
    /// mutators joined (zero amounts and saturation included), and those deltas converge in
    /// any order.
    #[test]
    fn in_place_ops_equal_delta_and_join(
        replicas in 2usize..=4,
        steps in crate::delivery::steps(in_place_op(), 60),
        seed in any::<u64>(),
    ) {
        prop_assert_eq!(check_in_place::<PnCounter>(replicas, &steps, seed), Ok(()));
    }

    #[test]
    fn join_is_a_lattice(steps in prop::collection::vec(step(), 0..30), picks in any::<[Index; 3]>()) {
        let pool = reachable(&steps);
        let [a, b, c] = picks.map(|p| p.get(&pool).clone());
        check_join_laws(&a, &b, &c)?;
    }

    #[test]
    fn replicas_converge_whatever_the_delivery((round, _) in two_rounds(), seed in any::<u64>()) {
        let n = round.len();
        let mut sim = Sim::new(n, seed);
        play(&mut sim, &round);
        sim.exchange(0..n);
        sim.agree(0..n)?;
        prop_assert_eq!(&sim.replicas[0], &fold(sim.deltas_of(0..n)));
        let expected: i128 = round.iter().flatten().map(signed).sum();
        prop_assert_eq!(sim.replicas[0].value(), expected, "all increments minus all decrements");
    }

    #[test]
    fn partitioned_replicas_converge_after_healing(
        (first, second) in two_rounds(),
        split in 1usize..3,
        seed in any::<u64>(),
    ) {
        let n = first.len();
        let mut sim = Sim::new(n, seed);
        play(&mut sim, &first);
        sim.exchange(0..split);
        sim.exchange(split..n);
        sim.agree(0..split)?;
        sim.agree(split..n)?;
        play(&mut sim, &second);
        sim.exchange(0..n);
        sim.agree(0..n)?;
        let expected: i128 = first.iter().chain(&second).flatten().map(signed).sum();
        prop_assert_eq!(sim.replicas[0].value(), expected);
    }

    #[test]
    fn ops_one_by_one_equal_their_folded_delta(
        steps in prop::collection::vec(step(), 0..20),
        start in any::<Index>(),
        elsewhere in any::<Index>(),
        ops in prop::collection::vec((0..4usize, op()), 0..20),
    ) {
        let pool = reachable(&steps);
        let start = start.get(&pool).clone();
        let mut one_by_one = start.clone();
        let mut deltas = Vec::new();
        for (i, op) in &ops {
            let delta = run(&one_by_one, &node(*i), op);
            one_by_one.join(&delta);
            deltas.push(delta);
        }
        let group = fold(deltas.clone());
        let mut folded = start.clone();
        folded.join(&group);
        prop_assert_eq!(&folded, &one_by_one);
        let touched: std::collections::BTreeSet<usize> = ops.iter().map(|(i, _)| *i).collect();
        prop_assert!(group.entries().count() <= touched.len(), "at most one entry per node");

        let mut replica = elsewhere.get(&pool).clone();
        let mut replica_folded = replica.clone();
        for delta in &deltas {
            replica.join(delta);
        }
        replica_folded.join(&group);
        prop_assert_eq!(replica_folded, replica);
    }
}

/// One step of a differential run: an operation of actor `i`, or a full-state sync.
#[derive(Clone, Debug)]
enum OracleStep {
    Inc(usize, u64),
    Dec(usize, u64),
    Sync { from: usize, to: usize },
}

fn oracle_step() -> impl Strategy<Value = OracleStep> {
    prop_oneof![
        2 => (0..4usize, 0u64..1000).prop_map(|(i, by)| OracleStep::Inc(i, by)),
        2 => (0..4usize, 0u64..1000).prop_map(|(i, by)| OracleStep::Dec(i, by)),
        1 => (0..4usize, 0..4usize).prop_map(|(from, to)| OracleStep::Sync { from, to }),
    ]
}

proptest! {
    /// Four actors run the same operations and syncs on our counter and on `crdts::PNCounter`;
    /// after every step every replica reads the same value in both (compared as decimal
    /// strings, since `crdts` reads a `BigInt`). Only the value is comparable: `crdts` keeps
    /// its per-actor totals private.
    #[test]
    fn values_match_the_crdts_pn_counter(steps in prop::collection::vec(oracle_step(), 0..40)) {
        let mut ours = vec![PnCounter::new(); 4];
        let mut theirs: Vec<crdts::PNCounter<usize>> = vec![crdts::PNCounter::new(); 4];
        let check = |ours: &[PnCounter], theirs: &[crdts::PNCounter<usize>]| {
            for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
                prop_assert_eq!(o.value().to_string(), t.read().to_string(), "replica {}", i);
            }
            Ok(())
        };
        for step in &steps {
            match *step {
                OracleStep::Inc(i, by) => {
                    let delta = ours[i].inc(&node(i), by);
                    ours[i].join(&delta);
                    let op = theirs[i].inc_many(i, by);
                    theirs[i].apply(op);
                }
                OracleStep::Dec(i, by) => {
                    let delta = ours[i].dec(&node(i), by);
                    ours[i].join(&delta);
                    let op = theirs[i].dec_many(i, by);
                    theirs[i].apply(op);
                }
                OracleStep::Sync { from, to } => {
                    let state = ours[from].clone();
                    ours[to].join(&state);
                    let state = theirs[from].clone();
                    theirs[to].merge(state);
                }
            }
            check(&ours, &theirs)?;
        }
        let all = fold(ours.clone());
        let mut all_theirs = crdts::PNCounter::new();
        for t in &theirs {
            all_theirs.merge(t.clone());
        }
        check(&[all], &[all_theirs])?;
    }
}
