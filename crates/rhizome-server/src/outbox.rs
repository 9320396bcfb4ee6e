//! The bounded queue of frames waiting to be written to one connection.
//!
//! Producers (the hub, catch-up jobs, the connection's own pipeline) push without waiting; the
//! connection task drains it. A consumer that falls `outbound_queue_bytes_max` behind is closed:
//! a client that does not read is disconnected, not buffered forever. The check is made before
//! each push, so one frame may take the queue over the limit (a big commit reaching a client
//! that does read): the queue holds at most the limit plus one frame.

use crate::conn_map::ConnMap;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<String>,
    bytes: usize,
    closed: Option<Closed>,
}

/// Why an outbox was closed by someone other than its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The consumer fell too far behind.
    Overflow,
    /// Another connection with the same client id took over.
    Replaced,
    /// The server is shutting down.
    Shutdown,
    /// The connection ended: nothing pushed from now on can reach the client.
    Ended,
}

/// One connection's outgoing frames.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// The connection task, woken when something is pushed or the outbox is closed.
    waker: AtomicWaker,
    bytes_max: usize,
    /// Highest `added` such that every entry addressed to this client by users/clients/nodes up
    /// to it has been queued here: what `ping`/`pong` and `sync` frames may report.
    safe_added: AtomicU64,
    /// Highest `added` of the log entries queued here: a client that confirmed less with
    /// `synced` before it went away has news it may not have read.
    routed: AtomicU64,
    /// When the connection's protocol state next needs it (ping, timeout), in ms since the epoch.
    deadline_ms: AtomicI64,
    /// The ticker's alarm, rung when a deadline comes before the ticker's next round (set when
    /// the outbox is registered with [`Outboxes::insert`]).
    alarm: OnceLock<Arc<Alarm>>,
}

/// When the ticker ([`Outboxes::wake_due`]) looks at the deadlines next, and how to make it
/// look earlier.
#[derive(Debug)]
pub struct Alarm {
    /// Its next round, in ms since the epoch; `i64::MAX` while it looks.
    at_ms: AtomicI64,
    ring: Notify,
}

impl Alarm {
    /// Records the ticker's next round.
    pub fn set(&self, at_ms: i64) {
        self.at_ms.store(at_ms, Ordering::SeqCst);
    }

    /// Waits until a deadline before the next round is set (at once if one was set since the
    /// last wait).
    pub async fn rung(&self) {
        self.ring.notified().await;
    }
}

impl Outbox {
    /// An empty outbox holding at most `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> Self {
        Outbox {
            state: Mutex::default(),
            waker: AtomicWaker::new(),
            bytes_max,
            safe_added: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            deadline_ms: AtomicI64::new(i64::MAX),
            alarm: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame. Returns `false` when the outbox is closed (now or before).
    pub fn push(&self, frame: String) -> bool {
        self.try_push(frame).is_ok()
    }

    /// Queues a frame, or gives it back when the outbox is closed (now or before).
    pub fn try_push(&self, frame: String) -> Result<(), String> {
        let mut s = self.lock();
        if s.closed.is_some() {
            return Err(frame);
        }
        // Over the limit before this frame: the client has not taken what was queued. A frame
        // that takes a reading client's queue over the limit (one big commit) is kept.
        if s.bytes > self.bytes_max {
            s.closed = Some(Closed::Overflow);
            s.frames.clear();
            s.bytes = 0;
            drop(s);
            self.waker.wake();
            return Err(frame);
        }
        s.bytes += frame.len();
        s.frames.push_back(frame);
        drop(s);
        self.waker.wake();
        Ok(())
    }

    /// Closes the outbox; the connection task notices and closes its socket.
    pub fn close(&self, why: Closed) {
        let mut s = self.lock();
        if s.closed.is_none() {
            s.closed = Some(why);
        }
        drop(s);
        self.waker.wake();
    }

    /// Whether and why the outbox was closed.
    pub fn closed(&self) -> Option<Closed> {
        self.lock().closed
    }

    /// Hands every queued frame to `each`, in order; returns why the outbox is closed, if it is.
    pub fn drain_each(&self, mut each: impl FnMut(String)) -> Option<Closed> {
        let mut s = self.lock();
        let frames = std::mem::take(&mut s.frames);
        s.bytes = 0;
        let closed = s.closed;
        drop(s);
        frames.into_iter().for_each(&mut each);
        closed
    }

    /// Ready when frames are queued or the outbox is closed; otherwise wakes the task later.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Replaces the waker of the connection (a parked connection leaves one that resumes it).
    pub fn set_waker(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Whether frames are queued or the outbox is closed.
    pub fn is_ready(&self) -> bool {
        let s = self.lock();
        !s.frames.is_empty() || s.closed.is_some()
    }

    /// The connection's next deadline, in ms since the epoch.
    pub fn deadline_ms(&self) -> i64 {
        self.deadline_ms.load(Ordering::Relaxed)
    }

    /// Records the connection's next deadline, for [`Outboxes::wake_due`].
    pub fn set_deadline_ms(&self, ms: i64) {
        let was = self.deadline_ms.swap(ms, Ordering::SeqCst);
        if ms < was {
            if let Some(alarm) = self.alarm.get() {
                if ms < alarm.at_ms.load(Ordering::SeqCst) {
                    alarm.ring.notify_one();
                }
            }
        }
    }

    /// Records that log entries up to `added` were queued here.
    pub fn note_routed(&self, added: u64) {
        self.routed.fetch_max(added, Ordering::AcqRel);
    }

    /// The highest `added` of the log entries queued here.
    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Acquire)
    }

    /// See [`Outbox::safe_added`]'s field doc.
    pub fn safe_added(&self) -> u64 {
        self.safe_added.load(Ordering::Acquire)
    }

    /// Raises the safe `added` (never lowers it).
    pub fn raise_safe_added(&self, added: u64) {
        self.safe_added.fetch_max(added, Ordering::AcqRel);
    }
}

/// The outboxes of every open connection, so that shutdown reaches each of them and one ticker
/// serves the timers of all (an idle connection owns no timer).
#[derive(Debug)]
pub struct Outboxes {
    inner: Mutex<OutboxesInner>,
    alarm: Arc<Alarm>,
}

impl Default for Outboxes {
    fn default() -> Self {
        let alarm = Arc::new(Alarm { at_ms: AtomicI64::new(i64::MAX), ring: Notify::new() });
        Outboxes { inner: Mutex::default(), alarm }
    }
}

#[derive(Debug, Default)]
struct OutboxesInner {
    open: ConnMap<Arc<Outbox>>,
    shut: bool,
}

impl Outboxes {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxesInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the outbox of connection `conn`; after [`Outboxes::close_all`] it is closed at once.
    pub fn insert(&self, conn: u64, outbox: &Arc<Outbox>) {
        let _ = outbox.alarm.set(self.alarm.clone());
        let mut inner = self.lock();
        if inner.shut {
            outbox.close(Closed::Shutdown);
        } else {
            inner.open.insert(conn, outbox.clone());
        }
    }

    /// Forgets connection `conn`.
    pub fn remove(&self, conn: u64) {
        let mut inner = self.lock();
        inner.open.remove(&conn);
        if inner.open.capacity() > 64 && inner.open.len() < inner.open.capacity() / 4 {
            inner.open.shrink_to_fit();
        }
    }

    /// Closes every outbox, now and from now on, with `why`.
    pub fn close_all(&self, why: Closed) {
        let mut inner = self.lock();
        inner.shut = true;
        for (_, outbox) in inner.open.drain() {
            outbox.close(why);
        }
        // The ticker looks once more, and stops.
        self.alarm.ring.notify_one();
    }

    /// Wakes every connection whose deadline is at or before `now_ms`. Returns the earliest
    /// deadline still ahead (`i64::MAX`: none), or `None` once the server is shutting down.
    /// While it looks, any deadline set rings [`Outboxes::alarm`].
    pub fn wake_due(&self, now_ms: i64) -> Option<i64> {
        self.alarm.set(i64::MAX);
        let inner = self.lock();
        let mut next = i64::MAX;
        for outbox in inner.open.values() {
            let deadline = outbox.deadline_ms.load(Ordering::SeqCst);
            if deadline <= now_ms {
                // Cleared, so that the connection's next deadline, whatever it is, counts as
                // earlier and rings the alarm when it comes before the next round (unless the
                // connection set one meanwhile).
                let _ = outbox.deadline_ms.compare_exchange(
                    deadline,
                    i64::MAX,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                outbox.waker.wake();
            } else {
                next = next.min(deadline);
            }
        }
        (!inner.shut).then_some(next)
    }

    /// The ticker's alarm.
    pub fn alarm(&self) -> &Arc<Alarm> {
        &self.alarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes() {
        let o = Outbox::new(10);
        assert!(o.push("12345".into()));
        assert!(o.push("1234567890".into()), "a frame that takes the queue over the limit is kept");
        assert!(!o.push("1".into()), "more while it is over the limit and not taken: closed");
        assert_eq!(o.closed(), Some(Closed::Overflow));
        let mut v = Vec::new();
        assert_eq!(o.drain_each(|f| v.push(f)), Some(Closed::Overflow));
        assert!(v.is_empty(), "an overflowing consumer gets nothing more");
    }

    #[test]
    fn drain_frees_room() {
        let o = Outbox::new(10);
        assert!(o.push("1234567890".into()));
        let mut v = Vec::new();
        assert_eq!(o.drain_each(|f| v.push(f)), None);
        assert!(o.push("1234567890".into()));
        assert_eq!(v, ["1234567890"]);
    }

    #[test]
    fn shutdown_reaches_open_and_later_outboxes() {
        let all = Outboxes::default();
        let open = Arc::new(Outbox::new(10));
        all.insert(1, &open);
        let gone = Arc::new(Outbox::new(10));
        all.insert(2, &gone);
        all.remove(2);
        all.close_all(Closed::Shutdown);
        assert_eq!(open.closed(), Some(Closed::Shutdown));
        assert_eq!(gone.closed(), None, "a removed outbox is not touched");
        let late = Arc::new(Outbox::new(10));
        all.insert(3, &late);
        assert_eq!(
            late.closed(),
            Some(Closed::Shutdown),
            "a connection that opens during shutdown is closed"
        );
    }
}
