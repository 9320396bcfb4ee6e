//! End-to-end tests of the `rhizome` binary: the real npm `@logux/client` against it,
//! SIGKILL during heavy ingest, settings refused at start, the Rust client, the load generator
//! and the simulator.

mod bench;
mod cli;
mod client;
mod crash;
mod edge;
mod interop;
mod sim;
mod support;
