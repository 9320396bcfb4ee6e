//! Causal contexts are a lattice and stay compact.

use proptest::prelude::*;
use rhizome_crdt::{CausalContext, Dot, Lattice, NodeId};
use std::collections::BTreeSet;

fn dot() -> impl Strategy<Value = Dot> {
    (prop::sample::select(vec!["a", "b", "c"]), 1u64..12).prop_map(|(n, c)| Dot::new(n, c))
}

/// A context of a few dots and runs.
fn context() -> impl Strategy<Value = CausalContext> {
    (prop::collection::vec(dot(), 0..20), runs()).prop_map(|(dots, runs)| {
        let mut ctx: CausalContext = dots.into_iter().collect();
        for (node, first, last) in runs {
            ctx.insert_run(&NodeId::from(node), first, last);
        }
        ctx
    })
}

/// Runs of one node: up to 8 runs of up to 5 dots, counters below 40.
fn runs() -> impl Strategy<Value = Vec<(&'static str, u64, u64)>> {
    let run = (prop::sample::select(vec!["a", "b", "c"]), 1u64..36, 0u64..5)
        .prop_map(|(n, f, len)| (n, f, f + len));
    prop::collection::vec(run, 0..8)
}

/// The dots of `ctx` for the nodes and counters the strategies use.
fn dots_of(ctx: &CausalContext) -> BTreeSet<Dot> {
    let all = ["a", "b", "c"].into_iter().flat_map(|n| (1..45).map(move |c| Dot::new(n, c)));
    all.filter(|d| ctx.contains(d)).collect()
}

/// Compact: no run touches its node's prefix, runs of a node are apart and in order.
fn compact(ctx: &CausalContext) -> Result<(), TestCaseError> {
    let mut previous: Option<(&NodeId, u64)> = None;
    for (node, first, last) in ctx.cloud() {
        prop_assert!(first <= last);
        prop_assert!(first > ctx.vv().get(node) + 1, "run {node} {first}..{last} should be in the vector");
        if let Some((n, end)) = previous.filter(|(n, _)| *n == node) {
            prop_assert!(first > end + 1, "runs of {} touch", n);
        }
        previous = Some((node, last));
    }
    Ok(())
}

proptest! {
    #[test]
    fn runs_hold_exactly_their_dots_and_stay_compact(runs in runs(), holes in prop::collection::vec(dot(), 0..10)) {
        let mut ctx = CausalContext::new();
        let mut model = BTreeSet::new();
        for (node, first, last) in runs {
            ctx.insert_run(&NodeId::from(node), first, last);
            model.extend((first..=last).map(|c| Dot::new(node, c)));
        }
        prop_assert_eq!(dots_of(&ctx), model.clone());
        compact(&ctx)?;
        prop_assert_eq!(&model.iter().cloned().collect::<CausalContext>(), &ctx, "one representation");
        let holes: BTreeSet<Dot> = holes.into_iter().collect();
        let cut = ctx.without(&holes);
        prop_assert_eq!(dots_of(&cut), model.difference(&holes).cloned().collect::<BTreeSet<_>>());
        compact(&cut)?;
        prop_assert!(cut.le(&ctx));
        prop_assert_eq!(ctx.le(&cut), holes.iter().all(|h| !model.contains(h)));
        for node in ["a", "b", "c", "d"] {
            let highest = model.iter().filter(|d| d.node.as_str() == node).map(|d| d.counter).max();
            prop_assert_eq!(ctx.next_dot(&NodeId::from(node)).counter, highest.unwrap_or(0) + 1);
        }
    }

    #[test]
    fn join_is_a_lattice(a in context(), b in context(), c in context()) {
        let mut ab = a.clone();
        ab.join(&b);
        let mut ba = b.clone();
        ba.join(&a);
        prop_assert_eq!(&ab, &ba, "commutative");
        let mut ab_c = ab.clone();
        ab_c.join(&c);
        let mut bc = b.clone();
        bc.join(&c);
        let mut a_bc = a.clone();
        a_bc.join(&bc);
        prop_assert_eq!(&ab_c, &a_bc, "associative");
        let mut aa = a.clone();
        aa.join(&a);
        prop_assert_eq!(&aa, &a, "idempotent");
        prop_assert!(a.le(&ab) && b.le(&ab), "upper bound");
    }

    #[test]
    fn a_context_holds_exactly_its_dots_and_stays_compact(dots in prop::collection::vec(dot(), 0..30)) {
        let ctx: CausalContext = dots.iter().cloned().collect();
        for node in ["a", "b", "c", "d"] {
            for counter in 1..14 {
                let d = Dot::new(node, counter);
                prop_assert_eq!(ctx.contains(&d), dots.contains(&d), "{:?}", d);
            }
        }
        compact(&ctx)?;
    }

    #[test]
    fn a_join_equals_the_context_of_both_sides_dots(
        left in prop::collection::vec(dot(), 0..30),
        right in prop::collection::vec(dot(), 0..30),
    ) {
        let mut joined: CausalContext = left.iter().cloned().collect();
        joined.join(&right.iter().cloned().collect());
        let union: CausalContext = left.into_iter().chain(right).collect();
        prop_assert_eq!(joined, union);
    }
}
