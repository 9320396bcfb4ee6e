//! Causal contexts are a lattice and stay compact.

use proptest::prelude::*;
use rhizome_crdt::{CausalContext, Dot, Lattice};

fn dot() -> impl Strategy<Value = Dot> {
    (prop::sample::select(vec!["a", "b", "c"]), 1u64..12).prop_map(|(n, c)| Dot::new(n, c))
}

fn context() -> impl Strategy<Value = CausalContext> {
    prop::collection::vec(dot(), 0..20).prop_map(|dots| dots.into_iter().collect())
}

proptest! {
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
        for d in ctx.cloud() {
            prop_assert!(d.counter > ctx.vv().get(&d.node) + 1, "cloud dot {:?} should be in the vector", d);
        }
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
