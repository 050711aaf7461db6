//! Bounded resources per client, at the connection level:
//!
//! - at most `max_connections` open at once; past that, new ones wait in the kernel's accept
//!   backlog until one closes, so the process never runs out of file descriptors (the cap is
//!   clamped below the descriptor limit, which is raised to its hard maximum at start);
//! - every request must arrive whole, headers and body, within `request_read_timeout` of its
//!   first byte: a client that sends one byte a second is cut off and its connection closed;
//! - a connection idle for `idle_timeout` (keep-alive, or never a byte) is closed (poem's).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use poem::{
    listener::{Acceptor, TcpAcceptor},
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

/// Descriptors kept free for the database pool, the log and the rest of the process.
const RESERVED_DESCRIPTORS: u64 = 256;

/// `MAX_CONNECTIONS`, `REQUEST_READ_TIMEOUT_SECS`, `IDLE_TIMEOUT_SECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub request_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            request_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl ConnectionLimits {
    /// The cap this process can honour: the descriptor limit is raised to its hard maximum,
    /// and the cap kept below it.
    pub fn effective_max_connections(&self) -> usize {
        let descriptors = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
        let room = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize;
        if self.max_connections > room {
            tracing::warn!(
                configured = self.max_connections,
                used = room,
                "MAX_CONNECTIONS is above what the descriptor limit allows; lowered"
            );
        }
        self.max_connections.min(room)
    }
}

/// A TCP acceptor that holds a permit per open connection and times every request's arrival.
pub struct LimitedAcceptor {
    inner: TcpAcceptor,
    permits: Arc<Semaphore>,
    request_read_timeout: Duration,
}

impl LimitedAcceptor {
    pub fn new(inner: TcpAcceptor, limits: &ConnectionLimits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.effective_max_connections())),
            request_read_timeout: limits.request_read_timeout,
        }
    }
}

impl Acceptor for LimitedAcceptor {
    type Io = Guarded;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Guarded, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        // Not accepting while at the cap leaves new connections waiting in the backlog.
        let permit = self.permits.clone().acquire_owned().await.map_err(io::Error::other)?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let guarded =
            Guarded { io, _permit: permit, limit: self.request_read_timeout, deadline: None };
        Ok((guarded, local, remote, scheme))
    }
}

/// A connection that holds its permit, and whose request must arrive within `limit` of its first
/// byte: the clock starts on the first byte read after the last response bytes written.
pub struct Guarded {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request did not arrive in time",
            )));
        }
        let filled = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(())))
            && buf.filled().len() > filled
            && this.deadline.is_none()
        {
            let mut deadline = Box::pin(tokio::time::sleep(this.limit));
            // Registers the waker, so that a client that goes silent is cut off too.
            let _ = deadline.as_mut().poll(cx);
            this.deadline = Some(deadline);
        }
        poll
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            // The response has begun: the request is in.
            this.deadline = None;
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            this.deadline = None;
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
