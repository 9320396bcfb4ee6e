//! The action pipeline of one connection: meta rules → access → resend → durable append →
//! `synced` → process → `logux/processed` or `logux/undo`.
//!
//! Actions of one connection go through in order. Appends are handed to the group-commit writer
//! without waiting, so a client that pipelines many `sync` messages fills one transaction; their
//! answers are sent in the order the messages arrived.

use crate::hub::{ConnId, ConnIdentity, HubMessage};
use crate::outbox::Outbox;
use crate::shared::Shared;
use crate::writer::{ConnWrites, WriteFailed};
use rhizome_core::routing::USER_CHANNEL_PREFIX;
use rhizome_core::{
    ActionType, AppendOutcome, Context, HookError, Incoming, Meta, NewEntry, Position, Routing, Status,
};
use rhizome_crdt::VersionVector;
use rhizome_protocol::message::{encode_synced, push_json_str};
use rhizome_protocol::{Action, ActionId, Channel, Message, SyncBuilder};
use rhizome_store::{Append, Committed, WriteBatch};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use tokio::sync::oneshot;

/// How often a re-sent action whose first copy is being processed looks for its outcome.
const IN_PROCESS_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Action types that are CRDT operations (`crdt/counter/inc`, …), applied by the store.
const CRDT_ACTION_PREFIX: &str = "crdt/";

/// Channels of CRDT objects: `crdt/<key>`.
pub(crate) const CRDT_CHANNEL_PREFIX: &str = "crdt/";

/// A CRDT subscriber's delta since its `since` longer than this is compared with the object's
/// whole state, and the shorter one is sent.
const SINCE_DELTA_CHECK_BYTES: usize = 4096;

/// How far before a `since.time` catch-up starts when `since.id` is unknown to the log.
/// Clock offsets between client and server are far smaller; duplicates beat losses.
pub(crate) const SINCE_TIME_MARGIN_MS: i64 = 5 * 60 * 1000;

/// `{"type":"logux/processed","id":"<id>"}`
pub fn processed_json(id: &ActionId) -> String {
    let mut s = String::with_capacity(64 + id.node.as_str().len());
    push_processed(&mut s, id);
    s
}

/// Appends `{"type":"logux/processed","id":…}` to `out`.
fn push_processed(out: &mut String, id: &ActionId) {
    out.push_str("{\"type\":\"logux/processed\",\"id\":");
    if id.node.as_str().bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        // The id's text needs no escapes: write it in place.
        out.push('"');
        id.push_to(out);
        out.push('"');
    } else {
        push_json_str(out, &id.text());
    }
    out.push('}');
}

/// `{"type":"logux/undo","id":…,"action":…,"reason":…, …extra}`
pub fn undo_json(id: &ActionId, action_json: &str, reason: &str, extra: &Map<String, Value>) -> String {
    let mut s = String::from("{\"type\":\"logux/undo\",\"id\":");
    push_json_str(&mut s, &id.text());
    s.push_str(",\"action\":");
    s.push_str(action_json);
    s.push_str(",\"reason\":");
    push_json_str(&mut s, reason);
    for (k, v) in extra {
        if matches!(k.as_str(), "type" | "id" | "action" | "reason") {
            continue;
        }
        s.push(',');
        push_json_str(&mut s, k);
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push('}');
    s
}

enum Answer {
    Processed(ActionId),
    Undo { id: ActionId, action: Action, reason: String, extra: Map<String, Value> },
    Stored { index: usize, action: Action, meta: Meta, rules: Arc<dyn ActionType> },
    Nothing,
}

/// The answers owed for one `sync`, waiting for its commit.
pub struct Pending {
    added: u64,
    answers: Vec<Answer>,
    commit: Option<oneshot::Receiver<Result<Committed, WriteFailed>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("added", &self.added).field("answers", &self.answers.len()).finish()
    }
}

impl Pending {
    /// How many actions of the `sync` it answers.
    pub fn actions(&self) -> usize {
        self.answers.len()
    }

    /// Polls for the commit of this `sync`, in place (the connection task keeps no future for it).
    pub fn poll_committed(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Committed, WriteFailed>> {
        match &mut self.commit {
            Some(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(WriteFailed))),
            None => Poll::Ready(Ok(Committed::default())),
        }
    }
}

/// One authenticated connection's view of the pipeline.
///
/// It keeps the connection's identity as the `Arc` the hub also holds, and builds the
/// application's [`Context`] per `sync` from it: an idle connection stores its ids once.
/// Cloning it is cheap (shared parts): a closed connection's committed actions are processed
/// by a clone (see [`Pipeline::finish_detached`]).
pub struct Pipeline {
    shared: Arc<Shared>,
    conn: ConnId,
    identity: Arc<ConnIdentity>,
    subprotocol: u64,
    headers: Arc<Map<String, Value>>,
    outbox: Arc<Outbox>,
    /// The lane of its uncommitted writes, shared by its clones; made by the first write, so
    /// a connection that only listens allocates none.
    writes: OnceLock<Arc<ConnWrites>>,
}

impl Clone for Pipeline {
    fn clone(&self) -> Self {
        // The clone writes in the same lanes: the state is made now if it was not yet.
        let writes = OnceLock::from(self.writes.get_or_init(Arc::default).clone());
        Pipeline {
            shared: self.shared.clone(),
            conn: self.conn,
            identity: self.identity.clone(),
            subprotocol: self.subprotocol,
            headers: self.headers.clone(),
            outbox: self.outbox.clone(),
            writes,
        }
    }
}

/// What a [`Pipeline`] is built from.
#[derive(Debug)]
pub struct PipelineParts {
    /// The connection.
    pub conn: ConnId,
    /// Who it is (shared with the hub).
    pub identity: Arc<ConnIdentity>,
    /// The client's subprotocol.
    pub subprotocol: u64,
    /// The Logux headers the client sent.
    pub headers: Arc<Map<String, Value>>,
    /// Where its frames go.
    pub outbox: Arc<Outbox>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("conn", &self.conn).field("node", &self.identity.node_id).finish()
    }
}

fn undo(id: &ActionId, action: Action, reason: &str) -> Answer {
    Answer::Undo { id: id.clone(), action, reason: reason.to_owned(), extra: Map::new() }
}

/// Whether `action`, relayed by a peer under `id`, is the taking back of a counter operation
/// the upstream refused (docs/edge.md, "A refused counter operation") or of the peer's own
/// application of one that yielded to another's (under a yielded id): a `crdt/delta` of a
/// counter, holding only the author's totals under an edge's actor.
fn is_taking_back(action: &Action, id: &ActionId) -> bool {
    let back = rhizome_core::uplink::is_taken_back(id) || rhizome_core::uplink::is_yielded(id);
    if action.kind() != rhizome_crdt::DELTA_TYPE || !back {
        return false;
    }
    match rhizome_crdt::parse_delta(action.fields()) {
        Ok((_, rhizome_crdt::Object::Counter(counter))) => {
            counter.node_count() > 0
                && counter.entries().all(|(actor, _)| rhizome_core::actor::is_edge_actor_of(actor, &id.node))
        }
        _ => false,
    }
}

/// What an accepted action does to a CRDT object.
enum CrdtIn {
    /// Nothing: it is not a CRDT action.
    None,
    /// A client's operation (`crdt/counter/inc`, …).
    Op(rhizome_crdt::ops::Op),
    /// A `crdt/delta` a peer relays.
    Delta(rhizome_crdt::ops::Key, rhizome_crdt::Object),
}

impl CrdtIn {
    fn key(&self) -> Option<&str> {
        match self {
            CrdtIn::None => None,
            CrdtIn::Op(op) => Some(op.key().as_str()),
            CrdtIn::Delta(key, _) => Some(key.as_str()),
        }
    }
}

fn hook_undo(id: &ActionId, action: Action, error: HookError) -> Answer {
    if let HookError::Failed(text) = &error {
        tracing::warn!(action = %id, error = %text, "application hook failed");
    }
    match error {
        HookError::Undo { reason, extra } => Answer::Undo { id: id.clone(), action, reason, extra },
        other => undo(id, action, other.reason()),
    }
}

impl Pipeline {
    /// A pipeline for an authenticated connection.
    pub fn new(shared: Arc<Shared>, parts: PipelineParts) -> Self {
        let PipelineParts { conn, identity, subprotocol, headers, outbox } = parts;
        Pipeline { shared, conn, identity, subprotocol, headers, outbox, writes: OnceLock::new() }
    }

    /// What the application's hooks see.
    fn context(&self) -> Context {
        Context {
            user_id: self.identity.user_id.clone(),
            client_id: self.identity.client_id.clone(),
            node_id: self.identity.node_id.clone(),
            subprotocol: self.subprotocol,
            headers: self.headers.clone(),
        }
    }

    /// What the hooks see for the action `id`: the connection's identity for an action of its
    /// own client, else (an action a peer relays) its author's.
    fn context_of(&self, id: &ActionId) -> Context {
        if id.node.is_of(&self.identity.client_id) {
            self.context()
        } else {
            self.author_context(id)
        }
    }

    /// What the hooks see for an action a peer relays: its author's identity, the peer's
    /// headers (see docs/edge.md).
    fn author_context(&self, id: &ActionId) -> Context {
        Context {
            user_id: id.node.user_id(),
            client_id: id.client_id(),
            node_id: id.node.clone(),
            subprotocol: self.subprotocol,
            headers: self.headers.clone(),
        }
    }

    /// Runs access and resend for the actions of one `sync` and hands the accepted ones to the
    /// writer. Does not wait for the commit.
    pub async fn accept(&self, added: u64, actions: Vec<Incoming>) -> Pending {
        let own = self.context();
        let mut batch = WriteBatch { appends: Vec::with_capacity(actions.len()), ..WriteBatch::default() };
        let mut answers = Vec::with_capacity(actions.len());
        for incoming in actions {
            let Incoming { id, time, action, subprotocol, refused, folded } = incoming;
            if refused {
                self.debug(&format!("Action \"{id}\" was denied"));
                answers.push(undo(&id, action, "denied"));
                continue;
            }
            let meta = Meta { id, time, subprotocol };
            // Another client's action reaches here only from a peer (the connection refuses it
            // otherwise): the rules judge it as its author's.
            let relayed = !meta.id.node.is_of(&self.identity.client_id);
            let author;
            let ctx = if relayed {
                author = self.author_context(&meta.id);
                &author
            } else {
                &own
            };
            let kind = action.kind();
            // Only servers make sequence numbers this high (a taking back, a rejoined delta,
            // see `rhizome_core::uplink`): a client's action under one is refused, so that none
            // passes for a taking back.
            if !relayed && rhizome_core::uplink::is_servers_seq(&meta.id) {
                self.debug(&format!("Action \"{}\" has a sequence number only servers make", meta.id));
                answers.push(undo(&meta.id, action, "denied"));
                continue;
            }
            if kind == "logux/subscribe" {
                answers.push(self.subscribe(ctx, action, meta).await);
                continue;
            }
            if kind == crate::link::STATE_TYPE && self.is_peer() {
                answers.push(self.object_state(action, meta).await);
                continue;
            }
            if kind == "logux/unsubscribe" {
                // A peer's subscription serves all of its clients: one of them leaving a
                // channel (relayed with its id) does not end it; the link's own does.
                if let Some(channel) = action.str_field("channel").filter(|_| !relayed) {
                    let channel = Channel::from(channel);
                    let _ = self.shared.hub.send(HubMessage::Unsubscribe { conn: self.conn, channel }).await;
                }
                answers.push(Answer::Processed(meta.id));
                continue;
            }
            // An edge whose outbox is at its limit takes no more actions (docs/edge.md): the
            // refusal is explicit, and nothing it refused was acknowledged.
            if self.shared.outbox_full.load(std::sync::atomic::Ordering::Relaxed)
                && !kind.starts_with("logux/")
            {
                if relayed {
                    // A peer relays what its own edge acknowledged already, and takes an undo
                    // as final (it marks its entry undone). So nothing of its `sync` is taken
                    // or confirmed, as when a write fails: the connection ends, and the peer
                    // sends it all again from its cursor once it has connected again.
                    let (failed, commit) = tokio::sync::oneshot::channel();
                    let _ = failed.send(Err(WriteFailed));
                    return Pending { added, answers: Vec::new(), commit: Some(commit) };
                }
                answers.push(undo(&meta.id, action, "outboxFull"));
                continue;
            }
            let rules = match self.shared.app.find_type(kind) {
                Some(rules) if !kind.starts_with("logux/") => rules.clone(),
                _ => {
                    self.debug(&format!("Action with unknown type {kind}"));
                    answers.push(undo(&meta.id, action, "unknownType"));
                    continue;
                }
            };
            // A peer's taking back of a counter operation that was refused (docs/edge.md) is
            // taken whatever its author may do now: the operation's later ones, taken while
            // the author could, carry it in their running totals.
            let taking_back = relayed && is_taking_back(&action, &meta.id);
            let refusal = if taking_back {
                None
            } else {
                match rules.access(ctx, &action, &meta).await {
                    Ok(true) => None,
                    Ok(false) => Some(Err("denied")),
                    Err(e) => Some(Ok(e)),
                }
            };
            // A peer sends again what it got no answer to: an action this server took already,
            // the same under the same id, is answered with its outcome (the append finds the
            // duplicate), not judged again by rules that may have changed since. A CRDT delta
            // too, only as it was logged: one folded anew with others under that id differs,
            // and is judged (a delta equal to the logged one changes nothing here).
            let taken = refusal.is_some() && relayed && self.logged_as(&meta.id, &action).await;
            if taken {
                // Its routing is the logged entry's: the append only finds the duplicate.
                let entry = NewEntry {
                    id: meta.id.clone(),
                    time: meta.time,
                    action_json: action.json().clone(),
                    subprotocol: meta.subprotocol,
                    routing: Routing::default(),
                    status: Status::Processed,
                };
                answers.push(Answer::Stored { index: batch.appends.len(), action, meta, rules });
                batch.appends.push(Append::new(entry));
                continue;
            }
            match refusal {
                None => {}
                Some(Err(reason)) => {
                    self.debug(&format!("Action \"{}\" was denied", meta.id));
                    answers.push(undo(&meta.id, action, reason));
                    continue;
                }
                Some(Ok(e)) => {
                    answers.push(hook_undo(&meta.id, action, e));
                    continue;
                }
            }
            // A taking back goes where its object's deltas go, whatever the hooks say now.
            let resent =
                if taking_back { Ok(Routing::default()) } else { rules.resend(ctx, &action, &meta).await };
            let mut routing = match resent {
                Ok(r) => r,
                Err(e) => {
                    answers.push(hook_undo(&meta.id, action, e));
                    continue;
                }
            };
            // A peer relays the deltas its own store made of its clients' operations (see
            // docs/edge.md); a client sends operations, never deltas.
            let crdt = if kind == rhizome_crdt::DELTA_TYPE && relayed {
                rhizome_crdt::parse_delta(action.fields()).map(|(key, delta)| CrdtIn::Delta(key, delta))
            } else if kind.starts_with(CRDT_ACTION_PREFIX) {
                rhizome_crdt::ops::parse(action.fields()).map(CrdtIn::Op)
            } else {
                Ok(CrdtIn::None)
            };
            if !folded.is_empty() && !matches!(crdt, Ok(CrdtIn::Delta(..))) {
                self.debug(&format!("Action \"{}\" has folded ids but is no CRDT delta", meta.id));
                answers.push(undo(&meta.id, action, "denied"));
                continue;
            }
            let crdt = match crdt {
                Ok(crdt) => crdt,
                Err(e) => {
                    self.debug(&format!("Action \"{}\" is not a CRDT operation: {e}", meta.id));
                    answers.push(undo(&meta.id, action, e.reason()));
                    continue;
                }
            };
            if let Some(key) = crdt.key() {
                // An object's deltas always reach its channel, whatever else the rules add.
                let channel = Channel::from(format!("{CRDT_CHANNEL_PREFIX}{key}"));
                if !routing.channels.contains(&channel) {
                    routing.channels.push(channel);
                }
            }
            // A peer already has what it relays: it is not sent back to it, live or in a
            // catch-up (the author's own client is skipped by the id, the peer's by this).
            if relayed && !routing.exclude_clients.contains(&self.identity.client_id) {
                routing.exclude_clients.push(self.identity.client_id.clone());
            }
            let status = if rules.processes() { Status::Waiting } else { Status::Processed };
            let entry = NewEntry {
                id: meta.id.clone(),
                time: meta.time,
                action_json: action.json().clone(),
                subprotocol: meta.subprotocol,
                routing,
                status,
            };
            answers.push(Answer::Stored { index: batch.appends.len(), action, meta, rules });
            batch.appends.push(match crdt {
                CrdtIn::Op(op) => {
                    let actor = rhizome_core::actor::actor(&entry.id.node, self.shared.site.get());
                    let append = Append::crdt(entry, op, actor);
                    // A peer may relay another server's application of it later: this
                    // server's then yields (docs/edge.md).
                    if self.shared.app.has_peers() {
                        append.may_yield()
                    } else {
                        append
                    }
                }
                // Joined even under an id logged here, when it holds what this server lacks;
                // the ids folded into it are logged as its own (docs/edge.md).
                // (Ids of sequences only servers make go up alone, never folded.)
                CrdtIn::Delta(key, delta) => {
                    // (Nor do they carry others: a taking back holds nothing folded.)
                    let carrier = rhizome_core::uplink::is_servers_seq(&entry.id);
                    let folded =
                        folded.into_iter().filter(|id| !carrier && !rhizome_core::uplink::is_servers_seq(id));
                    Append::crdt_delta(entry, key, delta).folded(folded.collect())
                }
                CrdtIn::None => Append::new(entry),
            });
        }
        let commit = if batch.appends.is_empty() { None } else { Some(self.write(batch).await) };
        Pending { added, answers, commit }
    }

    /// Whether the log holds `action` under `id`, as this server's own entry (reads; a failed
    /// one says no).
    async fn logged_as(&self, id: &ActionId, action: &Action) -> bool {
        let store = self.shared.store.clone();
        let id = id.text();
        let logged = rhizome_io::blocking(move || match store.position_of_id(&id)? {
            Some(position) => store.own_entry(position),
            None => Ok(None),
        })
        .await;
        let Ok(Ok(Some((entry, _)))) = logged else { return false };
        let parse = |json: &str| serde_json::from_str::<Value>(json).ok();
        parse(&entry.action_json).is_some_and(|logged| Some(logged) == parse(action.json()))
    }

    async fn write(&self, batch: WriteBatch) -> oneshot::Receiver<Result<Committed, WriteFailed>> {
        self.shared.writer.write(self.writes.get_or_init(Arc::default), batch).await
    }

    /// Sends the answers of a committed `sync`: `synced`, then processed/undo, running
    /// `process` for the actions that have one.
    pub async fn finish(&self, pending: Pending, committed: Committed) -> Result<(), WriteFailed> {
        self.outbox.push(encode_synced(pending.added));
        // An answer with its meta is about 100 bytes.
        let mut frame = SyncBuilder::with_capacity(pending.answers.len() * 112);
        // Re-sent ids whose first copy is still being processed: answered when it ends.
        let mut in_process: Vec<(ActionId, Action)> = Vec::new();
        // What `process` decided for this `sync`'s actions, recorded in one commit before any
        // of their answers goes out.
        let mut outcomes = WriteBatch::default();
        let sub = Some(self.shared.config.subprotocol);
        for answer in pending.answers {
            let processed = |frame: &mut SyncBuilder, of: &ActionId| {
                let id = self.shared.next_server_id();
                frame.push_with(&self.identity.codec, &id, id.ms, sub, |out| push_processed(out, of));
            };
            let json = match answer {
                Answer::Nothing => continue,
                Answer::Processed(id) => {
                    processed(&mut frame, &id);
                    continue;
                }
                Answer::Undo { id, action, reason, extra } => undo_json(&id, action.json(), &reason, &extra),
                Answer::Stored { index, action, meta, rules } => match committed.outcomes.get(index) {
                    Some(AppendOutcome::Added(_)) if !rules.processes() => {
                        processed(&mut frame, &meta.id);
                        continue;
                    }
                    Some(&AppendOutcome::Added(position)) => {
                        match self.process(&*rules, action, meta, position, &mut outcomes).await {
                            Some(json) => json,
                            None => continue,
                        }
                    }
                    Some(AppendOutcome::Undone(_, reason)) => {
                        undo_json(&meta.id, action.json(), reason, &Map::new())
                    }
                    Some(AppendOutcome::Duplicate(Status::Processed)) => {
                        processed(&mut frame, &meta.id);
                        continue;
                    }
                    Some(AppendOutcome::Duplicate(Status::Undone(reason))) => {
                        undo_json(&meta.id, action.json(), reason, &Map::new())
                    }
                    // Still being processed (for an earlier connection of this client).
                    Some(AppendOutcome::Duplicate(Status::Waiting)) => {
                        in_process.push((meta.id, action));
                        continue;
                    }
                    None => continue,
                },
            };
            let id = self.shared.next_server_id();
            frame.push(&self.identity.codec, &json, &id, id.ms, sub);
        }
        if !outcomes.statuses.is_empty() {
            self.write(outcomes).await.await.unwrap_or(Err(WriteFailed))?;
        }
        if !frame.is_empty() {
            if let Err(frame) = self.outbox.try_push(frame.finish(self.outbox.safe_added())) {
                // The connection ended before its answers could go out (they were being
                // processed without it): they are kept in the log, addressed to this client,
                // which gets them on its next connection like any action addressed to it while
                // it was away.
                self.keep_answers(&frame).await?;
            }
        }
        if !in_process.is_empty() {
            tokio::spawn(self.clone().answer_when_processed(in_process));
        }
        Ok(())
    }

    /// Appends the answers of a `sync` frame that could not be sent to the log, addressed to
    /// this connection's client, in their order.
    async fn keep_answers(&self, frame: &str) -> Result<(), WriteFailed> {
        // Our own frame: it parses. Its answers are taken as they were encoded.
        let Ok(Message::Sync { entries, .. }) = rhizome_protocol::parse(frame) else {
            tracing::error!("an unsent answer frame did not parse; its answers are not kept");
            return Ok(());
        };
        let routing = Routing { clients: vec![self.identity.client_id.clone()], ..Routing::default() };
        let appends = entries
            .into_iter()
            .map(|entry| {
                let id = self.shared.next_server_id();
                Append::new(NewEntry {
                    time: id.ms,
                    id,
                    action_json: entry.action.json().clone(),
                    subprotocol: self.shared.config.subprotocol,
                    routing: routing.clone(),
                    status: Status::Processed,
                })
            })
            .collect();
        let batch = WriteBatch { appends, ..WriteBatch::default() };
        self.write(batch).await.await.unwrap_or(Err(WriteFailed))?;
        Ok(())
    }

    /// Answers re-sent actions whose first copy is still being processed, each when its
    /// outcome is in the log, for as long as this connection is open. Every action left
    /// `Waiting` has a task processing it: its connection's, or the one
    /// [`Pipeline::finish_detached`] leaves behind (a restart marks any other as failed).
    async fn answer_when_processed(self, mut waiting: Vec<(ActionId, Action)>) {
        let sub = Some(self.shared.config.subprotocol);
        while !waiting.is_empty() && self.outbox.closed().is_none() {
            tokio::time::sleep(IN_PROCESS_POLL).await;
            let store = self.shared.store.clone();
            let ids: Vec<String> = waiting.iter().map(|(id, _)| id.text()).collect();
            let statuses =
                rhizome_io::blocking(move || ids.iter().map(|id| store.status_of(id)).collect::<Vec<_>>())
                    .await;
            let Ok(statuses) = statuses else { return };
            let mut frame = SyncBuilder::new();
            let mut still = Vec::new();
            for ((id, action), status) in waiting.into_iter().zip(statuses) {
                let json = match status {
                    Ok(Some(Status::Processed)) => processed_json(&id),
                    Ok(Some(Status::Undone(reason))) => undo_json(&id, action.json(), &reason, &Map::new()),
                    Ok(_) => {
                        still.push((id, action));
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading an action's status failed");
                        return;
                    }
                };
                let server_id = self.shared.next_server_id();
                frame.push(&self.identity.codec, &json, &server_id, server_id.ms, sub);
            }
            if !frame.is_empty() {
                self.outbox.push(frame.finish(self.outbox.safe_added()));
            }
            waiting = still;
        }
    }

    /// Finishes the `sync`s of a closing connection in a task of their own, in order: their
    /// committed actions are processed (and their outcome recorded) whether or not the
    /// connection is still there to be answered. Dropping the handle does not stop the task.
    ///
    /// After a write fails, the client hears nothing more on this connection: a later `synced`
    /// would tell it the failed `sync` arrived too (clients confirm their queue in order), and
    /// it would never send those actions again. The later `sync`s are still finished, since
    /// their commits may have succeeded; their answers go into the log, and the client, which
    /// sends everything from the failed `sync` again, gets the rest as duplicates.
    pub fn finish_detached(self, inflight: Vec<Pending>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for mut pending in inflight {
                let committed = std::future::poll_fn(|cx| pending.poll_committed(cx)).await;
                let finished = match committed {
                    Ok(committed) => self.finish(pending, committed).await,
                    Err(e) => Err(e),
                };
                if finished.is_err() {
                    self.outbox.close(crate::outbox::Closed::Ended);
                }
            }
        })
    }

    /// Runs `process` and adds its outcome to `outcomes` (the caller commits them together
    /// before answering); returns the `logux/processed` to send, or `None` when an undo goes into
    /// the log (it reaches the author and the same audience through routing). A crash between
    /// `process` and that commit leaves the action `Waiting`, which a restart marks failed:
    /// never processed twice.
    async fn process(
        &self,
        rules: &dyn ActionType,
        action: Action,
        meta: Meta,
        position: Position,
        outcomes: &mut WriteBatch,
    ) -> Option<String> {
        // A relayed action is processed as its author's, as its access and resend ran.
        match rules.process(&self.context_of(&meta.id), &action, &meta).await {
            Ok(()) => {
                outcomes.statuses.push((position, Status::Processed));
                Some(processed_json(&meta.id))
            }
            Err(error) => {
                if let HookError::Failed(text) = &error {
                    tracing::warn!(action = %meta.id, error = %text, "process failed");
                }
                let (reason, extra) = match error {
                    HookError::Undo { reason, extra } => (reason, extra),
                    other => (other.reason().to_owned(), Map::new()),
                };
                let undo_id = self.shared.next_server_id();
                let undo = undo_json(&meta.id, action.json(), &reason, &extra);
                // The undo of a failed `process` is kept in the log and addressed to the
                // author, so it arrives even if the author disconnects meanwhile; for an action
                // a peer relays, to the peer as well, which answers for it below.
                let mut clients = vec![meta.id.client_id()];
                if clients[0] != self.identity.client_id {
                    clients.push(self.identity.client_id.clone());
                }
                let routing = Routing { clients, ..Routing::default() };
                let entry = NewEntry {
                    time: undo_id.ms,
                    id: undo_id,
                    action_json: Arc::from(undo),
                    subprotocol: self.shared.config.subprotocol,
                    routing,
                    status: Status::Processed,
                };
                outcomes.appends.push(Append::new(entry));
                outcomes.statuses.push((position, Status::Undone(reason)));
                None
            }
        }
    }

    async fn subscribe(&self, ctx: &Context, action: Action, meta: Meta) -> Answer {
        let Some(name) = action.str_field("channel").map(str::to_owned) else {
            return undo(&meta.id, action, "wrongChannel");
        };
        // A peer's subscription to `rhizome/user/<user>` (docs/edge.md) follows what is
        // addressed to the user, one of its clients or its nodes: no channel rules apply, and
        // anyone else is refused as for an unknown channel. From there on it is a channel's.
        let mut seen = None;
        if name.starts_with(USER_CHANNEL_PREFIX) {
            if !self.is_peer() || name.len() == USER_CHANNEL_PREFIX.len() {
                self.debug(&format!("Wrong channel name {name}"));
                return undo(&meta.id, action, "wrongChannel");
            }
        } else {
            let Some((rules, params)) = self.shared.app.find_channel(&name) else {
                self.debug(&format!("Wrong channel name {name}"));
                return undo(&meta.id, action, "wrongChannel");
            };
            // A CRDT subscriber may say what it holds (`seen`, a version vector): it then gets
            // only what it lacks. Refused before any hook runs, like a malformed operation.
            seen = match (name.starts_with(CRDT_CHANNEL_PREFIX), action.fields().get("seen")) {
                (true, Some(doc)) => match rhizome_crdt::parse_seen(doc) {
                    Ok(seen) => Some(seen),
                    Err(e) => return undo(&meta.id, action, e.reason()),
                },
                _ => None,
            };
            let rules = rules.clone();
            // A peer (an edge's link) follows channels for its own clients, whose subscriptions
            // its rules checked: it may subscribe to any (docs/edge.md).
            if !self.is_peer() {
                match rules.access(ctx, &params, &action, &meta).await {
                    Ok(true) => {}
                    Ok(false) => return undo(&meta.id, action, "denied"),
                    Err(e) => return hook_undo(&meta.id, action, e),
                }
            }
            match rules.load(ctx, &params, &action, &meta).await {
                Ok(loaded) if !loaded.is_empty() => {
                    let mut b = SyncBuilder::new();
                    for a in &loaded {
                        let id = self.shared.next_server_id();
                        b.push(
                            &self.identity.codec,
                            a.json(),
                            &id,
                            id.ms,
                            Some(self.shared.config.subprotocol),
                        );
                    }
                    self.outbox.push(b.finish(self.outbox.safe_added()));
                }
                Ok(_) => {}
                Err(e) => return hook_undo(&meta.id, action, e),
            }
        }
        // The id of a `since` the log knows: a channel subscription raises it on close too.
        let mut resumed = None;
        let since = if let Some(key) = name.strip_prefix(CRDT_CHANNEL_PREFIX) {
            // A CRDT object: one delta, then what is committed after it. The delta is what a
            // client with `seen` lacks; else, with a `since` whose id the log knows, the join of
            // the deltas after the position it stands for; else the whole state. Not from
            // `since.time`: it is the client's clock, and a position found from it could be
            // past operations the client never received (its own are not sent to it live).
            let since = match action.fields().get("since") {
                Some(Value::Object(since)) => self.position_of_since_id(since).await.unwrap_or(0),
                _ => 0,
            };
            let after = if seen.is_some() { 0 } else { since };
            match self.object_snapshot(key, seen.map(|seen| (seen, since)), after).await {
                Ok(position) => Some(position),
                Err(()) => return undo(&meta.id, action, "error"),
            }
        } else {
            match action.fields().get("since") {
                Some(Value::Object(since)) => match self.position_of_since_id(since).await {
                    Some(position) => {
                        resumed = since.get("id").and_then(Value::as_str).map(Box::from);
                        Some(position)
                    }
                    None => self.position_before_since_time(since).await,
                },
                _ => None,
            }
        };
        let filter = match action.fields().get("filter") {
            Some(Value::Object(f)) => Some(f.clone()),
            _ => None,
        };
        if let Some(follow) = self.shared.upstream_follow.get() {
            if follow.follow(&self.shared.writer, &name).await.is_err() {
                return undo(&meta.id, action, "error");
            }
        }
        let message = HubMessage::Subscribe {
            conn: self.conn,
            channel: Channel::from(name),
            filter,
            since,
            resumed,
            ack: meta.id,
        };
        let _ = self.shared.hub.send(message).await;
        Answer::Nothing
    }

    /// Whether the connection is a peer's (an edge's link).
    fn is_peer(&self) -> bool {
        self.identity.user_id.as_ref().is_some_and(|u| self.shared.app.is_peer(u))
    }

    /// A peer's request for the state of a CRDT object (`{"type": "rhizome/state", "key"}`,
    /// docs/edge.md): an edge corrects its copy with it after this server refused one of its
    /// operations. Sent at once, on this connection only, as
    /// `{"type": "rhizome/state", "key", "kind", "delta"}` (no `kind` and `delta` when there is
    /// no such object), then answered. An edge that must correct the object itself answers
    /// with an undo, [`crate::link::UPSTREAM_CORRECTING`], instead: its state may hold an
    /// operation its own upstream refused.
    async fn object_state(&self, action: Action, meta: Meta) -> Answer {
        let Some(key) = action.str_field("key").map(str::to_owned) else {
            return undo(&meta.id, action, "wrongFormat");
        };
        let store = self.shared.store.clone();
        let read_key = key.clone();
        // The document walks the whole state: built off the runtime too. An object this edge
        // must correct itself may hold what its own upstream refused: the peer asks again.
        let read = move || {
            if store.correcting(&read_key)? {
                return Ok(Err(()));
            }
            let object = store.read_object(&read_key)?;
            Ok::<_, rhizome_store::StoreError>(Ok(object.map(|(o, _)| (o.kind().name(), o.to_json()))))
        };
        let object = match rhizome_io::blocking(read).await {
            Ok(Ok(Ok(object))) => object,
            Ok(Ok(Err(()))) => return undo(&meta.id, action, crate::link::UPSTREAM_CORRECTING),
            Ok(Err(e)) => {
                tracing::error!(error = %e, key, "reading a CRDT object failed");
                return undo(&meta.id, action, "error");
            }
            Err(_) => return undo(&meta.id, action, "error"),
        };
        let mut fields = Map::new();
        fields.insert("type".into(), crate::link::STATE_TYPE.into());
        fields.insert("key".into(), key.into());
        if let Some((kind, document)) = object {
            fields.insert("kind".into(), kind.into());
            fields.insert("delta".into(), document);
        }
        let json = Value::Object(fields).to_string();
        let id = self.shared.next_server_id();
        let mut b = SyncBuilder::new();
        b.push(&self.identity.codec, &json, &id, id.ms, Some(self.shared.config.subprotocol));
        self.outbox.push(b.finish(self.outbox.safe_added()));
        Answer::Processed(meta.id)
    }

    /// Queues one `crdt/delta` for a subscriber of the CRDT object at `key`: with `seen` (and
    /// the position its `since` stands for, 0 without), the delta since it when smaller than
    /// the state, or the whole state when the object was corrected after that position; else, when the subscriber holds every
    /// operation up to log position `after` (> 0, from its `since`), the join of the deltas
    /// logged after it (nothing when there are none) or the state when that is smaller;
    /// else the whole state. Nothing when the object does not exist yet. Returns the log
    /// position the subscription goes on from.
    async fn object_snapshot(
        &self,
        key: &str,
        seen: Option<(VersionVector, Position)>,
        after: u64,
    ) -> Result<u64, ()> {
        let store = self.shared.store.clone();
        let owned = key.to_owned();
        let read = rhizome_io::blocking(move || {
            // The object and the log position it is complete through, from one read: the live
            // deltas go on from there. The delta walks the whole state, so it is built here,
            // off the async runtime.
            let read = store.catch_up_object(&owned, after)?;
            let position = read.through;
            let json = match (read.object, &seen) {
                (None, _) => None,
                // A copy that may be from before the object's last correction is replaced:
                // what it has seen may be an operation the correction took out.
                (Some(state), Some((_, since))) if read.reset_at > *since => {
                    Some(rhizome_crdt::state_action(&owned, &state))
                }
                (Some(state), Some((seen, _))) => Some(rhizome_crdt::catch_up_action(&owned, &state, seen)),
                (Some(state), None) if read.whole => Some(rhizome_crdt::state_action(&owned, &state)),
                (Some(missed), None) if after > 0 => {
                    if missed.is_bottom() {
                        None
                    } else {
                        let delta = rhizome_crdt::delta_action(&owned, &missed);
                        // A long delta may be longer than the state (a list's tombstones, a
                        // set's removed dots): measure the state too. It is read later than
                        // the delta, so it holds at least as much, and the subscription goes
                        // on from the first read's position (duplicates join idempotently).
                        let state = if delta.len() > SINCE_DELTA_CHECK_BYTES {
                            store.catch_up_object(&owned, 0)?.object
                        } else {
                            None
                        };
                        let whole = state.map(|state| rhizome_crdt::state_action(&owned, &state));
                        Some(whole.filter(|whole| whole.len() < delta.len()).unwrap_or(delta))
                    }
                }
                (Some(state), None) => Some(rhizome_crdt::state_action(&owned, &state)),
            };
            Ok::<_, rhizome_store::StoreError>((position, json))
        })
        .await;
        let (position, object) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::error!(error = %e, key, "reading a CRDT object failed");
                return Err(());
            }
            Err(_) => return Err(()),
        };
        let Some(json) = object else {
            return Ok(position);
        };
        let id = self.shared.next_server_id();
        let mut b = SyncBuilder::new();
        b.push(&self.identity.codec, &json, &id, id.ms, Some(self.shared.config.subprotocol));
        self.outbox.push(b.finish(self.outbox.safe_added()));
        Ok(position)
    }

    /// The log position recorded for the id of a `since` (the position answered by the
    /// `logux/processed` whose id the client remembers), if the log knows that id.
    async fn position_of_since_id(&self, since: &Map<String, Value>) -> Option<u64> {
        let id = since.get("id").and_then(Value::as_str)?.to_owned();
        let store = self.shared.store.clone();
        let found = rhizome_io::blocking(move || store.position_of_id(&id)).await;
        found.ok()?.ok()?
    }

    /// A position safely before `since.time`, for a `since` whose id the log does not know.
    async fn position_before_since_time(&self, since: &Map<String, Value>) -> Option<u64> {
        let time = since.get("time").and_then(Value::as_i64)?;
        let store = self.shared.store.clone();
        let found = rhizome_io::blocking(move || store.position_before_time(time - SINCE_TIME_MARGIN_MS));
        found.await.ok()?.ok()
    }

    fn debug(&self, text: &str) {
        if self.shared.config.development {
            self.outbox.push(rhizome_protocol::message::encode_debug(text));
        }
    }
}
