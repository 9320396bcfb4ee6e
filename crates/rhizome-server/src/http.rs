//! The accept loop. A WebSocket handshake that arrives whole in the first segment (what
//! clients send) is answered right here from a peek into a stack buffer, so a WebSocket
//! connection never allocates HTTP buffers. Everything else is HTTP/1.1 served by hyper, with
//! upgrades (a handshake split over segments still works that way).

use crate::shared::Shared;
use crate::{handshake, ws};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

/// A client has this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` turns true, then asks every HTTP connection to
/// finish gracefully. Upgraded sockets watch `stop` themselves.
pub async fn accept(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
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
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let router = router.clone();
        let mut stop = stop.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Some(stream) = direct_websocket(stream, peer, &shared).await else {
                return;
            };
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
                _ = stopped(&mut stop) => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// Answers a WebSocket handshake read directly off the socket and starts its session. Gives
/// the stream back when the request is anything else (hyper then serves it, refusals included).
async fn direct_websocket(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Option<TcpStream> {
    let head = tokio::time::timeout(HEADER_READ_TIMEOUT, poll_fn(|cx| peek_head(cx, &stream))).await;
    let (length, accepted) = match head {
        Ok(Ok(Some((length, Ok(accepted))))) => (length, accepted),
        Ok(Ok(_)) => return Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading a request failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "no request within the header timeout; closing");
            return None;
        }
    };
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

fn peek_head(cx: &mut Context<'_>, stream: &TcpStream) -> Poll<std::io::Result<Option<handshake::Head>>> {
    // On the stack, and only for this poll: the task keeps no buffer.
    let mut buf = [0u8; PEEK_BYTES];
    let mut read = ReadBuf::new(&mut buf);
    match stream.poll_peek(cx, &mut read) {
        Poll::Ready(Ok(_)) => Poll::Ready(Ok(handshake::parse_head(read.filled()))),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
