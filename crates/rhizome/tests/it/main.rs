//! End-to-end tests of the `rhizome` binary: the real npm `@logux/client` against it,
//! SIGKILL during heavy ingest, and settings refused at start.

mod cli;
mod crash;
mod interop;
mod support;
