//! Group commit: one thread owns the log writer, takes every write request queued while the
//! previous transaction was committing, and commits them together. Under a simulation
//! ([`rhizome_io::simulate`]) the same loop runs as a task of the host instead ([`run_task`]).
//!
//! Committed entries are handed to the hub in commit order, so delivery order equals log order.

use crate::hub::HubMessage;
use rhizome_store::{Committed, LogWriter, WriteBatch};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Notify};

/// Appends per transaction at most; more wait for the next one. A quick write waits for the
/// transaction being committed, then goes first in the next: smaller transactions answer online
/// clients sooner during a storm, larger ones spend fewer fsyncs per append.
const APPENDS_PER_COMMIT_MAX: usize = 5_000;

/// A write of at most this many appends may take the quick lane.
const QUICK_APPENDS_MAX: usize = 16;

/// Appends of one connection's uncommitted quick writes at most. Past it, its next write waits
/// for them to commit and takes the bulk lane: a client streaming small writes is a backlog too.
const QUICK_UNCOMMITTED_APPENDS_MAX: usize = 64;

/// Requests waiting in the quick lane at most (each of at most [`QUICK_APPENDS_MAX`] appends).
const QUICK_LANE_REQUESTS: usize = 1024;

/// Requests waiting in the bulk lane at most. A connection whose write finds it full waits,
/// and reads nothing more from its socket meanwhile: this is how a storm of backlogs is held
/// back (by TCP) instead of buffered. Senders wait in turn, so every backlog moves.
const BULK_LANE_REQUESTS: usize = 256;

/// One caller's write.
#[derive(Debug)]
pub struct WriteRequest {
    /// What to write.
    pub batch: WriteBatch,
    /// Where the outcome goes, once durable.
    pub reply: oneshot::Sender<Result<Committed, WriteFailed>>,
    /// Held until the write is committed (or dropped): it tells the connection that wrote it
    /// which lane its uncommitted writes are in.
    ticket: Option<Ticket>,
    /// The outcome, between the commit and the answer.
    outcome: Option<Result<Committed, WriteFailed>>,
}

impl WriteRequest {
    /// A write that belongs to no connection's order (subscription acknowledgements).
    pub fn unordered(batch: WriteBatch, reply: oneshot::Sender<Result<Committed, WriteFailed>>) -> Self {
        WriteRequest { batch, reply, ticket: None, outcome: None }
    }
}

/// The two ways into the writer. Small writes (an interactive client's few actions, a
/// subscription acknowledgement) take the quick lane, which each transaction empties first;
/// large ones (a returning client's backlog) take the bulk lane. An online client's action
/// thus waits for at most one or two transactions, not behind every backlog of a reconnect
/// storm.
#[derive(Debug, Clone)]
pub struct WriteQueue {
    quick: mpsc::Sender<WriteRequest>,
    bulk: mpsc::Sender<WriteRequest>,
}

/// The writer's end of a [`WriteQueue`].
#[derive(Debug)]
pub struct WriteLanes {
    quick: mpsc::Receiver<WriteRequest>,
    bulk: mpsc::Receiver<WriteRequest>,
}

/// A new queue and the writer's end of it.
pub fn queue() -> (WriteQueue, WriteLanes) {
    let (quick, quick_rx) = mpsc::channel(QUICK_LANE_REQUESTS);
    let (bulk, bulk_rx) = mpsc::channel(BULK_LANE_REQUESTS);
    (WriteQueue { quick, bulk }, WriteLanes { quick: quick_rx, bulk: bulk_rx })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Quick,
    Bulk,
}

/// Where one connection's writes go. Its uncommitted writes are always all in one lane, so they
/// commit in the order they were written (each lane is first in, first out) and its actions
/// take log positions in the order it sent them.
#[derive(Debug, Default)]
pub struct ConnWrites {
    state: Mutex<LaneState>,
    /// Notified when the connection's last uncommitted write is committed.
    drained: Notify,
}

#[derive(Debug)]
struct LaneState {
    lane: Lane,
    /// Uncommitted writes, and their appends.
    uncommitted: usize,
    appends: usize,
}

impl Default for LaneState {
    fn default() -> Self {
        LaneState { lane: Lane::Quick, uncommitted: 0, appends: 0 }
    }
}

/// One uncommitted write of a connection, of this many appends.
#[derive(Debug)]
struct Ticket(Arc<ConnWrites>, usize);

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.uncommitted -= 1;
        state.appends -= self.1;
        if state.uncommitted == 0 {
            self.0.drained.notify_waiters();
        }
    }
}

impl ConnWrites {
    /// Picks the lane for a write of `appends` appends and counts it as uncommitted, or says
    /// that the connection's quick writes must commit first. A write that `waited` for them
    /// takes the bulk lane.
    fn choose(self: &Arc<Self>, appends: usize, waited: bool) -> Result<(Lane, Ticket), ()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let small = appends <= QUICK_APPENDS_MAX && !waited;
        let lane = match (state.uncommitted, state.lane) {
            (0, _) if small => Lane::Quick,
            (0, _) => Lane::Bulk,
            // A backlog in flight: everything after it queues behind it.
            (_, Lane::Bulk) => Lane::Bulk,
            (_, Lane::Quick) if small && state.appends + appends <= QUICK_UNCOMMITTED_APPENDS_MAX => {
                Lane::Quick
            }
            // Quick writes in flight and this one must go bulk: it waits for them.
            (_, Lane::Quick) => return Err(()),
        };
        state.lane = lane;
        state.uncommitted += 1;
        state.appends += appends;
        Ok((lane, Ticket(self.clone(), appends)))
    }
}

impl WriteQueue {
    /// Queues a write of the connection `conn` in its lane; waits while the lane is full.
    /// Returns the receiver of its outcome; a write the writer can no longer take (shutdown)
    /// reads as failed.
    pub async fn write(
        &self,
        conn: &Arc<ConnWrites>,
        batch: WriteBatch,
    ) -> oneshot::Receiver<Result<Committed, WriteFailed>> {
        let mut waited = false;
        let (lane, ticket) = loop {
            let drained = conn.drained.notified();
            match conn.choose(batch.appends.len(), waited) {
                Ok(chosen) => break chosen,
                Err(()) => {
                    drained.await;
                    waited = true;
                }
            }
        };
        let (reply, rx) = oneshot::channel();
        let request = WriteRequest { batch, reply, ticket: Some(ticket), outcome: None };
        let sender = match lane {
            Lane::Quick => &self.quick,
            Lane::Bulk => &self.bulk,
        };
        if sender.send(request).await.is_err() {
            // The writer is gone (shutdown): the dropped reply reads as a failed write.
            tracing::debug!("writer stopped; write refused");
        }
        rx
    }

    /// Queues a write that belongs to no connection's order in the quick lane, waiting while it
    /// is full; returns the receiver of its outcome.
    pub async fn write_unordered(
        &self,
        batch: WriteBatch,
    ) -> oneshot::Receiver<Result<Committed, WriteFailed>> {
        let (reply, rx) = oneshot::channel();
        if self.quick.send(WriteRequest::unordered(batch, reply)).await.is_err() {
            tracing::debug!("writer stopped; write refused");
        }
        rx
    }

    /// Queues a write that belongs to no connection's order in the quick lane, unless it is full.
    pub fn try_write_unordered(&self, batch: WriteBatch) -> bool {
        let (reply, _) = oneshot::channel();
        self.quick.try_send(WriteRequest::unordered(batch, reply)).is_ok()
    }
}

/// A write that did not happen; nothing in it was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the log could not be written")]
pub struct WriteFailed;

/// Milliseconds since the Unix epoch (the simulation's, under one).
pub fn now_ms() -> i64 {
    rhizome_io::now_ms()
}

/// Runs the commit loop until every sender is dropped. Blocking: run it on its own thread.
pub fn run(mut writer: impl LogWriter, mut lanes: WriteLanes, hub: mpsc::Sender<HubMessage>) {
    let waiter = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "the writer could not start; nothing will be written");
            return;
        }
    };
    let mut pending: Vec<WriteRequest> = Vec::new();
    while waiter.block_on(lanes.gather(&mut pending)) {
        if let Some(entries) = commit(&mut writer, &mut pending) {
            // Hub first: by the time a client hears `synced`, the entries are being routed.
            if hub.blocking_send(HubMessage::Committed(entries)).is_err() {
                tracing::debug!("hub is gone; committed entries are not routed");
            }
        }
        answer(&mut pending);
    }
    tracing::debug!("writer stopped");
}

/// [`run`] as a task, for a simulated host: each commit blocks the host's runtime, which is
/// what a simulation wants (nothing runs beside it).
pub async fn run_task(mut writer: impl LogWriter, mut lanes: WriteLanes, hub: mpsc::Sender<HubMessage>) {
    let mut pending: Vec<WriteRequest> = Vec::new();
    while lanes.gather(&mut pending).await {
        if let Some(entries) = commit(&mut writer, &mut pending) {
            if hub.send(HubMessage::Committed(entries)).await.is_err() {
                tracing::debug!("hub is gone; committed entries are not routed");
            }
        }
        answer(&mut pending);
    }
}

impl WriteLanes {
    /// Waits for the first write of the next transaction, from either lane, then takes what
    /// else is queued: the quick lane first, all of it, then backlogs up to the transaction's
    /// size. `false` once every sender is gone.
    async fn gather(&mut self, pending: &mut Vec<WriteRequest>) -> bool {
        let WriteLanes { quick, bulk } = self;
        let first = tokio::select! {
            biased;
            Some(r) = quick.recv() => r,
            Some(r) = bulk.recv() => r,
            else => return false,
        };
        let mut appends = first.batch.appends.len();
        pending.push(first);
        for lane in [quick, bulk] {
            while appends < APPENDS_PER_COMMIT_MAX {
                match lane.try_recv() {
                    Ok(r) => {
                        appends += r.batch.appends.len();
                        pending.push(r);
                    }
                    Err(_) => break,
                }
            }
        }
        true
    }
}

/// Commits `pending` in one transaction. Returns the committed entries to route (`None` when
/// there are none); each request's result waits in it for [`answer`].
fn commit(
    writer: &mut impl LogWriter,
    pending: &mut [WriteRequest],
) -> Option<Vec<Vec<rhizome_core::StoredEntry>>> {
    let mut batches: Vec<WriteBatch> = pending.iter_mut().map(|r| std::mem::take(&mut r.batch)).collect();
    match writer.commit(&mut batches, now_ms()) {
        Ok(mut results) => {
            // Moved per batch, not flattened: a commit can hold many thousand entries.
            let entries: Vec<_> = results
                .iter_mut()
                .filter(|c| !c.entries.is_empty())
                .map(|c| std::mem::take(&mut c.entries))
                .collect();
            for (request, result) in pending.iter_mut().zip(results) {
                request.outcome = Some(Ok(result));
            }
            (!entries.is_empty()).then_some(entries)
        }
        Err(e) => {
            tracing::error!(error = %e, "log commit failed; the writes were refused");
            for request in pending.iter_mut() {
                request.outcome = Some(Err(WriteFailed));
            }
            None
        }
    }
}

/// Answers each committed (or refused) request.
fn answer(pending: &mut Vec<WriteRequest>) {
    for request in pending.drain(..) {
        let WriteRequest { reply, ticket, outcome, .. } = request;
        // Committed: the connection's next write may take another lane.
        drop(ticket);
        let _ = reply.send(outcome.unwrap_or(Err(WriteFailed)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhizome_core::{AppendOutcome, NewEntry, Routing, Status};
    use rhizome_protocol::ActionId;
    use rhizome_store::{Append, SqliteStore};

    fn batch(node: &str, count: usize) -> WriteBatch {
        let appends = (0..count)
            .map(|i| {
                let id = ActionId::parse(&format!("{} {node} {i}", 1_000 + i)).expect("id");
                Append::new(NewEntry {
                    time: id.ms,
                    id,
                    action_json: Arc::from(r#"{"type":"inc"}"#),
                    subprotocol: 1,
                    routing: Routing::default(),
                    status: Status::Processed,
                })
            })
            .collect();
        WriteBatch { appends, ..WriteBatch::default() }
    }

    fn first_position(committed: &Committed) -> u64 {
        match committed.outcomes.first() {
            Some(AppendOutcome::Added(position)) => *position,
            other => panic!("not added: {other:?}"),
        }
    }

    #[test]
    fn a_connection_keeps_its_writes_in_one_lane_until_they_commit() {
        let conn = Arc::new(ConnWrites::default());
        let (lane, quick) = conn.choose(1, false).expect("idle: any lane");
        assert_eq!(lane, Lane::Quick);
        // A backlog chunk cannot overtake the small write: it waits for it to commit.
        assert!(conn.choose(500, false).is_err());
        drop(quick);
        let (lane, bulk) = conn.choose(500, true).expect("drained");
        assert_eq!(lane, Lane::Bulk);
        // While a backlog chunk is uncommitted, even a small write queues behind it.
        let (lane, small) = conn.choose(1, false).expect("behind the backlog");
        assert_eq!(lane, Lane::Bulk);
        drop((bulk, small));
        assert_eq!(conn.choose(QUICK_APPENDS_MAX, false).expect("drained").0, Lane::Quick);
    }

    #[test]
    fn a_connection_with_many_small_writes_in_flight_moves_to_the_bulk_lane() {
        let conn = Arc::new(ConnWrites::default());
        let each = QUICK_APPENDS_MAX;
        let tickets: Vec<_> = (0..QUICK_UNCOMMITTED_APPENDS_MAX / each)
            .map(|_| conn.choose(each, false).expect("quick").1)
            .collect();
        assert!(conn.choose(1, false).is_err(), "one more small write waits for the quick ones");
        drop(tickets);
        let state = conn.state.lock().expect("lock");
        assert_eq!((state.uncommitted, state.appends), (0, 0));
        drop(state);
        let (lane, first) = conn.choose(1, true).expect("drained");
        assert_eq!(lane, Lane::Bulk, "having waited, it streams in the bulk lane");
        let (lane, _second) = conn.choose(1, false).expect("behind it");
        assert_eq!(lane, Lane::Bulk);
        drop(first);
    }

    #[tokio::test]
    async fn a_write_that_must_change_lanes_waits_for_the_connections_commits() {
        let (queue, mut lanes) = queue();
        let conn = Arc::new(ConnWrites::default());
        let _first = queue.write(&conn, batch("a:1", 1)).await;
        let mut big = Box::pin(queue.write(&conn, batch("a:1", 100)));
        tokio::select! {
            _ = &mut big => panic!("the backlog chunk was queued before the small write committed"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        // The writer takes the small write and commits it (its ticket goes).
        let small = lanes.quick.recv().await.expect("the small write");
        drop(small);
        let _receiver = big.await;
        assert!(lanes.bulk.try_recv().is_ok(), "then the chunk takes the bulk lane");
        assert!(lanes.quick.try_recv().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_write_is_committed_before_backlogs_queued_ahead_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("store");
        let (queue, lanes) = queue();
        let (hub, mut hub_rx) = mpsc::channel(16);
        // Backlogs of three connections fill the bulk lane, then an online client writes one
        // action; the writer starts only now, with all of them waiting.
        let mut backlogs = Vec::new();
        for node in ["a:1", "b:1", "c:1"] {
            let conn = Arc::new(ConnWrites::default());
            backlogs.push(queue.write(&conn, batch(node, 500)).await);
        }
        let online = Arc::new(ConnWrites::default());
        let probe = queue.write(&online, batch("p:1", 1)).await;
        let writer = store.writer().expect("writer");
        let thread = std::thread::spawn(move || run(writer, lanes, hub));

        let probe = probe.await.expect("reply").expect("committed");
        assert_eq!(first_position(&probe), 1, "the small write takes the transaction's first position");
        let mut next = 2;
        for backlog in backlogs {
            let backlog = backlog.await.expect("reply").expect("committed");
            // The backlogs keep the order they were queued in.
            assert_eq!(first_position(&backlog), next);
            next += 500;
        }
        assert!(hub_rx.recv().await.is_some(), "committed entries reach the hub");
        drop(queue);
        thread.join().expect("writer thread");
    }
}
