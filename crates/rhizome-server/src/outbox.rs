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

    /// Takes every queued frame into `into`; returns why the outbox is closed, if it is.
    pub fn drain(&self, into: &mut Vec<String>) -> Option<Closed> {
        let mut s = self.lock();
        into.extend(s.frames.drain(..));
        s.bytes = 0;
        if s.frames.capacity() > 64 {
            s.frames.shrink_to(16);
        }
        s.closed
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
        assert_eq!(o.drain(&mut v), Some(Closed::Overflow));
        assert!(v.is_empty(), "an overflowing consumer gets nothing more");
    }

    #[test]
    fn drain_frees_room() {
        let o = Outbox::new(10);
        assert!(o.push("1234567890".into()));
        let mut v = Vec::new();
        assert_eq!(o.drain(&mut v), None);
        assert!(o.push("1234567890".into()));
        assert_eq!(v.len(), 1);
    }
}
