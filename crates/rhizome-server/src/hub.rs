//! The hub: one task that owns every routing table (connections by client, user and node;
//! subscribers by channel) and delivers committed log entries, in log order.
//!
//! Catch-up (offline delivery by `synced`, channel history by `since`) runs in separate jobs
//! that read the log in chunks. While a job runs, live delivery to that connection (or that
//! subscription) is paused; when it reports where it stopped, the hub either starts another job
//! for what was committed meanwhile or switches to live delivery. Nothing is skipped because
//! every entry is either at or below the job's range or above it, never neither.
//!
//! A subscription's `logux/processed` stands for the position it went live at (what a later
//! `since` with its id resumes from). When the connection closes, that position is raised to
//! the highest `added` the client confirmed with `synced`, so a re-subscription does not replay
//! what the client already received live.

use crate::conn_map::{ConnMap, ConnSet};
use crate::outbox::{Closed, Outbox};
use crate::pipeline::CRDT_CHANNEL_PREFIX;
use crate::shared::Shared;
use crate::subscribers::Subscribers;
use rhizome_core::app::filter_accepts;
use rhizome_core::routing::USER_CHANNEL_PREFIX;
use rhizome_core::{Position, StoredEntry};
use rhizome_protocol::{Action, ActionId, Channel, ClientId, Codec, NodeId, SyncBuilder, UserId};
use rhizome_store::{Store, StoreError, WriteBatch};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Identifies one connection for the lifetime of the process.
pub type ConnId = u64;

/// Actions per live `sync` frame at most; a bigger committed batch is split.
const LIVE_FRAME_ACTIONS_MAX: usize = 1000;

/// Who a registered connection is.
#[derive(Debug)]
pub struct ConnIdentity {
    /// Node id.
    pub node_id: NodeId,
    /// Client id.
    pub client_id: ClientId,
    /// User id.
    pub user_id: Option<UserId>,
    /// Compression state.
    pub codec: Codec,
    /// Whether the connection is a peer's (an edge's link): what is sent to it carries the
    /// addressing meta of targeted entries (docs/edge.md).
    pub peer: bool,
}

/// What catch-up a job did.
#[derive(Debug, Clone)]
pub enum CatchUp {
    /// Entries addressed to the connection by users/clients/nodes.
    Targeted,
    /// One channel's entries.
    Channel(Channel),
}

/// Messages the hub handles.
#[derive(Debug)]
pub enum HubMessage {
    /// Entries just made durable, in position order.
    Committed(Vec<Vec<StoredEntry>>),
    /// A connection authenticated.
    Register {
        /// Its id.
        conn: ConnId,
        /// Who it is.
        identity: Arc<ConnIdentity>,
        /// Where its frames go.
        outbox: Arc<Outbox>,
        /// The `synced` of its `connect`.
        synced: Position,
        /// What its client confirmed at this server, as the log records it
        /// (`Store::confirmed_by`): `synced` is trusted up to it, or up to what the hub
        /// recorded since.
        confirmed: Position,
    },
    /// A connection closed.
    Unregister {
        /// Its id.
        conn: ConnId,
        /// The highest `added` its client confirmed with `synced`: it received every frame
        /// queued for it up to the one stamped with that value.
        client_synced: Position,
        /// Its client, recorded as having confirmed `client_synced` even when a newer
        /// connection of the client replaced this one (the hub no longer knows it then).
        client: ClientId,
    },
    /// A subscription passed access.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: Channel,
        /// Field-equality filter of the subscription.
        filter: Option<Map<String, Value>>,
        /// Catch up from this position when given.
        since: Option<Position>,
        /// The id of the `since`, when the log knew it: raised on close with the subscription's
        /// own answer, because a client re-subscribes with the same `since` every time.
        resumed: Option<Box<str>>,
        /// The `logux/subscribe` action id, answered with `logux/processed` once live.
        ack: ActionId,
    },
    /// A subscription ended.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: Channel,
    },
    /// A catch-up job stopped after `through`.
    CatchUpDone {
        /// The connection.
        conn: ConnId,
        /// What was caught up.
        what: CatchUp,
        /// Everything up to this position was read.
        through: Position,
        /// For a channel: the `logux/subscribe` id of the subscription the job caught up. A
        /// job of a subscription replaced since reports nothing for its replacement.
        sub: Option<ActionId>,
    },
    /// Reports counters, for tests and metrics.
    Stats(oneshot::Sender<HubStats>),
}

/// Counters of the hub.
#[derive(Debug, Clone, Default)]
pub struct HubStats {
    /// Registered connections.
    pub connections: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Last position routed.
    pub position: Position,
}

struct Sub {
    filter: Option<Box<Map<String, Value>>>,
    /// While catching up: the `logux/subscribe` id, answered when the subscription goes live.
    /// Once live: the id of the `logux/processed` that answered it (what the client sends back
    /// as `since.id`).
    id: ActionId,
    /// The hub position at which it went live; `None` while catching up.
    live_at: Option<Position>,
    /// The known `since` id it resumed from, raised with `id` on close.
    resumed: Option<Box<str>>,
}

impl Sub {
    fn live(&self) -> bool {
        self.live_at.is_some()
    }
}

/// CRDT deltas of one object for one connection, joined while routing one commit.
struct Folded {
    delta: rhizome_crdt::Object,
    /// The last joined entry's id, time and subprotocol.
    id: ActionId,
    time: i64,
    subprotocol: u64,
}

struct Conn {
    identity: Arc<ConnIdentity>,
    outbox: Arc<Outbox>,
    targeted_live: bool,
    channels: Vec<Channel>,
}

struct Hub {
    shared: Arc<Shared>,
    tx: mpsc::Sender<HubMessage>,
    conns: ConnMap<Conn>,
    by_client: HashMap<ClientId, ConnId>,
    by_user: HashMap<UserId, Vec<ConnId>>,
    channels: HashMap<Channel, Subscribers<ConnId, Sub>>,
    /// How many of `channels` are users followed by peers (`rhizome/user/…`): without any,
    /// routing does not look for them.
    followed_users: usize,
    position: Position,
    /// What clients confirmed at their last connection's close, as also written to the log
    /// (`client_positions`), for a connection of theirs that registers before that write is
    /// readable. Cleared when it reaches [`CONFIRMED_KEPT_MAX`]; a forgotten one costs a
    /// reconnecting client duplicates.
    confirmed: HashMap<ClientId, Position>,
}

/// Most entries of `Hub::confirmed`.
const CONFIRMED_KEPT_MAX: usize = 1 << 16;

/// Runs the hub until every sender is gone.
pub async fn run(
    shared: Arc<Shared>,
    position: Position,
    tx: mpsc::Sender<HubMessage>,
    mut rx: mpsc::Receiver<HubMessage>,
) {
    let mut hub = Hub {
        shared,
        tx,
        conns: ConnMap::default(),
        by_client: HashMap::new(),
        by_user: HashMap::new(),
        channels: HashMap::new(),
        followed_users: 0,
        position,
        confirmed: HashMap::new(),
    };
    while let Some(message) = rx.recv().await {
        hub.handle(message);
    }
}

impl Hub {
    fn handle(&mut self, message: HubMessage) {
        match message {
            HubMessage::Committed(entries) => {
                self.route(entries.iter().flatten());
                // HTTP long-polls wait for this: their reads see everything up to it. What the
                // commit touched is recorded first, so a woken poll finds it.
                let recent = &self.shared.recent;
                let touched = recent.wanted().then(|| crate::recent::Touched::of(entries.iter().flatten()));
                recent.record(self.position, touched);
                self.shared.committed.send_replace(self.position);
                // Devices registered for push wake-ups that these concern get a poke: the
                // entries go to the wake-up task, which works out which, off the hub.
                self.shared.wakeups.committed(entries);
            }
            HubMessage::Register { conn, identity, outbox, synced, confirmed } => {
                // The claim may be another server's position (a device that moved here).
                let recent = self.confirmed.get(&identity.client_id).copied().unwrap_or(0);
                self.register(conn, identity, outbox, synced.min(confirmed.max(recent)))
            }
            HubMessage::Unregister { conn, client_synced, client } => {
                self.record_confirmed(client, client_synced);
                self.record_received(conn, client_synced);
                // Entries queued for it that its client never confirmed (the app was killed,
                // the network dropped): a device registered for wake-ups gets a poke, as if
                // they had come while it was away.
                let unconfirmed = self
                    .conns
                    .get(&conn)
                    .filter(|c| c.outbox.routed() > client_synced)
                    .map(|c| c.identity.client_id.clone());
                self.unregister(conn);
                if let Some(client) = unconfirmed {
                    self.shared.wakeups.went_away_unconfirmed(&client);
                }
            }
            HubMessage::Subscribe { conn, channel, filter, since, resumed, ack } => {
                self.subscribe(conn, channel, filter, since, resumed, ack)
            }
            HubMessage::Unsubscribe { conn, channel } => self.unsubscribe(conn, &channel),
            HubMessage::CatchUpDone { conn, what, through, sub } => {
                self.catch_up_done(conn, what, through, sub)
            }
            HubMessage::Stats(reply) => {
                let _ = reply.send(HubStats {
                    connections: self.conns.len(),
                    subscriptions: self.channels.values().map(Subscribers::len).sum(),
                    position: self.position,
                });
            }
        }
    }

    fn register(&mut self, id: ConnId, identity: Arc<ConnIdentity>, outbox: Arc<Outbox>, synced: Position) {
        if let Some(old) = self.by_client.get(&identity.client_id).copied() {
            // A second connection of the same client replaces the first (the first is a zombie).
            // What its client confirmed with `synced` is known only to its task, which reports
            // it in its `Unregister` after the hub has forgotten the connection; so the
            // acknowledgements of its subscriptions are not raised. That costs duplicates, never
            // a loss: a re-subscription with their `since` replays from where they went live.
            if let Some(c) = self.conns.get(&old) {
                c.outbox.close(Closed::Replaced);
            }
            self.unregister(old);
        }
        let catching_up = synced < self.position;
        self.shared.wakeups.connected(&identity.client_id);
        self.by_client.insert(identity.client_id.clone(), id);
        if let Some(user) = &identity.user_id {
            let list = self.by_user.entry(user.clone()).or_default();
            list.reserve_exact(1);
            list.push(id);
        }
        if !catching_up {
            outbox.raise_safe_added(self.position);
        }
        self.conns.insert(
            id,
            Conn {
                identity: identity.clone(),
                outbox: outbox.clone(),
                targeted_live: !catching_up,
                channels: Vec::new(),
            },
        );
        if catching_up {
            self.spawn_catch_up(id, CatchUp::Targeted, synced);
        }
    }

    fn unregister(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.shared.wakeups.disconnected(&conn.identity.client_id);
        let ident = &conn.identity;
        if self.by_client.get(&ident.client_id) == Some(&id) {
            self.by_client.remove(&ident.client_id);
        }
        if let Some(user) = &ident.user_id {
            if let Some(list) = self.by_user.get_mut(user) {
                list.retain(|c| *c != id);
                if list.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
        for channel in &conn.channels {
            if let Some(subs) = self.channels.get_mut(channel) {
                subs.remove(&id);
                if subs.is_empty() {
                    self.channels.remove(channel);
                    if channel.as_str().starts_with(USER_CHANNEL_PREFIX) {
                        self.followed_users -= 1;
                    }
                }
            }
        }
    }

    fn subscribe(
        &mut self,
        id: ConnId,
        channel: Channel,
        filter: Option<Map<String, Value>>,
        since: Option<Position>,
        resumed: Option<Box<str>>,
        ack: ActionId,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let catch_up_from = since.filter(|s| *s < self.position);
        if channel.as_str().starts_with(USER_CHANNEL_PREFIX) && !self.channels.contains_key(&channel) {
            self.followed_users += 1;
        }
        let subs = self.channels.entry(channel.clone()).or_default();
        if !conn.channels.contains(&channel) {
            conn.channels.reserve_exact(1);
            conn.channels.push(channel.clone());
        }
        // Several filters per channel are not kept: the newest subscription replaces the older.
        subs.insert(id, Sub { filter: filter.map(Box::new), id: ack, live_at: None, resumed });
        match catch_up_from {
            Some(from) => self.spawn_catch_up(id, CatchUp::Channel(channel), from),
            None => self.went_live(id, &channel),
        }
    }

    fn unsubscribe(&mut self, id: ConnId, channel: &Channel) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.channels.retain(|c| c != channel);
        }
        if let Some(subs) = self.channels.get_mut(channel) {
            subs.remove(&id);
            if subs.is_empty() {
                self.channels.remove(channel);
                if channel.as_str().starts_with(USER_CHANNEL_PREFIX) {
                    self.followed_users -= 1;
                }
            }
        }
    }

    /// Sends the pending `logux/processed` of a subscription that now receives live entries,
    /// and records which position it answers for (so a later `since` can resume there).
    fn went_live(&mut self, id: ConnId, channel: &Channel) {
        let Some(sub) = self.channels.get_mut(channel).and_then(|s| s.get_mut(&id)) else {
            return;
        };
        if sub.live() {
            return;
        }
        let ack = sub.id.clone();
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let processed_id = self.shared.next_server_id();
        let mut b = SyncBuilder::new();
        let json = crate::pipeline::processed_json(&ack);
        b.push(
            &conn.identity.codec,
            &json,
            &processed_id,
            processed_id.ms,
            Some(self.shared.config.subprotocol),
        );
        push_stamped(conn, b, self.position);
        let ack = (processed_id.to_string(), self.position, conn.identity.client_id.as_str().to_owned());
        sub.id = processed_id;
        sub.live_at = Some(self.position);
        self.write_acks(WriteBatch { owned_acks: vec![ack], ..WriteBatch::default() });
    }

    /// Records that `client` confirmed `client_synced` here, what its next `connect`'s `synced`
    /// is trusted up to (a device that moved between servers claims another's position, see
    /// `Store::confirmed_by`): in memory at once, in the log unless it is there already.
    fn record_confirmed(&mut self, client: ClientId, client_synced: Position) {
        let through = client_synced.min(self.position);
        let recent = self.confirmed.get(&client).copied().unwrap_or(0);
        if through <= recent {
            return;
        }
        if self.confirmed.len() >= CONFIRMED_KEPT_MAX {
            self.confirmed.clear();
        }
        let batch =
            WriteBatch { client_positions: vec![(client.to_string(), through)], ..WriteBatch::default() };
        self.confirmed.insert(client, through);
        self.write_acks(batch);
    }

    /// Raises the acknowledgement of each live subscription of a closing connection to
    /// `client_synced`, so that a re-subscription with its `since` does not replay what the
    /// client already received.
    ///
    /// Why that is safe: a frame stamped `n` is queued only after the hub has routed every
    /// entry up to `n`, so after every live frame carrying such an entry to this connection.
    /// The hub stamps with its position once the entries are routed ([`push_stamped`]), a
    /// targeted catch-up job with at most the position the hub had when it started the job,
    /// and everything else (answers, channel catch-up) with the safe `added`, which is raised
    /// only after the entries up to it are queued. The outbox is written in order, so a
    /// client that confirmed `n` received every frame queued before the one stamped `n`. A
    /// subscription live since position `l < n` had its channel's entries in `(l, n]` routed
    /// to it live (filter, author and `excludeClients` applied), hence received; the entries
    /// up to `l` are what its acknowledgement already stands for.
    fn record_received(&self, id: ConnId, client_synced: Position) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        // The client can only confirm stamps it was sent, none above the hub position; a
        // client confirming more than that would only skip its own entries, but a recorded
        // position beyond the log is never right.
        let through = client_synced.min(self.position);
        // Not a CRDT object's: its author is not sent its own deltas, which its copy still
        // lacks, so the acknowledgement stays where the subscriber held everything (a `since`
        // then brings the join of every delta after it, the author's own included).
        let client = conn.identity.client_id.as_str();
        let mut batch = WriteBatch::default();
        let live = conn
            .channels
            .iter()
            .filter(|c| !c.as_str().starts_with(CRDT_CHANNEL_PREFIX))
            .filter_map(|c| self.channels.get(c)?.get(&id))
            .filter(|sub| sub.live_at.is_some_and(|live_at| live_at < through));
        for sub in live {
            batch.owned_acks.push((sub.id.text(), through, client.to_owned()));
            // The `since` it resumed from stands for no later position than where its catch-up
            // began, so the client holds the channel through `through` for that id too. The
            // client re-subscribes with that same id each time; it rises only if it is one of
            // this client's own acknowledgements.
            if let Some(resumed) = &sub.resumed {
                batch.resumed_acks.push((resumed.to_string(), through, client.to_owned()));
            }
        }
        if !batch.is_empty() {
            self.write_acks(batch);
        }
    }

    /// Queues subscription acknowledgements to the writer without waiting: the hub never
    /// blocks on the writer. A dropped write only makes a later `since` replay more.
    fn write_acks(&self, batch: WriteBatch) {
        if !self.shared.writer.try_write_unordered(batch) {
            tracing::debug!("writer busy; a subscription acknowledgement was not recorded");
        }
    }

    fn catch_up_done(&mut self, id: ConnId, what: CatchUp, through: Position, sub: Option<ActionId>) {
        if !self.conns.contains_key(&id) {
            return;
        }
        if let CatchUp::Channel(channel) = &what {
            // The subscription this job caught up may have been replaced (a re-subscription to
            // the channel while catching up) or ended: its report would make the replacement
            // live, and answer it, before the replacement's own catch-up sent everything.
            if self.catching_up(id, channel) != sub.as_ref() {
                return;
            }
        }
        if through < self.position {
            return self.spawn_catch_up(id, what, through);
        }
        match what {
            CatchUp::Targeted => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.targeted_live = true;
                    conn.outbox.raise_safe_added(self.position);
                }
            }
            CatchUp::Channel(channel) => self.went_live(id, &channel),
        }
    }

    /// The `logux/subscribe` id of `conn`'s subscription to `channel` while it catches up.
    fn catching_up(&self, conn: ConnId, channel: &Channel) -> Option<&ActionId> {
        let sub = self.channels.get(channel)?.get(&conn)?;
        (!sub.live()).then_some(&sub.id)
    }

    fn spawn_catch_up(&self, id: ConnId, what: CatchUp, from: Position) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let sub = match &what {
            CatchUp::Channel(channel) => self.catching_up(id, channel).cloned(),
            CatchUp::Targeted => None,
        };
        let job = CatchUpJob {
            shared: self.shared.clone(),
            hub: self.tx.clone(),
            conn: id,
            identity: conn.identity.clone(),
            outbox: conn.outbox.clone(),
            filter: match &what {
                CatchUp::Channel(c) => {
                    self.channels.get(c).and_then(|s| s.get(&id)).and_then(|s| s.filter.as_deref().cloned())
                }
                CatchUp::Targeted => None,
            },
            what,
            sub,
            from,
            upto: self.position,
        };
        tokio::spawn(job.run());
    }

    fn route<'a>(&mut self, entries: impl Iterator<Item = &'a StoredEntry>) {
        let mut frames: ConnMap<SyncBuilder> = ConnMap::default();
        // Deltas of one CRDT object for one connection in this pass join into one delta, sent
        // with the id of the last of them: a burst of operations costs a subscriber one delta.
        let mut folded: BTreeMap<(ConnId, String), Folded> = BTreeMap::new();
        let mut recipients: Vec<ConnId> = Vec::new();
        for entry in entries {
            recipients.clear();
            let author = entry.id.client_id();
            let routing = &entry.routing;
            if routing.is_targeted() {
                let mut candidates: Vec<ConnId> = Vec::new();
                // One connection per client: a node's connection is its client's, if it is that node.
                candidates.extend(routing.nodes.iter().filter_map(|n| {
                    let c = *self.by_client.get(&n.client_id())?;
                    (self.conns.get(&c)?.identity.node_id == *n).then_some(c)
                }));
                candidates.extend(routing.clients.iter().filter_map(|c| self.by_client.get(c)));
                for user in &routing.users {
                    if let Some(list) = self.by_user.get(user) {
                        candidates.extend(list);
                    }
                }
                for c in candidates {
                    let Some(conn) = self.conns.get(&c) else { continue };
                    if conn.targeted_live
                        && !recipients.contains(&c)
                        && routing.targets(Some(&author), &conn.identity.node_id)
                    {
                        recipients.push(c);
                    }
                }
                // Peers following the addressed users (docs/edge.md).
                let users = if self.followed_users > 0 { routing.addressed_users() } else { Vec::new() };
                for user in users {
                    let channel = Channel::from(format!("{USER_CHANNEL_PREFIX}{user}"));
                    let Some(subs) = self.channels.get(&channel) else { continue };
                    for (c, sub) in subs.iter() {
                        let Some(conn) = self.conns.get(c) else { continue };
                        if sub.live() && !recipients.contains(c) && follows_user(&conn.identity, entry) {
                            recipients.push(*c);
                        }
                    }
                }
            }
            let mut fields: Option<Option<Action>> = None;
            // A recipient can only repeat when it was targeted or is on two of the channels;
            // then a set keeps the check cheap for crowded channels.
            let dedup = !recipients.is_empty() || routing.channels.len() > 1;
            let mut seen: ConnSet =
                if dedup { recipients.iter().copied().collect() } else { ConnSet::default() };
            for channel in &routing.channels {
                let Some(subs) = self.channels.get(channel) else { continue };
                for (c, sub) in subs.iter() {
                    if !sub.live() || (dedup && seen.contains(c)) {
                        continue;
                    }
                    let Some(conn) = self.conns.get(c) else { continue };
                    let client = &conn.identity.client_id;
                    if *client == author || routing.exclude_clients.contains(client) {
                        continue;
                    }
                    if let Some(filter) = &sub.filter {
                        let action = fields.get_or_insert_with(|| Action::from_json(&entry.action_json));
                        if !action.as_ref().is_some_and(|a| filter_accepts(filter, a)) {
                            continue;
                        }
                    }
                    if dedup {
                        seen.insert(*c);
                    }
                    recipients.push(*c);
                }
            }
            // A whole state of an object (an edge's correction) holds what came before it:
            // deltas of the object joined for a recipient so far in this pass are dropped, not
            // sent after it (one could be what the correction took out).
            let replaced = if entry.crdt.is_none() { replaced_key(entry) } else { None };
            for c in &recipients {
                let Some(conn) = self.conns.get(c) else { continue };
                if let Some(key) = &replaced {
                    folded.remove(&(*c, key.clone()));
                }
                // A peer is sent an addressed delta as it is, with its addressing.
                let crdt =
                    entry.crdt.as_ref().filter(|_| !(conn.identity.peer && entry.routing.is_targeted()));
                if let Some(crdt) = crdt {
                    let (key, delta) = &**crdt;
                    match folded.entry((*c, key.clone())) {
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            slot.insert(Folded {
                                delta: delta.clone(),
                                id: entry.id.clone(),
                                time: entry.time,
                                subprotocol: entry.subprotocol,
                            });
                            continue;
                        }
                        std::collections::btree_map::Entry::Occupied(mut slot) => {
                            let f = slot.get_mut();
                            if f.delta.join(delta).is_ok() {
                                f.id = entry.id.clone();
                                f.time = entry.time;
                                f.subprotocol = entry.subprotocol;
                                continue;
                            }
                        }
                    }
                }
                let builder = frames.entry(*c).or_default();
                push_entry(builder, &conn.identity, entry);
                if builder.len() >= LIVE_FRAME_ACTIONS_MAX {
                    let full = std::mem::take(builder);
                    push_stamped(conn, full, entry.added);
                }
            }
            self.position = entry.added;
        }
        for ((c, key), f) in folded {
            let Some(conn) = self.conns.get(&c) else { continue };
            let json = rhizome_crdt::delta_action(&key, &f.delta);
            let builder = frames.entry(c).or_default();
            builder.push(&conn.identity.codec, &json, &f.id, f.time, Some(f.subprotocol));
        }
        for (c, builder) in frames {
            if builder.is_empty() {
                continue;
            }
            if let Some(conn) = self.conns.get(&c) {
                push_stamped(conn, builder, self.position);
            }
        }
    }
}

/// Adds `entry` to a frame for the connection of `identity`; to a peer's with the entry's
/// addressing (an edge routes what it is sent to its own clients, docs/edge.md).
fn push_entry(builder: &mut SyncBuilder, identity: &ConnIdentity, entry: &StoredEntry) {
    let (codec, id, time, subprotocol) = (&identity.codec, &entry.id, entry.time, Some(entry.subprotocol));
    if identity.peer && entry.routing.is_targeted() {
        let extra = entry.routing.targets_meta();
        builder.push_with_meta(codec, &entry.action_json, id, time, subprotocol, &extra);
    } else {
        builder.push(codec, &entry.action_json, id, time, subprotocol);
    }
}

/// Whether a peer following a user addressed by `entry` is sent it that way: not when the
/// entry excludes the peer or it relayed it (its routing then excludes the peer's client),
/// and not when it reaches the peer as addressed to it (a process's undo of what it relayed).
fn follows_user(peer: &ConnIdentity, entry: &StoredEntry) -> bool {
    let routing = &entry.routing;
    !routing.exclude_clients.contains(&peer.client_id)
        && !entry.id.node.is_of(&peer.client_id)
        && !routing.targets(Some(&entry.id.client_id()), &peer.node_id)
}

/// The key of the object whose whole state `entry` is (a `crdt/delta` with `replace`).
fn replaced_key(entry: &StoredEntry) -> Option<String> {
    if !entry.action_json.contains("\"replace\":true") {
        return None;
    }
    let action = Action::from_json(&entry.action_json)?;
    if action.kind() != rhizome_crdt::DELTA_TYPE || !rhizome_crdt::replaces(action.fields()) {
        return None;
    }
    action.str_field("key").map(str::to_owned)
}

/// Queues a frame for `conn` stamped with the `added` it may carry: the client remembers it and
/// resumes offline delivery after it, so it must never pass an undelivered entry addressed to
/// the client. The safe position is raised only after the frame is queued, so that no frame
/// queued by another task (the connection's own answers) can report it first.
fn push_stamped(conn: &Conn, frame: SyncBuilder, position: Position) {
    let stamp =
        if conn.targeted_live { position.max(conn.outbox.safe_added()) } else { conn.outbox.safe_added() };
    conn.outbox.push(frame.finish(stamp));
    conn.outbox.note_routed(position);
    if conn.targeted_live {
        conn.outbox.raise_safe_added(position);
    }
}

struct CatchUpJob {
    shared: Arc<Shared>,
    hub: mpsc::Sender<HubMessage>,
    conn: ConnId,
    identity: Arc<ConnIdentity>,
    outbox: Arc<Outbox>,
    filter: Option<Map<String, Value>>,
    what: CatchUp,
    /// The subscription caught up, for a channel.
    sub: Option<ActionId>,
    from: Position,
    upto: Position,
}

impl CatchUpJob {
    /// Runs a read of the log off the runtime. A failed read closes the connection: what it
    /// missed reaches it on its next connection, from the position it confirmed.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.shared.store.clone();
        match rhizome_io::blocking(move || read(&*store)).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                tracing::error!(error = %e, conn = self.conn, "catch-up read failed; closing the connection");
                self.outbox.close(Closed::Overflow);
                None
            }
            Err(_) => None,
        }
    }

    async fn run(self) {
        let object = match &self.what {
            CatchUp::Channel(channel) => {
                channel.as_str().strip_prefix(CRDT_CHANNEL_PREFIX).map(str::to_owned)
            }
            CatchUp::Targeted => None,
        };
        if let Some(key) = object {
            return self.run_object(key).await;
        }
        let chunk = self.shared.limits.catch_up_chunk_actions;
        let mut after = self.from;
        while after < self.upto {
            if self.outbox.closed().is_some() {
                return;
            }
            let (what, node, upto) = (self.what.clone(), self.identity.node_id.clone(), self.upto);
            let read = self.read(move |store| match &what {
                CatchUp::Targeted => store.read_targeted(&node, after, upto, chunk),
                CatchUp::Channel(channel) if channel.as_str().starts_with(USER_CHANNEL_PREFIX) => {
                    let user = UserId::from(&channel.as_str()[USER_CHANNEL_PREFIX.len()..]);
                    store.read_addressed_to_user(&user, after, upto, chunk)
                }
                CatchUp::Channel(channel) => store.read_channel(channel, after, upto, chunk).map(|entries| {
                    let examined =
                        if entries.len() < chunk { upto } else { entries.last().map_or(upto, |e| e.added) };
                    (entries, examined)
                }),
            });
            let Some((entries, examined)) = read.await else { return };
            let mut b = SyncBuilder::new();
            for e in &entries {
                if let CatchUp::Channel(channel) = &self.what {
                    if channel.as_str().starts_with(USER_CHANNEL_PREFIX) {
                        if follows_user(&self.identity, e) {
                            push_entry(&mut b, &self.identity, e);
                        }
                        continue;
                    }
                    let author = e.id.client_id();
                    if author == self.identity.client_id
                        || e.routing.exclude_clients.contains(&self.identity.client_id)
                    {
                        continue;
                    }
                    if let Some(filter) = &self.filter {
                        if !Action::from_json(&e.action_json).is_some_and(|a| filter_accepts(filter, &a)) {
                            continue;
                        }
                    }
                }
                push_entry(&mut b, &self.identity, e);
            }
            let targeted = matches!(self.what, CatchUp::Targeted);
            let stamp =
                if targeted { examined.max(self.outbox.safe_added()) } else { self.outbox.safe_added() };
            if !b.is_empty() {
                if !self.outbox.push(b.finish(stamp)) {
                    return;
                }
                self.outbox.note_routed(examined);
            }
            // Raised only once the chunk is queued, so no other frame can report it earlier.
            if targeted {
                self.outbox.raise_safe_added(examined);
            }
            after = examined;
        }
        let _ = self
            .hub
            .send(HubMessage::CatchUpDone {
                conn: self.conn,
                what: self.what,
                through: self.upto,
                sub: self.sub,
            })
            .await;
    }

    /// Catches a subscriber of a CRDT object up with one delta: the join of what was logged
    /// after `from`, or the whole state when the writer may have cleaned some of those deltas
    /// (they are folded into its snapshots). Never one frame per operation, and never a gap.
    async fn run_object(self, key: String) {
        let from = self.from;
        let read = self.read(move |store| {
            let read = store.catch_up_object(&key, from)?;
            let action = |o: &rhizome_crdt::Object| {
                if read.whole {
                    rhizome_crdt::state_action(&key, o)
                } else {
                    rhizome_crdt::delta_action(&key, o)
                }
            };
            Ok((read.object.as_ref().map(action), read.through))
        });
        let Some((json, through)) = read.await else { return };
        if let Some(json) = json {
            let id = self.shared.next_server_id();
            let mut b = SyncBuilder::new();
            b.push(&self.identity.codec, &json, &id, id.ms, Some(self.shared.config.subprotocol));
            if !self.outbox.push(b.finish(self.outbox.safe_added())) {
                return;
            }
        }
        // The read may have seen commits the hub has not routed yet: they are complete in the
        // delta, and a live copy of one later joins as a no-op.
        let through = through.max(self.upto);
        let _ = self
            .hub
            .send(HubMessage::CatchUpDone { conn: self.conn, what: self.what, through, sub: self.sub })
            .await;
    }
}
