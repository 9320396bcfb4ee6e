//! Integration tests of `rhizome-client` against a real in-process `rhizome-server`, over real
//! sockets, with real SQLite files in temporary directories.

mod fold;
mod objects;
mod offline;
mod reconnect;
mod reference;
mod resume;
mod since;
mod support;
