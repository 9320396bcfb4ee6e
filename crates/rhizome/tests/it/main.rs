//! End-to-end tests of the `rhizome` binary: the real npm `@logux/client` against it, and
//! SIGKILL during heavy ingest.

mod crash;
mod interop;
mod support;
