//! One WebSocket connection: a single task that reads frames, feeds the protocol state machine
//! and the pipeline, and writes the outbox, with the connection's timers.
//!
//! The task owns the bare socket and keeps no buffer while the connection is idle: bytes are
//! read into a stack buffer and decoded in place ([`rhizome_websocket::Decoder`] copies only a
//! frame cut in half by the network), and the write buffer is freed once written. An idle
//! subscribed connection costs its task, its socket registration, its protocol state and its
//! routing entries.

use crate::hub::{ConnIdentity, HubMessage};
use crate::outbox::{Closed, Outbox};
use crate::pipeline::{Pending, Pipeline, PipelineParts};
use crate::shared::Shared;
use crate::socket::Stream;
use crate::writer::now_ms;
use hyper_util::rt::TokioIo;
use rhizome_core::{CloseReason, Connection, Output};
use rhizome_protocol::message::{encode_error, encode_ping, encode_pong};
use rhizome_websocket::{close_code as code, encode_close, encode_text, Decoder, Message, Violation};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};

/// Rhizome's own close codes.
const REPLACED: u16 = 4001;
const SLOW: u16 = 4002;

/// Bytes read from the socket at once, into a buffer on the stack.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// A connection with more actions than this in flight is sending a backlog: it reads more only
/// in its turn (`Limits::backlog_readers_max`). An online client's few actions, even several
/// `sync`s of them, never wait for a turn.
const BACKLOG_ACTIONS: usize = 64;

/// A connection holding more bytes than this of a frame still arriving is sending a backlog
/// too (a returning client's first, large `sync`): it reads the rest in its turn.
const BACKLOG_PARTIAL_BYTES: usize = 8 * 1024;

/// How long a closing connection waits for its in-flight `sync`s to be answered.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// How long the closing handshake may take: our close frame out, the client's back.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One WebSocket connection.
pub struct Session {
    shared: Arc<Shared>,
    peer: IpAddr,
    cookie: Option<String>,
    state: Connection,
    outbox: Arc<Outbox>,
    pipeline: Option<Pipeline>,
    conn: u64,
    registered: bool,
    /// `sync`s handed to the writer, oldest first, answered in this order.
    inflight: VecDeque<Pending>,
    decoder: Decoder,
    /// Encoded frames not yet written; empty and unallocated between writes.
    unsent: Vec<u8>,
    /// Highest `added` the client confirmed with `synced`, reported to the hub at the end.
    client_synced: u64,
    /// The client, once authenticated, with the last `client_synced` recorded in the log and
    /// when, if it was (see [`Session::record_synced`]).
    recorded: Option<(rhizome_protocol::ClientId, u64, Option<i64>)>,
    /// When the last event was handled; quiet for `park_after` parks the connection.
    quiet_since_ms: i64,
    /// Its turn to read while it has `sync`s in flight (see `Limits::backlog_readers_max`).
    turn: Turn,
    /// A write of this connection failed: no `synced` may follow (see `close`).
    write_failed: bool,
}

/// A connection's place among the backlog readers.
enum Turn {
    /// Not waiting: it has nothing in flight, or has not had input since its last turn.
    None,
    /// Waiting in line, first come first served.
    Waiting(Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>),
    /// Reading; ends when what it read has been handed to the pipeline.
    Held(#[allow(dead_code)] OwnedSemaphorePermit),
}

enum Next {
    Continue,
    Close(u16, &'static str),
    End(End),
}

/// How the loop of one connection ended.
enum End {
    /// The client closed its side (close frame or end of stream); we answer with a close frame
    /// when it sent one.
    ByClient { answer: bool },
    /// We close, with this code; the client's close frame is then awaited briefly.
    ByServer(u16, &'static str),
    /// The socket failed; nothing more can be sent.
    Broken,
}

/// What woke the connection.
enum Event {
    /// Frames were queued, or the outbox was closed.
    Outbox,
    /// The oldest in-flight `sync` was committed (or failed).
    Committed(Pending, Result<rhizome_store::Committed, crate::writer::WriteFailed>),
    /// The socket has bytes (or an end) to read.
    Readable,
    /// The socket failed.
    Broken,
    /// The protocol deadline passed.
    Tick,
    /// Quiet for `park_after` with nothing buffered: the connection can be parked.
    Park,
}

/// How [`Session::run`] returned.
enum Ran {
    /// The socket is closed.
    Closed,
    /// The connection is quiet and may be parked.
    Park,
}

/// What one read produced.
#[derive(Default)]
struct Read {
    outputs: Vec<Output>,
    end: Option<End>,
}

/// A WebSocket connection whose handshake was answered; [`Session::serve`] runs it once the
/// HTTP layer hands over the socket. Built before the upgrade, so the task holds one copy of
/// everything.
pub fn session(shared: Arc<Shared>, peer: IpAddr, cookie: Option<String>) -> Box<Session> {
    let now = now_ms();
    let state = Connection::new(shared.config.clone(), shared.limits.clone(), now);
    let outbox = Arc::new(Outbox::new(shared.limits.outbound_queue_bytes_max));
    let conn = shared.next_conn_id();
    let decoder = Decoder::new(shared.limits.frame_bytes_max);
    // Registered from the start (and removed on drop), so that shutdown reaches it too.
    shared.outboxes.insert(conn, &outbox);
    Box::new(Session {
        quiet_since_ms: now,
        shared,
        peer,
        cookie,
        state,
        outbox,
        pipeline: None,
        conn,
        registered: false,
        inflight: VecDeque::new(),
        decoder,
        unsent: Vec::new(),
        client_synced: 0,
        recorded: None,
        turn: Turn::None,
        write_failed: false,
    })
}

/// How often a connection records what its client confirmed, besides when it closes: a crash
/// then replays at most this much of what is addressed to the client.
const RECORD_SYNCED_EVERY_MS: i64 = 60_000;

/// What `client` confirmed at this server as the log records it
/// ([`rhizome_store::Store::confirmed_by`]), which the `synced` it claims in its `connect` is
/// trusted up to (the claim may be another server's position): lower means duplicates, which
/// clients drop by id; higher would skip what it never got. Not read for a claim of 0.
async fn confirmed_here(shared: &Shared, client: &rhizome_protocol::ClientId, claimed: u64) -> u64 {
    if claimed == 0 {
        return 0;
    }
    let store = shared.store.clone();
    let client = client.to_string();
    match rhizome_io::blocking(move || store.confirmed_by(&client)).await {
        Ok(Ok(confirmed)) => confirmed,
        _ => 0,
    }
}

impl Session {
    /// Records what the client confirmed: its first confirmation at once, then at most every
    /// [`RECORD_SYNCED_EVERY_MS`] (the hub records it when the connection closes). Not waited
    /// for, and skipped when the writer is busy (a later record or the close makes up for it).
    fn record_synced(&mut self) {
        let Some((client, recorded, at)) = &mut self.recorded else { return };
        let now = now_ms();
        // Never beyond what the hub has routed: a client cannot have been sent more.
        let confirmed = self.client_synced.min(*self.shared.committed.borrow());
        if confirmed <= *recorded || at.is_some_and(|at| now - at < RECORD_SYNCED_EVERY_MS) {
            return;
        }
        let batch = rhizome_store::WriteBatch {
            client_positions: vec![(client.to_string(), confirmed)],
            ..rhizome_store::WriteBatch::default()
        };
        if self.shared.writer.try_write_unordered(batch) {
            *recorded = confirmed;
            *at = Some(now);
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("conn", &self.conn).field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.outboxes.remove(self.conn);
        self.shared.connection_closed();
    }
}

impl Session {
    /// Waits for the upgrade, then serves the socket until it closes or parks.
    pub async fn serve(mut self: Box<Self>, on_upgrade: hyper::upgrade::OnUpgrade) {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<Stream>>() else {
            tracing::error!("an upgraded connection is not a TCP stream");
            return;
        };
        let hyper::upgrade::Parts { io, read_buf, .. } = parts;
        let mut first = Read::default();
        if !read_buf.is_empty() {
            // Bytes the HTTP layer read past the handshake, copied: the `Bytes` would keep the
            // HTTP layer's whole read buffer alive for the life of the socket.
            let mut bytes = read_buf.to_vec();
            self.decode(&mut bytes, &mut first);
        }
        drop(read_buf);
        Session::live(self, io.into_inner(), Some(first)).await;
    }

    /// Serves a socket whose handshake was answered directly (without hyper).
    pub async fn serve_socket(self: Box<Self>, stream: Stream) {
        Session::live(self, stream, None).await;
    }

    /// Serves a connection coming back from the parking lot.
    pub async fn resume(mut session: Box<Self>, stream: Stream) {
        // Whatever woke it may not have reached the new registration yet (the runtime learns
        // of input on its next poll of the socket): stay awake at least `park_after`.
        session.quiet_since_ms = now_ms();
        Session::live(session, stream, None).await;
    }

    /// Runs the connection until it closes (then tells the hub) or parks.
    async fn live(mut session: Box<Self>, stream: Stream, first: Option<Read>) {
        match session.run(&stream, first).await {
            Ran::Park => {
                let shared = session.shared.clone();
                shared.parking.park(session, stream);
            }
            Ran::Closed => {
                if let (true, Some((client, _, _))) = (session.registered, session.recorded.take()) {
                    let unregister = HubMessage::Unregister {
                        conn: session.conn,
                        client_synced: session.client_synced,
                        client,
                    };
                    let _ = Box::pin(session.shared.hub.send(unregister)).await;
                }
            }
        }
    }

    /// Its connection id.
    pub fn conn_id(&self) -> u64 {
        self.conn
    }

    /// Its outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The connection's loop. While idle it waits in `poll_event`, holding nothing but the
    /// session; each event is handled in a boxed future that lives only while it runs.
    async fn run(&mut self, stream: &Stream, first: Option<Read>) -> Ran {
        let mut end = match first {
            Some(read) => Box::pin(self.after_read(stream, read)).await,
            None => None,
        };
        while end.is_none() {
            let event = poll_fn(|cx| self.poll_event(cx, stream)).await;
            if matches!(event, Event::Park) {
                return Ran::Park;
            }
            self.quiet_since_ms = now_ms();
            end = Box::pin(self.on_event(event, stream)).await;
        }
        // Reading is over: a place in line or a turn goes to the others now.
        self.turn = Turn::None;
        match end {
            Some(End::Broken) | None => self.abandon_inflight(),
            Some(end) => Box::pin(self.close(stream, end)).await,
        }
        // Whatever is still pushed (answers of `sync`s finished without the connection) is kept
        // in the log for the client's next connection instead.
        self.outbox.close(Closed::Ended);
        Ran::Closed
    }

    /// Handles one event, then writes what is queued. `Some` ends the connection.
    async fn on_event(&mut self, event: Event, stream: &Stream) -> Option<End> {
        let next = match event {
            Event::Outbox => Next::Continue,
            Event::Committed(pending, result) => self.finish(pending, result).await,
            Event::Readable => {
                let read = self.read(stream);
                return self.after_read(stream, read).await;
            }
            Event::Broken => return Some(End::Broken),
            // `run` parks on this one instead of handling it.
            Event::Park => Next::Continue,
            Event::Tick => {
                let mut out = Vec::new();
                self.state.on_tick(now_ms(), &mut out);
                self.handle(out).await
            }
        };
        self.flush(stream, next).await
    }

    /// Handles what a read decoded, then writes what is queued.
    async fn after_read(&mut self, stream: &Stream, read: Read) -> Option<End> {
        let next = match (self.handle(read.outputs).await, read.end) {
            (Next::Continue, Some(end)) => Next::End(end),
            (next, _) => next,
        };
        // What it read is in the pipeline: the next backlog reader's turn, before a socket
        // write that may wait on a slow client.
        self.turn = Turn::None;
        self.flush(stream, next).await
    }

    /// Writes whatever is queued, whatever happened, and decides whether to go on.
    async fn flush(&mut self, stream: &Stream, next: Next) -> Option<End> {
        let closed = self.take_outbox();
        if !self.unsent.is_empty() {
            if let Err(e) = self.write(stream).await {
                tracing::info!(conn = self.conn, error = %e, "write failed; dropping the client");
                return Some(End::Broken);
            }
            self.state.note_sent(now_ms());
        }
        match closed {
            Some(Closed::Overflow) => {
                tracing::info!(conn = self.conn, "outbound queue full; dropping a slow client");
                return Some(End::ByServer(SLOW, "too slow"));
            }
            Some(Closed::Replaced) => return Some(End::ByServer(REPLACED, "replaced by a newer connection")),
            Some(Closed::Shutdown) => return Some(End::ByServer(code::GOING_AWAY, "server shutting down")),
            Some(Closed::Ended) => return Some(End::Broken),
            None => {}
        }
        match next {
            Next::Continue => None,
            Next::Close(code, reason) => Some(End::ByServer(code, reason)),
            Next::End(end) => Some(end),
        }
    }

    /// The next thing to do. Commits are answered first, then input is read (while fewer than
    /// `inflight_syncs_max` syncs wait for the writer), then timers; queued frames are written
    /// after every event anyway, so the outbox only needs to wake an otherwise idle task.
    fn poll_event(&mut self, cx: &mut TaskContext<'_>, stream: &Stream) -> Poll<Event> {
        // A turn granted while it waited (it queued because input was there): read at once,
        // rather than keep the others waiting while commits are answered.
        if matches!(self.turn, Turn::Waiting(_)) && self.poll_turn(cx).is_ready() {
            return Poll::Ready(Event::Readable);
        }
        if let Some(oldest) = self.inflight.front_mut() {
            if let Poll::Ready(result) = oldest.poll_committed(cx) {
                if let Some(pending) = self.inflight.pop_front() {
                    if self.inflight.is_empty() {
                        // Free the queue: an idle connection keeps no buffer.
                        self.inflight = VecDeque::new();
                    }
                    return Poll::Ready(Event::Committed(pending, result));
                }
            }
        }
        let backlog = self.decoder.buffered_bytes() > BACKLOG_PARTIAL_BYTES
            || self.inflight.iter().map(Pending::actions).sum::<usize>() > BACKLOG_ACTIONS;
        if !backlog {
            // No backlog in flight: it reads without a turn, and gives up its place in line.
            self.turn = Turn::None;
        }
        if self.inflight.len() < self.shared.limits.inflight_syncs_max {
            match stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) if !backlog || self.poll_turn(cx).is_ready() => {
                    return Poll::Ready(Event::Readable)
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Event::Broken),
                Poll::Pending => {}
            }
        }
        // No timer per connection: the server's ticker wakes connections whose deadline passed.
        let now = now_ms();
        let deadline_ms = self.state.deadline_ms();
        if now >= deadline_ms {
            return Poll::Ready(Event::Tick);
        }
        if self.outbox.poll_ready(cx).is_ready() {
            return Poll::Ready(Event::Outbox);
        }
        let quiet = self.inflight.is_empty()
            && stream.parkable()
            && self.unsent.is_empty()
            && self.decoder.buffered_bytes() == 0
            && !self.decoder.is_closed();
        if quiet {
            let park_at =
                self.quiet_since_ms.saturating_add(self.shared.limits.park_after.as_millis() as i64);
            if now >= park_at {
                // Parked, only the protocol's own deadline may wake it.
                self.outbox.set_deadline_ms(deadline_ms);
                return Poll::Ready(Event::Park);
            }
            self.outbox.set_deadline_ms(deadline_ms.min(park_at));
        } else {
            self.outbox.set_deadline_ms(deadline_ms);
        }
        Poll::Pending
    }

    /// Takes a turn to read among the connections with `sync`s in flight, or queues for one.
    fn poll_turn(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        loop {
            match &mut self.turn {
                Turn::Held(_) => return Poll::Ready(()),
                Turn::None => {
                    let line = self.shared.backlog_readers.clone();
                    self.turn = Turn::Waiting(Box::pin(line.acquire_owned()));
                }
                Turn::Waiting(wait) => {
                    return match wait.as_mut().poll(cx) {
                        Poll::Ready(Ok(permit)) => {
                            self.turn = Turn::Held(permit);
                            Poll::Ready(())
                        }
                        // The line is never closed; were it, reading goes on without it.
                        Poll::Ready(Err(_)) => {
                            self.turn = Turn::None;
                            Poll::Ready(())
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    /// Leaves the in-flight `sync`s of a connection nobody reads any more to a task of their
    /// own: what was committed is processed all the same, and the answers, which cannot be
    /// sent, are kept in the log for the client's next connection (the outbox is closed first,
    /// so they are never pushed to it).
    fn abandon_inflight(&mut self) {
        self.outbox.close(Closed::Ended);
        if let (Some(pipeline), false) = (&self.pipeline, self.inflight.is_empty()) {
            drop(pipeline.clone().finish_detached(std::mem::take(&mut self.inflight).into()));
        }
    }

    /// Finishes in-flight writes, so their clients get `synced` for what was made durable, then
    /// runs the closing handshake.
    async fn close(&mut self, stream: &Stream, end: End) {
        if let End::ByClient { .. } = end {
            // The client is gone or going: it reads no more answers.
            self.abandon_inflight();
        } else if !self.inflight.is_empty() {
            // The in-flight `sync`s are finished by a task of their own, so that an action whose
            // commit was acknowledged with `synced` is processed even when this connection
            // cannot wait: the client gets what is answered within the drain time; the answers
            // of the rest go into the log for its next connection.
            let inflight: Vec<Pending> = std::mem::take(&mut self.inflight).into();
            if self.write_failed {
                // No `synced` after a failed write: a later one would confirm the failed
                // `sync` too. What commits is answered through the log instead.
                self.outbox.close(Closed::Ended);
            }
            if let Some(pipeline) = &self.pipeline {
                let finishing = pipeline.clone().finish_detached(inflight);
                let _ = tokio::time::timeout(CLOSE_DRAIN, finishing).await;
            }
            self.take_outbox();
            self.outbox.close(Closed::Ended);
        }
        let (code, reason, wait_for_client) = match end {
            End::ByClient { answer: true } => (code::NORMAL, "", false),
            End::ByClient { answer: false } | End::Broken => (0, "", false),
            End::ByServer(code, reason) => (code, reason, true),
        };
        if code != 0 {
            encode_close(&mut self.unsent, code, reason);
        }
        if self.write(stream).await.is_err() || !wait_for_client {
            return;
        }
        // Read (and drop) what the client still sends until it answers the close, briefly:
        // closing a socket with unread input makes the kernel send a reset, and the client
        // would lose the close frame and its code.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while !self.decoder.is_closed() && stream.readable().await.is_ok() {
                let mut buf = [0u8; 4096];
                match stream.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if self.decoder.feed(&mut buf[..n], |_| {}).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    }

    /// Reads what the socket has and decodes it.
    fn read(&mut self, stream: &Stream) -> Read {
        let mut buf = [0u8; READ_CHUNK_BYTES];
        let mut read = Read::default();
        match stream.try_read(&mut buf) {
            Ok(0) => read.end = Some(End::ByClient { answer: false }),
            Ok(n) => self.decode(&mut buf[..n], &mut read),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!(conn = self.conn, error = %e, "socket read failed");
                read.end = Some(End::Broken);
            }
        }
        read
    }

    /// Decodes `bytes` into protocol outputs; control frames are answered here.
    fn decode(&mut self, bytes: &mut [u8], read: &mut Read) {
        let now = now_ms();
        let Session { decoder, state, unsent, .. } = self;
        let result = decoder.feed(bytes, |message| {
            if read.end.is_some() {
                return;
            }
            match message {
                Message::Text(text) => state.on_frame(text, now, &mut read.outputs),
                Message::Binary(_) => {
                    let why = serde_json::Value::from("binary frames are not supported");
                    read.outputs.push(Output::Send(encode_error("wrong-format", Some(&why))));
                    read.end = Some(End::ByServer(code::UNSUPPORTED, "binary frame"));
                }
                Message::Ping(payload) => rhizome_websocket::encode_pong(unsent, payload),
                Message::Pong(_) => {}
                Message::Close { .. } => read.end = Some(End::ByClient { answer: true }),
            }
        });
        if let Err(violation) = result {
            if read.end.is_none() {
                read.end = Some(self.violation(violation, &mut read.outputs));
            }
        }
    }

    fn violation(&self, violation: Violation, outputs: &mut Vec<Output>) -> End {
        tracing::debug!(conn = self.conn, %violation, "WebSocket protocol violation");
        match violation {
            Violation::TooBig(limit) => {
                let why = serde_json::Value::from(format!("frame larger than {limit} bytes"));
                outputs.push(Output::Send(encode_error("wrong-format", Some(&why))));
                End::ByServer(code::TOO_BIG, "frame too large")
            }
            Violation::InvalidUtf8 => End::ByServer(code::INVALID_DATA, "invalid UTF-8"),
            Violation::Protocol(_) => End::ByServer(code::PROTOCOL, "WebSocket protocol error"),
        }
    }

    /// Moves queued frames into the write buffer; returns why the outbox is closed, if it is.
    fn take_outbox(&mut self) -> Option<Closed> {
        let unsent = &mut self.unsent;
        self.outbox.drain_each(|frame| encode_text(unsent, &frame))
    }

    /// Writes the buffer out within the write timeout, then frees it.
    async fn write(&mut self, stream: &Stream) -> io::Result<()> {
        // Most writes fit in the socket buffer at once; only a full buffer needs the timer.
        let written = self.write_now(stream, 0)?;
        let result = if written < self.unsent.len() {
            let timeout = self.shared.limits.write_timeout;
            Box::pin(async {
                tokio::time::timeout(timeout, self.write_rest(stream, written)).await.unwrap_or_else(|_| {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out: the client does not read"))
                })
            })
            .await
        } else {
            Ok(())
        };
        self.unsent = Vec::new();
        result
    }

    /// Writes what the socket takes without waiting; returns the bytes written so far.
    fn write_now(&mut self, stream: &Stream, mut written: usize) -> io::Result<usize> {
        while written < self.unsent.len() {
            match stream.try_write(&self.unsent[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    async fn write_rest(&mut self, stream: &Stream, mut written: usize) -> io::Result<()> {
        while written < self.unsent.len() {
            written += stream.write_some(&self.unsent[written..]).await?;
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        pending: Pending,
        result: Result<rhizome_store::Committed, crate::writer::WriteFailed>,
    ) -> Next {
        let Some(pipeline) = &self.pipeline else {
            return Next::Continue;
        };
        let finished = match result {
            Ok(committed) => pipeline.finish(pending, committed).await,
            Err(e) => Err(e),
        };
        if finished.is_err() {
            // Nothing of that sync is acknowledged, nor anything after it: the client sends it
            // all again after reconnecting.
            self.write_failed = true;
            return Next::Close(code::INTERNAL, "storage failure");
        }
        Next::Continue
    }

    async fn handle(&mut self, out: Vec<Output>) -> Next {
        let mut queue: VecDeque<Output> = out.into();
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Send(frame) => {
                    self.outbox.push(frame);
                }
                Output::Authenticate(mut request) => {
                    request.cookie = self.cookie.take();
                    let accepted = if self.shared.auth_blocked(self.peer) {
                        tracing::info!(peer = %self.peer, "authentication refused: too many failures");
                        false
                    } else {
                        let ok = self.shared.app.authenticator().authenticate(&request).await;
                        if !ok {
                            self.shared.auth_failed(self.peer);
                            tracing::info!(node = %request.node_id, peer = %self.peer, "wrong credentials");
                        }
                        ok
                    };
                    let mut more = Vec::new();
                    let grant = self.shared.app.grant(&request, accepted);
                    self.state.auth_finished(grant, now_ms(), &mut more);
                    queue.extend(more);
                }
                Output::Authenticated(identity) => {
                    tracing::debug!(conn = self.conn, node = %identity.node_id, "authenticated");
                    if let Some(follow) = self.shared.upstream_follow.get() {
                        follow.follow_user(&self.shared, identity.user_id.as_ref()).await;
                    }
                    let shared_identity = Arc::new(ConnIdentity {
                        node_id: identity.node_id,
                        client_id: identity.client_id,
                        user_id: identity.user_id,
                        codec: identity.codec,
                        peer: identity.role == rhizome_core::Role::Peer,
                    });
                    // A device that moved here from another server (an edge, the cloud) brings
                    // that server's position: the hub trusts it up to what it confirmed here.
                    let confirmed =
                        confirmed_here(&self.shared, &shared_identity.client_id, identity.synced).await;
                    self.recorded = Some((shared_identity.client_id.clone(), confirmed, None));
                    let message = HubMessage::Register {
                        conn: self.conn,
                        identity: shared_identity.clone(),
                        outbox: self.outbox.clone(),
                        synced: identity.synced,
                        confirmed,
                    };
                    if self.shared.hub.send(message).await.is_err() {
                        return Next::Close(code::GOING_AWAY, "server shutting down");
                    }
                    self.registered = true;
                    let parts = PipelineParts {
                        conn: self.conn,
                        identity: shared_identity,
                        subprotocol: identity.subprotocol,
                        headers: identity.headers,
                        outbox: self.outbox.clone(),
                    };
                    self.pipeline = Some(Pipeline::new(self.shared.clone(), parts));
                }
                Output::Sync { added, actions } => {
                    let Some(pipeline) = &self.pipeline else { continue };
                    let pending = pipeline.accept(added, actions).await;
                    self.inflight.push_back(pending);
                }
                Output::Synced(added) => {
                    self.client_synced = self.client_synced.max(added);
                    self.record_synced();
                }
                Output::Pong => {
                    self.outbox.push(encode_pong(self.outbox.safe_added()));
                }
                Output::Ping => {
                    self.outbox.push(encode_ping(self.outbox.safe_added()));
                }
                Output::Close(reason) => {
                    return match reason {
                        CloseReason::Timeout => Next::Close(code::GOING_AWAY, "timeout"),
                        CloseReason::Refused => Next::Close(code::NORMAL, "refused"),
                        CloseReason::ProtocolError | CloseReason::Flood => {
                            Next::Close(code::POLICY, "protocol error")
                        }
                    };
                }
            }
        }
        Next::Continue
    }
}
