//! Rhizome's conflict-free replicated data types, as delta-state CRDTs (Almeida, Shoker,
//! Baquero, "Delta State Replicated Data Types", 2018), pure: no I/O, no clock, no randomness.
//!
//! Every type is a join-semilattice ([`Lattice`]): `join` is commutative, associative and
//! idempotent, so replicas converge whatever the order, duplication or grouping of what they
//! exchange. Every mutation is a *delta mutator*: it returns a small value of the same type
//! (the delta) that the caller joins into its state and ships to others. Deltas join into
//! delta-groups, so any chain of operations on one object folds into one delta ([`fold`]).
//! The counter and the add-wins set also apply a local operation in place and return the same
//! delta ([`PnCounter::apply_inc`], [`Orswot::apply_add`], …), which skips building a delta
//! value and joining it.
//!
//! Events are identified by [`Dot`]s: a node id and a dense per-node counter (1, 2, 3, … with
//! no gaps), so a [`CausalContext`] summarises "everything node n did up to c" in one integer.

mod causal;
mod counter;
mod delta;
mod dotset;
mod list;
mod map;
pub mod object;
pub mod ops;
mod register;
mod set;
mod since;

pub use causal::{CausalContext, Dot, VersionVector};
pub use counter::{PnCounter, PnDelta, PnEntry};
pub use delta::{delta_action, parse_delta, replaces, state_action, DELTA_TYPE};
pub use list::{ListElem, PartsError as ListPartsError, Rga};
pub use map::{
    join_causal, DotChanges, DotFun, DotList, DotMap, DotSet, DotStore, Kind as ValueKind, LwwEntry,
    MapError, OrMap, Scalar, Value, ValueDelta, ValueRef,
};
pub use object::{Kind, Object};
pub use ops::OpError;
pub use register::{LwwRegister, MvRegister, Stamp};
pub use rhizome_protocol::NodeId;
pub use set::{ClSet, Orswot, OrswotDelta};
pub use since::{catch_up_action, parse_seen};

/// A join-semilattice: the state of a CRDT.
pub trait Lattice: Clone + PartialEq {
    /// The bottom element: the state before anything happened.
    fn bottom() -> Self;

    /// Joins `other` into `self` (least upper bound). Commutative, associative, idempotent.
    fn join(&mut self, other: &Self);

    /// Whether this is the bottom element.
    fn is_bottom(&self) -> bool {
        *self == Self::bottom()
    }
}

/// Folds a sequence of deltas (in any order) into one delta-group: applying it to any state
/// gives the same result as applying each delta in turn.
pub fn fold<L: Lattice>(deltas: impl IntoIterator<Item = L>) -> L {
    let mut group = L::bottom();
    for delta in deltas {
        group.join(&delta);
    }
    group
}
