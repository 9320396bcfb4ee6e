//! The bounded queue of frames waiting to be written to one connection.
//!
//! Producers (the hub, catch-up jobs, the connection's own pipeline) push without waiting; the
//! connection task drains it. A consumer that falls `outbound_queue_bytes_max` behind is closed:
//! a client that does not read is disconnected, not buffered forever.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
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
}

/// One connection's outgoing frames.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    bytes_max: usize,
    /// Highest `added` such that every entry addressed to this client by users/clients/nodes up
    /// to it has been queued here: what `ping`/`pong` and `sync` frames may report.
    safe_added: AtomicU64,
}

impl Outbox {
    /// An empty outbox holding at most `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> Self {
        Outbox { state: Mutex::default(), notify: Notify::new(), bytes_max, safe_added: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame. Returns `false` when the outbox is closed (now or before).
    pub fn push(&self, frame: String) -> bool {
        let mut s = self.lock();
        if s.closed.is_some() {
            return false;
        }
        s.bytes += frame.len();
        if s.bytes > self.bytes_max {
            s.closed = Some(Closed::Overflow);
            s.frames.clear();
            s.bytes = 0;
            drop(s);
            self.notify.notify_one();
            return false;
        }
        s.frames.push_back(frame);
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Closes the outbox; the connection task notices and closes its socket.
    pub fn close(&self, why: Closed) {
        let mut s = self.lock();
        if s.closed.is_none() {
            s.closed = Some(why);
        }
        drop(s);
        self.notify.notify_one();
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

    /// Waits until something is pushed or the outbox is closed.
    pub async fn notified(&self) {
        self.notify.notified().await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes() {
        let o = Outbox::new(10);
        assert!(o.push("12345".into()));
        assert!(o.push("12345".into()));
        assert!(!o.push("1".into()));
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
}
