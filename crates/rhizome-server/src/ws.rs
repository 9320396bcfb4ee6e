//! One WebSocket connection: a single task that reads frames, feeds the protocol state machine
//! and the pipeline, and writes the outbox, with the connection's timers.

use crate::hub::{ConnIdentity, HubMessage};
use crate::outbox::{Closed, Outbox};
use crate::pipeline::{Pending, Pipeline};
use crate::shared::Shared;
use crate::writer::now_ms;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use rhizome_core::{CloseReason, Connection, Context, Output};
use rhizome_protocol::message::{encode_ping, encode_pong};
use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// Close codes sent to clients.
mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const REPLACED: u16 = 4001;
    pub const SLOW: u16 = 4002;
}

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
}

enum Next {
    Continue,
    Close(u16, &'static str),
}

/// Serves one upgraded socket until it closes.
pub async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    peer: IpAddr,
    cookie: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    let now = now_ms();
    let state = Connection::new(shared.config.clone(), shared.limits.clone(), now);
    let outbox = Arc::new(Outbox::new(shared.limits.outbound_queue_bytes_max));
    let conn = shared.next_conn_id();
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
    };
    session.run(socket, shutdown).await;
    if session.registered {
        let _ = session.shared.hub.send(HubMessage::Unregister { conn: session.conn }).await;
    }
}

fn deadline(ms: i64) -> Instant {
    let delta = ms.saturating_sub(now_ms()).clamp(0, 24 * 3600 * 1000) as u64;
    Instant::now() + Duration::from_millis(delta)
}

impl Session {
    async fn run(&mut self, mut socket: WebSocket, mut shutdown: watch::Receiver<bool>) {
        let mut frames: Vec<String> = Vec::new();
        let close = loop {
            let inflight_max = self.shared.limits.inflight_syncs_max;
            let wake = deadline(self.state.deadline_ms());
            let next = tokio::select! {
                _ = shutdown.changed() => Next::Close(code::GOING_AWAY, "server shutting down"),
                _ = self.outbox.notified() => Next::Continue,
                Some((pending, result)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    Box::pin(self.finish(pending, result)).await
                }
                message = socket.recv(), if self.inflight.len() < inflight_max => match message {
                    Some(Ok(Message::Text(text))) => Box::pin(self.on_frame(text.as_str())).await,
                    Some(Ok(Message::Binary(_))) => {
                        self.outbox.push(rhizome_protocol::message::encode_error(
                            "wrong-format",
                            Some(&serde_json::Value::from("binary frames are not supported")),
                        ));
                        Next::Close(code::POLICY, "binary frame")
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Next::Continue,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                            let limit = self.shared.limits.frame_bytes_max;
                            self.outbox.push(rhizome_protocol::message::encode_error(
                                "wrong-format",
                                Some(&serde_json::Value::from(format!("frame larger than {limit} bytes"))),
                            ));
                            Next::Close(code::TOO_BIG, "frame too large")
                        } else {
                            tracing::debug!(error = %text, "socket read failed");
                            break None;
                        }
                    }
                },
                _ = sleep_until(wake) => {
                    let mut out = Vec::new();
                    self.state.on_tick(now_ms(), &mut out);
                    Box::pin(self.handle(out)).await
                }
            };
            // Write whatever is queued, whatever happened.
            let closed = self.outbox.drain(&mut frames);
            if !frames.is_empty() {
                let write_timeout = self.shared.limits.write_timeout;
                let written = tokio::time::timeout(write_timeout, async {
                    for f in frames.drain(..) {
                        socket.feed(Message::Text(f.into())).await?;
                    }
                    socket.flush().await
                })
                .await;
                frames.clear();
                match written {
                    Ok(Ok(())) => self.state.note_sent(now_ms()),
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        tracing::info!(conn = self.conn, "write timed out; dropping a slow client");
                        break None;
                    }
                }
            }
            match closed {
                Some(Closed::Overflow) => {
                    tracing::info!(conn = self.conn, "outbound queue full; dropping a slow client");
                    break Some((code::SLOW, "too slow"));
                }
                Some(Closed::Replaced) => break Some((code::REPLACED, "replaced by a newer connection")),
                None => {}
            }
            if let Next::Close(code, reason) = next {
                break Some((code, reason));
            }
        };
        // Finish in-flight writes so their clients get `synced` for what was made durable.
        if !self.inflight.is_empty() {
            let drain = async {
                while let Some((pending, result)) = self.inflight.next().await {
                    let _ = self.finish(pending, result).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            self.outbox.drain(&mut frames);
            for f in frames.drain(..) {
                if socket.feed(Message::Text(f.into())).await.is_err() {
                    break;
                }
            }
        }
        if let Some((code, reason)) = close {
            let frame = CloseFrame { code, reason: reason.into() };
            let _ =
                tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
            // Read (and drop) what the client still sends until it answers the close, briefly:
            // closing a socket with unread input makes the kernel send a reset, and the client
            // would lose the close frame and its code.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    async fn on_frame(&mut self, text: &str) -> Next {
        let mut out = Vec::new();
        self.state.on_frame(text, now_ms(), &mut out);
        self.handle(out).await
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
                Output::Synced(_) => {}
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
