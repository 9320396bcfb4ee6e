//! Logux protocol 5, sans-IO: ids, message parsing and validation, id/time compression.
//!
//! Nothing here knows about sockets or clocks; callers pass frames as text and times as numbers.

pub mod backoff;
pub mod ids;
pub mod message;

pub use ids::{client_part, ActionId, Channel, ClientId, IdGenerator, NodeId, UserId};
pub use message::{
    folded_meta, parse, time_fix, Action, Codec, ConnectOptions, Message, ProtocolError, SyncBuilder,
    WireEntry, WireId, WireMeta, WireTargets, PROTOCOL,
};
