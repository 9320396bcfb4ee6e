//! The stream a connection is served on: a TCP socket, driven by readiness (`try_read` into a
//! stack buffer, so an idle connection keeps no buffer), or a simulated stream
//! ([`rhizome_io::simulate`]), which offers only `AsyncRead`/`AsyncWrite` and is given the same
//! readiness interface here through a small read-ahead buffer.

use rhizome_io::{Accepted, Io};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read ahead from a simulated stream at once.
const READ_AHEAD_BYTES: usize = 16 * 1024;

/// A connection's stream.
#[derive(Debug)]
pub enum Stream {
    /// A TCP socket.
    Tcp(TcpStream),
    /// A simulated stream (boxed: a real connection's task does not carry its size).
    Simulated(Box<Simulated>),
}

/// A simulated stream with the bytes read ahead of the reader (for readiness and peeking).
pub struct Simulated {
    inner: Mutex<SimulatedInner>,
}

struct SimulatedInner {
    io: Box<dyn Io>,
    /// Bytes read ahead: `buf[start..end]` (allocated once: a simulation does not count bytes).
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    ended: bool,
}

impl std::fmt::Debug for Simulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Simulated")
    }
}

impl Simulated {
    fn lock(&self) -> MutexGuard<'_, SimulatedInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimulatedInner {
    /// Reads more ahead unless bytes (or the end) are already there.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.start < self.end || self.ended {
            return Poll::Ready(Ok(()));
        }
        let mut buf = ReadBuf::new(&mut self.buf);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled().len();
                (self.start, self.end) = (0, filled);
                self.ended = filled == 0;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn ahead(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        n
    }
}

impl From<Accepted> for Stream {
    fn from(accepted: Accepted) -> Self {
        match accepted {
            Accepted::Tcp(stream) => Stream::Tcp(stream),
            Accepted::Simulated(io) => Stream::Simulated(Box::new(Simulated {
                inner: Mutex::new(SimulatedInner {
                    io,
                    buf: vec![0; READ_AHEAD_BYTES].into_boxed_slice(),
                    start: 0,
                    end: 0,
                    ended: false,
                }),
            })),
        }
    }
}

impl Stream {
    /// Turns Nagle's algorithm off (answers are small frames written one after another).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_nodelay(true),
            Stream::Simulated(_) => Ok(()),
        }
    }

    /// Whether the connection can be parked off the runtime (a TCP socket can).
    pub fn parkable(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }

    /// Ready once there are bytes (or the end) to read.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(stream) => stream.poll_read_ready(cx),
            Stream::Simulated(simulated) => simulated.lock().poll_fill(cx),
        }
    }

    /// Waits until there are bytes (or the end) to read.
    pub async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    pub fn try_read(&self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.try_read(out),
            Stream::Simulated(simulated) => {
                let mut inner = simulated.lock();
                if inner.ahead().is_empty() {
                    let mut cx = Context::from_waker(Waker::noop());
                    match inner.poll_fill(&mut cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                    }
                }
                Ok(inner.take(out))
            }
        }
    }

    /// Writes what the socket takes without waiting (`WouldBlock` when it takes nothing).
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.try_write(bytes),
            Stream::Simulated(simulated) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut simulated.lock().io).poll_write(&mut cx, bytes) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Writes some of `bytes`, waiting until the socket takes any.
    pub async fn write_some(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => loop {
                stream.writable().await?;
                match stream.try_write(bytes) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            },
            Stream::Simulated(simulated) => {
                poll_fn(|cx| Pin::new(&mut simulated.lock().io).poll_write(cx, bytes)).await
            }
        }
    }

    /// Copies the unread bytes that are there into `buf` without consuming them.
    pub fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(stream) => stream.poll_peek(cx, buf),
            Stream::Simulated(simulated) => {
                let mut inner = simulated.lock();
                match inner.poll_fill(cx) {
                    Poll::Ready(Ok(())) => {
                        let ahead = inner.ahead();
                        let n = buf.remaining().min(ahead.len());
                        buf.put_slice(&ahead[..n]);
                        Poll::Ready(Ok(n))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Waits for unread bytes and copies them into `out` without consuming them.
    pub async fn peek(&self, out: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(out);
        poll_fn(|cx| self.poll_peek(cx, &mut buf)).await
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Simulated(simulated) => {
                let mut inner = simulated.lock();
                match inner.poll_fill(cx) {
                    Poll::Ready(Ok(())) => {
                        let n = inner.take(buf.initialize_unfilled());
                        buf.advance(n);
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write(cx, bytes),
            Stream::Simulated(simulated) => Pin::new(&mut simulated.lock().io).poll_write(cx, bytes),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Simulated(simulated) => Pin::new(&mut simulated.lock().io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            // hyper queues buffers instead of copying them into one when writes are vectored.
            Stream::Tcp(stream) => stream.is_write_vectored(),
            Stream::Simulated(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Simulated(simulated) => Pin::new(&mut simulated.lock().io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Simulated(simulated) => Pin::new(&mut simulated.lock().io).poll_shutdown(cx),
        }
    }
}
