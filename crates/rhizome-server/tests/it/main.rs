//! Integration tests of the server over real sockets: a server runs in-process on port 0 with a
//! temporary log, and each test talks protocol 5 to it with tokio-tungstenite.
//!
//! Every test that feeds the server bad input also checks that a fresh client is still served.

mod access;
mod auth;
mod bad_input;
mod crdt;
mod delivery;
mod edge;
mod handshake;
mod http_edge;
mod http_openapi;
mod http_pull;
mod http_push;
mod load;
mod park;
mod peer;
mod process;
mod push_service;
mod simulation;
mod since;
mod storage;
mod support;
mod wakeup;
