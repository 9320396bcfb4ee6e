//! One WebSocket connection: a single task that reads frames, feeds the protocol state machine
//! and the pipeline, and writes the outbox, with the connection's timers.
//!
//! The task owns the bare `TcpStream` and keeps no buffer while the connection is idle: bytes are
//! read into a stack buffer and decoded in place ([`rhizome_websocket::Decoder`] copies only a
//! frame cut in half by the network), and the write buffer is freed once written. An idle
//! subscribed connection costs its task, its socket registration, its protocol state and its
//! routing entries.

use crate::hub::{ConnIdentity, HubMessage};
use crate::outbox::{Closed, Outbox};
use crate::pipeline::{Pending, Pipeline};
use crate::shared::Shared;
use crate::writer::now_ms;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use rhizome_core::{CloseReason, Connection, Context, Output};
use rhizome_protocol::message::{encode_error, encode_ping, encode_pong};
use rhizome_websocket::{close_code as code, encode_close, encode_text, Decoder, Message, Violation};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// Rhizome's own close codes.
const REPLACED: u16 = 4001;
const SLOW: u16 = 4002;

/// Bytes read from the socket at once, into a buffer on the stack.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How long the closing handshake may take: our close frame out, the client's back.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Commit = Pin<
    Box<dyn Future<Output = (Pending, Result<rhizome_store::Committed, crate::writer::WriteFailed>)> + Send>,
>;

struct Session {
    shared: Arc<Shared>,
    peer: IpAddr,
    cookie: Option<String>,
    state: Connection,
    outbox: Arc<Outbox>,
    pipeline: Option<Pipeline>,
    conn: u64,
    registered: bool,
    inflight: FuturesOrdered<Commit>,
    decoder: Decoder,
    /// Encoded frames not yet written; empty and unallocated between writes.
    unsent: Vec<u8>,
    /// Highest `added` the client confirmed with `synced`, reported to the hub at the end.
    client_synced: u64,
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

/// What one read produced.
#[derive(Default)]
struct Read {
    outputs: Vec<Output>,
    end: Option<End>,
}

/// Serves one upgraded socket until it closes. `pre_read` holds bytes the HTTP layer read past
/// the handshake.
pub async fn serve(
    stream: TcpStream,
    mut pre_read: Vec<u8>,
    shared: Arc<Shared>,
    peer: IpAddr,
    cookie: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    let now = now_ms();
    let state = Connection::new(shared.config.clone(), shared.limits.clone(), now);
    let outbox = Arc::new(Outbox::new(shared.limits.outbound_queue_bytes_max));
    let conn = shared.next_conn_id();
    let decoder = Decoder::new(shared.limits.frame_bytes_max);
    let mut session = Session {
        shared,
        peer,
        cookie,
        state,
        outbox,
        pipeline: None,
        conn,
        registered: false,
        inflight: FuturesOrdered::new(),
        decoder,
        unsent: Vec::new(),
        client_synced: 0,
    };
    let mut first = Read::default();
    if !pre_read.is_empty() {
        session.decode(&mut pre_read, &mut first);
    }
    drop(pre_read);
    session.run(&stream, first, shutdown).await;
    if session.registered {
        let unregister = HubMessage::Unregister { conn: session.conn, client_synced: session.client_synced };
        let _ = session.shared.hub.send(unregister).await;
    }
}

fn deadline(ms: i64) -> Instant {
    let delta = ms.saturating_sub(now_ms()).clamp(0, 24 * 3600 * 1000) as u64;
    Instant::now() + Duration::from_millis(delta)
}

impl Session {
    async fn run(&mut self, stream: &TcpStream, first: Read, mut shutdown: watch::Receiver<bool>) {
        let mut read = Some(first);
        let end = loop {
            // What the last read decoded is handled before anything else happens.
            let next = match read.take() {
                Some(Read { outputs, end }) => {
                    let next = Box::pin(self.handle(outputs)).await;
                    match (next, end) {
                        (Next::Continue, Some(end)) => Next::End(end),
                        (next, _) => next,
                    }
                }
                None => {
                    let inflight_max = self.shared.limits.inflight_syncs_max;
                    let wake = deadline(self.state.deadline_ms());
                    tokio::select! {
                        _ = shutdown.changed() => Next::Close(code::GOING_AWAY, "server shutting down"),
                        _ = self.outbox.notified() => Next::Continue,
                        Some((pending, result)) = self.inflight.next(), if !self.inflight.is_empty() => {
                            Box::pin(self.finish(pending, result)).await
                        }
                        ready = stream.readable(), if self.inflight.len() < inflight_max => match ready {
                            Ok(()) => {
                                read = Some(self.read(stream));
                                Next::Continue
                            }
                            Err(_) => break End::Broken,
                        },
                        _ = sleep_until(wake) => {
                            let mut out = Vec::new();
                            self.state.on_tick(now_ms(), &mut out);
                            Box::pin(self.handle(out)).await
                        }
                    }
                }
            };
            // Write whatever is queued, whatever happened.
            let closed = self.take_outbox();
            if !self.unsent.is_empty() {
                if let Err(e) = self.write(stream).await {
                    tracing::info!(conn = self.conn, error = %e, "write failed; dropping the client");
                    break End::Broken;
                }
                self.state.note_sent(now_ms());
            }
            match closed {
                Some(Closed::Overflow) => {
                    tracing::info!(conn = self.conn, "outbound queue full; dropping a slow client");
                    break End::ByServer(SLOW, "too slow");
                }
                Some(Closed::Replaced) => break End::ByServer(REPLACED, "replaced by a newer connection"),
                None => {}
            }
            match next {
                Next::Continue => {}
                Next::Close(code, reason) => break End::ByServer(code, reason),
                Next::End(end) => break end,
            }
        };
        if matches!(end, End::Broken) {
            return;
        }
        Box::pin(self.close(stream, end)).await;
    }

    /// Finishes in-flight writes, so their clients get `synced` for what was made durable, then
    /// runs the closing handshake.
    async fn close(&mut self, stream: &TcpStream, end: End) {
        if !self.inflight.is_empty() {
            let drain = async {
                while let Some((pending, result)) = self.inflight.next().await {
                    let _ = self.finish(pending, result).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            self.take_outbox();
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
    fn read(&mut self, stream: &TcpStream) -> Read {
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
    async fn write(&mut self, stream: &TcpStream) -> io::Result<()> {
        let mut written = 0;
        // Most writes fit in the socket buffer at once; only a full buffer needs the timer.
        loop {
            match stream.try_write(&self.unsent[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
            if written == self.unsent.len() {
                self.unsent = Vec::new();
                return Ok(());
            }
        }
        let rest = async {
            while written < self.unsent.len() {
                stream.writable().await?;
                match stream.try_write(&self.unsent[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let result = match tokio::time::timeout(self.shared.limits.write_timeout, rest).await {
            Ok(result) => result,
            Err(_) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out: the client does not read"))
            }
        };
        self.unsent = Vec::new();
        result
    }

    async fn finish(
        &mut self,
        pending: Pending,
        result: Result<rhizome_store::Committed, crate::writer::WriteFailed>,
    ) -> Next {
        let Some(pipeline) = &self.pipeline else {
            return Next::Continue;
        };
        match result {
            Ok(committed) => match pipeline.finish(pending, committed).await {
                Ok(()) => Next::Continue,
                Err(_) => Next::Close(code::INTERNAL, "storage failure"),
            },
            // Nothing of that sync is acknowledged; the client re-sends it after reconnecting.
            Err(_) => Next::Close(code::INTERNAL, "storage failure"),
        }
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
                    self.state.auth_finished(accepted, now_ms(), &mut more);
                    queue.extend(more);
                }
                Output::Authenticated(identity) => {
                    let ctx = Context {
                        user_id: identity.user_id.clone(),
                        client_id: identity.client_id.clone(),
                        node_id: identity.node_id.clone(),
                        subprotocol: identity.subprotocol,
                        headers: identity.headers.clone(),
                    };
                    tracing::debug!(conn = self.conn, node = %identity.node_id, "authenticated");
                    let hub_identity = Arc::new(ConnIdentity {
                        node_id: identity.node_id.clone(),
                        client_id: identity.client_id.clone(),
                        user_id: identity.user_id.clone(),
                        codec: identity.codec.clone(),
                    });
                    let message = HubMessage::Register {
                        conn: self.conn,
                        identity: hub_identity,
                        outbox: self.outbox.clone(),
                        synced: identity.synced,
                    };
                    if self.shared.hub.send(message).await.is_err() {
                        return Next::Close(code::GOING_AWAY, "server shutting down");
                    }
                    self.registered = true;
                    self.pipeline = Some(Pipeline::new(
                        self.shared.clone(),
                        self.conn,
                        ctx,
                        identity.codec,
                        self.outbox.clone(),
                    ));
                }
                Output::Sync { added, actions } => {
                    let Some(pipeline) = &self.pipeline else { continue };
                    let pending = pipeline.accept(added, actions).await;
                    self.inflight.push_back(Box::pin(pending.committed()));
                }
                Output::Synced(added) => self.client_synced = self.client_synced.max(added),
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
