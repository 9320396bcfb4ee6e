//! Rhizome's sans-IO core: the per-connection protocol state machine, log entry and routing
//! types, subscriptions and delivery decisions, limits, and the application hooks.
//!
//! No sockets, no SQL, no clocks: time is passed in as milliseconds and every hook is a trait
//! the embedding application implements.

pub mod actor;
pub mod app;
pub mod connection;
pub mod entry;
pub mod limits;
pub mod routing;
pub mod uplink;
pub mod wakeup;

pub use app::{
    ActionType, App, AuthRequest, Authenticator, ChannelPattern, ChannelType, Context, HookError, Meta,
    Params,
};
pub use connection::{CloseReason, Connection, Grant, HandshakeConfig, Identity, Incoming, Output, Role};
pub use entry::{AppendOutcome, NewEntry, Position, Status, StoredEntry};
pub use limits::Limits;
pub use routing::Routing;
