//! Parked connections. A connection that has been quiet for `park_after` gives up its task and
//! its socket's registration in the runtime (about 1.3 KiB together); its session and socket
//! wait in one shared poller thread instead. Input on the socket, a frame for its outbox, a
//! close of the outbox or a due timer (the ticker wakes the outbox) hands it back to the
//! runtime in a new task, where it goes on exactly where it stopped.
//!
//! Nothing is lost in the hand-over: the session is inserted and the socket registered before
//! the outbox's waker is replaced, registering a socket reports input that is already there,
//! and the outbox is checked once more after its waker was replaced.

use crate::conn_map::ConnMap;
use crate::socket::Stream;
use crate::writer::now_ms;
use crate::ws::Session;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Wake, Waker};
use std::thread::JoinHandle;

/// The poller's own wake-up token; connection tokens are connection ids.
const WAKE: Token = Token(usize::MAX);

/// Events handled per poll.
const EVENTS_PER_POLL: usize = 1024;

/// The parking lot of one server.
#[derive(Debug)]
pub struct Parking {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    registry: mio::Registry,
    waker: mio::Waker,
    /// Connections to hand back, from outbox wakers.
    queue: Mutex<Vec<u64>>,
    parked: Mutex<ConnMap<Parked>>,
    runtime: tokio::runtime::Handle,
    stopping: AtomicBool,
    /// No more parking: set (under the `parked` lock) when the poller stops or fails.
    closed: AtomicBool,
}

#[derive(Debug)]
struct Parked {
    session: Box<Session>,
    stream: mio::net::TcpStream,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Parking {
    /// Starts the poller thread; resumed connections run on `runtime`. Under a simulation
    /// ([`rhizome_io::simulate`]) no thread is started and nothing is parked: a simulated host's
    /// work must all run on its runtime.
    pub fn start(runtime: tokio::runtime::Handle) -> io::Result<Parking> {
        let mut poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKE)?;
        let inner = Arc::new(Inner {
            registry,
            waker,
            queue: Mutex::new(Vec::new()),
            parked: Mutex::new(ConnMap::default()),
            runtime,
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(rhizome_io::is_simulated()),
        });
        if rhizome_io::is_simulated() {
            return Ok(Parking { inner, thread: Mutex::new(None) });
        }
        let poller = inner.clone();
        let thread =
            std::thread::Builder::new().name("rhizome-park".into()).spawn(move || poller.run(&mut poll))?;
        Ok(Parking { inner, thread: Mutex::new(Some(thread)) })
    }

    /// Parks `session` with its socket; hands it back at once when something is already due.
    pub fn park(&self, session: Box<Session>, stream: Stream) {
        let conn = session.conn_id();
        let outbox = session.outbox().clone();
        let stream = match stream {
            Stream::Tcp(stream) => stream,
            // Only a TCP socket is parked (`Stream::parkable`); another one goes on running.
            stream => {
                self.inner.runtime.spawn(Session::resume(session, stream));
                return;
            }
        };
        if self.inner.closed.load(Ordering::Acquire) {
            // No poller (stopping, or it failed): the connection stays in the runtime.
            self.inner.runtime.spawn(Session::resume(session, Stream::Tcp(stream)));
            return;
        }
        let std = match stream.into_std() {
            Ok(std) => std,
            Err(e) => {
                tracing::debug!(conn, error = %e, "a socket could not be parked; closing it");
                return;
            }
        };
        {
            let mut parked = lock(&self.inner.parked);
            if self.inner.closed.load(Ordering::Acquire) {
                // The poller closed meanwhile (its flag is set under this lock).
                drop(parked);
                self.inner.resume(session, std);
                return;
            }
            let slot =
                parked.entry(conn).or_insert(Parked { session, stream: mio::net::TcpStream::from_std(std) });
            // Registered under the lock: the poller cannot look for the session before it is there.
            if let Err(e) =
                self.inner.registry.register(&mut slot.stream, Token(conn as usize), Interest::READABLE)
            {
                tracing::warn!(conn, error = %e, "a socket could not be parked; closing it");
                parked.remove(&conn);
                return;
            }
        }
        tracing::trace!(conn, "parked");
        outbox.set_waker(&Waker::from(Arc::new(Unpark { conn, parking: Arc::downgrade(&self.inner) })));
        if outbox.is_ready() || outbox.deadline_ms() <= now_ms() {
            self.inner.unpark_later(conn);
        }
    }

    /// Connections parked now.
    pub fn len(&self) -> usize {
        lock(&self.inner.parked).len()
    }

    /// Stops the poller; connections still parked are closed.
    pub fn stop(&self) {
        {
            let _parked = lock(&self.inner.parked);
            self.inner.closed.store(true, Ordering::Release);
        }
        self.inner.stopping.store(true, Ordering::Release);
        let _ = self.inner.waker.wake();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        lock(&self.inner.parked).clear();
    }
}

impl Inner {
    fn run(&self, poll: &mut Poll) {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        while !self.stopping.load(Ordering::Acquire) {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "the parking poller failed; parked connections go back to the runtime");
                self.close_and_resume_all();
                return;
            }
            for event in events.iter() {
                if event.token() != WAKE {
                    self.unpark(event.token().0 as u64);
                }
            }
            let queued = std::mem::take(&mut *lock(&self.queue));
            for conn in queued {
                self.unpark(conn);
            }
        }
    }

    /// Refuses further parking and hands every parked connection back to the runtime.
    fn close_and_resume_all(&self) {
        let drained: Vec<Parked> = {
            let mut parked = lock(&self.parked);
            self.closed.store(true, Ordering::Release);
            parked.drain().map(|(_, p)| p).collect()
        };
        for Parked { session, mut stream } in drained {
            let _ = self.registry.deregister(&mut stream);
            self.resume(session, std::net::TcpStream::from(stream));
        }
    }

    /// Runs `session` on its socket again, in a new task.
    fn resume(&self, session: Box<Session>, std: std::net::TcpStream) {
        let conn = session.conn_id();
        self.runtime.spawn(async move {
            match tokio::net::TcpStream::from_std(std) {
                Ok(stream) => Session::resume(session, Stream::Tcp(stream)).await,
                Err(e) => {
                    tracing::debug!(conn, error = %e, "a parked socket could not be resumed; closing it")
                }
            }
        });
    }

    fn unpark_later(&self, conn: u64) {
        lock(&self.queue).push(conn);
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "the parking poller could not be woken");
        }
    }

    /// Hands a parked connection back to the runtime (nothing when it is not parked).
    fn unpark(&self, conn: u64) {
        let Some(Parked { session, mut stream }) = lock(&self.parked).remove(&conn) else {
            return;
        };
        if let Err(e) = self.registry.deregister(&mut stream) {
            tracing::debug!(conn, error = %e, "deregistering a parked socket failed");
        }
        tracing::trace!(conn, "resumed");
        self.resume(session, std::net::TcpStream::from(stream));
    }
}

/// The waker a parked connection leaves in its outbox.
struct Unpark {
    conn: u64,
    parking: Weak<Inner>,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        if let Some(parking) = self.parking.upgrade() {
            parking.unpark_later(self.conn);
        }
    }
}
