//! The durable local log in SQLite: the queue of the app's actions until the server answers
//! them, the received actions, subscriptions with their `since`, undo records, the CRDT
//! objects joined from the `crdt/delta` actions received, and the counters the protocol
//! resumes from.
//!
//! Everything here is blocking; the async side calls it through `spawn_blocking`.

use crate::ClientError;
use rhizome_crdt::{Kind, Object, VersionVector};
use rhizome_protocol::{ActionId, IdGenerator, NodeId};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::path::Path;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, int INTEGER, text TEXT) WITHOUT ROWID;
-- The app's actions. `added` (AUTOINCREMENT: never reused, even after deletes) is the
-- protocol's `added` of our side. `acked` = 1 once the server confirmed it with `synced`:
-- then the action is durable on the server and is never sent again.
-- No index on `id` either: our ids grow with `added`, so one is found by a binary search on
-- `added` (`Store::find_queued`), and answers to the rows of this session are matched by
-- `added` in memory; an index would cost a B-tree write for every row added and deleted.
CREATE TABLE IF NOT EXISTS queue (
    added INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    time INTEGER NOT NULL,
    action TEXT NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    -- 1 once it was in a `sync` (recorded only when folding is on): never folded again.
    sent INTEGER NOT NULL DEFAULT 0
);
-- No index on `acked`: unacknowledged actions are read by `added` (the rowid) from a cursor,
-- and acknowledged ones are few (answers delete them), so an index would only cost a write per
-- row on every append, acknowledgement and answer.
DROP INDEX IF EXISTS queue_unacked;
-- Actions received from the server, newest `received_keep_max` kept; the unique id drops a
-- copy delivered twice (a catch-up overlapping live delivery).
CREATE TABLE IF NOT EXISTS received (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time INTEGER NOT NULL,
    action TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    channel TEXT PRIMARY KEY,
    since_id TEXT,
    since_time INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS undone (
    id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    action TEXT NOT NULL
) WITHOUT ROWID;
-- CRDT objects: the join of every `crdt/delta` received for the key, as `Object::to_json`
-- writes it, changed in the transaction that records the delta.
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// The schema's version, kept in the file's `user_version`: a log written by an older
/// version (0: before versions were kept) is brought up to date when opened.
const SCHEMA_VERSION: i64 = 2;

/// Columns added after a log file was first written: `(table, column, definition)`.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The key of the CRDT object a queued `crdt/…` operation acts on: its answer tells the
    // connection which object to fetch again (the server sends the author no delta of its own
    // operations).
    ("queue", "object", "TEXT"),
];

/// Most rows remembered in `Store::handed_out`; beyond it they are forgotten at once (an
/// answer for a forgotten row is looked up by id).
const HANDED_OUT_MAX: usize = 100_000;

/// Prepared statements kept per log, more than the log uses, so none is prepared twice.
const STATEMENTS_CACHED_MAX: usize = 64;

/// Most decoded CRDT objects kept in memory; beyond it the cache starts over (the file has
/// them all).
const OBJECTS_CACHED_MAX: usize = 1024;

/// How long opening or writing waits for another connection's lock on the file.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One of the app's actions waiting in the queue.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub added: i64,
    pub id: ActionId,
    pub time: i64,
    pub action: String,
    pub sent: bool,
    /// The CRDT object the action operates on.
    pub object: Option<String>,
}

/// The next actions to send.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// What to send, in order.
    pub rows: Vec<Queued>,
    /// How many rows were read (before folding): fewer than asked means the end of the queue.
    pub read: usize,
    /// `(dropped id, id it was folded into)`.
    pub folded: Vec<(ActionId, ActionId)>,
}

/// Where a subscription resumes: `{id, time}` of the `logux/processed` that answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The full id of that `logux/processed` action.
    pub id: String,
    /// Its time, in the client's clock (ms).
    pub time: i64,
}

/// A persisted subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The channel.
    pub channel: String,
    /// Where it resumes; `None` until the server first answered it.
    pub since: Option<Since>,
}

/// An action the server undid, as recorded in the local log.
#[derive(Debug, Clone, PartialEq)]
pub struct Undone {
    /// The undone action's id.
    pub id: String,
    /// The undo reason (`denied`, `unknownType`, …).
    pub reason: String,
    /// The undone action.
    pub action: serde_json::Value,
}

/// An action received from the server, as kept in the log (see
/// [`crate::ClientOptions::received_keep_max`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Its place among the received actions: later ones have higher numbers.
    pub seq: u64,
    /// Its id.
    pub id: String,
    /// Its time, in the client's clock.
    pub time: i64,
    /// The action.
    pub action: serde_json::Value,
}

/// Counts of the local log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Actions not yet confirmed by the server's `synced`: they will be sent.
    pub queued: u64,
    /// Actions the server confirmed with `synced` (durable there) whose `logux/processed` or
    /// `logux/undo` has not arrived. They are never sent again.
    pub awaiting_outcome: u64,
    /// Persisted subscriptions.
    pub subscriptions: u64,
    /// Recorded undos.
    pub undone: u64,
    /// Received actions kept.
    pub received: u64,
    /// The last `added` received from the server (sent in `connect`).
    pub last_received: u64,
}

/// An action for the queue.
#[derive(Debug, Clone)]
pub(crate) struct NewAction {
    /// Its JSON.
    pub action: String,
    /// The key of the CRDT object it acts on, for a `crdt/…` operation.
    pub object: Option<String>,
}

/// A `crdt/delta` received, joined into the object at `key`, or put in its place when it is
/// the whole state (`replace`, see `rhizome_crdt::state_action`).
#[derive(Debug)]
pub(crate) struct ReceivedDelta {
    pub key: String,
    pub delta: Object,
    pub replace: bool,
}

/// What [`Store::apply`] did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Per received action, whether it is new.
    pub fresh: Vec<bool>,
    /// Per `logux/processed` of [`Incoming::processed`], whether it settled a queued action.
    pub processed_settled: Vec<bool>,
    /// Per `logux/undo` of [`Incoming::undone`], whether it settled a queued action.
    pub undone_settled: Vec<bool>,
    /// Per undo, whether it is the first recorded for its id (an undo after the action was
    /// processed, as an edge sends when its upstream refuses it, settles nothing but is new).
    pub undone_new: Vec<bool>,
    /// The objects of the queued CRDT operations the server processed, each once.
    pub processed_objects: Vec<String>,
}

/// What one incoming `sync` (or `ping`/`pong`) changes, applied in one transaction.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    pub last_received: u64,
    pub processed: Vec<ActionId>,
    pub undone: Vec<Undone>,
    /// `(id, time, action json)` of other nodes' actions.
    pub actions: Vec<(String, i64, String)>,
    /// `(channel, since)` of subscriptions the server answered.
    pub since: Vec<(String, Since)>,
    /// Subscriptions the server undid: forgotten.
    pub refused_channels: Vec<String>,
    /// The `crdt/delta` actions among `actions`, decoded.
    pub deltas: Vec<ReceivedDelta>,
    /// `added` ranges of queued actions the server confirmed with `synced`.
    pub acked: Vec<(i64, i64)>,
}

/// How much of the local log a crash may lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is on disk when it returns (SQLite `synchronous=FULL`): nothing is lost,
    /// even on power loss. One fsync per commit.
    #[default]
    PowerLoss,
    /// A crash of the process loses nothing, a power loss may lose the last commits (WAL with
    /// `synchronous=NORMAL`): for simulators and tests running many clients on one machine.
    ProcessCrash,
}

/// What [`Store::open`] needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenOptions<'a> {
    pub user: &'a str,
    pub node: Option<&'a NodeId>,
    pub received_keep_max: u64,
    pub durability: Durability,
}

/// A queued action handed out for sending.
#[derive(Debug)]
struct HandedOut {
    node: NodeId,
    added: i64,
    object: Option<String>,
}

/// Queued actions handed out, in id order: rows are handed out in that order and mostly
/// answered in it, so a sorted deque (answers taken from the front, found by binary search
/// otherwise) does less work per action than hashing.
#[derive(Debug, Default)]
struct HandedOutRows {
    /// Sorted by key; `None` once taken (dropped when it reaches the front).
    rows: std::collections::VecDeque<((i64, u64), Option<HandedOut>)>,
}

impl HandedOutRows {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn clear(&mut self) {
        self.rows.clear();
    }

    /// Remembers a row (replacing the one with its key, handed out again after a reconnect).
    fn insert(&mut self, key: (i64, u64), row: HandedOut) {
        match self.rows.back() {
            Some((last, _)) if *last >= key => match self.rows.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => self.rows[i].1 = Some(row),
                Err(i) => self.rows.insert(i, (key, Some(row))),
            },
            _ => self.rows.push_back((key, Some(row))),
        }
    }

    /// Takes the row of this id (its node too: a log reopened as another tab holds rows of
    /// its previous node id, also ours).
    fn remove(&mut self, id: &ActionId) -> Option<HandedOut> {
        let key = (id.ms, id.seq);
        let i = match self.rows.front() {
            Some((first, _)) if *first == key => 0,
            _ => self.rows.binary_search_by(|(k, _)| k.cmp(&key)).ok()?,
        };
        if self.rows[i].1.as_ref().is_none_or(|row| row.node != id.node) {
            return None;
        }
        let row = self.rows[i].1.take();
        while matches!(self.rows.front(), Some((_, None))) {
            self.rows.pop_front();
        }
        row
    }
}

/// The local log.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
    /// Our ids; its state is persisted with every transaction that takes ids from it.
    ids: IdGenerator,
    received_keep_max: u64,
    /// Decoded CRDT objects, as committed (at most [`OBJECTS_CACHED_MAX`]).
    objects: HashMap<String, Object>,
    /// Queued actions handed out for sending (each row still in the queue), by the
    /// `(ms, seq)` of their id (all of them are this node's), at most [`HANDED_OUT_MAX`]:
    /// their answers delete runs of consecutive rows with one statement instead of one lookup
    /// by id each.
    handed_out: HandedOutRows,
}

fn random_part(rng: &mut impl rand::Rng) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-";
    (0..8).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

impl Store {
    /// Opens (or creates) the log at `path` for `user`. The node id is `node` when given,
    /// otherwise the one stored in the log, otherwise a new `user:<random>:<random>`.
    pub fn open(path: &Path, options: &OpenOptions<'_>) -> Result<Store, ClientError> {
        let OpenOptions { user, node, received_keep_max, durability } = *options;
        if user.is_empty() || user.contains(':') || user.contains(' ') || user == "server" {
            return Err(ClientError::Invalid(format!("user id {user:?}")));
        }
        let mut conn = Connection::open(path)?;
        // First: a client killed a moment ago may still be finishing a write on this file.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // One client per file: the file stays locked while it is open, so SQLite takes no
        // file lock per transaction and keeps the WAL index in this process's memory (no
        // `-shm`), which saves two `fcntl` calls and shared-memory work on every read and
        // commit. Another process opening the file waits `BUSY_TIMEOUT`, then fails.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED_MAX);
        let synchronous = match durability {
            Durability::PowerLoss => "FULL",
            Durability::ProcessCrash => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        // A log this version wrote is not given the schema again (parsing it is most of the
        // cost of opening a log).
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            conn.execute_batch(SCHEMA)?;
            for (table, column, definition) in ADDED_COLUMNS {
                let exists: bool = conn.query_row(
                    &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
                    params![column],
                    |r| r.get(0),
                )?;
                if !exists {
                    conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"))?;
                }
            }
            drop_unique_queue_ids(&mut conn)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> =
            tx.query_row("SELECT text FROM meta WHERE key = 'node'", [], |r| r.get(0)).optional()?;
        let node = match (stored, node) {
            (Some(stored), given) => {
                let stored_node = NodeId::parse(&stored)
                    .ok_or_else(|| ClientError::Invalid(format!("stored node {stored}")))?;
                let owner_ok = stored_node.user_id().is_some_and(|u| u.as_str() == user);
                let same_client = given.is_none_or(|g| g.client_id() == stored_node.client_id());
                if !owner_ok || !same_client {
                    return Err(ClientError::WrongOwner { stored, user: user.to_owned() });
                }
                given.cloned().unwrap_or(stored_node)
            }
            (None, Some(given)) => {
                if given.user_id().is_none_or(|u| u.as_str() != user) {
                    return Err(ClientError::Invalid(format!("node {given} is not of user {user}")));
                }
                given.clone()
            }
            (None, None) => {
                let mut rng = rhizome_io::rng();
                let text = format!("{user}:{}:{}", random_part(&mut rng), random_part(&mut rng));
                NodeId::parse(&text).ok_or_else(|| ClientError::Invalid(format!("user id {user:?}")))?
            }
        };
        tx.execute(
            "INSERT INTO meta (key, text) VALUES ('node', ?1) ON CONFLICT(key) DO UPDATE SET text = ?1",
            params![node.as_str()],
        )?;
        let get = |key: &str| -> rusqlite::Result<i64> {
            tx.query_row("SELECT int FROM meta WHERE key = ?1", params![key], |r| r.get::<_, Option<i64>>(0))
                .optional()
                .map(|v| v.flatten().unwrap_or(0))
        };
        let last_ms = get("id_ms")?;
        let seq = get("id_seq")?.max(0) as u64;
        tx.commit()?;
        Ok(Store {
            conn,
            ids: IdGenerator::resume(node, last_ms, seq),
            received_keep_max,
            objects: HashMap::new(),
            handed_out: HandedOutRows::default(),
        })
    }

    /// This client's node id.
    pub fn node(&self) -> &NodeId {
        self.ids.node()
    }

    /// Persists the id generator's state in the caller's transaction, so ids grow across
    /// restarts even if the clock went back.
    fn save_id_state(tx: &rusqlite::Transaction<'_>, ids: &IdGenerator) -> rusqlite::Result<()> {
        let (last_ms, seq) = ids.last();
        tx.prepare_cached(
            "INSERT INTO meta (key, int) VALUES ('id_ms', ?1), ('id_seq', ?2)
             ON CONFLICT(key) DO UPDATE SET int = excluded.int",
        )?
        .execute(params![last_ms, seq as i64])?;
        Ok(())
    }

    /// Queues actions (JSON objects with a string `type`) in one transaction; returns their ids.
    pub fn add(&mut self, now_ms: i64, actions: &[NewAction]) -> Result<Vec<ActionId>, ClientError> {
        let saved = self.ids.clone();
        let ids: Vec<ActionId> = actions.iter().map(|_| self.ids.next(now_ms)).collect();
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO queue (id, time, action, object) VALUES (?1, ?2, ?3, ?4)")?;
                for (id, new) in ids.iter().zip(actions) {
                    insert.execute(params![id.text(), id.ms, new.action, new.object])?;
                }
            }
            Self::save_id_state(&tx, &self.ids)?;
            tx.commit()
        })();
        if let Err(e) = result {
            // Nothing was written: give the ids back so the sequence has no gap on disk.
            self.ids = saved;
            return Err(e.into());
        }
        Ok(ids)
    }

    /// A fresh id for an action that is not queued (a `logux/subscribe` sent on connect).
    pub fn fresh_id(&mut self, now_ms: i64) -> Result<ActionId, ClientError> {
        let id = self.ids.next(now_ms);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::save_id_state(&tx, &self.ids)?;
        tx.commit()?;
        Ok(id)
    }

    /// Up to `limit` unacknowledged actions after `added`, oldest first.
    pub fn unacked_after(&self, added: i64, limit: usize) -> Result<Vec<Queued>, ClientError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT added, id, time, action, sent, object FROM queue
             WHERE acked = 0 AND added > ?1 ORDER BY added LIMIT ?2",
        )?;
        let node = self.ids.node();
        let mut rows = stmt.query(params![added, limit as i64])?;
        let mut out = Vec::with_capacity(limit.min(1024));
        while let Some(r) = rows.next()? {
            let id = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let parsed = ActionId::parse_known(id, node)
                .ok_or_else(|| ClientError::Invalid(format!("stored id {id}")))?;
            out.push(Queued {
                added: r.get(0)?,
                id: parsed,
                time: r.get(2)?,
                action: r.get(3)?,
                sent: r.get(4)?,
                object: r.get(5)?,
            });
        }
        Ok(out)
    }

    /// Up to `limit` unacknowledged actions after `added`, oldest first. With `fold`, runs of
    /// never-sent CRDT operations are folded (see `fold.rs`) and every row read is marked
    /// sent, in one transaction committed before the caller sends anything.
    pub fn next_chunk(&mut self, added: i64, limit: usize, fold: bool) -> Result<Chunk, ClientError> {
        let rows = self.unacked_after(added, limit)?;
        let read = rows.len();
        let (Some(lo), Some(hi)) = (rows.first().map(|r| r.added), rows.last().map(|r| r.added)) else {
            return Ok(Chunk { rows, read, folded: Vec::new() });
        };
        if !fold || rows.iter().all(|r| r.sent) {
            self.hand_out(&rows);
            return Ok(Chunk { rows, read, folded: Vec::new() });
        }
        let (rows, folding) = crate::fold::fold_rows(rows);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut rewrite = tx.prepare_cached("UPDATE queue SET action = ?2 WHERE added = ?1")?;
            for (added, action) in &folding.rewritten {
                rewrite.execute(params![added, action])?;
            }
            let mut drop = tx.prepare_cached("DELETE FROM queue WHERE added = ?1")?;
            for (added, _, _) in &folding.dropped {
                drop.execute(params![added])?;
            }
            tx.execute(
                "UPDATE queue SET sent = 1 WHERE added BETWEEN ?1 AND ?2 AND acked = 0",
                params![lo, hi],
            )?;
        }
        tx.commit()?;
        self.hand_out(&rows);
        let folded = folding.dropped.into_iter().map(|(_, id, into)| (id, into)).collect();
        Ok(Chunk { rows, read, folded })
    }

    /// Remembers the `added` of rows about to be sent, for [`Store::apply`].
    fn hand_out(&mut self, rows: &[Queued]) {
        if self.handed_out.len() + rows.len() > HANDED_OUT_MAX {
            self.handed_out.clear();
        }
        for q in rows {
            let row = HandedOut { node: q.id.node.clone(), added: q.added, object: q.object.clone() };
            self.handed_out.insert((q.id.ms, q.id.seq), row);
        }
    }

    /// Applies what the server sent, in one transaction: `synced` confirms queued actions
    /// (never sent again), answers settle them,
    /// received actions are recorded (a copy is not new), new `crdt/delta`s are joined into
    /// their objects. An answer settles a queued action only the first time: the server may
    /// send one twice (once kept for a connection that ended, once for a re-sent copy).
    pub fn apply(&mut self, incoming: &Incoming) -> Result<Applied, ClientError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut applied = Applied { fresh: Vec::with_capacity(incoming.actions.len()), ..Applied::default() };
        // Objects this transaction changes; they reach the cache only if it commits.
        let mut staged: HashMap<String, Object> = HashMap::new();
        {
            // Answers to rows handed out are deleted by runs of consecutive `added` (every row
            // of a run is in the queue and was answered, so the run goes whole); others are
            // looked up by id.
            applied.processed_settled = vec![false; incoming.processed.len()];
            let mut added: Vec<(i64, usize)> = Vec::with_capacity(incoming.processed.len());
            let mut by_id: Vec<usize> = Vec::new();
            let mut objects: Vec<String> = Vec::new();
            let node = self.ids.node().clone();
            for (i, id) in incoming.processed.iter().enumerate() {
                match self.handed_out.remove(id) {
                    Some(h) => {
                        added.push((h.added, i));
                        objects.extend(h.object);
                    }
                    None => by_id.push(i),
                }
            }
            added.sort_unstable();
            let mut runs = tx.prepare_cached("DELETE FROM queue WHERE added BETWEEN ?1 AND ?2")?;
            let mut start = 0;
            for end in 0..added.len() {
                if end + 1 < added.len() && added[end + 1].0 == added[end].0 + 1 {
                    continue;
                }
                let (lo, hi) = (added[start].0, added[end].0);
                let deleted = runs.execute(params![lo, hi])?;
                if deleted != end + 1 - start {
                    // A row leaves the queue only with its entry in `handed_out`. Nothing is
                    // committed: the answers come again for the re-sent actions.
                    return Err(ClientError::Invalid(format!(
                        "queued actions {lo}..={hi} were handed out but {deleted} of them are queued"
                    )));
                }
                for (_, i) in &added[start..=end] {
                    applied.processed_settled[*i] = true;
                }
                start = end + 1;
            }
            let mut delete = tx.prepare_cached("DELETE FROM queue WHERE added = ?1")?;
            for i in by_id {
                if let Some((at, object)) = find_queued(&tx, &incoming.processed[i])? {
                    delete.execute(params![at])?;
                    applied.processed_settled[i] = true;
                    objects.extend(object);
                }
            }
            for key in objects {
                if !applied.processed_objects.contains(&key) {
                    applied.processed_objects.push(key);
                }
            }
            let mut undo = tx.prepare_cached(
                "INSERT INTO undone (id, reason, action) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO NOTHING",
            )?;
            for u in &incoming.undone {
                let row = match ActionId::parse_known(&u.id, &node) {
                    Some(id) => match self.handed_out.remove(&id) {
                        Some(h) => Some(h.added),
                        None => find_queued(&tx, &id)?.map(|(at, _)| at),
                    },
                    None => None,
                };
                let settled = match row {
                    Some(at) => delete.execute(params![at])? == 1,
                    None => false,
                };
                applied.undone_settled.push(settled);
                applied.undone_new.push(undo.execute(params![u.id, u.reason, u.action.to_string()])? == 1);
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO received (id, time, action) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO NOTHING",
            )?;
            for (id, time, action) in &incoming.actions {
                applied.fresh.push(insert.execute(params![id, time, action])? == 1);
            }
            // Every delta is joined, even one whose id was received before: the server joins
            // the deltas of one commit for a subscriber into one carrying the last one's id,
            // so an id seen alone (from a catch-up) may come again with more in it. Joining
            // is idempotent: a true copy changes nothing.
            for d in &incoming.deltas {
                let object = match staged.entry(d.key.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let state = match self.objects.get(&d.key) {
                            Some(state) => state.clone(),
                            None => {
                                read_object(&tx, &d.key)?.unwrap_or_else(|| Object::bottom(d.delta.kind()))
                            }
                        };
                        e.insert(state)
                    }
                };
                if d.replace {
                    // The server's whole state: what it corrected is gone from it.
                    *object = d.delta.clone();
                } else if let Err(e) = object.join(&d.delta) {
                    tracing::warn!(key = %d.key, error = %e, "a received delta does not join its object; skipped");
                }
            }
            let mut save = tx.prepare_cached(
                "INSERT INTO objects (key, kind, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET kind = excluded.kind, state = excluded.state",
            )?;
            for (key, object) in &staged {
                save.execute(params![key, object.kind().name(), object.to_json().to_string()])?;
            }
            let mut since = tx.prepare_cached(
                "UPDATE subscriptions SET since_id = ?2, since_time = ?3 WHERE channel = ?1",
            )?;
            for (channel, s) in &incoming.since {
                since.execute(params![channel, s.id, s.time])?;
            }
            let mut refused = tx.prepare_cached("DELETE FROM subscriptions WHERE channel = ?1")?;
            for channel in &incoming.refused_channels {
                refused.execute(params![channel])?;
            }
            for (lo, hi) in &incoming.acked {
                mark_acked(&tx, *lo, *hi)?;
            }
            tx.prepare_cached(
                "INSERT INTO meta (key, int) VALUES ('last_received', ?1)
                 ON CONFLICT(key) DO UPDATE SET int = max(int, excluded.int)",
            )?
            .execute(params![incoming.last_received as i64])?;
            if applied.fresh.iter().any(|f| *f) {
                tx.prepare_cached("DELETE FROM received WHERE seq <= (SELECT max(seq) FROM received) - ?1")?
                    .execute(params![self.received_keep_max as i64])?;
            }
        }
        tx.commit()?;
        if self.objects.len() + staged.len() > OBJECTS_CACHED_MAX {
            self.objects.clear();
        }
        self.objects.extend(staged);
        Ok(applied)
    }

    /// The CRDT object at `key`: the join of every `crdt/delta` received for it.
    pub fn object(&mut self, key: &str) -> Result<Option<Object>, ClientError> {
        if let Some(object) = self.objects.get(key) {
            return Ok(Some(object.clone()));
        }
        let object = read_object(&self.conn, key)?;
        if let Some(object) = &object {
            if self.objects.len() >= OBJECTS_CACHED_MAX {
                self.objects.clear();
            }
            self.objects.insert(key.to_owned(), object.clone());
        }
        Ok(object)
    }

    /// The keys of the CRDT objects held, in order.
    pub fn object_keys(&self) -> Result<Vec<String>, ClientError> {
        let mut stmt = self.conn.prepare_cached("SELECT key FROM objects ORDER BY key")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What the copy of the object at `key` has seen, as the `seen` of a subscription:
    /// `None` when there is no copy or its delta since anything is its whole state.
    pub fn seen(&mut self, key: &str) -> Result<Option<VersionVector>, ClientError> {
        let vv = self.object(key)?.map(|o| o.version_vector());
        Ok(vv.filter(|vv| !vv.is_empty()))
    }

    /// The last `added` received from the server.
    pub fn last_received(&self) -> Result<u64, ClientError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT int FROM meta WHERE key = 'last_received'", [], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Persists a subscription (keeping its `since` if it exists).
    pub fn subscribe(&mut self, channel: &str) -> Result<(), ClientError> {
        self.conn.execute(
            "INSERT INTO subscriptions (channel) VALUES (?1) ON CONFLICT(channel) DO NOTHING",
            params![channel],
        )?;
        Ok(())
    }

    /// Forgets a subscription; `false` when there was none.
    pub fn unsubscribe(&mut self, channel: &str) -> Result<bool, ClientError> {
        Ok(self.conn.execute("DELETE FROM subscriptions WHERE channel = ?1", params![channel])? > 0)
    }

    /// Every persisted subscription.
    pub fn subscriptions(&self) -> Result<Vec<Subscription>, ClientError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT channel, since_id, since_time FROM subscriptions ORDER BY channel")?;
        let rows = stmt.query_map([], |r| {
            let id: Option<String> = r.get(1)?;
            let time: Option<i64> = r.get(2)?;
            Ok(Subscription { channel: r.get(0)?, since: id.zip(time).map(|(id, time)| Since { id, time }) })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The recorded undos.
    pub fn undone(&self) -> Result<Vec<Undone>, ClientError> {
        let mut stmt = self.conn.prepare_cached("SELECT id, reason, action FROM undone ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, reason, action) = row?;
            let action = serde_json::from_str(&action).unwrap_or(serde_json::Value::Null);
            out.push(Undone { id, reason, action });
        }
        Ok(out)
    }

    /// The received actions kept, after `after` (a [`Received::seq`]), oldest first, at most
    /// `limit`.
    pub fn received(&self, after: u64, limit: usize) -> Result<Vec<Received>, ClientError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, time, action FROM received WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, id, time, action) = row?;
            let action = serde_json::from_str(&action).unwrap_or(serde_json::Value::Null);
            out.push(Received { seq: seq as u64, id, time, action });
        }
        Ok(out)
    }

    /// Counts of the log.
    pub fn stats(&self) -> Result<LogStats, ClientError> {
        let count = |sql: &str| -> rusqlite::Result<u64> {
            self.conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64)
        };
        Ok(LogStats {
            queued: count("SELECT count(*) FROM queue WHERE acked = 0")?,
            awaiting_outcome: count("SELECT count(*) FROM queue WHERE acked = 1")?,
            subscriptions: count("SELECT count(*) FROM subscriptions")?,
            undone: count("SELECT count(*) FROM undone")?,
            received: count("SELECT count(*) FROM received")?,
            last_received: self.last_received()?,
        })
    }
}

/// The queued action with this id: `(added, object)`. Our ids grow with `added` (the id
/// generator never goes back, and rows are added in id order), so this is a binary search on
/// `added`, each step one seek on the table's key, with no index on `id`.
fn find_queued(conn: &Connection, id: &ActionId) -> Result<Option<(i64, Option<String>)>, ClientError> {
    let (first, last): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT min(added), max(added) FROM queue")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(first), Some(last)) = (first, last) else { return Ok(None) };
    let mut at_or_after =
        conn.prepare_cached("SELECT added, id, object FROM queue WHERE added >= ?1 ORDER BY added LIMIT 1")?;
    let mut row_at_or_after = |added: i64| -> Result<Option<(i64, String, Option<String>)>, ClientError> {
        Ok(at_or_after.query_row(params![added], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?)
    };
    let order = |text: &str| -> Result<(i64, u64), ClientError> {
        let parsed = text
            .split_once(' ')
            .zip(text.rsplit_once(' '))
            .and_then(|((ms, _), (_, seq))| Some((ms.parse::<i64>().ok()?, seq.parse::<u64>().ok()?)));
        parsed.ok_or_else(|| ClientError::Invalid(format!("stored id {text}")))
    };
    let wanted = (id.ms, id.seq);
    // The first `added` whose row (the first at or after it) is not before `wanted`.
    let (mut lo, mut hi) = (first, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match row_at_or_after(mid)? {
            Some((added, text, _)) if order(&text)? < wanted => lo = added + 1,
            _ => hi = mid,
        }
    }
    Ok(match row_at_or_after(lo)? {
        Some((added, text, object)) if text == id.text() => Some((added, object)),
        _ => None,
    })
}

/// Rebuilds a queue written before version 2, whose `id` column was `UNIQUE` (an index SQLite
/// cannot drop in place), keeping every row, its `added`, and the `added` counter.
fn drop_unique_queue_ids(conn: &mut Connection) -> rusqlite::Result<()> {
    let unique: bool =
        conn.query_row("SELECT count(*) > 0 FROM pragma_index_list('queue') WHERE origin = 'u'", [], |r| {
            r.get(0)
        })?;
    if !unique {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let counter: Option<i64> =
        tx.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'queue'", [], |r| r.get(0)).optional()?;
    tx.execute_batch(
        "ALTER TABLE queue RENAME TO queue_v1;
         CREATE TABLE queue (
             added INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL,
             time INTEGER NOT NULL,
             action TEXT NOT NULL,
             acked INTEGER NOT NULL DEFAULT 0,
             sent INTEGER NOT NULL DEFAULT 0,
             object TEXT
         );
         INSERT INTO queue (added, id, time, action, acked, sent, object)
             SELECT added, id, time, action, acked, sent, object FROM queue_v1;
         DROP TABLE queue_v1;",
    )?;
    if let Some(counter) = counter {
        tx.execute("UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'queue'", params![counter])?;
        tx.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'queue', ?1
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'queue')",
            params![counter],
        )?;
    }
    tx.commit()
}

/// Marks the queued actions with `added` in `lo..=hi` as confirmed by `synced`.
fn mark_acked(conn: &Connection, lo: i64, hi: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached("UPDATE queue SET acked = 1 WHERE added BETWEEN ?1 AND ?2 AND acked = 0")?
        .execute(params![lo, hi])
}

/// Reads the object at `key` from the log. A row that does not decode (written by another
/// version, or damaged) is an error: the copy is not silently reset.
fn read_object(conn: &Connection, key: &str) -> Result<Option<Object>, ClientError> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT kind, state FROM objects WHERE key = ?1")?
        .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((kind, state)) = row else { return Ok(None) };
    let corrupt = |why: String| ClientError::Invalid(format!("stored object {key}: {why}"));
    let kind = Kind::from_name(&kind).ok_or_else(|| corrupt(format!("unknown kind {kind}")))?;
    let doc: serde_json::Value = serde_json::from_str(&state).map_err(|e| corrupt(e.to_string()))?;
    Object::from_json(kind, &doc).map(Some).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(user: &str) -> OpenOptions<'_> {
        OpenOptions { user, node: None, received_keep_max: 10, durability: Durability::PowerLoss }
    }

    fn actions(texts: &[&str]) -> Vec<NewAction> {
        texts.iter().map(|t| NewAction { action: (*t).to_owned(), object: None }).collect()
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("log.sqlite"), &options("alice")).unwrap()
    }

    #[test]
    fn ids_and_node_survive_a_restart_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir);
        let node = s.node().clone();
        assert_eq!(node.user_id().unwrap().as_str(), "alice");
        let a = s.add(1000, &actions(&["{\"type\":\"a\"}", "{\"type\":\"b\"}"])).unwrap();
        drop(s);
        let mut s = open(&dir);
        assert_eq!(s.node(), &node);
        let b = s.add(500, &actions(&["{\"type\":\"c\"}"])).unwrap();
        assert!(a[0] < a[1] && a[1] < b[0], "{a:?} {b:?}");
        assert_eq!((b[0].ms, b[0].seq), (1000, 2));
        let c = s.fresh_id(2000).unwrap();
        assert_eq!((c.ms, c.seq), (2000, 0));
    }

    #[test]
    fn another_users_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&dir));
        let err = Store::open(&dir.path().join("log.sqlite"), &options("bob")).unwrap_err();
        assert!(matches!(err, ClientError::WrongOwner { .. }), "{err}");
    }

    #[test]
    fn acked_actions_are_not_read_again_and_answers_remove_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir);
        let texts: Vec<String> = (0..5).map(|i| format!("{{\"type\":\"t\",\"n\":{i}}}")).collect();
        let ids = s.add(1, &actions(&texts.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
        let first = s.unacked_after(0, 2).unwrap();
        assert_eq!(first.len(), 2);
        s.apply(&Incoming { acked: vec![(first[0].added, first[1].added)], ..Incoming::default() }).unwrap();
        let rest = s.unacked_after(0, 10).unwrap();
        assert_eq!(rest.iter().map(|q| q.id.clone()).collect::<Vec<_>>(), ids[2..]);
        let incoming = Incoming {
            last_received: 7,
            processed: vec![ids[0].clone()],
            undone: vec![Undone {
                id: ids[1].text(),
                reason: "denied".into(),
                action: serde_json::json!({}),
            }],
            actions: vec![("1 x:y:z 0".into(), 1, "{\"type\":\"r\"}".into())],
            ..Incoming::default()
        };
        let Applied { fresh, processed_settled, undone_settled, .. } = s.apply(&incoming).unwrap();
        assert_eq!(fresh, [true]);
        assert_eq!((processed_settled, undone_settled), (vec![true], vec![true]), "both answers settle");
        let Applied { fresh, processed_settled, undone_settled, .. } = s.apply(&incoming).unwrap();
        assert_eq!(fresh, [false], "a copy is not new");
        assert_eq!(
            (processed_settled, undone_settled),
            (vec![false], vec![false]),
            "a repeated answer settles nothing"
        );
        let stats = s.stats().unwrap();
        assert_eq!((stats.queued, stats.awaiting_outcome, stats.undone, stats.last_received), (3, 0, 1, 7));
        assert_eq!(s.undone().unwrap()[0].reason, "denied");
    }

    #[test]
    fn received_deltas_are_joined_even_under_a_known_id_and_kept_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir);
        let delta = |node: &str, by: u64| {
            Object::Counter(rhizome_crdt::PnCounter::default().inc(&NodeId::parse(node).unwrap(), by))
        };
        let incoming = |id: &str, d: Object| Incoming {
            actions: vec![(id.to_owned(), 1, "{\"type\":\"crdt/delta\"}".to_owned())],
            deltas: vec![ReceivedDelta { key: "likes".into(), delta: d, replace: false }],
            ..Incoming::default()
        };
        s.apply(&incoming("1 a:1:1 0", delta("a:1:1", 2))).unwrap();
        s.apply(&incoming("2 b:1:1 0", delta("b:1:1", 3))).unwrap();
        // A copy changes nothing.
        s.apply(&incoming("1 a:1:1 0", delta("a:1:1", 2))).unwrap();
        let value = |o: Option<Object>| match o {
            Some(Object::Counter(c)) => c.value(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value(s.object("likes").unwrap()), 5);
        // An id received before may come again with more in it (the server joins the deltas
        // of a commit into one with the last one's id): it is joined all the same.
        s.apply(&incoming("1 a:1:1 0", delta("a:1:1", 7))).unwrap();
        assert_eq!(value(s.object("likes").unwrap()), 10);
        assert_eq!(s.object("other").unwrap(), None);
        drop(s);
        let mut s = open(&dir);
        assert_eq!(value(s.object("likes").unwrap()), 10, "read back from the file");
        assert_eq!(s.object_keys().unwrap(), ["likes"]);
        // The whole state from the server (after it corrected the object) replaces the copy.
        let whole = Incoming {
            actions: vec![("3 server:x 0".to_owned(), 1, "{\"type\":\"crdt/delta\"}".to_owned())],
            deltas: vec![ReceivedDelta { key: "likes".into(), delta: delta("b:1:1", 3), replace: true }],
            ..Incoming::default()
        };
        s.apply(&whole).unwrap();
        assert_eq!(value(s.object("likes").unwrap()), 3, "a's 7 is gone");
        drop(s);
        let mut s = open(&dir);
        assert_eq!(value(s.object("likes").unwrap()), 3, "and stays gone");
    }

    #[test]
    fn handed_out_rows_are_found_in_and_out_of_order_and_replaced_when_handed_out_again() {
        let node = NodeId::from("alice:c:t");
        let row = |added: i64| HandedOut { node: node.clone(), added, object: None };
        let id = |ms: i64, seq: u64| ActionId { ms, node: node.clone(), seq };
        let mut rows = HandedOutRows::default();
        for (n, (ms, seq)) in [(1, 0), (1, 1), (2, 0), (3, 0), (3, 1)].into_iter().enumerate() {
            rows.insert((ms, seq), row(n as i64 + 1));
        }
        assert_eq!(rows.remove(&id(1, 0)).map(|r| r.added), Some(1), "the front");
        assert_eq!(rows.remove(&id(3, 0)).map(|r| r.added), Some(4), "out of order");
        assert_eq!(rows.remove(&id(3, 0)).map(|r| r.added), None, "taken once");
        assert_eq!(rows.remove(&id(2, 5)).map(|r| r.added), None, "never handed out");
        let foreign = ActionId { node: NodeId::from("bob:c:t"), ..id(2, 0) };
        assert_eq!(rows.remove(&foreign).map(|r| r.added), None, "another node's id with our (ms, seq)");
        // Handed out again after a reconnect, with a row before them that was answered.
        rows.insert((1, 1), row(20));
        rows.insert((3, 0), row(40));
        rows.insert((0, 9), row(9));
        assert_eq!(rows.len(), 5);
        let order: Vec<Option<i64>> = [(0, 9), (1, 1), (2, 0), (3, 0), (3, 1)]
            .into_iter()
            .map(|(ms, seq)| rows.remove(&id(ms, seq)).map(|r| r.added))
            .collect();
        assert_eq!(order, [Some(9), Some(20), Some(3), Some(40), Some(5)]);
        assert_eq!(rows.len(), 0, "taken rows leave from the front");
    }

    #[test]
    fn rows_of_a_previous_node_id_are_answered_and_leave_the_handed_out_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let (t1, t2) = (NodeId::from("alice:c:t1"), NodeId::from("alice:c:t2"));
        let open_as = |node: &NodeId| {
            Store::open(&path, &OpenOptions { node: Some(node), ..options("alice") }).unwrap()
        };
        let mut s = open_as(&t1);
        let old = s.add(1000, &actions(&["{\"type\":\"a\"}", "{\"type\":\"b\"}"])).unwrap();
        drop(s);
        // Reopened as another tab of the same client, with the clock behind.
        let mut s = open_as(&t2);
        let new = s.add(900, &actions(&["{\"type\":\"c\"}", "{\"type\":\"d\"}"])).unwrap();
        assert_eq!((new[0].ms, new[0].seq), (1000, 2), "ids keep growing across node ids");
        assert_eq!(s.next_chunk(0, 10, false).unwrap().rows.len(), 4);
        let all: Vec<ActionId> = old.iter().chain(&new).cloned().collect();
        let applied = s.apply(&Incoming { processed: all, ..Incoming::default() }).unwrap();
        assert_eq!(applied.processed_settled, [true; 4]);
        assert_eq!(s.handed_out.len(), 0, "no entry of the old node id stays behind");
        assert_eq!(s.stats().unwrap().queued, 0);
    }

    #[test]
    fn answers_to_actions_not_handed_out_are_found_by_id_across_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir);
        let texts: Vec<String> = (0..40).map(|i| format!("{{\"type\":\"t\",\"n\":{i}}}")).collect();
        // Several ms, several ids per ms.
        let mut ids = Vec::new();
        for (ms, part) in texts.chunks(7).enumerate() {
            ids.extend(
                s.add(1_000 + ms as i64, &actions(&part.iter().map(String::as_str).collect::<Vec<_>>()))
                    .unwrap(),
            );
        }
        // Gaps: every third action answered while handed out.
        let chunk = s.next_chunk(0, 40, false).unwrap();
        assert_eq!(chunk.rows.len(), 40);
        let early: Vec<ActionId> = ids.iter().step_by(3).cloned().collect();
        let applied = s.apply(&Incoming { processed: early.clone(), ..Incoming::default() }).unwrap();
        assert!(applied.processed_settled.iter().all(|s| *s));
        drop(s);
        // A new instance has handed nothing out: every answer is a lookup by id.
        let mut s = open(&dir);
        let foreign = ActionId { ms: ids[4].ms, node: NodeId::from("bob:1:x"), seq: ids[4].seq };
        let processed = vec![ids[1].clone(), ids[37].clone(), early[2].clone(), foreign, ids[38].clone()];
        let undone = [ids[2].clone(), ids[0].clone()]
            .iter()
            .map(|id| Undone { id: id.text(), reason: "denied".into(), action: serde_json::json!({}) })
            .collect();
        let applied = s.apply(&Incoming { processed, undone, ..Incoming::default() }).unwrap();
        assert_eq!(
            applied.processed_settled,
            [true, true, false, false, true],
            "answered before; another node's"
        );
        assert_eq!(applied.undone_settled, [true, false]);
        assert_eq!(applied.undone_new, [true, true], "an undo after a processed is news");
        let again = Incoming {
            undone: vec![Undone {
                id: ids[0].text(),
                reason: "denied".into(),
                action: serde_json::json!({}),
            }],
            ..Incoming::default()
        };
        assert_eq!(s.apply(&again).unwrap().undone_new, [false], "a repeated undo is not");
        let left: Vec<ActionId> = s.unacked_after(0, 100).unwrap().into_iter().map(|q| q.id).collect();
        let expected: Vec<ActionId> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0 && ![1, 2, 37, 38].contains(i))
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(left, expected);
        // An id between two queued ones, and ids beyond both ends, are not found.
        let between = ActionId { seq: ids[5].seq + 100, ..ids[5].clone() };
        let before = ActionId { ms: 1, ..ids[5].clone() };
        let after = ActionId { ms: 1_000_000, ..ids[5].clone() };
        let applied =
            s.apply(&Incoming { processed: vec![between, before, after], ..Incoming::default() }).unwrap();
        assert_eq!(applied.processed_settled, [false, false, false]);
    }

    #[test]
    fn a_log_with_unique_ids_is_rebuilt_keeping_its_rows_and_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let mut s = Store::open(&path, &options("alice")).unwrap();
        let ids = s.add(5, &actions(&["{\"type\":\"a\"}", "{\"type\":\"b\"}", "{\"type\":\"c\"}"])).unwrap();
        drop(s);
        // The layout of version 1: `id` UNIQUE; the counter past rows that were deleted.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE queue RENAME TO q;
             CREATE TABLE queue (added INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
             time INTEGER NOT NULL, action TEXT NOT NULL, acked INTEGER NOT NULL DEFAULT 0,
             sent INTEGER NOT NULL DEFAULT 0, object TEXT);
             INSERT INTO queue SELECT * FROM q; DROP TABLE q;
             UPDATE sqlite_sequence SET seq = 10 WHERE name = 'queue';
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let mut s = Store::open(&path, &options("alice")).unwrap();
        let unique: i64 = s
            .conn
            .query_row("SELECT count(*) FROM pragma_index_list('queue') WHERE origin = 'u'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(unique, 0);
        let kept: Vec<(i64, ActionId)> =
            s.unacked_after(0, 10).unwrap().into_iter().map(|q| (q.added, q.id)).collect();
        assert_eq!(kept, vec![(1, ids[0].clone()), (2, ids[1].clone()), (3, ids[2].clone())]);
        s.add(6, &actions(&["{\"type\":\"d\"}"])).unwrap();
        let added: Vec<i64> = s.unacked_after(3, 10).unwrap().into_iter().map(|q| q.added).collect();
        assert_eq!(added, [11], "`added` is never reused");
    }

    #[test]
    fn a_log_written_before_objects_is_opened_and_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE queue (added INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
             time INTEGER NOT NULL, action TEXT NOT NULL, acked INTEGER NOT NULL DEFAULT 0,
             sent INTEGER NOT NULL DEFAULT 0)",
        )
        .unwrap();
        drop(conn);
        let mut s = Store::open(&path, &options("alice")).unwrap();
        let new =
            NewAction { action: "{\"type\":\"crdt/counter/inc\"}".into(), object: Some("likes".into()) };
        let ids = s.add(1, &[new]).unwrap();
        let incoming = Incoming { processed: ids.clone(), ..Incoming::default() };
        assert_eq!(s.apply(&incoming).unwrap().processed_objects, ["likes"]);
    }
}
