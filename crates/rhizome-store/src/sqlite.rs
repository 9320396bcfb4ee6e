//! The SQLite log: one writer connection, a small pool of reader connections, WAL mode.

use crate::channels::ChannelRuns;
use crate::ids::{self, RunIndex};
use crate::{
    Append, Committed, CrdtWrite, LogWriter, ObjectCatchUp, ObjectReset, OutboxSize, PushTarget,
    PushTargetChange, Store, StoreError, UpstreamChannel, WriteBatch, UPSTREAM_SENT,
};
use rhizome_core::{AppendOutcome, NewEntry, Position, Routing, Status, StoredEntry};
use rhizome_crdt::ops;
use rhizome_crdt::{Kind, Object};
use rhizome_protocol::message::push_json_str;
use rhizome_protocol::{ActionId, Channel, NodeId, UserId};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The log itself; `added` is an action's position.
const LOG_TABLE: &str = "
CREATE TABLE IF NOT EXISTS log(
    added INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    time INTEGER NOT NULL,
    received INTEGER NOT NULL,
    action TEXT NOT NULL,
    subprotocol INTEGER NOT NULL,
    routing TEXT,
    status INTEGER NOT NULL,
    reason TEXT,
    upstream INTEGER NOT NULL DEFAULT 0
);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_runs(
    node TEXT NOT NULL, last_key BLOB NOT NULL, first_key BLOB NOT NULL,
    first INTEGER NOT NULL, last INTEGER NOT NULL, PRIMARY KEY(node, last_key, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_late_ids(
    id TEXT PRIMARY KEY, added INTEGER NOT NULL
) WITHOUT ROWID;
-- The ids of deltas folded into an entry, by its position (see `Store::folded_into`).
CREATE INDEX IF NOT EXISTS log_late_ids_added ON log_late_ids(added);
CREATE TABLE IF NOT EXISTS log_channel_runs(
    channel TEXT NOT NULL, last INTEGER NOT NULL, first INTEGER NOT NULL, PRIMARY KEY(channel, last)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_targets(
    target TEXT NOT NULL, added INTEGER NOT NULL, PRIMARY KEY(target, added)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscription_acks(
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, client TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_targets(
    client TEXT PRIMARY KEY, node TEXT NOT NULL, channels TEXT NOT NULL, target TEXT NOT NULL,
    registered INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS crdt_objects(
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, position INTEGER NOT NULL,
    reset_at INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors(
    name TEXT PRIMARY KEY, position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS upstream_channels(
    channel TEXT PRIMARY KEY, since_id TEXT, since_time INTEGER
) WITHOUT ROWID;
-- CRDT objects an edge must correct (see `ObjectReset`), until it has.
CREATE TABLE IF NOT EXISTS object_resets(key TEXT PRIMARY KEY) WITHOUT ROWID;
-- Folds of deltas an edge relayed that its upstream accepted: the id each went under, and the
-- positions of its deltas, each as the difference from the one before, comma-separated (see
-- `Store::fold_of`).
CREATE TABLE IF NOT EXISTS relay_folds(id TEXT PRIMARY KEY, positions TEXT NOT NULL) WITHOUT ROWID;
-- Counter operations an edge applied for its clients that its upstream may still refuse, as
-- actions, by position (see `Store::counter_op`).
CREATE TABLE IF NOT EXISTS counter_ops(added INTEGER PRIMARY KEY, op TEXT NOT NULL);
-- CRDT operations this server applied for its clients, by id, while a peer may still relay
-- another server's application of them (see `Append::may_yield`): the actor, the operation
-- and the delta it was logged as, as actions.
CREATE TABLE IF NOT EXISTS applied_ops(
    id TEXT PRIMARY KEY, added INTEGER NOT NULL, received INTEGER NOT NULL, actor TEXT NOT NULL,
    op TEXT NOT NULL, delta TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_ops_received ON applied_ops(received);
CREATE INDEX IF NOT EXISTS applied_ops_added ON applied_ops(added);
-- The highest position each client confirmed here (see `Store::confirmed_by`).
CREATE TABLE IF NOT EXISTS client_positions(
    client TEXT PRIMARY KEY, position INTEGER NOT NULL
) WITHOUT ROWID;
";

const READERS: usize = 4;

/// The SQLite log in `<data dir>/rhizome.db`.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    readers: Arc<Vec<Mutex<Connection>>>,
}

/// The writer of a [`SqliteStore`].
///
/// It does not checkpoint the WAL itself: a checkpointer thread with its own connection copies
/// committed pages into the database file while the writer goes on appending, woken after
/// commits and at most every [`CHECKPOINT_INTERVAL`]. It stops with a last checkpoint when the
/// writer is dropped.
#[derive(Debug)]
pub struct SqliteWriter {
    conn: Connection,
    checkpointer: Option<mpsc::SyncSender<()>>,
    checkpoint_thread: Option<std::thread::JoinHandle<()>>,
    /// Decoded CRDT objects, as committed: an operation on a cached object neither decodes
    /// nor (but every [`snapshot_interval`] operations) encodes the object's document.
    objects: HashMap<String, CachedObject>,
    /// Finds appended ids again (see [`crate::ids`]).
    ids: RunIndex,
    /// The channel index's runs open in a transaction (see [`crate::channels`]).
    channel_runs: ChannelRuns,
    /// `PRAGMA data_version` at this writer's last transaction: it differs when another
    /// connection (a second writer on the same file) committed since, and then the marks and
    /// objects kept in memory may be behind the log.
    data_version: Option<i64>,
    /// When `applied_ops` past [`crate::APPLIED_KEPT_MS`] were last deleted (once a minute).
    applied_pruned_ms: i64,
}

/// A decoded object and how many of its logged deltas its stored snapshot lacks.
#[derive(Debug)]
struct CachedObject {
    state: Object,
    unsaved: u32,
    /// Bytes of the `crdt/delta` actions logged since the stored snapshot.
    unsaved_bytes: usize,
    /// Length of the stored snapshot's document (0: unknown, or none yet).
    snapshot_bytes: usize,
    /// Position of the stored snapshot (0: none yet).
    snapshot_at: Position,
    /// Snapshot cleaning has looked at the object's deltas up to here (0: none, or unknown
    /// since the object was read from the database): a delta it left is never cleaned later
    /// (its routing does not change), so the next cleaning starts after it.
    cleaned_upto: Position,
}

/// An object's stored snapshot is rewritten after this many operations; in between, readers
/// join the deltas logged after it.
const SNAPSHOT_EVERY: u32 = 64;

/// Bytes of snapshot document written per operation, on average, for a large object: its
/// snapshot is rewritten every `bytes / SNAPSHOT_BYTES_PER_OPERATION` operations instead, so
/// an operation on a 10 MiB list does not cost 160 KiB of JSON.
const SNAPSHOT_BYTES_PER_OPERATION: usize = 4096;

/// Most operations between two snapshots of one object: a reader joins at most this many
/// deltas after the snapshot.
const SNAPSHOT_EVERY_MAX: u32 = 4096;

/// Bytes of deltas logged since an object's snapshot beyond which the snapshot is rewritten
/// whatever the count of operations, when the snapshot itself is smaller: a reader joins at
/// most about this much, or the snapshot's size, of deltas.
const SNAPSHOT_DELTA_BYTES_MIN: usize = 256 << 10;

/// Whether `object`'s snapshot is due: after [`snapshot_interval`] operations, or once the
/// deltas logged since outweigh the snapshot (at least [`SNAPSHOT_DELTA_BYTES_MIN`]).
fn snapshot_due(object: &CachedObject) -> bool {
    object.unsaved >= snapshot_interval(object.snapshot_bytes)
        || object.unsaved_bytes > object.snapshot_bytes.max(SNAPSHOT_DELTA_BYTES_MIN)
}

/// Operations between two snapshots of an object whose last snapshot was `bytes` long.
fn snapshot_interval(bytes: usize) -> u32 {
    let by_size = u32::try_from(bytes / SNAPSHOT_BYTES_PER_OPERATION).unwrap_or(u32::MAX);
    by_size.clamp(SNAPSHOT_EVERY, SNAPSHOT_EVERY_MAX)
}

/// Decoded objects kept by the writer at most; beyond, the cache starts over (a miss only
/// costs reading the snapshot and the deltas after it).
const OBJECTS_CACHED_MAX: usize = 4096;

/// Total length of the cached objects' snapshot documents beyond which the cache starts over
/// too; the objects of the transaction just committed stay, however large.
const OBJECTS_CACHED_BYTES_MAX: usize = 64 << 20;

/// Least time between two WAL checkpoints.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

fn run_checkpointer(conn: Connection, wake: mpsc::Receiver<()>) {
    let checkpoint = |mode: &str| {
        if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    };
    let mut last = Instant::now();
    while wake.recv().is_ok() {
        let wait = CHECKPOINT_INTERVAL.saturating_sub(last.elapsed());
        if !wait.is_zero() && wake.recv_timeout(wait) == Err(mpsc::RecvTimeoutError::Disconnected) {
            break;
        }
        checkpoint("PASSIVE");
        last = Instant::now();
    }
    checkpoint("TRUNCATE");
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        self.checkpointer.take();
        if let Some(thread) = self.checkpoint_thread.take() {
            let _ = thread.join();
        }
    }
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags)?;
    // Only a new database takes it (WAL fixes the page size). Larger pages mean fewer page
    // splits and WAL frames per appended action: about 10% less writer and checkpointer CPU.
    conn.pragma_update(None, "page_size", 16384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "wal_autocheckpoint", 10000)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// The version of the log's format this build writes (`PRAGMA user_version`).
const FORMAT_VERSION: i64 = 6;

/// The cursor holding where [`Store::confirmed_by`]'s records began.
const CLIENTS_FROM: &str = "clients_from";

/// Brings a log written by an earlier build to [`FORMAT_VERSION`], in one transaction.
///
/// Version 1: before it, closing a connection raised the acknowledgement of its CRDT
/// subscriptions to what the client had confirmed, past the deltas of its own operations,
/// which an author is not sent live. A `since` naming such an acknowledgement would now skip
/// them, and the rows cannot be told apart from other subscriptions', so all are dropped: a
/// later `since` with one of those ids then gets more than it needs (duplicates), never less.
///
/// Version 2: an acknowledgement records the client it was sent to (`client`), so a client's
/// `since` raises only its own. Rows from before have none, and are never raised by a `since`.
///
/// Version 3: ids are found through `log_runs` and `log_late_ids` (see [`crate::ids`]) instead
/// of a `UNIQUE` index on `log.id`. The table is copied into one without that index, and its
/// rows indexed by runs. The channel index becomes `log_channel_runs` (see
/// [`crate::channels`]).
///
/// Version 4: `log.upstream`, entries an edge received from its upstream.
///
/// Version 5: `log_targets` also has `a:<user>` for each user an entry addresses by `users`,
/// `clients` or `nodes` (what a peer following the user is sent); added for the rows before.
/// `crdt_objects.reset_at`: where an edge last corrected the object (see `ObjectReset`).
///
/// Version 6: `client_positions`, what each client confirmed here; a client without a row is
/// trusted up to the end of the log as it was then (cursor `clients_from`).
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= FORMAT_VERSION {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    if version < 1 {
        tx.execute("DELETE FROM subscription_acks", [])?;
    }
    if !has_column(&tx, "subscription_acks", "client")? {
        tx.execute("ALTER TABLE subscription_acks ADD COLUMN client TEXT", [])?;
    }
    if version < 3 {
        let log_sql: String =
            tx.query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'log'", [], |r| {
                r.get(0)
            })?;
        if log_sql.contains("UNIQUE") {
            tx.execute_batch(&format!(
                "ALTER TABLE log RENAME TO log_before_3;
                 {LOG_TABLE}
                 INSERT INTO log(added, id, time, received, action, subprotocol, routing, status, reason)
                     SELECT added, id, time, received, action, subprotocol, routing, status, reason
                     FROM log_before_3 ORDER BY added;
                 DROP TABLE log_before_3;"
            ))?;
        }
        ids::index_all(&tx)?;
        crate::channels::index_from_rows(&tx)?;
    }
    if version < 4 && !has_column(&tx, "log", "upstream")? {
        tx.execute("ALTER TABLE log ADD COLUMN upstream INTEGER NOT NULL DEFAULT 0", [])?;
    }
    if version < 5 {
        if !has_column(&tx, "crdt_objects", "reset_at")? {
            tx.execute("ALTER TABLE crdt_objects ADD COLUMN reset_at INTEGER NOT NULL DEFAULT 0", [])?;
        }
        // `u:<user>`, `c:<user>:<client>` and `n:<user>:<client>…`: the user is what follows
        // the prefix up to the next `:` (a `clients`/`nodes` id without one names no user).
        tx.execute_batch(
            "INSERT OR IGNORE INTO log_targets(target, added)
                 SELECT 'a:' || substr(target, 3), added FROM log_targets WHERE target LIKE 'u:%';
             INSERT OR IGNORE INTO log_targets(target, added)
                 SELECT 'a:' || substr(target, 3, instr(substr(target, 3), ':') - 1), added
                 FROM log_targets
                 WHERE (target LIKE 'c:%' OR target LIKE 'n:%') AND instr(substr(target, 3), ':') > 1;",
        )?;
    }
    if version < 6 {
        tx.execute(
            "INSERT OR IGNORE INTO cursors(name, position) SELECT ?1, coalesce(max(added), 0) FROM log",
            [CLIENTS_FROM],
        )?;
    }
    tx.pragma_update(None, "user_version", FORMAT_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Whether `table` has the column `column`.
fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    let found: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |r| r.get(0),
    )?;
    Ok(found > 0)
}

impl SqliteStore {
    /// Opens (creating if needed) the log in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("rhizome.db");
        let conn = open(&path, OpenFlags::default())?;
        conn.execute_batch(LOG_TABLE)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        drop(conn);
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
            readers.push(Mutex::new(conn));
        }
        Ok(SqliteStore { path, readers: Arc::new(readers) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        // Take the first free reader; when all are busy, wait on one picked by thread id.
        for r in self.readers.iter() {
            if let Ok(conn) = r.try_lock() {
                return f(&conn);
            }
        }
        let i = thread_slot() % self.readers.len();
        let conn = self.readers[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}

fn thread_slot() -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() as usize
}

/// The entry that takes back this server's own application of the operation `held`, as
/// `applied_ops` kept it (its actor, the operation and the delta it was logged as), once a
/// peer's application of it (in `relay`) is joined (see `Append::may_yield`): under its
/// `yielded_id`, to the object's channel and the author's devices. `None` for an operation
/// that is not taken back (both applications are kept), one of another object than `key`
/// (the relay's), or a row that does not parse.
fn yield_append(
    held: &ActionId,
    relay: &NewEntry,
    key: &ops::Key,
    (actor, op, delta): (String, String, String),
) -> Option<Append> {
    let id = rhizome_core::uplink::yielded_id(held)?;
    let op = match serde_json::from_str::<Value>(&op) {
        Ok(Value::Object(action)) => ops::parse(&action).ok()?,
        _ => return None,
    };
    // The relay's object: a relay naming the operation with another object's delta is wrong.
    if op.key() != key {
        tracing::warn!(id = %held, "a peer relayed an operation applied here with another object's delta");
        return None;
    }
    let logged = match serde_json::from_str::<Value>(&delta) {
        Ok(Value::Object(action)) => rhizome_crdt::parse_delta(&action).ok()?.1,
        _ => return None,
    };
    let mut routing = Routing::channel(op.channel().as_str());
    routing.clients.push(held.node.client_id());
    let entry = NewEntry {
        id,
        time: relay.time,
        action_json: Arc::from("{}"),
        subprotocol: relay.subprotocol,
        routing,
        status: Status::Processed,
    };
    tracing::info!(id = %held, "an operation applied here and by another server (its author sent it to both): this server's application is taken back (docs/edge.md)");
    if ops::inverse(&op).is_some() {
        Some(Append::crdt_undo(entry, op, NodeId::from(actor.as_str()), Some(logged)))
    } else {
        let retire = ops::retire_adds(&logged)?;
        Some(Append::crdt_delta(entry, op.key().clone(), retire))
    }
}

pub(crate) fn routing_json(r: &Routing) -> Option<String> {
    if r.is_empty() && r.exclude_clients.is_empty() {
        return None;
    }
    // Written by hand: this runs once per appended action on the writer thread.
    let mut out = String::with_capacity(64);
    out.push('{');
    let lists: [(&str, Vec<&str>); 5] = [
        ("c", r.channels.iter().map(|c| c.as_str()).collect()),
        ("u", r.users.iter().map(|c| c.as_str()).collect()),
        ("k", r.clients.iter().map(|c| c.as_str()).collect()),
        ("n", r.nodes.iter().map(|c| c.as_str()).collect()),
        ("x", r.exclude_clients.iter().map(|c| c.as_str()).collect()),
    ];
    for (key, list) in lists.iter().filter(|(_, l)| !l.is_empty()) {
        if out.len() > 1 {
            out.push(',');
        }
        out.push('"');
        out.push_str(key);
        out.push_str("\":[");
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, item);
        }
        out.push(']');
    }
    out.push('}');
    Some(out)
}

fn routing_from_json(text: Option<String>) -> Option<Routing> {
    let Some(text) = text else {
        return Some(Routing::default());
    };
    let v: Value = serde_json::from_str(&text).ok()?;
    fn strs<T: From<&'static str> + From<String>>(v: &Value, key: &str) -> Vec<T> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str()).map(|s| T::from(s.to_owned())).collect())
            .unwrap_or_default()
    }
    Some(Routing {
        channels: strs(&v, "c"),
        users: strs(&v, "u"),
        clients: strs(&v, "k"),
        nodes: strs(&v, "n"),
        exclude_clients: strs(&v, "x"),
    })
}

const ENTRY_COLUMNS: &str = "added, id, time, action, subprotocol, routing";

fn row_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StoredEntry, StoreError>> {
    let added: i64 = row.get(0)?;
    let id: String = row.get(1)?;
    let time: i64 = row.get(2)?;
    let action: String = row.get(3)?;
    let subprotocol: i64 = row.get(4)?;
    let routing: Option<String> = row.get(5)?;
    let added = added as Position;
    let (Some(id), Some(routing)) = (ActionId::parse(&id), routing_from_json(routing)) else {
        return Ok(Err(StoreError::Corrupt(added)));
    };
    Ok(Ok(StoredEntry {
        added,
        id,
        time,
        action_json: Arc::from(action),
        subprotocol: subprotocol as u64,
        routing,
        crdt: None,
    }))
}

fn collect(
    rows: impl Iterator<Item = rusqlite::Result<Result<StoredEntry, StoreError>>>,
) -> Result<Vec<StoredEntry>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

impl SqliteStore {
    /// Opens the one writer of this log.
    pub fn writer(&self) -> Result<SqliteWriter, StoreError> {
        let conn = open(&self.path, OpenFlags::default())?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoint_conn = open(&self.path, OpenFlags::default())?;
        let (tx, rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("rhizome-checkpoint".into())
            .spawn(move || run_checkpointer(checkpoint_conn, rx))?;
        Ok(SqliteWriter {
            conn,
            checkpointer: Some(tx),
            checkpoint_thread: Some(thread),
            objects: HashMap::new(),
            ids: RunIndex::default(),
            channel_runs: ChannelRuns::default(),
            data_version: None,
            applied_pruned_ms: 0,
        })
    }
}

impl Store for SqliteStore {
    fn last_position(&self) -> Result<Position, StoreError> {
        self.with_reader(|c| {
            let seq: Option<i64> = c.query_row("SELECT max(added) FROM log", [], |r| r.get(0))?;
            Ok(seq.unwrap_or(0) as Position)
        })
    }

    fn read_channel(
        &self,
        channel: &Channel,
        after: Position,
        upto: Position,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        self.with_reader(|c| {
            // Runs in order, each one's rows in order: the log's order (see `crate::channels`).
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM log_channel_runs AS r
                 JOIN log ON added BETWEEN max(r.first, ?2 + 1) AND min(r.last, ?3)
                 WHERE r.channel = ?1 AND r.last > ?2 AND r.first <= ?3 AND action <> '{{}}'
                 ORDER BY r.last, added LIMIT ?4"
            ))?;
            let rows = stmt
                .query_map(params![channel.as_str(), after as i64, upto as i64, limit as i64], row_entry)?;
            collect(rows)
        })
    }

    fn read_targeted(
        &self,
        node: &NodeId,
        after: Position,
        upto: Position,
        limit: usize,
    ) -> Result<(Vec<StoredEntry>, Position), StoreError> {
        let client = node.client_id();
        let user = node.user_id();
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM log WHERE added IN (
                    SELECT DISTINCT added FROM log_targets
                    WHERE target IN (?1, ?2, ?3) AND added > ?4 AND added <= ?5
                    ORDER BY added LIMIT ?6)
                 ORDER BY added"
            ))?;
            let user_key = user.map(|u| format!("u:{u}")).unwrap_or_default();
            let rows = stmt.query_map(
                params![
                    format!("n:{node}"),
                    format!("c:{client}"),
                    user_key,
                    after as i64,
                    upto as i64,
                    limit as i64
                ],
                row_entry,
            )?;
            let rows = collect(rows)?;
            let examined = if rows.len() < limit { upto } else { rows.last().map_or(upto, |e| e.added) };
            let entries =
                rows.into_iter().filter(|e| e.routing.targets(Some(&e.id.client_id()), node)).collect();
            Ok((entries, examined))
        })
    }

    fn read_addressed_to_user(
        &self,
        user: &UserId,
        after: Position,
        upto: Position,
        limit: usize,
    ) -> Result<(Vec<StoredEntry>, Position), StoreError> {
        // `a:<user>`, written for every user an entry addresses (see `commit`).
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM log WHERE added IN (
                    SELECT added FROM log_targets WHERE target = ?1 AND added > ?2 AND added <= ?3
                    ORDER BY added LIMIT ?4)
                 ORDER BY added"
            ))?;
            let rows = stmt.query_map(
                params![format!("a:{user}"), after as i64, upto as i64, limit as i64],
                row_entry,
            )?;
            let rows = collect(rows)?;
            let examined = if rows.len() < limit { upto } else { rows.last().map_or(upto, |e| e.added) };
            let entries = rows.into_iter().filter(|e| e.routing.addresses_user(user)).collect();
            Ok((entries, examined))
        })
    }

    fn position_of_id(&self, id: &str) -> Result<Option<Position>, StoreError> {
        self.with_reader(|c| {
            if let Some(parsed) = ActionId::parse(id) {
                if let Some(found) = ids::find(c, &parsed, &parsed.text())? {
                    return Ok(Some(found.added as Position));
                }
            }
            let ack: Option<i64> = c
                .query_row("SELECT position FROM subscription_acks WHERE id = ?1", [id], |r| r.get(0))
                .optional()?;
            Ok(ack.map(|p| p as Position))
        })
    }

    fn position_before_time(&self, time_ms: i64) -> Result<Position, StoreError> {
        // `received` never decreases along `added` (one writer, commit time), so a binary
        // search over the primary key finds the boundary without an index on `received`.
        self.with_reader(|c| {
            let bounds: (Option<i64>, Option<i64>) =
                c.query_row("SELECT min(added), max(added) FROM log", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let (Some(mut lo), Some(mut hi)) = bounds else {
                return Ok(0);
            };
            let mut stmt =
                c.prepare_cached("SELECT added, received FROM log WHERE added >= ?1 ORDER BY added LIMIT 1")?;
            let mut answer = lo - 1;
            while lo <= hi {
                let mid = lo + (hi - lo) / 2;
                let row: Option<(i64, i64)> =
                    stmt.query_row([mid], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                match row {
                    Some((added, received)) if received < time_ms => {
                        answer = added;
                        lo = added + 1;
                    }
                    _ => hi = mid - 1,
                }
            }
            Ok(answer.max(0) as Position)
        })
    }

    fn status_of(&self, id: &str) -> Result<Option<Status>, StoreError> {
        self.with_reader(|c| {
            let Some(parsed) = ActionId::parse(id) else {
                return Ok(None);
            };
            let found = ids::find(c, &parsed, &parsed.text())?;
            Ok(found.map(|f| Status::from_parts(f.status, f.reason)))
        })
    }

    fn read_object(&self, key: &str) -> Result<Option<(Object, Position)>, StoreError> {
        self.with_reader(|c| {
            // One read transaction: the snapshot and the deltas after it from the same moment,
            // whatever the writer snapshots or cleans meanwhile.
            let tx = c.unchecked_transaction()?;
            let read = read_object(&tx, key)?;
            tx.commit()?;
            Ok(read.map(|(object, _, last)| (object, last)))
        })
    }

    fn push_targets(&self) -> Result<Vec<PushTarget>, StoreError> {
        self.with_reader(|conn| {
            let mut statement = conn.prepare(
                "SELECT client, node, channels, target, registered FROM push_targets ORDER BY client",
            )?;
            let rows = statement.query_map([], |r| {
                let channels: String = r.get(2)?;
                Ok(PushTarget {
                    client: r.get(0)?,
                    node: r.get(1)?,
                    channels: serde_json::from_str(&channels).unwrap_or_default(),
                    target: r.get(3)?,
                    registered_ms: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn cursor(&self, name: &str) -> Result<Option<Position>, StoreError> {
        self.with_reader(|c| {
            let position: Option<i64> = c
                .prepare_cached("SELECT position FROM cursors WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            Ok(position.map(|p| p as Position))
        })
    }

    fn cleaned_any(&self) -> Result<bool, StoreError> {
        self.with_reader(|c| {
            // Cleaning empties a row's action to `{}`; nothing else logs an empty action
            // outside an edge (whose corrections do, with the cursor then written).
            let any: bool = c.query_row(
                "SELECT EXISTS(SELECT 1 FROM log WHERE action = '{}' AND upstream = 0)",
                [],
                |r| r.get(0),
            )?;
            Ok(any)
        })
    }

    fn confirmed_by(&self, client: &str) -> Result<Position, StoreError> {
        self.with_reader(|c| {
            let recorded: Option<i64> = c
                .prepare_cached("SELECT position FROM client_positions WHERE client = ?1")?
                .query_row([client], |r| r.get(0))
                .optional()?;
            let position = match recorded {
                Some(position) => position,
                None => c
                    .prepare_cached("SELECT position FROM cursors WHERE name = ?1")?
                    .query_row([CLIENTS_FROM], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0),
            };
            Ok(position as Position)
        })
    }

    fn outbox(&self, after: Position) -> Result<OutboxSize, StoreError> {
        self.with_reader(|c| {
            // The ids of a server (user `server`) are `<ms> server:<name> <seq>` or `<ms> server <seq>`.
            let mut stmt = c.prepare_cached(
                "SELECT count(*), coalesce(sum(length(action)), 0), min(time) FROM log
                 WHERE added > ?1 AND upstream = 0 AND action <> '{}' AND status <> 2
                 AND id NOT LIKE '% server:%' AND id NOT LIKE '% server %'",
            )?;
            Ok(stmt.query_row([after as i64], |r| {
                Ok(OutboxSize {
                    entries: r.get::<_, i64>(0)? as u64,
                    bytes: r.get::<_, i64>(1)? as u64,
                    oldest_ms: r.get(2)?,
                })
            })?)
        })
    }

    fn upstream_channels(&self) -> Result<Vec<UpstreamChannel>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached("SELECT channel, since_id, since_time FROM upstream_channels")?;
            let rows = stmt.query_map([], |r| {
                Ok(UpstreamChannel {
                    channel: r.get(0)?,
                    since_id: r.get(1)?,
                    since_time: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn fold_of(&self, id: &str) -> Result<Option<Vec<Position>>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached("SELECT positions FROM relay_folds WHERE id = ?1")?;
            let Some(text) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? else {
                return Ok(None);
            };
            decode_positions(&text).map(Some).ok_or(StoreError::Corrupt(0))
        })
    }

    fn folded_into(&self, from: Position, to: Position) -> Result<Vec<(Position, String)>, StoreError> {
        self.with_reader(|c| {
            // A late id of the entry itself (its author's clock went back) is there too, and
            // left out: it is the log row's own id.
            let mut stmt = c.prepare_cached(
                "SELECT i.added, i.id FROM log_late_ids AS i JOIN log AS l ON l.added = i.added
                 WHERE i.added BETWEEN ?1 AND ?2 AND i.id <> l.id ORDER BY i.added",
            )?;
            let rows = stmt.query_map(params![from as i64, to as i64], |r| {
                Ok((r.get::<_, i64>(0)? as Position, r.get::<_, String>(1)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn counter_op(&self, position: Position) -> Result<Option<ops::Op>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached("SELECT op FROM counter_ops WHERE added = ?1")?;
            let Some(text) = stmt.query_row([position as i64], |r| r.get::<_, String>(0)).optional()? else {
                return Ok(None);
            };
            let op = match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(action)) => ops::parse(&action).ok(),
                _ => None,
            };
            op.map(Some).ok_or(StoreError::Corrupt(position))
        })
    }

    fn correcting(&self, key: &str) -> Result<bool, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM object_resets WHERE key = ?1")?;
            Ok(stmt.query_row([key], |_| Ok(())).optional()?.is_some())
        })
    }

    fn objects_to_reset(&self) -> Result<Vec<String>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached("SELECT key FROM object_resets ORDER BY key")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn read_from(&self, after: Position, limit: usize) -> Result<Vec<(StoredEntry, Status)>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS}, status, reason FROM log
                 WHERE added > ?1 AND action <> '{{}}' AND upstream = 0 ORDER BY added LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after as i64, limit as i64], |row| {
                let entry = row_entry(row)?;
                let status = Status::from_parts(row.get(6)?, row.get(7)?);
                Ok(entry.map(|e| (e, status)))
            })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
    }

    fn own_entry(&self, position: Position) -> Result<Option<(StoredEntry, Status)>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS}, status, reason FROM log WHERE added = ?1 AND upstream = 0"
            ))?;
            let row = stmt
                .query_row([position as i64], |row| {
                    let entry = row_entry(row)?;
                    let status = Status::from_parts(row.get(6)?, row.get(7)?);
                    Ok(entry.map(|e| (e, status)))
                })
                .optional()?;
            row.transpose()
        })
    }

    fn count(&self) -> Result<u64, StoreError> {
        self.with_reader(|c| Ok(c.query_row("SELECT count(*) FROM log", [], |r| r.get::<_, i64>(0))? as u64))
    }

    fn catch_up_object(&self, key: &str, after: Position) -> Result<ObjectCatchUp, StoreError> {
        self.with_reader(|c| {
            // One read transaction: the snapshot, the deltas and the last position agree,
            // whatever the writer snapshots or cleans meanwhile.
            let tx = c.unchecked_transaction()?;
            let last: i64 = tx.query_row("SELECT coalesce(max(added), 0) FROM log", [], |r| r.get(0))?;
            let snapshot: Option<(String, i64, i64)> = tx
                .prepare_cached("SELECT kind, position, reset_at FROM crdt_objects WHERE key = ?1")?
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let whole = snapshot.as_ref().is_some_and(|(_, at, _)| after < *at as Position);
            let reset_at = snapshot.as_ref().map_or(0, |(_, _, reset)| *reset as Position);
            let snapshot = snapshot.map(|(kind, at, _)| (kind, at));
            let object = match snapshot {
                None => None,
                // The writer cleans only deltas its previous snapshot holds, all before the
                // stored one: every delta after `after` is still logged. Their join is what
                // the subscriber lacks.
                Some((kind, at)) if after >= at as Position => {
                    let kind = Kind::from_name(&kind).ok_or(StoreError::Corrupt(at as Position))?;
                    let mut object = Object::bottom(kind);
                    for (added, delta) in deltas_after(&tx, key, after)? {
                        let delta =
                            Object::from_json(kind, &delta).map_err(|_| StoreError::Corrupt(added))?;
                        object.join(&delta).map_err(|_| StoreError::Corrupt(added))?;
                    }
                    Some(object)
                }
                // Deltas before the snapshot may be gone: the whole state.
                Some(_) => read_object(&tx, key)?.map(|(object, _, _)| object),
            };
            tx.commit()?;
            Ok(ObjectCatchUp { object, through: last as Position, whole, reset_at })
        })
    }
}

/// The `delta` documents of the object at `key` logged after `after`, oldest first.
fn deltas_after(conn: &Connection, key: &str, after: Position) -> Result<Vec<(Position, Value)>, StoreError> {
    let mut later = conn.prepare_cached(
        "SELECT l.added, l.action FROM log_channel_runs AS r
         JOIN log AS l ON l.added BETWEEN max(r.first, ?2 + 1) AND r.last
         WHERE r.channel = ?1 AND r.last > ?2 ORDER BY r.last, l.added",
    )?;
    let channel = format!("crdt/{key}");
    let rows = later
        .query_map(params![channel, after as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    let mut deltas = Vec::new();
    for row in rows {
        let (added, action) = row?;
        let added = added as Position;
        let mut action: Value = serde_json::from_str(&action).map_err(|_| StoreError::Corrupt(added))?;
        // Other actions resent to the object's channel are not its deltas.
        if action["type"] != rhizome_crdt::DELTA_TYPE || action["key"] != key {
            continue;
        }
        deltas.push((added, action["delta"].take()));
    }
    Ok(deltas)
}

/// Reads an object from `conn`: its stored snapshot joined with the deltas logged after it,
/// and the position of the last of them. A document that does not decode is corrupt.
/// Also returns the snapshot's own position (the first) besides the last delta's.
fn read_object(conn: &Connection, key: &str) -> Result<Option<(Object, Position, Position)>, StoreError> {
    let row: Option<(String, String, i64)> = conn
        .prepare_cached("SELECT kind, state, position FROM crdt_objects WHERE key = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((kind, state, position)) = row else {
        return Ok(None);
    };
    let mut position = position as Position;
    let snapshot_at = position;
    let corrupt = StoreError::Corrupt(position);
    let kind = Kind::from_name(&kind).ok_or(StoreError::Corrupt(position))?;
    let doc: Value = serde_json::from_str(&state).map_err(|_| StoreError::Corrupt(position))?;
    let mut object = Object::from_json(kind, &doc).map_err(|_| corrupt)?;
    for (added, delta) in deltas_after(conn, key, position)? {
        let delta = Object::from_json(kind, &delta).map_err(|_| StoreError::Corrupt(added))?;
        object.join(&delta).map_err(|_| StoreError::Corrupt(added))?;
        position = added;
    }
    Ok(Some((object, snapshot_at, position)))
}

/// What [`apply_crdt`] did.
enum Applied {
    /// The object with its new state, and the delta to ship.
    Changed(Box<(CachedObject, Object)>),
    /// A delta from the upstream that the object held already (put back in `staged`).
    Held,
    /// The object refused it, for this reason.
    Refused(String),
}

/// Applies `write` (an operation by `entry`'s author under its actor, or a delta to join) to
/// the object's current state (from `staged`, this transaction's changes, else the writer's
/// cache, else the database). With `check_held` (a server's delta from the upstream, or a
/// peer's delta rejoined, see `Append::rejoin`) a delta is checked against the state first:
/// one the object holds already changes nothing here, and is not kept (an edge is sent back
/// its own operations, joined with others', when it catches up).
fn apply_crdt(
    tx: &rusqlite::Transaction<'_>,
    staged: &mut HashMap<String, CachedObject>,
    cache: &mut HashMap<String, CachedObject>,
    write: &CrdtWrite,
    entry: &NewEntry,
    check_held: bool,
) -> Result<Applied, StoreError> {
    let key = write.key().as_str();
    let found = match staged.remove(key).or_else(|| cache.remove(key)) {
        Some(cached) => Some(cached),
        None => match read_object(tx, key) {
            // Unsaved deltas are unknown here; the next snapshot is written at once.
            Ok(Some((state, snapshot_at, _))) => Some(CachedObject {
                state,
                unsaved: SNAPSHOT_EVERY_MAX,
                unsaved_bytes: 0,
                snapshot_bytes: 0,
                snapshot_at,
                cleaned_upto: 0,
            }),
            Ok(None) => None,
            // One unreadable object refuses its own operations, not the whole transaction.
            Err(StoreError::Corrupt(position)) => {
                tracing::error!(key, position, "a CRDT object's stored state does not decode");
                return Ok(Applied::Refused("error".to_owned()));
            }
            Err(e) => return Err(e),
        },
    };
    // A new object gets its snapshot (and so its row and kind) with its first operation.
    let exists = found.is_some();
    let mut object = found.unwrap_or(CachedObject {
        state: Object::bottom(write.kind()),
        unsaved: SNAPSHOT_EVERY_MAX,
        unsaved_bytes: 0,
        snapshot_bytes: 0,
        snapshot_at: 0,
        cleaned_upto: 0,
    });
    // A refused operation leaves the state as it was, so an existing object goes back
    // unchanged; a refused first operation creates nothing (its kind must not stick).
    let applied = match write {
        CrdtWrite::Op(op, actor) => ops::apply_in_place(&mut object.state, op, actor, entry.time),
        CrdtWrite::Undo(op, actor, logged) => {
            let mut state = object.state.clone();
            let undone = match logged {
                Some(logged) => state.join(logged),
                None => Ok(()),
            }
            .and_then(|()| ops::undo_in_place(&mut state, op, actor));
            if undone.is_ok() {
                object.state = state;
            }
            undone
        }
        // Only a server's delta from the upstream (a catch-up, a join of what it logged) can
        // hold what this edge relayed; a client's is one the edge has not seen yet. So the
        // copy of the state the check costs is paid once per catch-up of an object (and once
        // per delta a peer sends again after a drop).
        CrdtWrite::Join(_, delta) | CrdtWrite::Replace(_, delta)
            if check_held && exists && delta.kind() == object.state.kind() =>
        {
            let mut joined = object.state.clone();
            match joined.join(delta) {
                Ok(()) if joined == object.state => {
                    staged.insert(key.to_owned(), object);
                    return Ok(Applied::Held);
                }
                Ok(()) => {
                    object.state = joined;
                    Ok(delta.clone())
                }
                Err(e) => Err(e),
            }
        }
        CrdtWrite::Join(_, delta) | CrdtWrite::Replace(_, delta) => {
            object.state.join(delta).map(|()| delta.clone())
        }
    };
    match applied {
        Ok(delta) => Ok(Applied::Changed(Box::new((object, delta)))),
        Err(e) => {
            if exists {
                staged.insert(key.to_owned(), object);
            }
            Ok(Applied::Refused(e.reason().to_owned()))
        }
    }
}

/// What [`rebuild_object`] found.
enum Rebuilt {
    /// The object and its corrected state.
    State(Box<(CachedObject, Object)>),
    /// Nothing to correct: the correction changes nothing.
    Same,
    /// No such object.
    Absent,
    /// A delta it needs was emptied by cleaning (see [`Committed::resets_incomplete`]).
    Incomplete,
}

/// Which deltas [`rebuild_object`] joins on top of the upstream's state.
struct Rebuild<'a> {
    key: &'a str,
    /// The upstream's state of the object (`None`: it has none).
    upstream: Option<&'a Object>,
    /// This edge's own deltas after it that are not undone.
    own_after: Position,
    /// The deltas received from the upstream after it.
    upstream_after: Position,
    /// This edge's own deltas emptied by cleaning up to it are held by the upstream (its
    /// cursor, for a whole state the upstream sent: see `Append::crdt_state`); 0 when every
    /// delta needed must still be here.
    held_through: Position,
    /// Positions this write marks undone (its status changes come after its appends).
    undone: &'a HashSet<Position>,
}

/// The corrected state of an object (see [`ObjectReset`] and [`Append::crdt_state`]). The
/// object is taken out of `staged`/`cache` as in [`apply_crdt`]; put back unless `State` is
/// returned.
fn rebuild_object(
    tx: &rusqlite::Transaction<'_>,
    staged: &mut HashMap<String, CachedObject>,
    cache: &mut HashMap<String, CachedObject>,
    reset: Rebuild<'_>,
) -> Result<Rebuilt, StoreError> {
    let key = reset.key;
    let current = match staged.remove(key).or_else(|| cache.remove(key)) {
        Some(cached) => cached,
        None => match read_object(tx, key)? {
            Some((state, snapshot_at, _)) => CachedObject {
                state,
                unsaved: SNAPSHOT_EVERY_MAX,
                unsaved_bytes: 0,
                snapshot_bytes: 0,
                snapshot_at,
                cleaned_upto: 0,
            },
            None => return Ok(Rebuilt::Absent),
        },
    };
    let kind = current.state.kind();
    let mut state = match reset.upstream {
        Some(upstream) if upstream.kind() == kind => upstream.clone(),
        _ => Object::bottom(kind),
    };
    let from = reset.own_after.min(reset.upstream_after);
    let mut rows = tx.prepare_cached(
        "SELECT l.added, l.action, l.status, l.upstream FROM log_channel_runs AS r
         JOIN log AS l ON l.added BETWEEN max(r.first, ?2 + 1) AND r.last
         WHERE r.channel = ?1 AND r.last > ?2 ORDER BY r.last, l.added",
    )?;
    let rows = rows.query_map(params![format!("crdt/{key}"), from as i64], |r| {
        Ok((
            r.get::<_, i64>(0)? as Position,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, bool>(3)?,
        ))
    })?;
    let mut incomplete = false;
    for row in rows {
        let (added, action, status, upstream) = row?;
        let needed = if upstream {
            added > reset.upstream_after
        } else {
            added > reset.own_after
                && status != Status::Undone(String::new()).code()
                && !reset.undone.contains(&added)
        };
        if !needed || (action == "{}" && !upstream && added <= reset.held_through) {
            continue;
        }
        if action == "{}" {
            incomplete = true;
            break;
        }
        let action: Value = serde_json::from_str(&action).map_err(|_| StoreError::Corrupt(added))?;
        // Other actions resent to the object's channel are not its deltas; an earlier
        // correction is built from what this one joins too.
        let Value::Object(fields) = &action else { continue };
        if action["type"] != rhizome_crdt::DELTA_TYPE
            || action["key"] != key
            || rhizome_crdt::replaces(fields)
        {
            continue;
        }
        let delta = Object::from_json(kind, &action["delta"]).map_err(|_| StoreError::Corrupt(added))?;
        state.join(&delta).map_err(|_| StoreError::Corrupt(added))?;
    }
    if incomplete || state == current.state {
        staged.insert(key.to_owned(), current);
        return Ok(if incomplete { Rebuilt::Incomplete } else { Rebuilt::Same });
    }
    Ok(Rebuilt::State(Box::new((current, state))))
}

/// Makes `state` the snapshot of the object at `key` at `added`, the entry that corrected it
/// (`reset_at`): nothing logged before it is joined on top again, and a subscriber behind it
/// gets the whole state.
fn snapshot_correction(
    object: &mut rusqlite::CachedStatement<'_>,
    reset_at: &mut rusqlite::CachedStatement<'_>,
    staged: &mut HashMap<String, CachedObject>,
    key: String,
    mut cached: CachedObject,
    state: Object,
    added: i64,
) -> Result<(), StoreError> {
    let document = state.to_json().to_string();
    object.execute(params![key, state.kind().name(), document, added])?;
    reset_at.execute(params![key, added])?;
    cached.state = state;
    cached.unsaved = 0;
    cached.unsaved_bytes = 0;
    cached.snapshot_bytes = document.len();
    cached.snapshot_at = added as Position;
    staged.insert(key, cached);
    Ok(())
}

/// Ascending log positions as `relay_folds` keeps them: each as the difference from the one
/// before, comma-separated.
fn encode_positions(positions: &[Position]) -> String {
    let mut text = String::new();
    let mut before = 0;
    for &position in positions {
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&position.saturating_sub(before).to_string());
        before = position;
    }
    text
}

/// The positions [`encode_positions`] wrote; `None` if `text` is not such a list.
fn decode_positions(text: &str) -> Option<Vec<Position>> {
    let mut position: Position = 0;
    text.split(',')
        .map(|step| {
            position += step.parse::<Position>().ok()?;
            Some(position)
        })
        .collect()
}

/// Stores or removes one push wake-up registration.
fn write_push_target(tx: &rusqlite::Transaction<'_>, change: PushTargetChange) -> Result<(), StoreError> {
    match change {
        PushTargetChange::Put(t) => {
            let channels = serde_json::to_string(&t.channels).unwrap_or_else(|_| "[]".into());
            tx.prepare_cached(
                "INSERT INTO push_targets(client, node, channels, target, registered)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(client) DO UPDATE SET node = excluded.node, channels = excluded.channels,
                 target = excluded.target, registered = excluded.registered",
            )?
            .execute(params![t.client, t.node, channels, t.target, t.registered_ms])?;
        }
        PushTargetChange::Remove(client) => {
            tx.prepare_cached("DELETE FROM push_targets WHERE client = ?1")?.execute([client])?;
        }
    }
    Ok(())
}

impl LogWriter for SqliteWriter {
    fn commit(&mut self, batches: &mut [WriteBatch], now_ms: i64) -> Result<Vec<Committed>, StoreError> {
        let cache = &mut self.objects;
        let ids = &mut self.ids;
        ids.begin();
        let channel_runs = &mut self.channel_runs;
        channel_runs.begin();
        // Objects changed by this transaction; they reach the cache only if it commits.
        let mut staged: HashMap<String, CachedObject> = HashMap::new();
        // The write lock from the start: a transaction that reads first (an id's high-water
        // mark) and then writes could not wait for a lock held elsewhere when it upgrades.
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // A high-water mark below an id another writer appended would let that id in twice; the
        // write lock held, nobody else commits until this transaction ends.
        let data_version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if self.data_version != Some(data_version) {
            ids.forget();
            cache.clear();
            self.data_version = Some(data_version);
        }
        let mut results = Vec::with_capacity(batches.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO log(id, time, received, action, subprotocol, routing, status, reason, upstream)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // Only the object's own deltas that go nowhere but its channel: another action routed
            // to the channel, or a delta the rules also send to users, clients, nodes or other
            // channels, stays whole for their catch-up.
            // Rows after `?5` (what an earlier cleaning looked at) up to `?2`. A delta relayed by
            // a peer also excludes the peer's client (`"x"`, the last key): still only the channel.
            let mut clean_body = tx.prepare_cached(
                "UPDATE log SET action = '{}', routing = NULL WHERE added IN
                 (SELECT l.added FROM log_channel_runs AS r
                  JOIN log AS l ON l.added BETWEEN max(r.first, ?5 + 1) AND min(r.last, ?2)
                  WHERE r.channel = ?1 AND r.last > ?5 AND r.first <= ?2)
                 AND (routing = ?3 OR substr(routing, 1, length(?6)) = ?6)
                 AND json_extract(action, '$.type') = 'crdt/delta' AND json_extract(action, '$.key') = ?4",
            )?;
            // Runs made only of emptied rows go; readers skip emptied rows of the others.
            let mut clean_index = tx.prepare_cached(
                "DELETE FROM log_channel_runs WHERE channel = ?1 AND last <= ?2 AND last > ?3
                 AND NOT EXISTS (SELECT 1 FROM log WHERE added BETWEEN log_channel_runs.first
                     AND log_channel_runs.last AND action <> '{}')",
            )?;
            let mut upstream_sent = tx.prepare_cached("SELECT position FROM cursors WHERE name = ?1")?;
            let mut object = tx.prepare_cached(
                "INSERT INTO crdt_objects(key, kind, state, position) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO UPDATE SET kind = excluded.kind, state = excluded.state,
                 position = excluded.position",
            )?;
            let mut target =
                tx.prepare_cached("INSERT OR IGNORE INTO log_targets(target, added) VALUES (?1, ?2)")?;
            let mut status = tx.prepare_cached("UPDATE log SET status = ?2, reason = ?3 WHERE added = ?1")?;
            // An acknowledgement only rises: the hub raises it to what the subscriber confirmed
            // receiving, and a late or repeated write must not move a re-subscription back.
            let mut ack = tx.prepare_cached(
                "INSERT INTO subscription_acks(id, position, client) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET position = max(position, excluded.position)",
            )?;
            // A `since` raises only an acknowledgement sent to the same client, and creates none:
            // another client's (a guessed id) would otherwise skip what that client lacks.
            let mut cursor = tx.prepare_cached(
                "INSERT INTO cursors(name, position) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET position = max(position, excluded.position)",
            )?;
            // A channel is kept once added; an answer's `since` replaces the one before it.
            let mut upstream_channel = tx.prepare_cached(
                "INSERT INTO upstream_channels(channel, since_id, since_time) VALUES (?1, ?2, ?3)
                 ON CONFLICT(channel) DO UPDATE SET since_id = excluded.since_id,
                 since_time = excluded.since_time WHERE excluded.since_id IS NOT NULL",
            )?;
            let mut resetting = tx.prepare_cached("SELECT 1 FROM object_resets WHERE key = ?1")?;
            let mut reset_at = tx.prepare_cached("UPDATE crdt_objects SET reset_at = ?2 WHERE key = ?1")?;
            let mut to_reset = tx.prepare_cached("INSERT OR IGNORE INTO object_resets(key) VALUES (?1)")?;
            let mut reset_done = tx.prepare_cached("DELETE FROM object_resets WHERE key = ?1")?;
            let mut relay_fold =
                tx.prepare_cached("INSERT OR REPLACE INTO relay_folds(id, positions) VALUES (?1, ?2)")?;
            let mut relay_fold_done = tx.prepare_cached("DELETE FROM relay_folds WHERE id = ?1")?;
            let mut counter_op =
                tx.prepare_cached("INSERT OR IGNORE INTO counter_ops(added, op) VALUES (?1, ?2)")?;
            let mut counter_ops_through = tx.prepare_cached("DELETE FROM counter_ops WHERE added <= ?1")?;
            let mut counter_op_done = tx.prepare_cached("DELETE FROM counter_ops WHERE added = ?1")?;
            let mut applied =
                tx.prepare_cached("SELECT added, actor, op, delta FROM applied_ops WHERE id = ?1")?;
            let mut applied_keep = tx.prepare_cached(
                "INSERT OR IGNORE INTO applied_ops(id, added, received, actor, op, delta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut applied_done = tx.prepare_cached("DELETE FROM applied_ops WHERE id = ?1")?;
            let mut applied_taken_back = tx.prepare_cached("DELETE FROM applied_ops WHERE added = ?1")?;
            let mut client_position = tx.prepare_cached(
                "INSERT INTO client_positions(client, position) VALUES (?1, ?2)
                 ON CONFLICT(client) DO UPDATE SET position = max(position, excluded.position)",
            )?;
            let mut resumed = tx.prepare_cached(
                "UPDATE subscription_acks SET position = max(position, ?2) WHERE id = ?1 AND client = ?3",
            )?;
            for batch in batches.iter_mut() {
                let undone_now: HashSet<Position> = batch
                    .statuses
                    .iter()
                    .filter(|(_, s)| matches!(s, Status::Undone(_)))
                    .map(|(p, _)| *p)
                    .collect();
                let mut committed = Committed {
                    outcomes: Vec::with_capacity(batch.appends.len()),
                    entries: Vec::with_capacity(batch.appends.len()),
                    resets_incomplete: Vec::new(),
                };
                let mut queue: VecDeque<(Append, bool)> =
                    batch.appends.drain(..).map(|append| (append, false)).collect();
                // The outcomes there were before an entry this store added itself (a taking
                // back of its own application): the answers are indexed by the batch's appends.
                let mut outcomes_before: Option<usize> = None;
                while let Some((append, internal)) = queue.pop_front() {
                    if let Some(n) = outcomes_before.take() {
                        committed.outcomes.truncate(n);
                    }
                    if internal {
                        outcomes_before = Some(committed.outcomes.len());
                    }
                    let Append {
                        mut entry,
                        id_text: mut id,
                        mut routing_text,
                        mut crdt,
                        from_upstream,
                        folded,
                        may_yield,
                    } = append;
                    // A peer's relay of this server's own application of an operation (its
                    // device sent it to both): found by each id the relay holds, taken back
                    // below once the relay is joined.
                    let mut yields = Vec::new();
                    if let (Some(CrdtWrite::Join(..)), false) = (&crdt, from_upstream) {
                        for held in std::iter::once(&entry.id).chain(&folded) {
                            let text = held.text();
                            let row = applied.query_row([&text], |r| {
                                let kept =
                                    (r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?);
                                Ok((r.get::<_, i64>(0)?, kept))
                            });
                            if let Some(row) = row.optional()? {
                                yields.push((held.clone(), row));
                            }
                        }
                    }
                    // An id is appended once, ever; a CRDT operation is not applied twice either.
                    // A delta under an id logged here may still be joined (`Append::crdt_delta`).
                    // The status of the id when this is its delta rejoined: the append's outcome.
                    let mut rejoined: Option<Status> = None;
                    // Where the id is logged, when it is: the deltas folded into a duplicate are
                    // that entry's (a fold sent again holds no more than the first: docs/edge.md);
                    // those of a delta stored anew (rejoined) are the new entry's.
                    let mut found_at = None;
                    if let Some(found) = ids.find(&tx, &entry.id, &id)? {
                        found_at = Some(found.added);
                        let status = Status::from_parts(found.status, found.reason);
                        // The upstream's state is the truth, whatever became of the id here; a
                        // peer's delta under an id refused here is refused with it.
                        let again = match (&crdt, &status) {
                            (Some(CrdtWrite::Join(..)), Status::Undone(_)) if !from_upstream => None,
                            (Some(CrdtWrite::Join(..)), _) => rhizome_core::uplink::rejoined_id(&entry.id),
                            _ => None,
                        };
                        let again = match again {
                            Some(again) if ids.find(&tx, &again, &again.text())?.is_none() => again,
                            _ => {
                                for member in &folded {
                                    ids.alias(&tx, member, found.added)?;
                                }
                                committed.outcomes.push(AppendOutcome::Duplicate(status));
                                continue;
                            }
                        };
                        id = again.text();
                        entry.id = again;
                        rejoined = Some(status);
                        // Done with: its author's `process` ran (or runs) for the id itself.
                        entry.status = Status::Processed;
                        // The author's own devices too (an author is not sent its own actions):
                        // this is another server's application, which their copies lack.
                        let author = entry.id.node.client_id();
                        if !entry.routing.clients.contains(&author) {
                            entry.routing.clients.push(author);
                            routing_text = routing_json(&entry.routing);
                        }
                    }
                    // The upstream's whole state replaces the object, with what it lacks of this
                    // edge's own (see `Append::crdt_state`); else it is joined.
                    let mut replaced = None;
                    if let Some(CrdtWrite::Replace(key, state)) = &crdt {
                        // The index runs of this transaction's appends are read.
                        channel_runs.flush(&tx)?;
                        let sent: Option<i64> =
                            upstream_sent.query_row([UPSTREAM_SENT], |r| r.get(0)).optional()?;
                        let rebuild = Rebuild {
                            key: key.as_str(),
                            upstream: Some(state),
                            own_after: 0,
                            upstream_after: Position::MAX,
                            held_through: sent.unwrap_or(0) as Position,
                            undone: &undone_now,
                        };
                        match rebuild_object(&tx, &mut staged, cache, rebuild)? {
                            Rebuilt::State(rebuilt) => {
                                let (cached, state) = *rebuilt;
                                entry.action_json =
                                    Arc::from(rhizome_crdt::state_action(key.as_str(), &state));
                                replaced = Some((key.as_str().to_owned(), cached, state));
                            }
                            Rebuilt::Same => {
                                committed.outcomes.push(AppendOutcome::Duplicate(Status::Processed));
                                continue;
                            }
                            Rebuilt::Absent => {}
                            Rebuilt::Incomplete => {
                                to_reset.execute([key.as_str()])?;
                                committed.resets_incomplete.push(key.as_str().to_owned());
                            }
                        }
                        if replaced.is_some() {
                            crdt = None;
                        }
                    }
                    // A CRDT operation becomes its delta, or is refused, before it is stored.
                    let mut object_update = None;
                    if let Some(write) = &crdt {
                        let check_held = (from_upstream && entry.id.node.is_server()) || rejoined.is_some();
                        match apply_crdt(&tx, &mut staged, cache, write, &entry, check_held)? {
                            Applied::Changed(changed) => {
                                let (cached, delta) = *changed;
                                let key = write.key().as_str();
                                entry.action_json = Arc::from(rhizome_crdt::delta_action(key, &delta));
                                object_update = Some((key.to_owned(), cached, delta));
                            }
                            Applied::Held => {
                                let status = rejoined.unwrap_or(Status::Processed);
                                committed.outcomes.push(AppendOutcome::Duplicate(status));
                                if let Some(at) = found_at {
                                    for member in &folded {
                                        ids.alias(&tx, member, at)?;
                                    }
                                }
                                // The object holds the peer's application: this server's yields.
                                for (held, (at, row)) in yields.drain(..) {
                                    let Some(append) = yield_append(&held, &entry, write.key(), row) else {
                                        continue;
                                    };
                                    // Taken back once: neither again, nor on a refusal (`counter_ops`).
                                    applied_done.execute([held.text()])?;
                                    counter_op_done.execute([at])?;
                                    queue.push_front((append, true));
                                }
                                continue;
                            }
                            Applied::Refused(_) if rejoined.is_some() => {
                                committed
                                    .outcomes
                                    .push(AppendOutcome::Duplicate(rejoined.unwrap_or(Status::Processed)));
                                if let Some(at) = found_at {
                                    for member in &folded {
                                        ids.alias(&tx, member, at)?;
                                    }
                                }
                                continue;
                            }
                            Applied::Refused(reason) => {
                                entry.status = Status::Undone(reason);
                                entry.routing = Routing::default();
                                routing_text = None;
                            }
                        }
                    }
                    insert.execute(params![
                        id,
                        entry.time,
                        now_ms,
                        &*entry.action_json,
                        entry.subprotocol as i64,
                        routing_text,
                        entry.status.code(),
                        entry.status.reason(),
                        from_upstream,
                    ])?;
                    let added = tx.last_insert_rowid();
                    ids.appended(&tx, &entry.id, &id, added)?;
                    for member in &folded {
                        ids.alias(&tx, member, added)?;
                    }
                    if let (Some(CrdtWrite::Op(op, actor)), true) = (&crdt, may_yield) {
                        if !from_upstream && !matches!(entry.status, Status::Undone(_)) {
                            let json = serde_json::Value::Object(op.to_action()).to_string();
                            let delta = &*entry.action_json;
                            applied_keep.execute(params![id, added, now_ms, actor.as_str(), json, delta])?;
                        }
                    }
                    // An edge's counter operation for a client (its actor is not the author's
                    // node): kept while its upstream may refuse it, to be taken back then.
                    if let Some(CrdtWrite::Op(op, actor)) = &crdt {
                        if *actor != entry.id.node
                            && !from_upstream
                            && !matches!(entry.status, Status::Undone(_))
                            && ops::inverse(op).is_some()
                        {
                            let json = serde_json::Value::Object(op.to_action()).to_string();
                            counter_op.execute(params![added, json])?;
                        }
                    }
                    let delta_bytes = entry.action_json.len();
                    let mut shipped = None;
                    if let Some((key, mut cached, delta)) = object_update {
                        if snapshot_due(&cached) {
                            let state = &cached.state;
                            let document = state.to_json().to_string();
                            object.execute(params![key, state.kind().name(), document, added])?;
                            cached.unsaved = 0;
                            cached.unsaved_bytes = 0;
                            cached.snapshot_bytes = document.len();
                            // The deltas the previous snapshot already holds are needed no more
                            // (readers start from the snapshot, the new one or the previous):
                            // their bodies and channel index go, their ids stay for at-most-once.
                            // A correction to come reads the deltas after its positions: none is
                            // emptied while one is pending.
                            let correcting = resetting.query_row([&key], |_| Ok(())).optional()?.is_some();
                            if cached.snapshot_at > 0 && !correcting {
                                let channel = format!("crdt/{key}");
                                let only_there =
                                    routing_json(&Routing::channel(channel.as_str())).unwrap_or_default();
                                let excluding = format!("{},\"x\":", &only_there[..only_there.len() - 1]);
                                // An edge keeps what its upstream lacks: up to its cursor only.
                                let sent: Option<i64> =
                                    upstream_sent.query_row([UPSTREAM_SENT], |r| r.get(0)).optional()?;
                                let upto = (cached.snapshot_at as i64).min(sent.unwrap_or(i64::MAX));
                                let after = cached.cleaned_upto as i64;
                                if upto > after {
                                    // The index runs of this transaction's earlier deltas first.
                                    channel_runs.flush(&tx)?;
                                    clean_body
                                        .execute(params![channel, upto, only_there, key, after, excluding])?;
                                    clean_index.execute(params![channel, upto, after])?;
                                    cached.cleaned_upto = upto as Position;
                                }
                            }
                            cached.snapshot_at = added as Position;
                        } else {
                            cached.unsaved += 1;
                            cached.unsaved_bytes += delta_bytes;
                        }
                        staged.insert(key.clone(), cached);
                        shipped = Some(Arc::new((key, delta)));
                    }
                    if let Some((key, cached, state)) = replaced {
                        snapshot_correction(
                            &mut object,
                            &mut reset_at,
                            &mut staged,
                            key,
                            cached,
                            state,
                            added,
                        )?;
                    }
                    if let Status::Undone(reason) = &entry.status {
                        if crdt.is_some() {
                            committed.outcomes.push(AppendOutcome::Undone(added as Position, reason.clone()));
                            continue;
                        }
                    }
                    for c in &entry.routing.channels {
                        channel_runs.add(&tx, c, added)?;
                    }
                    for u in &entry.routing.users {
                        target.execute(params![format!("u:{u}"), added])?;
                    }
                    for c in &entry.routing.clients {
                        target.execute(params![format!("c:{c}"), added])?;
                    }
                    for n in &entry.routing.nodes {
                        target.execute(params![format!("n:{n}"), added])?;
                    }
                    if entry.routing.is_targeted() {
                        for user in entry.routing.addressed_users() {
                            target.execute(params![format!("a:{user}"), added])?;
                        }
                    }
                    if let Some(status) = rejoined {
                        if yields.is_empty() {
                            tracing::warn!(
                                id = %entry.id,
                                "an operation applied by two servers (its author sent it to both); both are kept (docs/edge.md)"
                            );
                        }
                        committed.outcomes.push(AppendOutcome::Duplicate(status));
                    } else {
                        committed.outcomes.push(AppendOutcome::Added(added as Position));
                    }
                    // The peer's application is joined: this server takes its own back.
                    for (held, (at, row)) in yields.drain(..) {
                        let key = crdt.as_ref().map(CrdtWrite::key);
                        let Some(append) = key.and_then(|key| yield_append(&held, &entry, key, row)) else {
                            continue;
                        };
                        // Taken back once: neither again, nor on a refusal (`counter_ops`).
                        applied_done.execute([held.text()])?;
                        counter_op_done.execute([at])?;
                        queue.push_front((append, true));
                    }
                    committed.entries.push(StoredEntry {
                        added: added as Position,
                        time: entry.time,
                        action_json: entry.action_json,
                        subprotocol: entry.subprotocol,
                        routing: entry.routing,
                        id: entry.id,
                        crdt: shipped,
                    });
                }
                if let Some(n) = outcomes_before.take() {
                    committed.outcomes.truncate(n);
                }
                for (position, s) in batch.statuses.drain(..) {
                    status.execute(params![position as i64, s.code(), s.reason()])?;
                }
                for (id, position, client) in batch.owned_acks.drain(..) {
                    ack.execute(params![id, position as i64, client])?;
                }
                for (id, position, client) in batch.resumed_acks.drain(..) {
                    resumed.execute(params![id, position as i64, client])?;
                }
                for (client, position) in batch.client_positions.drain(..) {
                    client_position.execute(params![client, position as i64])?;
                }
                for change in batch.push_targets.drain(..) {
                    write_push_target(&tx, change)?;
                }
                for (name, position) in batch.cursors.drain(..) {
                    cursor.execute(params![name, position as i64])?;
                }
                for UpstreamChannel { channel, since_id, since_time } in batch.upstream_channels.drain(..) {
                    upstream_channel.execute(params![channel, since_id, since_time])?;
                }
                for key in batch.objects_to_reset.drain(..) {
                    to_reset.execute([key])?;
                }
                for (id, positions) in batch.relay_folds.drain(..) {
                    relay_fold.execute(params![id, encode_positions(&positions)])?;
                }
                for id in batch.relay_folds_done.drain(..) {
                    relay_fold_done.execute([id])?;
                }
                if let Some(through) = batch.counter_ops_through.take() {
                    counter_ops_through.execute([through as i64])?;
                }
                for position in batch.applied_ops_done.drain(..) {
                    applied_taken_back.execute([position as i64])?;
                }
                for position in batch.counter_ops_done.drain(..) {
                    counter_op_done.execute([position as i64])?;
                }
                for reset in batch.object_resets.drain(..) {
                    // The index runs of this transaction's appends are read.
                    channel_runs.flush(&tx)?;
                    let rebuild = Rebuild {
                        key: &reset.key,
                        upstream: reset.upstream.as_ref(),
                        own_after: reset.own_after,
                        upstream_after: reset.upstream_after,
                        held_through: 0,
                        undone: &undone_now,
                    };
                    let rebuilt = rebuild_object(&tx, &mut staged, cache, rebuild)?;
                    if matches!(rebuilt, Rebuilt::Incomplete) {
                        committed.resets_incomplete.push(reset.key);
                        continue;
                    }
                    reset_done.execute([&reset.key])?;
                    let Rebuilt::State(rebuilt) = rebuilt else { continue };
                    let (cached, state) = *rebuilt;
                    let ObjectReset { key, mut entry, .. } = reset;
                    let id = entry.id.text();
                    if ids.find(&tx, &entry.id, &id)?.is_some() {
                        staged.insert(key, cached);
                        continue;
                    }
                    entry.action_json = Arc::from(rhizome_crdt::state_action(&key, &state));
                    insert.execute(params![
                        id,
                        entry.time,
                        now_ms,
                        &*entry.action_json,
                        entry.subprotocol as i64,
                        routing_json(&entry.routing),
                        entry.status.code(),
                        entry.status.reason(),
                        false,
                    ])?;
                    let added = tx.last_insert_rowid();
                    ids.appended(&tx, &entry.id, &id, added)?;
                    for c in &entry.routing.channels {
                        channel_runs.add(&tx, c, added)?;
                    }
                    snapshot_correction(&mut object, &mut reset_at, &mut staged, key, cached, state, added)?;
                    committed.entries.push(StoredEntry {
                        added: added as Position,
                        time: entry.time,
                        action_json: entry.action_json,
                        subprotocol: entry.subprotocol,
                        routing: entry.routing,
                        id: entry.id,
                        crdt: None,
                    });
                }
                results.push(committed);
            }
            channel_runs.flush(&tx)?;
            ids.flush(&tx)?;
        }
        let prune = now_ms - self.applied_pruned_ms >= 60_000;
        if prune {
            let mut old = tx.prepare_cached("DELETE FROM applied_ops WHERE received < ?1")?;
            old.execute([now_ms - crate::APPLIED_KEPT_MS])?;
        }
        tx.commit()?;
        if prune {
            self.applied_pruned_ms = now_ms;
        }
        ids.committed();
        if !staged.is_empty() {
            let bytes = |objects: &HashMap<String, CachedObject>| -> usize {
                objects.values().map(|o| o.snapshot_bytes).sum()
            };
            if cache.len() + staged.len() > OBJECTS_CACHED_MAX
                || bytes(cache) + bytes(&staged) > OBJECTS_CACHED_BYTES_MAX
            {
                cache.clear();
            }
            cache.extend(staged);
        }
        if let Some(checkpointer) = &self.checkpointer {
            // Full means a checkpoint is already due.
            let _ = checkpointer.try_send(());
        }
        Ok(results)
    }

    fn recover_interrupted(&mut self) -> Result<usize, StoreError> {
        Ok(self.conn.execute("UPDATE log SET status = 2, reason = 'error' WHERE status = 0", [])?)
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_positions, encode_positions};

    #[test]
    fn fold_positions_are_kept_as_differences_and_read_back() {
        let positions = [3, 4, 9, 1_000_000];
        let text = encode_positions(&positions);
        assert_eq!(text, "3,1,5,999991");
        assert_eq!(decode_positions(&text), Some(positions.to_vec()));
        assert_eq!(decode_positions("3,x"), None);
        assert_eq!(decode_positions(""), None);
    }
}
