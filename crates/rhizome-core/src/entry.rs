//! Log entries: what the store keeps for every accepted action.

use crate::routing::Routing;
use rhizome_protocol::{ActionId, ClientId};
use std::sync::Arc;

/// Position of an entry in the log, assigned by the store; strictly increasing, never reused
/// (there may be gaps).
pub type Position = u64;

/// How far an action got through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Accepted and durable; the application's `process` has not finished.
    Waiting,
    /// Processed.
    Processed,
    /// Undone with this reason (`denied`, `unknownType`, `error`, …).
    Undone(String),
}

impl Status {
    /// A compact code for storage.
    pub fn code(&self) -> i64 {
        match self {
            Status::Waiting => 0,
            Status::Processed => 1,
            Status::Undone(_) => 2,
        }
    }

    /// The undo reason, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Undone(r) => Some(r),
            _ => None,
        }
    }

    /// The inverse of [`Status::code`] and [`Status::reason`].
    pub fn from_parts(code: i64, reason: Option<String>) -> Status {
        match code {
            0 => Status::Waiting,
            1 => Status::Processed,
            _ => Status::Undone(reason.unwrap_or_else(|| "error".to_owned())),
        }
    }
}

/// An action to append.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Its id; the store refuses a second entry with the same id.
    pub id: ActionId,
    /// Creation time, in the server's clock.
    pub time: i64,
    /// The action as JSON text.
    pub action_json: Arc<str>,
    /// The action's subprotocol.
    pub subprotocol: u64,
    /// Who receives it.
    pub routing: Routing,
    /// Status at append time.
    pub status: Status,
}

impl NewEntry {
    /// The author's client id.
    pub fn author(&self) -> ClientId {
        self.id.client_id()
    }
}

/// An entry read back from (or just written to) the log.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    /// Its position.
    pub added: Position,
    /// Its id.
    pub id: ActionId,
    /// Creation time, in the server's clock.
    pub time: i64,
    /// The action as JSON text.
    pub action_json: Arc<str>,
    /// The action's subprotocol.
    pub subprotocol: u64,
    /// Who receives it.
    pub routing: Routing,
    /// For a CRDT operation just applied: the object's key and the delta, so that deltas of
    /// one object delivered together can be joined into one. `None` for entries read back.
    pub crdt: Option<Arc<(String, rhizome_crdt::Object)>>,
}

/// What an append did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this position.
    Added(Position),
    /// Stored at this position, but undone with this reason by the store itself (a CRDT
    /// operation that its object refused); nobody receives it.
    Undone(Position, String),
    /// The id was already in the log, with this status: nothing was written. Also a CRDT
    /// delta from the upstream that its object held already (nothing to keep or send).
    Duplicate(Status),
}
