//! Property tests of the CRDTs: lattice laws, convergence under any delivery order,
//! duplication and grouping, and folding.

mod causal;
mod counter;
mod gossip;
mod ops;
mod register;
