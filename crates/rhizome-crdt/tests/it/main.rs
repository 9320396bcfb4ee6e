//! Property tests of the CRDTs: lattice laws, convergence under any delivery order,
//! duplication and grouping, and folding.

mod causal;
mod counter;
mod delivery;
mod gossip;
mod list;
mod map;
mod ops;
mod register;
mod set;
mod since;
