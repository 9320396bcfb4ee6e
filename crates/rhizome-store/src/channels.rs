//! The channel index, by runs: `log_channel_runs` holds one row per stretch of consecutive
//! positions whose actions all go to one channel, not one row per action and channel. A
//! client's `sync` of actions for one channel costs one index row.
//!
//! Invariants (the writer keeps them in the transaction that appends the rows):
//! - an action routed to channel C lies within exactly one run of C; every position of a run
//!   of C holds an action routed to C;
//! - the runs of one channel do not overlap, so their order by `last` is their order by
//!   position, and reading them in that order reads the channel's actions in log order.
//!
//! Cleaning a CRDT object's deltas empties their bodies (`'{}'`) and removes the runs made only
//! of emptied rows; readers skip emptied rows of the runs that stay.

use rhizome_protocol::Channel;
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// The runs being appended to in the current transaction, not yet written.
#[derive(Debug, Default)]
pub(crate) struct ChannelRuns {
    /// `(channel, first, last)` of each open run.
    open: Vec<(Channel, i64, i64)>,
    /// Where each channel's open run is in `open`.
    index: HashMap<Channel, usize>,
    /// The run used last: the actions of a `sync` mostly go to one channel, and then adding
    /// one compares it with this run's channel and hashes nothing.
    recent: usize,
}

impl ChannelRuns {
    /// Starts a transaction: runs left open by a failed one are dropped with their rows.
    pub fn begin(&mut self) {
        self.open.clear();
        self.index.clear();
    }

    /// Records that the action at `added` goes to `channel`.
    pub fn add(&mut self, conn: &Connection, channel: &Channel, added: i64) -> rusqlite::Result<()> {
        let i = match self.open.get(self.recent) {
            Some((c, _, _)) if c == channel => self.recent,
            _ => match self.index.get(channel) {
                Some(&i) => i,
                None => {
                    self.open.push((channel.clone(), added, added));
                    self.recent = self.open.len() - 1;
                    self.index.insert(channel.clone(), self.recent);
                    return Ok(());
                }
            },
        };
        self.recent = i;
        let (channel, first, last) = &mut self.open[i];
        if *last + 1 == added {
            *last = added;
        } else if *last != added {
            // (`last == added`: the same channel twice in one action's routing.)
            write_run(conn, channel, *first, *last)?;
            (*first, *last) = (added, added);
        }
        Ok(())
    }

    /// Writes the open runs; the transaction must do this before it commits, and before it
    /// reads the channel index.
    pub fn flush(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        for (channel, first, last) in self.open.drain(..) {
            write_run(conn, &channel, first, last)?;
        }
        self.index.clear();
        Ok(())
    }
}

fn write_run(conn: &Connection, channel: &Channel, first: i64, last: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO log_channel_runs(channel, last, first) VALUES (?1, ?2, ?3)")?
        .execute(params![channel.as_str(), last, first])?;
    Ok(())
}

/// Turns a per-action channel index (`log_channels`, before format 3) into runs, and drops it.
pub(crate) fn index_from_rows(conn: &Connection) -> rusqlite::Result<()> {
    let has_rows: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'log_channels'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_rows {
        return Ok(());
    }
    {
        let mut stmt = conn.prepare("SELECT channel, added FROM log_channels ORDER BY channel, added")?;
        let mut rows = stmt.query([])?;
        let mut open: Option<(String, i64, i64)> = None;
        while let Some(row) = rows.next()? {
            let channel: String = row.get(0)?;
            let added: i64 = row.get(1)?;
            match &mut open {
                Some((c, _, last)) if *c == channel && *last + 1 == added => *last = added,
                _ => {
                    if let Some((c, first, last)) = open.replace((channel, added, added)) {
                        write_run(conn, &Channel::from(c.as_str()), first, last)?;
                    }
                }
            }
        }
        if let Some((c, first, last)) = open {
            write_run(conn, &Channel::from(c.as_str()), first, last)?;
        }
    }
    conn.execute("DROP TABLE log_channels", [])?;
    Ok(())
}
