//! Finding a logged action by its id, without an index row per action.
//!
//! Every action id must be found again: a re-sent id is answered from its first copy and never
//! processed twice. A `UNIQUE` index on the id text cost an index insert per appended action,
//! about a fifth of the writer's time. Instead, the log's ids are indexed by *runs*: a run is
//! a stretch of consecutive positions holding actions of one author node, and `log_runs` keeps
//! one row per run: the node, the least and greatest id key of its actions, and its first and
//! last position. A client's ids grow, so the actions of one `sync` make one run and cost one
//! index row.
//!
//! An id's *key* is its `(ms, seq)` as numbers, so it grows with the ids a node generates.
//! Different texts may share a key (`"01 n 1"` and `"1 n 1"`); the key only narrows where an
//! id may be, and rows are then compared by their text.
//!
//! Appending needs no lookup at all for an id whose key is above every key of its node logged
//! so far (the node's *high-water mark*), which is every new action of a client whose clock
//! does not go back: the writer keeps the marks of the nodes it has seen in memory. Only such
//! ids go into runs. An id at or below its node's mark that is not logged yet (a clock gone
//! back) is a *late* id: it gets a row of its own in `log_late_ids`, as every id did under the
//! `UNIQUE` index. So a node's runs follow one another in key order, and an id can only be in
//! the first run of its node ending at or above its key: a lookup reads one run, however many
//! the node has and whatever its clock did, where overlapping runs made a lookup that finds
//! nothing read every run of the node ending above the key.
//!
//! Invariants (the writer keeps them in the transaction that appends the rows):
//! - every logged action lies within a run of its node whose key range holds its key, or has
//!   a row in `log_late_ids`;
//! - the runs of one node do not overlap in keys: each one's least key is above the greatest
//!   of every run of the node written before it;
//! - a run spans at most [`RUN_ROWS_MAX`] positions, so finding an id reads at most that many
//!   rows;
//! - an *alias*, the id of a delta a peer folded into a logged one (`Append::folded`), has a
//!   row in `log_late_ids` at that one's position unless it had one already (an id logged in
//!   a run may have one too: the run is looked in first); one whose key was above its node's
//!   mark also has a run of its own (its key alone, at that position), which raises the mark.

use rhizome_protocol::{ActionId, NodeId};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// Most positions one run spans.
pub(crate) const RUN_ROWS_MAX: i64 = 256;

/// High-water marks kept by the writer at most; beyond, the map starts over between two
/// transactions (a forgotten mark costs one index read when its node appends again).
const MARKS_MAX: usize = 1 << 16;

/// An id's `(ms, seq)`, encoded so that byte order is numeric order.
pub(crate) type Key = [u8; 16];

pub(crate) fn key(id: &ActionId) -> Key {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&((id.ms as u64) ^ (1 << 63)).to_be_bytes());
    out[8..].copy_from_slice(&id.seq.to_be_bytes());
    out
}

/// The position and stored status of the action with this id, if it is logged.
pub(crate) fn find(conn: &Connection, id: &ActionId, text: &str) -> rusqlite::Result<Option<Found>> {
    let key = key(id);
    let found = |r: &rusqlite::Row<'_>| Ok(Found { added: r.get(0)?, status: r.get(1)?, reason: r.get(2)? });
    // The node's runs do not overlap: only the first ending at or above the key may hold it.
    let mut in_run = conn.prepare_cached(
        "SELECT l.added, l.status, l.reason FROM (
             SELECT first, last, first_key FROM log_runs WHERE node = ?1 AND last_key >= ?2
             ORDER BY last_key LIMIT 1) AS r
         JOIN log AS l ON l.added BETWEEN r.first AND r.last
         WHERE r.first_key <= ?2 AND l.id = ?3
         LIMIT 1",
    )?;
    if let Some(f) = in_run.query_row(params![id.node.as_str(), &key[..], text], found).optional()? {
        return Ok(Some(f));
    }
    let mut late = conn.prepare_cached(
        "SELECT l.added, l.status, l.reason FROM log_late_ids AS i JOIN log AS l ON l.added = i.added
         WHERE i.id = ?1",
    )?;
    late.query_row([text], found).optional()
}

/// A logged action, as [`find`] finds it.
#[derive(Debug)]
pub(crate) struct Found {
    pub added: i64,
    pub status: i64,
    pub reason: Option<String>,
}

/// The greatest id key of `node` in the log (`None`: no action of it).
fn high_water(conn: &Connection, node: &NodeId) -> rusqlite::Result<Option<Key>> {
    let mut stmt =
        conn.prepare_cached("SELECT last_key FROM log_runs WHERE node = ?1 ORDER BY last_key DESC LIMIT 1")?;
    let blob: Option<Vec<u8>> = stmt.query_row([node.as_str()], |r| r.get(0)).optional()?;
    // A stored key is 16 bytes; anything else (a file changed by something else) marks nothing
    // as new: every id of the node is then looked up.
    Ok(blob.map(|b| Key::try_from(b.as_slice()).unwrap_or([u8::MAX; 16])))
}

/// The run being appended to, not yet written to `log_runs`.
#[derive(Debug)]
struct Run {
    node: NodeId,
    first_key: Key,
    last_key: Key,
    first: i64,
    last: i64,
}

/// The writer's side: high-water marks and the open run.
#[derive(Debug, Default)]
pub(crate) struct RunIndex {
    /// Per node, its greatest key in `log_runs` (`None`: nothing logged), counting this
    /// transaction's. A mark too low would let a duplicate in. One too high (left by a
    /// transaction that failed) would send an id to `log_late_ids` above every key of its
    /// node's runs, where a mark read again from `log_runs` (after a restart) would not cover
    /// it: marks are forgotten after a transaction that did not commit.
    ///
    /// The mark of the open run's node is that run's `last_key`, and reaches this map when the
    /// run is written: appending to the open run hashes nothing.
    marks: HashMap<NodeId, Option<Key>>,
    open: Option<Run>,
    /// A transaction has begun and not committed.
    in_transaction: bool,
}

impl RunIndex {
    /// Starts a transaction: a run left open by a failed one is dropped with its rows, and
    /// the marks it raised are forgotten.
    pub fn begin(&mut self) {
        self.open = None;
        if self.in_transaction || self.marks.len() > MARKS_MAX {
            self.marks.clear();
        }
        self.in_transaction = true;
    }

    /// The transaction begun last has committed: its marks are those of the log.
    pub fn committed(&mut self) {
        self.in_transaction = false;
    }

    /// Forgets every mark: the log was written by another connection, so marks may be below
    /// its ids. Each node's mark is read again from the index when it next appends.
    pub fn forget(&mut self) {
        debug_assert!(self.open.is_none(), "marks are forgotten between transactions");
        self.marks.clear();
    }

    /// The mark of `node`: the open run's, or the map's, or (a node not seen yet) its greatest
    /// key in `log_runs`.
    fn mark(&mut self, conn: &Connection, node: &NodeId) -> rusqlite::Result<Option<Key>> {
        if let Some(run) = &self.open {
            if run.node == *node {
                return Ok(Some(run.last_key));
            }
        }
        if let Some(mark) = self.marks.get(node) {
            return Ok(*mark);
        }
        // A node's rows are in `log_runs` but those of the open run, which is another node's.
        let mark = high_water(conn, node)?;
        self.marks.insert(node.clone(), mark);
        Ok(mark)
    }

    /// The logged action with this id, if any. Cheap for an id above its node's mark.
    pub fn find(&mut self, conn: &Connection, id: &ActionId, text: &str) -> rusqlite::Result<Option<Found>> {
        let mark = self.mark(conn, &id.node)?;
        if mark.is_none_or(|mark| key(id) > mark) {
            return Ok(None);
        }
        self.flush(conn)?;
        find(conn, id, text)
    }

    /// Records that the action `id` (`text`) was appended at `added`: in a run when its key is
    /// above its node's mark, else as a late id.
    pub fn appended(
        &mut self,
        conn: &Connection,
        id: &ActionId,
        text: &str,
        added: i64,
    ) -> rusqlite::Result<()> {
        let k = key(id);
        if self.mark(conn, &id.node)?.is_some_and(|m| k <= m) {
            return write_late(conn, text, added);
        }
        // The open run of this node (extended, or opened) now holds its mark.
        self.extend(conn, &id.node, k, added)
    }

    /// Records `id` as another id of the action at `added` (a delta folded into it, see
    /// `Append::folded`). Nothing is looked up: an id logged in a run is found there first
    /// whatever `log_late_ids` says, and one there already keeps its row.
    pub fn alias(&mut self, conn: &Connection, id: &ActionId, added: i64) -> rusqlite::Result<()> {
        let text = id.text();
        let k = key(id);
        if self.mark(conn, &id.node)?.is_none_or(|m| k > m) {
            // Above the node's mark: a run of its key alone (whose row has another id) raises
            // the mark, so that `find` looks for it, in `log_late_ids`.
            self.flush(conn)?;
            write_run(conn, id.node.as_str(), &k, &k, added, added)?;
            self.marks.insert(id.node.clone(), Some(k));
        }
        conn.prepare_cached("INSERT OR IGNORE INTO log_late_ids(id, added) VALUES (?1, ?2)")?
            .execute(params![text, added])?;
        Ok(())
    }

    /// Adds the action at `added` to the open run, or opens a new one.
    fn extend(&mut self, conn: &Connection, node: &NodeId, k: Key, added: i64) -> rusqlite::Result<()> {
        if let Some(run) = &mut self.open {
            if run.node == *node && added == run.last + 1 && added - run.first < RUN_ROWS_MAX {
                // `k` is above the node's mark, the run's `last_key`: it becomes the new one.
                run.last = added;
                run.last_key = k;
                return Ok(());
            }
        }
        self.flush(conn)?;
        self.open = Some(Run { node: node.clone(), first_key: k, last_key: k, first: added, last: added });
        Ok(())
    }

    /// Writes the open run to `log_runs`, its node's mark to the map; the transaction must do
    /// this before it commits.
    pub fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if let Some(run) = self.open.take() {
            write_run(conn, run.node.as_str(), &run.first_key, &run.last_key, run.first, run.last)?;
            self.marks.insert(run.node, Some(run.last_key));
        }
        Ok(())
    }
}

fn write_late(conn: &Connection, text: &str, added: i64) -> rusqlite::Result<()> {
    // The id was looked up first and not found: a row already there would mean an id logged
    // twice, and the transaction fails rather than log it.
    conn.prepare_cached("INSERT INTO log_late_ids(id, added) VALUES (?1, ?2)")?
        .execute(params![text, added])?;
    Ok(())
}

fn write_run(
    conn: &Connection,
    node: &str,
    first_key: &Key,
    last_key: &Key,
    first: i64,
    last: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO log_runs(node, last_key, first_key, first, last) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![node, &last_key[..], &first_key[..], first, last])?;
    Ok(())
}

/// Indexes every row of `log` by runs and late ids, as the writer would have (for a log
/// written before the index existed). The marks of every node of the log are held meanwhile.
pub(crate) fn index_all(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM log_runs", [])?;
    conn.execute("DELETE FROM log_late_ids", [])?;
    let mut index = RunIndex::default();
    let mut stmt = conn.prepare("SELECT added, id FROM log ORDER BY added")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let added: i64 = row.get(0)?;
        let text: String = row.get(1)?;
        // An id that does not parse cannot equal one that is looked up (those parse).
        if let Some(id) = ActionId::parse(&text) {
            index.appended(conn, &id, &text, added)?;
        }
    }
    index.flush(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ActionId {
        ActionId::parse(s).expect("id")
    }

    #[test]
    fn keys_order_as_numbers() {
        let ordered = ["-5 a 0", "0 a 0", "0 a 1", "0 a 10", "9 a 0", "10 a 0", "10 a 18446744073709551615"];
        for pair in ordered.windows(2) {
            assert!(key(&id(pair[0])) < key(&id(pair[1])), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(key(&id("01 a 1")), key(&id("1 a 1")), "texts may share a key");
    }
}
