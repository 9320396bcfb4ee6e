//! Sets: the ORSWOT and the causal-length set are lattices that converge, follow their
//! add-wins and causal-length rules, and the ORSWOT reads like `crdts::Orswot`.

use crate::delivery::{check_in_place, generic_laws, node, InPlace, Replicated, Run, Step};
use proptest::prelude::*;
use rhizome_crdt::{fold, ClSet, Dot, Lattice, NodeId, Orswot, VersionVector};
use std::collections::{BTreeSet, HashSet};

/// An op on a set of small integers.
#[derive(Clone, Debug)]
pub enum SetOp {
    Add(u8),
    Remove(u8),
}

fn set_op() -> impl Strategy<Value = SetOp> {
    prop_oneof![(0u8..5).prop_map(SetOp::Add), (0u8..5).prop_map(SetOp::Remove)]
}

impl Replicated for Orswot<u8> {
    type Op = SetOp;

    fn mutate(&self, node: &NodeId, op: &SetOp) -> Self {
        match op {
            SetOp::Add(e) => self.add(self.context().next_dot(node), *e),
            SetOp::Remove(e) => self.remove(e),
        }
    }
}

impl Replicated for ClSet<u8> {
    type Op = SetOp;

    fn mutate(&self, _node: &NodeId, op: &SetOp) -> Self {
        match op {
            SetOp::Add(e) => self.add(*e),
            SetOp::Remove(e) => self.remove(e),
        }
    }
}

impl InPlace for Orswot<u8> {
    fn mutate_in_place(&mut self, node: &NodeId, op: &SetOp) -> Self {
        let delta = match op {
            SetOp::Add(e) => self.apply_add(self.context().next_dot(node), *e),
            SetOp::Remove(e) => self.apply_remove(e),
        };
        delta.to_orswot()
    }
}

generic_laws!(orswot, Orswot<u8>, super::set_op());
generic_laws!(clset, ClSet<u8>, super::set_op());

/// An ORSWOT op as the server may make it: an add under a given counter of the replica's node
/// (seen already, or past a gap), or a remove that covers only the dots of `seen`. (Only the
/// replica's own node: a dot made by two replicas for two elements would not converge.)
#[derive(Clone, Debug)]
pub enum AnySetOp {
    Add(u8),
    AddAt(u8, u64),
    Remove(u8),
    RemoveSeen(u8, Vec<(usize, u64)>),
}

fn any_set_op() -> impl Strategy<Value = AnySetOp> {
    prop_oneof![
        (0u8..5).prop_map(AnySetOp::Add),
        (0u8..5, 1u64..8).prop_map(|(e, c)| AnySetOp::AddAt(e, c)),
        (0u8..5).prop_map(AnySetOp::Remove),
        (0u8..5, prop::collection::vec((0usize..4, 0u64..6), 0..3))
            .prop_map(|(e, seen)| AnySetOp::RemoveSeen(e, seen)),
    ]
}

fn seen_of(seen: &[(usize, u64)]) -> VersionVector {
    seen.iter().map(|(n, c)| (node(*n), *c)).collect()
}

/// A second, distinct type for the same set, so that it can have the wider ops.
#[derive(Clone, Debug, PartialEq, Default)]
struct ServerSet(Orswot<u8>);

impl Lattice for ServerSet {
    fn bottom() -> Self {
        ServerSet::default()
    }

    fn join(&mut self, other: &Self) {
        self.0.join(&other.0);
    }
}

impl Replicated for ServerSet {
    type Op = AnySetOp;

    fn mutate(&self, node: &NodeId, op: &AnySetOp) -> Self {
        ServerSet(match op {
            AnySetOp::Add(e) => self.0.add(self.0.context().next_dot(node), *e),
            AnySetOp::AddAt(e, c) => self.0.add(Dot { node: node.clone(), counter: *c }, *e),
            AnySetOp::Remove(e) => self.0.remove(e),
            AnySetOp::RemoveSeen(e, seen) => self.0.remove_seen(e, &seen_of(seen)),
        })
    }
}

impl InPlace for ServerSet {
    fn mutate_in_place(&mut self, node: &NodeId, op: &AnySetOp) -> Self {
        let delta = match op {
            AnySetOp::Add(e) => self.0.apply_add(self.0.context().next_dot(node), *e),
            AnySetOp::AddAt(e, c) => self.0.apply_add(Dot { node: node.clone(), counter: *c }, *e),
            AnySetOp::Remove(e) => self.0.apply_remove(e),
            AnySetOp::RemoveSeen(e, seen) => self.0.apply_remove_seen(e, &seen_of(seen)),
        };
        ServerSet(delta.to_orswot())
    }
}

/// One replica of the differential test: our ORSWOT and the oracle's, fed the same ops.
struct Twin {
    ours: Orswot<u8>,
    theirs: crdts::Orswot<u8, String>,
    /// The ops applied here, by index into the shared op table, in the order applied.
    log: Vec<usize>,
    applied: HashSet<usize>,
}

impl Twin {
    fn apply(&mut self, id: usize, ops: &[(crdts::orswot::Op<u8, String>, Orswot<u8>)]) {
        use crdts::CmRDT;
        if self.applied.insert(id) {
            let (theirs, ours) = &ops[id];
            self.theirs.apply(theirs.clone());
            self.ours.join(ours);
            self.log.push(id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Add-wins semantics, from the causal histories: after full delivery an element is present
    /// iff some add of it was seen by no remove of it (an add "seen" = its dot was in the
    /// remover's context).
    #[test]
    fn orswot_matches_the_add_wins_specification(replicas in 3usize..=4, steps in crate::delivery::steps(set_op(), 40)) {
        let mut run = Run::<Orswot<u8>>::new(replicas);
        run.play(&steps);
        let all = fold(run.deltas());
        for e in 0u8..5 {
            let adds: Vec<&Dot> = run.log.iter()
                .filter(|a| matches!(a.op, SetOp::Add(x) if x == e))
                .flat_map(|a| a.delta.dots(&e))
                .collect();
            let removes: Vec<_> = run.log.iter()
                .filter(|a| matches!(a.op, SetOp::Remove(x) if x == e))
                .map(|a| a.before.context())
                .collect();
            let expected = adds.iter().any(|dot| !removes.iter().any(|seen| seen.contains(dot)));
            prop_assert_eq!(all.contains(&e), expected, "element {}", e);
            // An add retires the element's dots it saw, so each node's later add replaces
            // its earlier ones: at most one dot per node per element.
            let nodes: Vec<_> = all.dots(&e).map(|d| &d.node).collect();
            let distinct: BTreeSet<_> = nodes.iter().collect();
            prop_assert_eq!(nodes.len(), distinct.len(), "element {} has dots {:?}", e, nodes);
        }
    }

    #[test]
    fn orswot_add_wins_over_a_concurrent_remove(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(set_op(), 30),
        e in 0u8..5,
    ) {
        let mut run = Run::<Orswot<u8>>::new(replicas);
        run.play(&steps);
        run.play(&[
            Step::Local(0, SetOp::Add(e)),
            Step::Sync { from: 0, to: 1 },
            Step::Local(0, SetOp::Remove(e)),
            Step::Local(1, SetOp::Add(e)),
        ]);
        run.sync_all();
        for state in &run.states {
            prop_assert!(state.contains(&e));
        }
    }

    #[test]
    fn orswot_remove_after_observing_every_add_removes_it(
        replicas in 3usize..=4,
        steps in crate::delivery::steps(set_op(), 30),
        e in 0u8..5,
    ) {
        let mut run = Run::<Orswot<u8>>::new(replicas);
        run.play(&steps);
        run.sync_all();
        run.play(&[Step::Local(0, SetOp::Add(e)), Step::Sync { from: 0, to: 1 }, Step::Local(1, SetOp::Remove(e))]);
        run.sync_all();
        for state in &run.states {
            prop_assert!(!state.contains(&e));
        }
    }

    /// Differential test against `crdts::Orswot` (riak_dt's ORSWOT, op-based): the same ops
    /// from several actors, delivered in the same causal order (a sync replays the sender's
    /// ops in the order it applied them) to both. After every step each replica's elements
    /// must equal the oracle's read, and our context (gap-free under causal delivery) must
    /// equal the oracle's clock: both number each actor's adds 1, 2, 3, …
    #[test]
    fn orswot_matches_crdts_orswot(replicas in 3usize..=4, steps in crate::delivery::steps(set_op(), 50)) {
        let mut twins: Vec<Twin> = (0..replicas)
            .map(|_| Twin { ours: Orswot::new(), theirs: crdts::Orswot::new(), log: Vec::new(), applied: HashSet::new() })
            .collect();
        let mut ops = Vec::new();
        let ring: Vec<_> = (0..2 * replicas).map(|i| Step::Sync { from: i % replicas, to: (i + 1) % replicas }).collect();
        for step in steps.iter().chain(&ring) {
            match step {
                Step::Local(r, op) => {
                    let r = r % replicas;
                    let actor = format!("n{r}");
                    let twin = &twins[r];
                    let theirs = match op {
                        SetOp::Add(e) => twin.theirs.add(*e, twin.theirs.read_ctx().derive_add_ctx(actor)),
                        SetOp::Remove(e) => twin.theirs.rm(*e, twin.theirs.contains(e).derive_rm_ctx()),
                    };
                    ops.push((theirs, twin.ours.mutate(&node(r), op)));
                    twins[r].apply(ops.len() - 1, &ops);
                }
                Step::Sync { from, to } => {
                    let (from, to) = (from % replicas, to % replicas);
                    for id in twins[from].log.clone() {
                        twins[to].apply(id, &ops);
                    }
                }
            }
            for twin in &twins {
                let theirs: BTreeSet<u8> = twin.theirs.read().val.into_iter().collect();
                prop_assert_eq!(twin.ours.elements(), theirs);
                prop_assert_eq!(twin.ours.context().cloud().count(), 0);
                let clock = twin.theirs.clock();
                for r in 0..replicas {
                    prop_assert_eq!(twin.ours.context().vv().get(&node(r)), clock.get(&format!("n{r}")));
                }
            }
        }
        for twin in &twins {
            prop_assert_eq!(&twin.ours, &twins[0].ours, "after the ring every replica has every op");
        }
    }

    /// Adds and removes applied in place give the states and deltas of the delta mutators
    /// joined, and those deltas converge in any order.
    #[test]
    fn orswot_in_place_ops_equal_delta_and_join(
        replicas in 2usize..=4,
        steps in crate::delivery::steps(set_op(), 60),
        seed in any::<u64>(),
    ) {
        prop_assert_eq!(check_in_place::<Orswot<u8>>(replicas, &steps, seed), Ok(()));
    }

    /// The same for the ops the server also makes: an add under any dot (one already seen,
    /// or one past a gap, which lands in the context's cloud) and a remove limited by `seen`.
    #[test]
    fn orswot_in_place_ops_with_any_dot_or_seen_equal_delta_and_join(
        replicas in 2usize..=4,
        steps in crate::delivery::steps(any_set_op(), 60),
        seed in any::<u64>(),
    ) {
        prop_assert_eq!(check_in_place::<ServerSet>(replicas, &steps, seed), Ok(()));
    }

    /// A causal-length set ends with each element's longest history: its length is the
    /// greatest any delta carried, and it is present iff that length is odd.
    #[test]
    fn clset_lengths_are_the_longest_history(replicas in 3usize..=4, steps in crate::delivery::steps(set_op(), 40)) {
        let mut run = Run::<ClSet<u8>>::new(replicas);
        run.play(&steps);
        let all = fold(run.deltas());
        for e in 0u8..5 {
            let longest = run.log.iter().map(|a| a.delta.length(&e)).max().unwrap_or(0);
            prop_assert_eq!(all.length(&e), longest);
            prop_assert_eq!(all.contains(&e), longest % 2 == 1);
        }
    }

    /// Replicas that make the same change from the same state agree: two adds of an absent
    /// element (or two removes of a present one) give the same length, so the join is that.
    #[test]
    fn clset_concurrent_identical_changes_agree(
        steps in crate::delivery::steps(set_op(), 30),
        e in 0u8..5,
    ) {
        let mut run = Run::<ClSet<u8>>::new(2);
        run.play(&steps);
        run.sync_all();
        let before = run.states[0].length(&e);
        let op = if before % 2 == 1 { SetOp::Remove(e) } else { SetOp::Add(e) };
        run.play(&[Step::Local(0, op.clone()), Step::Local(1, op)]);
        run.sync_all();
        prop_assert_eq!(run.states[0].length(&e), before + 1);
        prop_assert_eq!(run.states[0].contains(&e), before % 2 != 1, "the change took effect once");
    }

    /// Concurrent histories of different lengths: the longer one wins, whichever way it
    /// ends. From an absent element, add-remove (length +2) beats a concurrent add (+1),
    /// and add-remove-add (+3) beats a concurrent add-remove (+2).
    #[test]
    fn clset_the_longer_history_wins(steps in crate::delivery::steps(set_op(), 30), e in 0u8..5) {
        let mut run = Run::<ClSet<u8>>::new(2);
        run.play(&steps);
        run.sync_all();
        run.play(&[Step::Local(0, SetOp::Remove(e)), Step::Sync { from: 0, to: 1 }]);
        let base = run.clone();
        let start = run.states[0].length(&e);
        prop_assert_eq!(start % 2, 0, "absent");
        run.play(&[Step::Local(0, SetOp::Add(e)), Step::Local(0, SetOp::Remove(e)), Step::Local(1, SetOp::Add(e))]);
        run.sync_all();
        prop_assert_eq!(run.states[1].length(&e), start + 2);
        prop_assert!(!run.states[1].contains(&e), "the remove after the add wins over the concurrent add");

        let mut run = base;
        run.play(&[
            Step::Local(0, SetOp::Add(e)), Step::Local(0, SetOp::Remove(e)), Step::Local(0, SetOp::Add(e)),
            Step::Local(1, SetOp::Add(e)), Step::Local(1, SetOp::Remove(e)),
        ]);
        run.sync_all();
        prop_assert_eq!(run.states[1].length(&e), start + 3);
        prop_assert!(run.states[1].contains(&e));
    }
}
