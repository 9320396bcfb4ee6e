//! The accept loop. A WebSocket handshake that arrives whole in the first segment (what
//! clients send) is answered right here from a peek into a stack buffer, so a WebSocket
//! connection never allocates HTTP buffers. So is a simple `POST /v1/pull` (a long-poll holds
//! its connection while it waits: served here, it costs its own state and a socket, not hyper's
//! connection with its buffers), as many as come one after another on a kept-alive connection.
//! Everything else is HTTP/1.1 served by hyper, with upgrades (a handshake split over segments
//! still works that way).

use crate::shared::Shared;
use crate::socket::Stream;
use crate::{handshake, ws};
use axum::extract::{ConnectInfo, State};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tower_service::Service;

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` turns true, then asks every HTTP connection to
/// finish gracefully. Upgraded sockets watch `stop` themselves.
pub async fn accept(
    listener: rhizome_io::Listener,
    router: Router,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (Stream::from(stream), peer),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        // Answers are small frames written one after another; Nagle's algorithm would hold each
        // second one until the client's delayed ACK (~40 ms per round trip).
        if let Err(e) = stream.set_nodelay() {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let router = router.clone();
        let mut stop = stop.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(stream) = direct(stream, peer, &shared).await else {
                return;
            };
            // Boxed: the task of a connection served directly does not carry hyper's state.
            Box::pin(serve_hyper(stream, peer, router, &mut stop)).await;
        });
    }
}

/// Serves the connection with hyper until it ends, finishing gracefully once `stop` turns true.
async fn serve_hyper(stream: Stream, peer: SocketAddr, router: Router, stop: &mut watch::Receiver<bool>) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(request.map(axum::body::Body::new))
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            return;
        }
        _ = stopped(stop) => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// What the start of a connection's unread bytes is.
enum Peeked {
    /// The peer closed the connection.
    Closed,
    /// A whole, valid WebSocket handshake of this many bytes.
    WebSocket(usize, handshake::Accepted),
    /// A pull served directly.
    Pull(handshake::Pull),
    /// Anything else: hyper serves it.
    Other,
}

/// Bodies of pulls served directly at most; a larger one goes to hyper (which refuses what is
/// over `frame_bytes_max`).
const DIRECT_PULL_BYTES_MAX: usize = 64 * 1024;

/// Serves the requests that can be answered without hyper, one after another: a WebSocket
/// handshake (the session then owns the socket) and simple pulls. Gives the stream back at the
/// first request that is anything else.
async fn direct(mut stream: Stream, peer: SocketAddr, shared: &Arc<Shared>) -> Option<Stream> {
    loop {
        let peeked = tokio::select! {
            peeked = tokio::time::timeout(HEADER_READ_TIMEOUT, poll_fn(|cx| peek_request(cx, &stream))) => peeked,
            _ = shared.stopping() => return None,
        };
        let peeked = match peeked {
            Ok(Ok(peeked)) => peeked,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading a request failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no request within the header timeout; closing");
                return None;
            }
        };
        match peeked {
            Peeked::Closed => return None,
            Peeked::WebSocket(length, accepted) => {
                return Box::pin(direct_websocket(stream, peer, shared, length, accepted)).await;
            }
            Peeked::Pull(pull) if pull.body <= DIRECT_PULL_BYTES_MAX => {
                if !Box::pin(serve_pull(&mut stream, peer, shared, pull)).await {
                    return None;
                }
            }
            Peeked::Pull(_) | Peeked::Other => return Some(stream),
        }
    }
}

/// Reads a pull's head and body off `stream`, answers it and writes the answer. Whether the
/// connection stays open for another request.
async fn serve_pull(
    stream: &mut Stream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    pull: handshake::Pull,
) -> bool {
    let mut bytes = vec![0u8; pull.head + pull.body];
    // The body may trail the head: it has the time any request body has.
    match tokio::time::timeout(shared.limits.unauthenticated_timeout, stream.read_exact(&mut bytes)).await {
        Ok(Ok(_)) => {}
        _ => return false,
    }
    let body = axum::body::Bytes::from(bytes).slice(pull.head..);
    let mut request = axum::http::Request::builder().method(axum::http::Method::POST).uri("/v1/pull");
    if let Some(authorization) = &pull.authorization {
        request = request.header(axum::http::header::AUTHORIZATION, authorization);
    }
    let Ok(request) = request.body(axum::body::Body::from(body)) else {
        return false;
    };
    // A client that hangs up while its long-poll waits ends the poll, as hyper drops the
    // handler of a closed connection: the poll would otherwise hold its place among the
    // waiting ones and keep its device counted as connected (no push wake-up) until `wait`.
    let answer = crate::http_sync::pull(State(shared.clone()), ConnectInfo(peer), request);
    let response = tokio::select! {
        response = answer => response,
        // Boxed: kept inline, it would take this future, which every waiting poll holds, past
        // the allocator's 2 KiB size class.
        () = Box::pin(hung_up(stream)) => return false,
    };
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return false;
    };
    let status = parts.status;
    let mut answer = format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            answer.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    answer.push_str(&format!("content-length: {}\r\n", body.len()));
    if pull.close {
        answer.push_str("connection: close\r\n");
    }
    answer.push_str("\r\n");
    let mut answer = answer.into_bytes();
    answer.extend_from_slice(&body);
    let written = tokio::time::timeout(shared.limits.write_timeout, stream.write_all(&answer)).await;
    matches!(written, Ok(Ok(()))) && !pull.close
}

/// Returns once the peer closed the connection (or it failed). Bytes already sent after the
/// request (a pipelined one) say nothing more: then it never returns.
async fn hung_up(stream: &Stream) {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Answers a WebSocket handshake of `length` bytes, peeked off the socket, and starts its
/// session. Gives the stream back when the connection limit is reached (hyper answers 503).
async fn direct_websocket(
    mut stream: Stream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    length: usize,
    accepted: handshake::Accepted,
) -> Option<Stream> {
    if !shared.try_open_connection() {
        // hyper answers with 503.
        return Some(stream);
    }
    // The session owns the connection slot from here.
    let session = ws::session(shared.clone(), peer.ip(), accepted.cookie);
    let mut head = vec![0u8; length];
    if stream.read_exact(&mut head).await.is_err() {
        return None;
    }
    drop(head);
    if stream.write_all(handshake::switching_protocols(&accepted.accept).as_bytes()).await.is_err() {
        return None;
    }
    tokio::spawn(session.serve_socket(stream));
    None
}

/// Bytes of a request head looked at directly; a longer head goes to hyper.
const PEEK_BYTES: usize = 4096;

fn peek_request(cx: &mut Context<'_>, stream: &Stream) -> Poll<std::io::Result<Peeked>> {
    // On the stack, and only for this poll: the task keeps no buffer.
    let mut buf = [0u8; PEEK_BYTES];
    let mut read = ReadBuf::new(&mut buf);
    match stream.poll_peek(cx, &mut read) {
        Poll::Ready(Ok(0)) => Poll::Ready(Ok(Peeked::Closed)),
        Poll::Ready(Ok(_)) => {
            let bytes = read.filled();
            if let Some(pull) = handshake::parse_pull(bytes) {
                return Poll::Ready(Ok(Peeked::Pull(pull)));
            }
            Poll::Ready(Ok(match handshake::parse_head(bytes) {
                Some((length, Ok(accepted))) => Peeked::WebSocket(length, accepted),
                _ => Peeked::Other,
            }))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
