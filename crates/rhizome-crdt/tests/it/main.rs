//! Property tests of the CRDTs: lattice laws, convergence under any delivery order,
//! duplication and grouping, and folding.

mod causal;
mod delivery;
mod map;
mod set;
