//! How far an HTTP client's cursors are trusted (docs/http.md, "A device that moves").
//!
//! A pull's cursor, and a channel's `since` cursor, are log positions of the server that gave
//! them. A device that moved from another server (its edge, the cloud) brings that server's
//! positions, which here could skip what was addressed to it meanwhile, as a WebSocket
//! `synced` could (docs/edge.md, "Where the device left off"). So a cursor is trusted up to the
//! highest this server gave the client since it started, or, beyond that, up to what the log
//! records the client confirmed here ([`rhizome_store::Store::confirmed_by`]): a cursor a pull
//! brings is one the client received, so it is recorded as confirmed, the first at once and
//! then at most every [`RECORD_EVERY_MS`] per client. Trusting less only costs duplicates,
//! which clients drop by id.

use rhizome_core::Position;
use rhizome_protocol::ClientId;
use std::collections::HashMap;
use std::sync::Mutex;

/// Clients remembered at most; beyond, the memory starts over (a forgotten client's cursor
/// is trusted up to the log's record of it).
const KEPT_MAX: usize = 65_536;

/// How often a client's confirmed cursor is recorded in the log, besides its first: a restart
/// then sends again at most about this much of what concerns the client.
pub(crate) const RECORD_EVERY_MS: i64 = 60_000;

/// What this server knows of each HTTP client's cursors since it started.
#[derive(Debug, Default)]
pub struct PullCursors {
    clients: Mutex<HashMap<ClientId, Known>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// The highest position given to the client as a cursor.
    given: Position,
    /// The highest position recorded in the log as confirmed by it, and when.
    recorded: Position,
    recorded_at_ms: Option<i64>,
}

impl PullCursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Known>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest position this server gave `client` since it started (0 if none).
    pub(crate) fn given(&self, client: &ClientId) -> Position {
        self.lock().get(client).map_or(0, |k| k.given)
    }

    /// `client` was given `position` as a cursor.
    pub(crate) fn gave(&self, client: &ClientId, position: Position) {
        let mut clients = self.lock();
        if clients.len() >= KEPT_MAX && !clients.contains_key(client) {
            clients.clear();
        }
        let known = clients.entry(client.clone()).or_default();
        known.given = known.given.max(position);
    }

    /// `client` brought `position`, trusted: the position to record as what it confirmed, if
    /// one is due now (`now_ms`); the caller records it and then calls
    /// [`PullCursors::recorded`].
    pub(crate) fn due(&self, client: &ClientId, position: Position, now_ms: i64) -> Option<Position> {
        let clients = self.lock();
        let known = clients.get(client).copied().unwrap_or_default();
        let due = known.recorded_at_ms.is_none_or(|at| now_ms - at >= RECORD_EVERY_MS);
        (position > known.recorded && due).then_some(position)
    }

    /// `position` was handed to the writer as what `client` confirmed.
    pub(crate) fn recorded(&self, client: &ClientId, position: Position, now_ms: i64) {
        let mut clients = self.lock();
        if clients.len() >= KEPT_MAX && !clients.contains_key(client) {
            clients.clear();
        }
        let known = clients.entry(client.clone()).or_default();
        known.recorded = known.recorded.max(position);
        known.recorded_at_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_confirmation_is_recorded_at_once_and_later_ones_at_most_every_minute() {
        let cursors = PullCursors::default();
        let client = ClientId::from("alice:a1");
        assert_eq!(cursors.given(&client), 0);
        cursors.gave(&client, 40);
        cursors.gave(&client, 30);
        assert_eq!(cursors.given(&client), 40, "the highest given");
        assert_eq!(cursors.due(&client, 40, 1_000), Some(40));
        cursors.recorded(&client, 40, 1_000);
        assert_eq!(cursors.due(&client, 40, 2_000), None, "nothing new");
        assert_eq!(cursors.due(&client, 50, 2_000), None, "too soon");
        assert_eq!(cursors.due(&client, 50, 1_000 + RECORD_EVERY_MS), Some(50));
        assert_eq!(cursors.due(&client, 30, 1_000 + RECORD_EVERY_MS), None, "never lower");
    }
}
