//! End-to-end tests of the `rhizome` binary: the real npm `@logux/client` against it,
//! SIGKILL during heavy ingest, settings refused at start, and the load generator.

mod bench;
mod cli;
mod crash;
mod interop;
mod support;
