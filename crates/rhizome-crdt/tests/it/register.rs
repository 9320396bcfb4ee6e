//! The LWW and MV registers: join laws, convergence under any delivery, folding, their value
//! semantics, and the `crdts` crate's `LWWReg` and `MVReg` as oracles.

use crate::gossip::{check_join_laws, node, Sim};
use crdts::{CmRDT, CvRDT};
use proptest::prelude::*;
use proptest::sample::Index;
use rhizome_crdt::{fold, Dot, Lattice, LwwRegister, MvRegister, Stamp};
use std::fmt::Debug;

/// Replicas the histories run on. Folding tests write as nodes from `REPLICAS` on, so their
/// dots are fresh whatever state they start from.
const REPLICAS: usize = 4;

/// One step of a history over four replicas: a write of `value` (at `time_ms`, for the LWW
/// register), or one replica joining another's full state.
#[derive(Clone, Debug)]
enum Step {
    Write { replica: usize, value: u8, time_ms: i64 },
    Sync { from: usize, to: usize },
}

/// A write (`time_ms` in a small range, so that equal times are common) or a sync.
fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..REPLICAS, any::<u8>(), 0i64..4)
            .prop_map(|(replica, value, time_ms)| Step::Write { replica, value, time_ms }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

fn steps(len_max: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 0..len_max)
}

/// A write's value and time.
type Write = (u8, i64);

/// Writes for 3 or 4 replicas, twice: before and after a partial exchange.
fn two_rounds() -> impl Strategy<Value = (Vec<Vec<Write>>, Vec<Vec<Write>>)> {
    (3usize..=4).prop_flat_map(|n| {
        let round = || prop::collection::vec(prop::collection::vec((any::<u8>(), 0i64..4), 0..6), n);
        (round(), round())
    })
}

/// How a register type is written, so that one set of tests drives both.
trait Register: Lattice + Debug {
    /// The delta of `replica`'s `counter`-th write, of `value` at `time_ms`.
    fn write_as(&self, replica: usize, counter: u64, value: u8, time_ms: i64) -> Self;
}

impl Register for LwwRegister<u8> {
    fn write_as(&self, replica: usize, counter: u64, value: u8, time_ms: i64) -> Self {
        self.set(value, Stamp::new(time_ms, Dot::new(node(replica), counter)))
    }
}

impl Register for MvRegister<u8> {
    /// The dot comes from the state's own context; `counter` is what the test expects it to be.
    fn write_as(&self, replica: usize, counter: u64, value: u8, _time_ms: i64) -> Self {
        let dot = self.context().next_dot(&node(replica));
        debug_assert_eq!(dot.counter, counter);
        self.write(dot, value)
    }
}

/// Replicas plus the per-node write counters (dense, from 1) the LWW stamps need.
struct Run<R> {
    sim: Sim<R>,
    counters: Vec<u64>,
}

impl<R: Register> Run<R> {
    fn new(n: usize, seed: u64) -> Run<R> {
        Run { sim: Sim::new(n, seed), counters: vec![0; n] }
    }

    fn write(&mut self, replica: usize, value: u8, time_ms: i64) -> R {
        self.counters[replica] += 1;
        let counter = self.counters[replica];
        self.sim.local(replica, |s| s.write_as(replica, counter, value, time_ms))
    }

    fn play(&mut self, round: &[Vec<Write>]) {
        for (replica, writes) in round.iter().enumerate() {
            for &(value, time_ms) in writes {
                self.write(replica, value, time_ms);
            }
        }
    }
}

/// Every state and delta met along `steps`, starting with the bottom.
fn reachable<R: Register>(steps: &[Step]) -> Vec<R> {
    let mut run = Run::<R>::new(REPLICAS, 0);
    let mut seen = vec![R::bottom()];
    for step in steps {
        match *step {
            Step::Write { replica, value, time_ms } => {
                seen.push(run.write(replica, value, time_ms));
                seen.push(run.sim.replicas[replica].clone());
            }
            Step::Sync { from, to } => {
                let state = run.sim.replicas[from].clone();
                run.sim.replicas[to].join(&state);
                seen.push(run.sim.replicas[to].clone());
            }
        }
    }
    seen
}

fn join_laws<R: Register>(steps: &[Step], picks: [Index; 3]) -> Result<(), TestCaseError> {
    let pool = reachable::<R>(steps);
    let [a, b, c] = picks.map(|p| p.get(&pool).clone());
    check_join_laws(&a, &b, &c)
}

/// Every replica writes, then all receive everything: they agree, on the fold of all deltas.
fn converge<R: Register>(round: &[Vec<Write>], seed: u64) -> Result<Run<R>, TestCaseError> {
    let n = round.len();
    let mut run = Run::<R>::new(n, seed);
    run.play(round);
    run.sim.exchange(0..n);
    run.sim.agree(0..n)?;
    prop_assert_eq!(&run.sim.replicas[0], &fold(run.sim.deltas_of(0..n)));
    Ok(run)
}

/// Two groups write and exchange among themselves, write again, then all exchange.
fn converge_after_partition<R: Register>(
    first: &[Vec<Write>],
    second: &[Vec<Write>],
    split: usize,
    seed: u64,
) -> Result<Run<R>, TestCaseError> {
    let n = first.len();
    let mut run = Run::<R>::new(n, seed);
    run.play(first);
    run.sim.exchange(0..split);
    run.sim.exchange(split..n);
    run.sim.agree(0..split)?;
    run.sim.agree(split..n)?;
    run.play(second);
    run.sim.exchange(0..n);
    run.sim.agree(0..n)?;
    prop_assert_eq!(&run.sim.replicas[0], &fold(run.sim.deltas_of(0..n)));
    Ok(run)
}

/// Writes as fresh nodes on a reachable state, one by one, equal joining their fold there and
/// on another reachable state.
fn one_by_one_equals_folded<R: Register>(
    steps: &[Step],
    start: Index,
    elsewhere: Index,
    writes: &[(usize, u8, i64)],
) -> Result<(), TestCaseError> {
    let pool = reachable::<R>(steps);
    let start = start.get(&pool).clone();
    let mut counters = [0u64; 2];
    let mut one_by_one = start.clone();
    let mut deltas = Vec::new();
    for &(writer, value, time_ms) in writes {
        counters[writer] += 1;
        let delta = one_by_one.write_as(REPLICAS + writer, counters[writer], value, time_ms);
        one_by_one.join(&delta);
        deltas.push(delta);
    }
    let group = fold(deltas.clone());
    let mut folded = start;
    folded.join(&group);
    prop_assert_eq!(&folded, &one_by_one);

    let mut replica = elsewhere.get(&pool).clone();
    let mut replica_folded = replica.clone();
    for delta in &deltas {
        replica.join(delta);
    }
    replica_folded.join(&group);
    prop_assert_eq!(replica_folded, replica);
    Ok(())
}

fn fresh_writes() -> impl Strategy<Value = Vec<(usize, u8, i64)>> {
    prop::collection::vec((0..2usize, any::<u8>(), 0i64..4), 0..12)
}

/// The LWW winner among all deltas: the write with the greatest stamp.
fn lww_winner(deltas: &[LwwRegister<u8>]) -> Option<(Stamp, u8)> {
    deltas.iter().filter_map(|d| Some((d.stamp()?.clone(), *d.value()?))).max_by(|x, y| x.0.cmp(&y.0))
}

/// The MV survivors among all write deltas, in dot order: the writes whose dot no other
/// write observed (has in its context).
fn mv_survivors(deltas: &[MvRegister<u8>]) -> Vec<(Dot, u8)> {
    let mut survivors: Vec<(Dot, u8)> = deltas
        .iter()
        .flat_map(|d| d.entries().map(|(dot, v)| (dot.clone(), *v)))
        .filter(|(dot, _)| {
            !deltas
                .iter()
                .any(|other| other.entries().all(|(d, _)| d != dot) && other.context().contains(dot))
        })
        .collect();
    survivors.sort_by(|x, y| x.0.cmp(&y.0));
    survivors
}

fn mv_entries(register: &MvRegister<u8>) -> Vec<(Dot, u8)> {
    register.entries().map(|(dot, v)| (dot.clone(), *v)).collect()
}

proptest! {
    #[test]
    fn lww_join_is_a_lattice(steps in steps(30), picks in any::<[Index; 3]>()) {
        join_laws::<LwwRegister<u8>>(&steps, picks)?;
    }

    #[test]
    fn mv_join_is_a_lattice(steps in steps(30), picks in any::<[Index; 3]>()) {
        join_laws::<MvRegister<u8>>(&steps, picks)?;
    }

    #[test]
    fn lww_replicas_converge_on_the_greatest_stamp((round, _) in two_rounds(), seed in any::<u64>()) {
        let run = converge::<LwwRegister<u8>>(&round, seed)?;
        let all = run.sim.deltas_of(0..round.len());
        let state = &run.sim.replicas[0];
        prop_assert_eq!(state.stamp().cloned().zip(state.value().copied()), lww_winner(&all));
    }

    #[test]
    fn mv_replicas_converge_on_the_unobserved_writes((round, _) in two_rounds(), seed in any::<u64>()) {
        let run = converge::<MvRegister<u8>>(&round, seed)?;
        let all = run.sim.deltas_of(0..round.len());
        prop_assert_eq!(mv_entries(&run.sim.replicas[0]), mv_survivors(&all));
        // Writes on bottom states are all concurrent: every one survives.
        prop_assert_eq!(run.sim.replicas[0].values().len(), round.iter().filter(|w| !w.is_empty()).count());
    }

    #[test]
    fn lww_partitioned_replicas_converge_after_healing(
        (first, second) in two_rounds(),
        split in 1usize..3,
        seed in any::<u64>(),
    ) {
        let run = converge_after_partition::<LwwRegister<u8>>(&first, &second, split, seed)?;
        let all = run.sim.deltas_of(0..first.len());
        let state = &run.sim.replicas[0];
        prop_assert_eq!(state.stamp().cloned().zip(state.value().copied()), lww_winner(&all));
    }

    #[test]
    fn mv_partitioned_replicas_converge_after_healing(
        (first, second) in two_rounds(),
        split in 1usize..3,
        seed in any::<u64>(),
    ) {
        let run = converge_after_partition::<MvRegister<u8>>(&first, &second, split, seed)?;
        let all = run.sim.deltas_of(0..first.len());
        prop_assert_eq!(mv_entries(&run.sim.replicas[0]), mv_survivors(&all));
    }

    #[test]
    fn lww_writes_one_by_one_equal_their_folded_delta(
        steps in steps(20),
        start in any::<Index>(),
        elsewhere in any::<Index>(),
        writes in fresh_writes(),
    ) {
        one_by_one_equals_folded::<LwwRegister<u8>>(&steps, start, elsewhere, &writes)?;
    }

    #[test]
    fn mv_writes_one_by_one_equal_their_folded_delta(
        steps in steps(20),
        start in any::<Index>(),
        elsewhere in any::<Index>(),
        writes in fresh_writes(),
    ) {
        one_by_one_equals_folded::<MvRegister<u8>>(&steps, start, elsewhere, &writes)?;
    }

    /// Replicas in one state write concurrently; everyone gets every write and holds them all,
    /// until one replica writes after seeing them: then everyone holds that value alone.
    #[test]
    fn mv_concurrent_writes_survive_until_a_write_observes_them(
        (history, values) in (3usize..=4).prop_flat_map(|n| (
            prop::collection::vec(prop::collection::vec((any::<u8>(), Just(0i64)), 0..3), n),
            prop::collection::vec(any::<u8>(), n),
        )),
        writer in any::<Index>(),
        last in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let n = values.len();
        let mut run = converge::<MvRegister<u8>>(&history, seed)?;
        let concurrent: Vec<_> = values.iter().enumerate().map(|(i, &v)| run.write(i, v, 0)).collect();
        run.sim.exchange(0..n);
        run.sim.agree(0..n)?;
        let mut held: Vec<u8> = run.sim.replicas[0].values().into_iter().copied().collect();
        let mut written = values.clone();
        held.sort_unstable();
        written.sort_unstable();
        prop_assert_eq!(held, written, "all concurrent writes survive");
        prop_assert_eq!(fold(concurrent).values().len(), n);

        let writer = writer.index(n);
        let sequential = run.write(writer, last, 0);
        prop_assert_eq!(run.sim.replicas[writer].values(), vec![&last]);
        for replica in &mut run.sim.replicas {
            replica.join(&sequential);
            prop_assert_eq!(replica.values(), vec![&last], "a write that observed everything");
        }
    }
}

/// One step of a differential run: a write by actor `i`, or a full-state sync.
#[derive(Clone, Debug)]
enum OracleStep {
    Write(usize, u8, i64),
    Sync { from: usize, to: usize },
}

fn oracle_step() -> impl Strategy<Value = OracleStep> {
    prop_oneof![
        2 => (0..REPLICAS, any::<u8>(), 0i64..4).prop_map(|(i, v, t)| OracleStep::Write(i, v, t)),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| OracleStep::Sync { from, to }),
    ]
}

proptest! {
    /// Four actors run the same writes and syncs on our LWW register and on
    /// `crdts::LWWReg<Option<u8>, Option<Stamp>>` (with `None` for "no write yet", which
    /// orders below every stamp). After every step every replica holds the same value and
    /// stamp in both.
    #[test]
    fn lww_matches_the_crdts_lww_reg(steps in prop::collection::vec(oracle_step(), 0..40)) {
        let mut ours = vec![LwwRegister::<u8>::new(); REPLICAS];
        let mut theirs = vec![crdts::LWWReg::<Option<u8>, Option<Stamp>> { val: None, marker: None }; REPLICAS];
        let mut counters = [0u64; REPLICAS];
        for step in &steps {
            match *step {
                OracleStep::Write(i, value, time_ms) => {
                    counters[i] += 1;
                    let stamp = Stamp::new(time_ms, Dot::new(node(i), counters[i]));
                    let delta = ours[i].set(value, stamp.clone());
                    ours[i].join(&delta);
                    prop_assert!(theirs[i].validate_update(&Some(value), &Some(stamp.clone())).is_ok());
                    theirs[i].update(Some(value), Some(stamp));
                }
                OracleStep::Sync { from, to } => {
                    let state = ours[from].clone();
                    ours[to].join(&state);
                    let state = theirs[from].clone();
                    theirs[to].merge(state);
                }
            }
            for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
                prop_assert_eq!(o.value().copied(), t.val, "value at replica {}", i);
                prop_assert_eq!(o.stamp(), t.marker.as_ref(), "stamp at replica {}", i);
            }
        }
    }

    /// Four actors run the same writes and syncs on our MV register and on `crdts::MVReg`.
    /// After every step every replica reads the same multiset of concurrent values in both
    /// (compared sorted: `crdts` reads in insertion order, we read in dot order), and our
    /// context covers, per actor, exactly the counter `crdts`' clock holds. Dots themselves
    /// are not compared: `crdts` keeps a whole vector clock per value rather than one dot.
    #[test]
    fn mv_matches_the_crdts_mv_reg(steps in prop::collection::vec(oracle_step(), 0..40)) {
        let mut ours = vec![MvRegister::<u8>::new(); REPLICAS];
        let mut theirs = vec![crdts::MVReg::<u8, usize>::new(); REPLICAS];
        let check = |ours: &[MvRegister<u8>], theirs: &[crdts::MVReg<u8, usize>]| {
            for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
                let mut our_values: Vec<u8> = o.values().into_iter().copied().collect();
                let mut their_values = t.read().val;
                our_values.sort_unstable();
                their_values.sort_unstable();
                prop_assert_eq!(our_values, their_values, "values at replica {}", i);
                let clock = t.read_ctx().add_clock;
                prop_assert_eq!(o.context().cloud().count(), 0, "full-state syncs leave no gaps");
                for actor in 0..REPLICAS {
                    prop_assert_eq!(o.context().vv().get(&node(actor)), clock.get(&actor), "replica {} actor {}", i, actor);
                }
            }
            Ok(())
        };
        for step in &steps {
            match *step {
                OracleStep::Write(i, value, _) => {
                    let delta = ours[i].write(ours[i].context().next_dot(&node(i)), value);
                    ours[i].join(&delta);
                    let ctx = theirs[i].read_ctx().derive_add_ctx(i);
                    let op = theirs[i].write(value, ctx);
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
        let mut all_theirs = crdts::MVReg::new();
        for t in &theirs {
            all_theirs.merge(t.clone());
        }
        check(&[all], &[all_theirs])?;
    }
}
