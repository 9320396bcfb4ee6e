//! Rhizome's durable action log.
//!
//! [`Store`] is what the server needs from a log: atomic, durable batch appends that refuse a
//! second entry with the same action id, and reads by channel or by target from a position.
//! [`SqliteStore`] is the embedded implementation (WAL, `synchronous=FULL`).

mod channels;
mod ids;
mod sqlite;

pub use sqlite::{SqliteStore, SqliteWriter};

use rhizome_core::{AppendOutcome, NewEntry, Position, Status, StoredEntry};
use rhizome_protocol::{Channel, NodeId, UserId};

/// Errors of the store. The server logs them and refuses the affected writes; a store error
/// never acknowledges an action.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The data directory could not be prepared.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// A row could not be decoded (the file was changed by something else).
    #[error("corrupt row at position {0}")]
    Corrupt(Position),
}

/// One atomic write: appends, status changes and subscription acknowledgements.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Entries to append, in order.
    pub appends: Vec<Append>,
    /// Status changes of existing entries, by position.
    pub statuses: Vec<(Position, Status)>,
    /// Subscription acknowledgements: `(id, position, client id)`, the id of a
    /// `logux/processed` (or a pull's subscription id) answering a subscription of that client,
    /// and the log position the subscriber had received everything up to. The client is
    /// recorded as the acknowledgement's owner when it is created; a position already recorded
    /// for the id is only ever raised, never lowered.
    pub owned_acks: Vec<(String, Position, String)>,
    /// Raises of acknowledgements a client re-subscribed from with `since`: `(id, position,
    /// client id)`; only an acknowledgement owned by that client rises, none is created.
    pub resumed_acks: Vec<(String, Position, String)>,
    /// Push wake-up registrations to store or remove.
    pub push_targets: Vec<PushTargetChange>,
    /// Named log positions to raise (`(name, position)`), such as [`UPSTREAM_SENT`]: a cursor
    /// is created at its first write and only ever rises.
    pub cursors: Vec<(String, Position)>,
    /// Channels an edge follows upstream, each with its latest `since` (see
    /// [`UpstreamChannel`]).
    pub upstream_channels: Vec<UpstreamChannel>,
    /// Keys of CRDT objects to correct (an edge's upstream refused one of their operations):
    /// kept until an [`ObjectReset`] of the object is done ([`Store::objects_to_reset`]).
    pub objects_to_reset: Vec<String>,
    /// Corrections of CRDT objects after the upstream refused some of their operations, done
    /// after the rest of the batch (its status changes included).
    pub object_resets: Vec<ObjectReset>,
    /// The highest positions clients confirmed (`synced`) at this server: `(client id,
    /// position)`, only ever raised (see [`Store::confirmed_by`]).
    pub client_positions: Vec<(String, Position)>,
    /// Deltas an edge relayed folded into one that its upstream accepted: the id the fold went
    /// under, and the positions of every delta in it (see [`Store::fold_of`]).
    pub relay_folds: Vec<(String, Vec<Position>)>,
    /// Folds whose record is no longer needed (the cloud committed or refused them), by the
    /// id each went under: deleted after this batch's `relay_folds` are written.
    pub relay_folds_done: Vec<String>,
    /// Counter operations an edge applied that can no longer be refused: those at or below
    /// this position (the upstream answered them, and its answer is final) ...
    pub counter_ops_through: Option<Position>,
    /// ... and those at these positions (see [`Store::counter_op`]).
    pub counter_ops_done: Vec<Position>,
    /// This server's own applications at these positions, taken back (their upstream refused
    /// them): they no longer yield to a peer's (see [`Append::may_yield`]).
    pub applied_ops_done: Vec<Position>,
}

/// The correction of an edge's CRDT object after its upstream refused one of the operations
/// the edge relayed (docs/edge.md): the object becomes `upstream` (the upstream's state, read
/// after it got the edge's request) joined with what that state may lack: the edge's own
/// deltas after `own_after` (the upstream cursor when the edge asked, so every delta the
/// upstream had confirmed by then is in its state) that are not undone, and the deltas
/// received from the upstream after `upstream_after` (the edge's last position when it asked).
/// When that differs from the object, it is stored as a new snapshot and `entry` is appended
/// with the whole state (`rhizome_crdt::state_action`), so subscribers replace their copies.
#[derive(Debug)]
pub struct ObjectReset {
    /// The object's key.
    pub key: String,
    /// The upstream's state of it (`None`: the upstream has none).
    pub upstream: Option<rhizome_crdt::Object>,
    /// See above.
    pub own_after: Position,
    /// See above.
    pub upstream_after: Position,
    /// The entry to append (a server's, routed to the object's channel); its action is set here.
    pub entry: NewEntry,
}

/// A channel an edge subscribes to upstream (docs/edge.md), with the `since` of its next
/// subscription there. Written when it is first followed with the time it was (`since_id`
/// `None`: the upstream catches up from that time, so nothing written upstream after the
/// edge's client subscribed is missed), then with the id and time of each answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamChannel {
    /// The channel.
    pub channel: String,
    /// The id of the upstream's `logux/processed` that answered the last subscription (protocol
    /// 5's `since.id`), once one did. A row with an id is never replaced by one without.
    pub since_id: Option<String>,
    /// Its time, or when the channel was first followed (server clock, ms).
    pub since_time: i64,
}

/// What [`Store::catch_up_object`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectCatchUp {
    /// What the subscriber lacks; `None` when the object does not exist.
    pub object: Option<rhizome_crdt::Object>,
    /// The last log position of the read.
    pub through: Position,
    /// Whether `object` is the whole state, which the subscriber puts in place of its copy
    /// (`rhizome_crdt::state_action`).
    pub whole: bool,
    /// The position of the object's last correction ([`ObjectReset`]), 0 if none: a
    /// subscriber whose copy may be older than it gets the whole state, whatever it has seen.
    pub reset_at: Position,
}

/// The size of an edge's outbox (see [`Store::outbox`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxSize {
    /// Entries.
    pub entries: u64,
    /// Bytes of their actions.
    pub bytes: u64,
    /// Creation time of the oldest (server clock, ms).
    pub oldest_ms: Option<i64>,
}

/// How long a server keeps a CRDT operation it applied for a client, to take it back should
/// a peer relay another server's application of it ([`Append::may_yield`]): 90 days. An
/// operation its device sends to two servers further apart than that counts twice.
pub const APPLIED_KEPT_MS: i64 = 90 * 86_400_000;

/// The cursor of what an edge received from its upstream: the highest `added` of the
/// upstream's `sync`s it stored (sent as `synced` in its next `connect`).
pub const UPSTREAM_RECEIVED: &str = "upstream_received";

/// The cursor of an edge's link (see docs/edge.md): every entry to send upstream at or below
/// it was committed by the upstream. While it exists, the store keeps the bodies of CRDT deltas
/// above it (snapshot cleaning would otherwise empty deltas the upstream still lacks).
pub const UPSTREAM_SENT: &str = "upstream_sent";

impl WriteBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.statuses.is_empty()
            && self.owned_acks.is_empty()
            && self.resumed_acks.is_empty()
            && self.push_targets.is_empty()
            && self.cursors.is_empty()
            && self.upstream_channels.is_empty()
            && self.objects_to_reset.is_empty()
            && self.object_resets.is_empty()
            && self.client_positions.is_empty()
            && self.relay_folds.is_empty()
            && self.relay_folds_done.is_empty()
            && self.counter_ops_through.is_none()
            && self.counter_ops_done.is_empty()
            && self.applied_ops_done.is_empty()
    }
}

/// A device's push wake-up registration, as stored: one per client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The client id (`user:client`); registering again replaces its registration.
    pub client: String,
    /// The node that registered.
    pub node: String,
    /// The channels it follows.
    pub channels: Vec<String>,
    /// Where pokes go, as JSON (the server's encoding; the store keeps it as it is).
    pub target: String,
    /// When it was registered, server clock (ms).
    pub registered_ms: i64,
}

/// A change to the push wake-up registrations.
#[derive(Debug, Clone)]
pub enum PushTargetChange {
    /// Stores a registration, replacing the client's previous one.
    Put(PushTarget),
    /// Removes the registration of this client id, if any.
    Remove(String),
}

/// An entry to append, with its storage encoding done by the caller's thread, so the single
/// writer thread only runs the database.
#[derive(Debug)]
pub struct Append {
    entry: NewEntry,
    id_text: String,
    routing_text: Option<String>,
    crdt: Option<CrdtWrite>,
    from_upstream: bool,
    folded: Vec<rhizome_protocol::ActionId>,
    may_yield: bool,
}

/// What an entry does to a CRDT object in its append's transaction.
#[derive(Debug)]
pub(crate) enum CrdtWrite {
    /// An operation, whose dots the store assigns to the actor (see `rhizome_core::actor`).
    Op(rhizome_crdt::ops::Op, NodeId),
    /// The inverse of a counter operation the actor made before, and the delta it was
    /// logged as (see [`Append::crdt_undo`]).
    Undo(rhizome_crdt::ops::Op, NodeId, Option<rhizome_crdt::Object>),
    /// A delta with its dots assigned elsewhere (a peer relays what its own store applied),
    /// joined as it is.
    Join(rhizome_crdt::ops::Key, rhizome_crdt::Object),
    /// The upstream's whole state of the object, which replaces it (see
    /// [`Append::crdt_state`]).
    Replace(rhizome_crdt::ops::Key, rhizome_crdt::Object),
}

impl Append {
    /// Encodes `entry` for storage.
    pub fn new(entry: NewEntry) -> Append {
        let id_text = entry.id.text();
        let routing_text = sqlite::routing_json(&entry.routing);
        Append {
            entry,
            id_text,
            routing_text,
            crdt: None,
            from_upstream: false,
            folded: Vec::new(),
            may_yield: false,
        }
    }

    /// Marks the entry as received from this server's upstream (an edge's link, see
    /// docs/edge.md): it is never sent back up.
    pub fn from_upstream(mut self) -> Append {
        self.from_upstream = true;
        self
    }

    /// The ids of the deltas a peer folded into this one (its `folded` meta, docs/edge.md):
    /// each is logged as another id of this entry (or of the entry logged under its id, when
    /// this one is a duplicate), unless one is logged under it already. So a delta folded
    /// into another is found by its own id, and its author's copy sent here directly later
    /// (a device that moved) is a duplicate, not applied again.
    pub fn folded(mut self, ids: Vec<rhizome_protocol::ActionId>) -> Append {
        self.folded = ids;
        self
    }

    /// A CRDT operation ([`Append::crdt`]) that this server applies for a client and takes
    /// back should a peer relay another server's application of it: its device sent it to
    /// both, which each applied it (docs/edge.md, "An operation in flight when its device
    /// moves"). The operation and its delta are kept (`applied_ops`, by id) for
    /// [`APPLIED_KEPT_MS`]; a peer's relayed delta under its id, or with its id folded in, is
    /// joined, and in the same transaction this server's own application is taken back, once:
    /// a counter operation by its inverse ([`Append::crdt_undo`]), a set add by retiring its
    /// dots (`rhizome_crdt::ops::retire_adds`), under
    /// [`rhizome_core::uplink::yielded_id`]. Other operations are kept as both applied them.
    pub fn may_yield(mut self) -> Append {
        self.may_yield = true;
        self
    }

    /// An entry that takes back `op`, a counter operation that `actor` made here before and
    /// that the upstream refused: in the same transaction as the append, the store applies
    /// its inverse (`rhizome_crdt::ops::undo_in_place`) and stores the delta, as for
    /// [`Append::crdt`] (docs/edge.md, "A refused counter operation"). `logged` is the delta
    /// the operation was logged as: joined first, so that the inverse is applied to running
    /// totals that hold the operation even if a correction took it out of the object.
    pub fn crdt_undo(
        entry: NewEntry,
        op: rhizome_crdt::ops::Op,
        actor: NodeId,
        logged: Option<rhizome_crdt::Object>,
    ) -> Append {
        let mut append = Append::new(entry);
        append.crdt = Some(CrdtWrite::Undo(op, actor, logged));
        append
    }

    /// An entry that carries a CRDT operation: in the same transaction as the append, the
    /// store applies it to the object's state (assigning its dots) and stores, in place of the
    /// operation, the `crdt/delta` action it produced, which is what subscribers receive. The
    /// dots are `actor`'s: the author's node id on a server without an upstream, its name at
    /// this edge on an edge (`rhizome_core::actor::actor`). An operation the object refuses
    /// (another kind) is stored undone with its reason.
    pub fn crdt(entry: NewEntry, op: rhizome_crdt::ops::Op, actor: NodeId) -> Append {
        let mut append = Append::new(entry);
        append.crdt = Some(CrdtWrite::Op(op, actor));
        append
    }

    /// An entry that carries a `crdt/delta` of the object at `key`, relayed from another
    /// Rhizome node that applied the operation (see docs/edge.md): in the same transaction, the
    /// store joins `delta` into the object's state. Joining is idempotent, so the same delta
    /// arriving twice under different ids changes nothing the second time. A delta of another
    /// kind than the object is stored undone (`crdtTypeMismatch`).
    ///
    /// A delta whose id is logged here already is still joined when the object does not hold
    /// it: the id's author sent its operation to two servers (a device that moved with the
    /// operation in flight, docs/edge.md), and each applied it. For a peer's relayed delta, the
    /// id must not be undone here (the peer is then refused with it); one from the upstream
    /// ([`Append::from_upstream`]) is joined whatever became of the id here. The delta, which
    /// may hold other operations folded with it, is stored processed under
    /// [`rhizome_core::uplink::rejoined_id`] of the id, and sent to its author's devices too.
    /// The operation then counts twice, the same on every replica, and nothing either server
    /// took is lost. The append's outcome stays `Duplicate`.
    pub fn crdt_delta(entry: NewEntry, key: rhizome_crdt::ops::Key, delta: rhizome_crdt::Object) -> Append {
        let mut append = Append::new(entry);
        append.crdt = Some(CrdtWrite::Join(key, delta));
        append
    }

    /// An entry from the upstream ([`Append::from_upstream`]) that carries its whole state of
    /// the object at `key` (a `crdt/delta` with `replace: true`: the upstream corrected its
    /// object after its own upstream refused an operation, or caught this edge up with the
    /// whole state). Joining it would keep what the upstream took out, so in the same
    /// transaction the object becomes `state` joined with this edge's own deltas of the object
    /// that are not undone (those the upstream lacks, relayed or not yet; the others it holds
    /// already, and a join is idempotent), and with nothing received from the upstream before
    /// it (the upstream's state holds all of that it kept). The entry is stored with that state,
    /// `replace: true`, as the object's snapshot, so this edge's subscribers and its own edges
    /// replace their copies in turn. One that changes nothing is not stored; for an object not
    /// here, or one a needed delta of is gone, the state is joined instead (the second is also
    /// marked to correct, see [`Committed::resets_incomplete`]).
    ///
    /// An own delta that snapshot cleaning emptied is taken as held by the upstream's state:
    /// cleaning takes out only deltas up to the upstream cursor (confirmed and answered) that
    /// a later snapshot holds. (One the upstream committed after writing this state, and
    /// answered, then emptied here before the state came down, would be lost here: that takes
    /// two snapshots of the object in between. See docs/edge.md.)
    pub fn crdt_state(entry: NewEntry, key: rhizome_crdt::ops::Key, state: rhizome_crdt::Object) -> Append {
        let mut append = Append::new(entry);
        append.crdt = Some(CrdtWrite::Replace(key, state));
        append
    }

    /// The entry.
    pub fn entry(&self) -> &NewEntry {
        &self.entry
    }
}

impl From<NewEntry> for Append {
    fn from(entry: NewEntry) -> Append {
        Append::new(entry)
    }
}

impl CrdtWrite {
    fn key(&self) -> &rhizome_crdt::ops::Key {
        match self {
            CrdtWrite::Op(op, _) | CrdtWrite::Undo(op, ..) => op.key(),
            CrdtWrite::Join(key, _) | CrdtWrite::Replace(key, _) => key,
        }
    }

    fn kind(&self) -> rhizome_crdt::Kind {
        match self {
            CrdtWrite::Op(op, _) | CrdtWrite::Undo(op, ..) => op.kind(),
            CrdtWrite::Join(_, delta) | CrdtWrite::Replace(_, delta) => delta.kind(),
        }
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct Committed {
    /// One outcome per append, in order.
    pub outcomes: Vec<AppendOutcome>,
    /// The entries actually written, in position order.
    pub entries: Vec<StoredEntry>,
    /// Keys of the [`ObjectReset`]s not done because a delta they needed was emptied by
    /// snapshot cleaning meanwhile, and of the objects a whole state from the upstream could
    /// not replace for that reason ([`Append::crdt_state`]): ask the upstream again.
    pub resets_incomplete: Vec<String>,
}

/// The writing side of a log. One writer exists per log; it is not shared between threads.
pub trait LogWriter: Send {
    /// Applies the batches in one transaction and makes it durable before returning.
    fn commit(&mut self, batches: &mut [WriteBatch], now_ms: i64) -> Result<Vec<Committed>, StoreError>;

    /// Marks entries left `Waiting` by a crash as undone with reason `error`: their `process`
    /// may or may not have run, and running it again could process an action twice.
    fn recover_interrupted(&mut self) -> Result<usize, StoreError>;
}

/// The reading side of a log, shared by every task.
pub trait Store: Send + Sync + 'static {
    /// The last position written.
    fn last_position(&self) -> Result<Position, StoreError>;

    /// Entries on `channel` with `after < added <= upto`, oldest first, at most `limit`.
    fn read_channel(
        &self,
        channel: &Channel,
        after: Position,
        upto: Position,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, StoreError>;

    /// Entries addressed to `node` (by node, its client or its user) with `after < added <= upto`,
    /// oldest first, at most `limit` rows examined. Returns the entries that really target the
    /// node and the last position examined.
    fn read_targeted(
        &self,
        node: &NodeId,
        after: Position,
        upto: Position,
        limit: usize,
    ) -> Result<(Vec<StoredEntry>, Position), StoreError>;

    /// Entries addressed to `user` or to one of its clients or nodes (what a peer following
    /// the user receives, see [`rhizome_core::routing::USER_CHANNEL_PREFIX`]) with
    /// `after < added <= upto`, oldest first, at most `limit` rows examined. Returns them and
    /// the last position examined.
    fn read_addressed_to_user(
        &self,
        user: &UserId,
        after: Position,
        upto: Position,
        limit: usize,
    ) -> Result<(Vec<StoredEntry>, Position), StoreError>;

    /// The position meant by a subscription's `since.id`: an entry's own position, or the
    /// position recorded with a subscription acknowledgement.
    fn position_of_id(&self, id: &str) -> Result<Option<Position>, StoreError>;

    /// The last position committed before `time_ms` (server clock).
    fn position_before_time(&self, time_ms: i64) -> Result<Position, StoreError>;

    /// The status of an action id, if the log has it.
    fn status_of(&self, id: &str) -> Result<Option<Status>, StoreError>;

    /// Every push wake-up registration, read once at start.
    fn push_targets(&self) -> Result<Vec<PushTarget>, StoreError>;

    /// Number of entries in the log.
    fn count(&self) -> Result<u64, StoreError>;

    /// The position of the cursor `name` (see [`WriteBatch::cursors`]), if it was ever written.
    fn cursor(&self, name: &str) -> Result<Option<Position>, StoreError>;

    /// Whether snapshot cleaning emptied any entry of the log (a CRDT delta an object's snapshot
    /// holds). Reads the whole log: for a check at start.
    fn cleaned_any(&self) -> Result<bool, StoreError>;

    /// The highest position `client` confirmed receiving at this server, as last recorded
    /// ([`WriteBatch::client_positions`]); for a client without a record, the end of the log
    /// when recording began (0 for a log that always recorded). A client's own claim (the
    /// `synced` of its `connect`) may be another server's position: a device that moved
    /// between an edge and the cloud (docs/edge.md).
    fn confirmed_by(&self, client: &str) -> Result<Position, StoreError>;

    /// What an edge still has to send upstream: its own entries after `after` (the upstream
    /// cursor) that the link sends (not received from the upstream, not a server's, not undone).
    fn outbox(&self, after: Position) -> Result<OutboxSize, StoreError>;

    /// The channels an edge follows upstream.
    fn upstream_channels(&self) -> Result<Vec<UpstreamChannel>, StoreError>;

    /// The entry at `position` with its status, unless it was received from the upstream; its
    /// action may be `{}` (a delta emptied by snapshot cleaning).
    fn own_entry(&self, position: Position) -> Result<Option<(StoredEntry, Status)>, StoreError>;

    /// The CRDT objects an edge must still correct (see [`WriteBatch::objects_to_reset`]).
    fn objects_to_reset(&self) -> Result<Vec<String>, StoreError>;

    /// The positions of the deltas this edge relayed folded under the id `id`, if its upstream
    /// accepted that fold ([`WriteBatch::relay_folds`]): in a chain, the upstream's own
    /// upstream may refuse it later, and the undo names only `id`.
    fn fold_of(&self, id: &str) -> Result<Option<Vec<Position>>, StoreError>;

    /// The ids of the deltas a peer folded into the entries at positions `from..=to`
    /// ([`Append::folded`]), by position: a region relays a site's fold with them, so that
    /// its own upstream knows them too.
    fn folded_into(&self, from: Position, to: Position) -> Result<Vec<(Position, String)>, StoreError>;

    /// The counter operation this edge applied for its client at `position`, if it may still
    /// be refused upstream: an edge keeps each one (its delta is a running total that later
    /// operations carry, so taking it back needs the operation) until
    /// [`WriteBatch::counter_ops_through`] or [`WriteBatch::counter_ops_done`] ends it.
    fn counter_op(&self, position: Position) -> Result<Option<rhizome_crdt::ops::Op>, StoreError>;

    /// Whether this edge must still correct the object at `key` (its state may hold an
    /// operation its upstream refused).
    fn correcting(&self, key: &str) -> Result<bool, StoreError>;

    /// Entries with `after < added`, oldest first, at most `limit`, with their status: what an
    /// edge's link sends upstream (it skips some, see docs/edge.md). Entries received from the
    /// upstream and CRDT deltas emptied by snapshot cleaning are left out.
    fn read_from(&self, after: Position, limit: usize) -> Result<Vec<(StoredEntry, Status)>, StoreError>;

    /// The state of the CRDT object at `key` and the log position of the last operation
    /// applied to it, if it exists.
    fn read_object(&self, key: &str) -> Result<Option<(rhizome_crdt::Object, Position)>, StoreError>;

    /// What a subscriber to the CRDT object at `key` that holds every operation up to log
    /// position `after` lacks, as one object: the join of the deltas logged after `after`, or
    /// the whole state when some of those deltas may have been cleaned (`after` is before the
    /// object's stored snapshot, which an edge's correction of the object also moves, see
    /// [`ObjectReset`]). Also returns the last log position of the same read: the object is
    /// complete through it.
    fn catch_up_object(&self, key: &str, after: Position) -> Result<ObjectCatchUp, StoreError>;
}
