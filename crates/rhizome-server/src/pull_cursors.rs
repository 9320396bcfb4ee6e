//! How far an HTTP client's cursors are trusted (docs/http.md, "A device that moves").
//!
//! A pull's cursor, and a channel's `since` cursor, are log positions of the server that gave
//! them. A device that moved from another server (its edge, the cloud) brings that server's
//! positions, which here could skip what was written meanwhile, as a WebSocket `synced`
//! could (docs/edge.md, "Where the device left off"). So each cursor carries a tag that this
//! server drew when it started (`<position>.<tag in hex>`): a cursor with it is taken as it
//! is; any other (another server's, this one's from before a restart, one of a copy of its
//! data directory or of a log restored from a backup, or an untagged one) is trusted only up
//! to what the log records the device confirmed here ([`rhizome_store::Store::confirmed_by`],
//! by node id: each tab pulls for itself). A tagged cursor that a pull brings is one the
//! device received, so it is recorded as confirmed, the first at once and then at most every
//! [`RECORD_EVERY_MS`] per node (the memory of when is only for that: forgetting it costs a
//! write). Trusting less only costs duplicates, which clients drop by id: after a restart, at
//! most what came after each device's last record.

use rhizome_core::Position;
use rhizome_protocol::NodeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Nodes whose last record is remembered at most.
const KEPT_MAX: usize = 65_536;

/// How often a node's confirmed cursor is recorded in the log, besides its first.
pub(crate) const RECORD_EVERY_MS: i64 = 60_000;

/// What tells the cursors this server gave since it started from any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogMark {
    /// Drawn at start.
    pub tag: u64,
}

/// A cursor a pull brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Given by this server since it started.
    Ours(Position),
    /// Given by another server, or by this one before it started last, or untagged.
    Foreign(Position),
}

impl LogMark {
    /// A cursor to give for `position`.
    pub fn format(&self, position: Position) -> String {
        format!("{position}.{:x}", self.tag)
    }

    /// A cursor brought back; `None` when it is not one.
    pub fn parse(&self, text: &str) -> Option<Cursor> {
        let (position, tag) = match text.split_once('.') {
            Some((position, tag)) => (position, Some(u64::from_str_radix(tag, 16).ok()?)),
            None => (text, None),
        };
        let position: Position = position.parse().ok()?;
        Some(match tag {
            Some(tag) if tag == self.tag => Cursor::Ours(position),
            _ => Cursor::Foreign(position),
        })
    }
}

/// This server's mark and when each HTTP node's confirmed cursor was last recorded.
#[derive(Debug, Default)]
pub struct PullCursors {
    mark: OnceLock<LogMark>,
    recorded: Mutex<HashMap<NodeId, (Position, i64)>>,
}

impl PullCursors {
    /// Set once, when the server starts.
    pub(crate) fn set_mark(&self, mark: LogMark) {
        let _ = self.mark.set(mark);
    }

    /// The server's mark (tag 0 before it is set).
    pub(crate) fn mark(&self) -> LogMark {
        self.mark.get().copied().unwrap_or(LogMark { tag: 0 })
    }

    /// `node` brought `position`, a cursor of this server: the position to record as what it
    /// confirmed, if one is due now (`now_ms`); the caller records it, then calls
    /// [`PullCursors::recorded`].
    pub(crate) fn due(&self, node: &NodeId, position: Position, now_ms: i64) -> Option<Position> {
        let recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        let due = match recorded.get(node) {
            None => true,
            Some(&(last, at)) => position > last && now_ms - at >= RECORD_EVERY_MS,
        };
        (due && position > 0).then_some(position)
    }

    /// `position` was handed to the writer as what `node` confirmed, at `now_ms`.
    pub(crate) fn recorded(&self, node: &NodeId, position: Position, now_ms: i64) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if recorded.len() >= KEPT_MAX && !recorded.contains_key(node) {
            // Those due anyway go first; if none is, all (each costs one write more).
            recorded.retain(|_, &mut (_, at)| now_ms - at < RECORD_EVERY_MS);
            if recorded.len() >= KEPT_MAX {
                recorded.clear();
            }
        }
        let entry = recorded.entry(node.clone()).or_insert((0, now_ms));
        *entry = (entry.0.max(position), now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_of_this_log_is_told_from_another_logs() {
        let mark = LogMark { tag: 0xbeef };
        assert_eq!(mark.format(12), "12.beef");
        assert_eq!(mark.parse("12.beef"), Some(Cursor::Ours(12)));
        assert_eq!(mark.parse("12.bee"), Some(Cursor::Foreign(12)), "another server's");
        assert_eq!(mark.parse("40"), Some(Cursor::Foreign(40)), "untagged");
        assert_eq!(mark.parse("0"), Some(Cursor::Foreign(0)), "the start");
        for bad in ["", "x", "-1", "12.", "12.zz", ".beef", "1.2.3"] {
            assert_eq!(mark.parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_first_confirmation_is_recorded_at_once_and_later_ones_at_most_every_minute() {
        let cursors = PullCursors::default();
        let client = NodeId::from("alice:a1:t1");
        assert_eq!(cursors.due(&client, 0, 1_000), None, "nothing to record");
        assert_eq!(cursors.due(&client, 40, 1_000), Some(40));
        cursors.recorded(&client, 40, 1_000);
        assert_eq!(cursors.due(&client, 40, 2_000), None, "nothing new");
        assert_eq!(cursors.due(&client, 50, 2_000), None, "too soon");
        assert_eq!(cursors.due(&client, 50, 1_000 + RECORD_EVERY_MS), Some(50));
        assert_eq!(cursors.due(&client, 30, 1_000 + RECORD_EVERY_MS), None, "never lower");
    }
}
