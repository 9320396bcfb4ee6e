//! Shared harness of the property tests: replicas that apply random local ops and sync, and
//! delivery of deltas in a shuffled order with duplicates and pre-folded groups.

use proptest::prelude::*;
use rhizome_crdt::{fold, Lattice, NodeId, VersionVector};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// Up to `len` random steps over replicas `0..4` (taken modulo the replica count): three
/// local ops for one sync.
pub fn steps<Op: Clone + Debug + 'static>(
    op: impl Strategy<Value = Op> + 'static,
    len: usize,
) -> impl Strategy<Value = Vec<Step<Op>>> {
    let step = prop_oneof![
        3 => (0usize..4, op).prop_map(|(r, op)| Step::Local(r, op)),
        1 => (0usize..4, 0usize..4).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    prop::collection::vec(step, 0..len)
}

/// A CRDT under test: its delta mutators, chosen by an op.
pub trait Replicated: Lattice + Debug {
    /// One local operation (add, remove, …).
    type Op: Clone + Debug;

    /// The delta of `op` made by `node` on this state (bottom when the op is refused).
    fn mutate(&self, node: &NodeId, op: &Self::Op) -> Self;
}

/// One step of a scenario.
#[derive(Clone, Debug)]
pub enum Step<Op> {
    /// Replica `.0` applies `.1` locally.
    Local(usize, Op),
    /// Replica `to` joins the whole state of replica `from`.
    Sync { from: usize, to: usize },
}

/// One local op as it happened: where, the state before, and its delta.
#[derive(Clone, Debug)]
pub struct Applied<L: Replicated> {
    /// The replica.
    pub replica: usize,
    /// The op.
    pub op: L::Op,
    /// The replica's state before the op.
    pub before: L,
    /// The op's delta.
    pub delta: L,
}

/// Replicas and the history of their local ops.
#[derive(Clone, Debug)]
pub struct Run<L: Replicated> {
    /// The replicas' states.
    pub states: Vec<L>,
    /// Every local op, in the order they happened.
    pub log: Vec<Applied<L>>,
}

/// The node id of replica `i`.
pub fn node(i: usize) -> NodeId {
    NodeId::from(format!("n{i}").as_str())
}

impl<L: Replicated> Run<L> {
    /// `replicas` replicas at bottom.
    pub fn new(replicas: usize) -> Run<L> {
        Run { states: vec![L::bottom(); replicas], log: Vec::new() }
    }

    /// Plays `steps` (replica indices taken modulo the number of replicas).
    pub fn play(&mut self, steps: &[Step<L::Op>]) {
        let n = self.states.len();
        for step in steps {
            match step {
                Step::Local(r, op) => {
                    let r = r % n;
                    let before = self.states[r].clone();
                    let delta = before.mutate(&node(r), op);
                    self.states[r].join(&delta);
                    self.log.push(Applied { replica: r, op: op.clone(), before, delta });
                }
                Step::Sync { from, to } => {
                    let from = self.states[from % n].clone();
                    self.states[to % n].join(&from);
                }
            }
        }
    }

    /// Brings every replica up to date: each joins the fold of every delta.
    pub fn sync_all(&mut self) {
        let all = fold(self.deltas());
        for state in &mut self.states {
            state.join(&all);
        }
    }

    /// The deltas of every local op.
    pub fn deltas(&self) -> Vec<L> {
        self.log.iter().map(|a| a.delta.clone()).collect()
    }

    /// The deltas of the local ops made by replicas for which `keep` holds.
    pub fn deltas_from(&self, keep: impl Fn(usize) -> bool) -> Vec<L> {
        self.log.iter().filter(|a| keep(a.replica)).map(|a| a.delta.clone()).collect()
    }
}

/// A small deterministic generator (splitmix64), seeded by proptest.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Joins every delta of `deltas` into `state`: in a shuffled order, about a quarter of them
/// twice, and runs of up to three consecutive deliveries pre-folded into one delta-group.
pub fn deliver<L: Lattice>(state: &mut L, deltas: &[L], rng: &mut Rng) {
    let mut order: Vec<usize> = (0..deltas.len()).collect();
    for i in 0..deltas.len() {
        if rng.below(4) == 0 {
            order.push(i);
        }
    }
    rng.shuffle(&mut order);
    let mut start = 0;
    while start < order.len() {
        let end = (start + 1 + rng.below(3)).min(order.len());
        let group = fold(order[start..end].iter().map(|&i| deltas[i].clone()));
        state.join(&group);
        start = end;
    }
}

/// Replays `steps` on `replicas` replicas, then delivers every delta to every replica (each
/// in its own random order); returns the final states, which should all be equal, and the
/// fold of every delta.
pub fn converge<L: Replicated>(replicas: usize, steps: &[Step<L::Op>], seed: u64) -> (Vec<L>, L) {
    let mut run = Run::<L>::new(replicas);
    run.play(steps);
    let deltas = run.deltas();
    let mut rng = Rng::new(seed);
    let mut states = run.states.clone();
    for state in &mut states {
        deliver(state, &deltas, &mut rng);
    }
    (states, fold(deltas))
}

/// The group of replica `r` in a partition of `replicas` replicas into two halves.
pub fn group(r: usize, replicas: usize) -> usize {
    usize::from(r >= replicas / 2)
}

/// Drops the syncs of `steps` that cross the partition into halves.
pub fn within_groups<Op: Clone>(steps: &[Step<Op>], replicas: usize) -> Vec<Step<Op>> {
    steps
        .iter()
        .filter(|s| match s {
            Step::Local(..) => true,
            Step::Sync { from, to } => group(from % replicas, replicas) == group(to % replicas, replicas),
        })
        .cloned()
        .collect()
}

/// The partition scenario: both halves play `before` (their syncs kept within each half),
/// each replica receives every delta of its own half, then `after` is played the same way,
/// and finally every replica receives every delta. Returns the states after the first
/// exchange, and the run at the end (its states and every local op).
pub fn partition<L: Replicated>(
    replicas: usize,
    before: &[Step<L::Op>],
    after: &[Step<L::Op>],
    seed: u64,
) -> (Vec<L>, Run<L>) {
    let mut run = Run::<L>::new(replicas);
    let mut rng = Rng::new(seed);
    run.play(&within_groups(before, replicas));
    for r in 0..replicas {
        let own_half = run.deltas_from(|o| group(o, replicas) == group(r, replicas));
        deliver(&mut run.states[r], &own_half, &mut rng);
    }
    let halves = run.states.clone();
    run.play(&within_groups(after, replicas));
    let deltas = run.deltas();
    for state in &mut run.states {
        deliver(state, &deltas, &mut rng);
    }
    (halves, run)
}

/// A version vector as a map, without zero counters.
pub fn as_map(vv: &VersionVector) -> BTreeMap<NodeId, u64> {
    vv.iter().filter(|(_, c)| *c > 0).map(|(node, c)| (node.clone(), c)).collect()
}

/// The pointwise maximum of two vectors, computed here rather than by `VersionVector::join`.
pub fn pointwise_max(a: &BTreeMap<NodeId, u64>, b: &BTreeMap<NodeId, u64>) -> BTreeMap<NodeId, u64> {
    let mut out = a.clone();
    for (node, c) in b {
        let mine = out.entry(node.clone()).or_default();
        *mine = (*mine).max(*c);
    }
    out
}

/// Checks the join laws on `a`, `b`, `c`: commutative, associative, idempotent, and
/// bottom as the identity.
pub fn check_lattice<L: Lattice + Debug>(a: &L, b: &L, c: &L) -> Result<(), String> {
    let join = |x: &L, y: &L| {
        let mut z = x.clone();
        z.join(y);
        z
    };
    let ab = join(a, b);
    if ab != join(b, a) {
        return Err(format!("not commutative: {a:?} ⊔ {b:?}"));
    }
    if join(&ab, c) != join(a, &join(b, c)) {
        return Err(format!("not associative: {a:?}, {b:?}, {c:?}"));
    }
    if join(a, a) != *a {
        return Err(format!("not idempotent: {a:?}"));
    }
    if join(a, &L::bottom()) != *a || join(&L::bottom(), a) != *a {
        return Err(format!("bottom is not the identity: {a:?}"));
    }
    if join(&ab, a) != ab {
        return Err(format!("a ⊔ b is not above a: {a:?}, {b:?}"));
    }
    Ok(())
}

/// Lattice elements reachable by a run: every replica's state and every delta, plus bottom.
pub fn elements<L: Replicated>(run: &Run<L>) -> Vec<L> {
    let mut all = vec![L::bottom()];
    all.extend(run.states.iter().cloned());
    all.extend(run.deltas());
    all
}

/// Applies `ops` one by one at replica `r` of `run`, and checks that the result equals the
/// starting state joined with the fold of their deltas.
pub fn check_fold<L: Replicated>(run: &mut Run<L>, r: usize, ops: &[L::Op]) -> Result<(), String> {
    let start = run.states[r].clone();
    let first = run.log.len();
    let steps: Vec<_> = ops.iter().map(|op| Step::Local(r, op.clone())).collect();
    run.play(&steps);
    let group = fold(run.log[first..].iter().map(|a| a.delta.clone()));
    let mut folded = start;
    folded.join(&group);
    if folded != run.states[r] {
        return Err(format!("one by one: {:?}\nfolded: {folded:?}", run.states[r]));
    }
    Ok(())
}

/// The property tests every CRDT gets, as a module `$name` of proptests over the type `$ty`
/// (which implements [`Replicated`]) and the op strategy `$op`: the join laws on reachable
/// states, convergence under shuffled, duplicated and pre-folded delivery (also across a
/// partition), and "one by one ≡ folded".
macro_rules! generic_laws {
    ($name:ident, $ty:ty, $op:expr) => {
        mod $name {
            use super::*;
            use $crate::delivery::{check_fold, check_lattice, converge, elements, partition, steps, Run};

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(128))]

                #[test]
                fn join_is_a_lattice(
                    replicas in 3usize..=4,
                    steps in steps($op, 30),
                    picks in prop::array::uniform3(any::<prop::sample::Index>()),
                ) {
                    let mut run = Run::<$ty>::new(replicas);
                    run.play(&steps);
                    let all = elements(&run);
                    let [a, b, c] = picks.map(|i| i.get(&all).clone());
                    prop_assert_eq!(check_lattice(&a, &b, &c), Ok(()));
                }

                #[test]
                fn replicas_converge(replicas in 3usize..=4, steps in steps($op, 40), seed in any::<u64>()) {
                    let (states, folded) = converge::<$ty>(replicas, &steps, seed);
                    for state in &states {
                        prop_assert_eq!(state, &folded);
                    }
                }

                #[test]
                fn partitioned_replicas_converge(
                    replicas in 3usize..=4,
                    before in steps($op, 30),
                    after in steps($op, 20),
                    seed in any::<u64>(),
                ) {
                    let (halves, run) = partition::<$ty>(replicas, &before, &after, seed);
                    let states = run.states;
                    let split = replicas / 2;
                    for (r, state) in halves.iter().enumerate() {
                        let first = if r < split { 0 } else { split };
                        prop_assert_eq!(state, &halves[first], "replicas of one half agree");
                    }
                    for state in &states {
                        prop_assert_eq!(state, &states[0]);
                    }
                }

                #[test]
                fn ops_one_by_one_equal_their_folded_delta(
                    replicas in 3usize..=4,
                    history in steps($op, 30),
                    ops in prop::collection::vec($op, 0..15),
                ) {
                    let mut run = Run::<$ty>::new(replicas);
                    run.play(&history);
                    prop_assert_eq!(check_fold(&mut run, 0, &ops), Ok(()));
                    let mut fresh = Run::<$ty>::new(1);
                    prop_assert_eq!(check_fold(&mut fresh, 0, &ops), Ok(()));
                }
            }
        }
    };
}
pub(crate) use generic_laws;

/// A CRDT whose local ops can also be applied in place: the state changed directly, and the
/// op's delta returned (as the type itself, to compare it with [`Replicated::mutate`]'s).
pub trait InPlace: Replicated {
    /// Applies `op` made by `node` to this state; returns its delta.
    fn mutate_in_place(&mut self, node: &NodeId, op: &Self::Op) -> Self;
}

/// Plays `steps` on `replicas` replicas twice, by the delta path (delta mutator, then join)
/// and by the in-place path, and checks they agree: after every step the states are equal
/// and every op returned the same delta. A sync delivers a seeded part of the sender's
/// deltas in a shuffled order (so contexts grow clouds), the same to both paths. At the end
/// the in-place deltas, delivered to a fresh replica and to every replica in shuffled order
/// with duplicates and pre-folded groups, converge: every state equals their fold.
pub fn check_in_place<L: InPlace>(replicas: usize, steps: &[Step<L::Op>], seed: u64) -> Result<(), String> {
    let mut by_delta = vec![L::bottom(); replicas];
    let mut in_place = vec![L::bottom(); replicas];
    let mut produced: Vec<Vec<L>> = vec![Vec::new(); replicas];
    let mut rng = Rng::new(seed);
    for step in steps {
        match step {
            Step::Local(r, op) => {
                let r = r % replicas;
                let expected = by_delta[r].mutate(&node(r), op);
                by_delta[r].join(&expected);
                let delta = in_place[r].mutate_in_place(&node(r), op);
                if delta != expected {
                    return Err(format!("{op:?} at {r}: in place gave {delta:?}, the mutator {expected:?}"));
                }
                produced[r].push(delta);
            }
            Step::Sync { from, to } => {
                let (from, to) = (from % replicas, to % replicas);
                let mut some: Vec<&L> = produced[from].iter().filter(|_| rng.below(2) == 0).collect();
                rng.shuffle(&mut some);
                for delta in some {
                    by_delta[to].join(delta);
                    in_place[to].join(delta);
                }
            }
        }
        if by_delta != in_place {
            return Err(format!("after {step:?}: in place {in_place:?}, by delta {by_delta:?}"));
        }
    }
    let deltas: Vec<L> = produced.into_iter().flatten().collect();
    let all = fold(deltas.iter().cloned());
    let mut states = in_place;
    states.push(L::bottom());
    for state in &mut states {
        deliver(state, &deltas, &mut rng);
        if *state != all {
            return Err(format!("delivered: {state:?}, the fold of every delta: {all:?}"));
        }
    }
    Ok(())
}
