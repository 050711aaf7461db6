//! Bounded resources per client, at the connection level:
//!
//! - at most `max_connections` open at once; past that, new ones wait in the kernel's accept
//!   backlog until one closes, so the process never runs out of file descriptors (the cap is
//!   clamped below the descriptor limit, which is raised to its hard maximum at start);
//! - at most `max_connections_per_address` from one peer address; past that, its new ones are
//!   closed at once, so that one host cannot take every place (it is the peer address, always:
//!   behind a proxy, the proxy's — see the README);
//! - every request must arrive whole, headers and body, within `request_read_timeout` of its
//!   start: of the accept for a connection's first request (a socket that never sends a byte is
//!   closed then), of its first byte for the next ones. Only the response itself ends that
//!   clock: an interim `100 Continue` does not;
//! - HTTP/2 cleartext is not served: a connection that opens with the HTTP/2 preface is closed
//!   before anything is written to it (see the README for why);
//! - a connection whose client stops reading a response is closed once the response has made
//!   no progress for `write_timeout` (the kernel's and hyper's buffers full): a slow or stalled
//!   reader holds no memory and no place for long, whether it reads a long list or a live
//!   event stream;
//! - a connection that has neither read nor written for `idle_timeout` is closed, after its
//!   request in flight if any (`serving`, from this module's [`Activity`]).

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
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
    time::{Instant, Sleep},
};

/// Descriptors kept free for the database pool, the log and the rest of the process.
const RESERVED_DESCRIPTORS: u64 = 256;

/// What an HTTP/2 connection with prior knowledge starts with (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// How an interim (1xx) HTTP/1.1 response starts, e.g. `100 Continue`.
const INTERIM_RESPONSE: &[u8] = b"HTTP/1.1 1";

/// `MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_ADDRESS`, `REQUEST_READ_TIMEOUT_SECS`,
/// `IDLE_TIMEOUT_SECS`, `WRITE_TIMEOUT_SECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_ADDRESS`: open connections per client address; 0 for no cap.
    pub max_connections_per_address: usize,
    pub request_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a response may make no progress because the client does not read it.
    pub write_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_address: 256,
            request_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
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

/// A TCP acceptor that holds a permit per open connection, counts connections per address, and
/// times every request's arrival.
pub struct LimitedAcceptor {
    inner: TcpAcceptor,
    permits: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    request_read_timeout: Duration,
    write_timeout: Duration,
}

/// Open connections by peer address.
struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A place for one more connection from `address`, or `None` when it has them all.
    fn enter(self: &Arc<Self>, address: IpAddr) -> Option<AddressPlace> {
        if self.cap == 0 {
            return Some(AddressPlace { counts: None, address });
        }
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(address).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressPlace { counts: Some(self.clone()), address })
    }
}

/// One connection's place in its address's count, given back when the connection closes.
struct AddressPlace {
    counts: Option<Arc<PerAddress>>,
    address: IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let Some(counts) = &self.counts else { return };
        let mut open = counts.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl LimitedAcceptor {
    pub fn new(inner: TcpAcceptor, limits: &ConnectionLimits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.effective_max_connections())),
            per_address: Arc::new(PerAddress {
                cap: limits.max_connections_per_address,
                open: Mutex::default(),
            }),
            request_read_timeout: limits.request_read_timeout,
            write_timeout: limits.write_timeout,
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
        loop {
            let (io, local, remote, scheme) = self.inner.accept().await?;
            let address = remote.as_socket_addr().map(|address| address.ip());
            let place = match address.map(|address| self.per_address.enter(address)) {
                Some(Some(place)) => place,
                // Over its address's cap: closed at once (dropped), and the next one accepted.
                Some(None) => {
                    crate::metrics::refused_connection("address_cap");
                    continue;
                }
                None => AddressPlace { counts: None, address: IpAddr::from([0, 0, 0, 0]) },
            };
            let limit = self.request_read_timeout;
            let guarded = Guarded {
                io,
                _permit: permit,
                _place: place,
                limit,
                write_timeout: self.write_timeout,
                stalled: None,
                // The first request's clock starts now: a socket that says nothing is closed.
                deadline: Some(Box::pin(tokio::time::sleep(limit))),
                sniffed: 0,
                activity: Arc::new(Activity::now()),
            };
            return Ok((guarded, local, remote, scheme));
        }
    }
}

/// A connection that holds its places, and whose requests must arrive within `limit` of their
/// start: the accept for the first one, the first byte after the last response for the others.
pub struct Guarded {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    _place: AddressPlace,
    limit: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    write_timeout: Duration,
    /// Since when a write has been waiting for the client to read: the connection is cut
    /// `write_timeout` after.
    stalled: Option<Pin<Box<Sleep>>>,
    /// How many bytes of the connection's start have been compared with the HTTP/2 preface
    /// (all of it, once that is decided).
    sniffed: usize,
    activity: Arc<Activity>,
}

/// When a connection last read or wrote anything: the idle clock, kept by the socket and read
/// by the connection's task only when it would expire.
#[derive(Debug)]
pub struct Activity {
    /// Milliseconds since [`Activity::epoch`].
    last: AtomicU64,
}

impl Activity {
    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn now() -> Self {
        let activity = Self { last: AtomicU64::new(0) };
        activity.touch();
        activity
    }

    fn touch(&self) {
        let since = u64::try_from(Self::epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Relaxed);
    }

    /// The last read or write.
    pub fn last(&self) -> Instant {
        Self::epoch() + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

impl Guarded {
    /// The connection's idle clock.
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Watches a write's outcome: pending (the client's buffers full) for `write_timeout` in a
    /// row ends the connection; any progress restarts the clock.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let write_timeout = self.write_timeout;
        let stalled =
            self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(write_timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            crate::metrics::refused_connection("write_timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            )));
        }
        poll
    }

    /// Compares the connection's first bytes with the HTTP/2 preface, across reads.
    fn refuse_http2(&mut self, read: &[u8]) -> io::Result<()> {
        if self.sniffed >= HTTP2_PREFACE.len() {
            return Ok(());
        }
        let expected = &HTTP2_PREFACE[self.sniffed..];
        let n = read.len().min(expected.len());
        if read[..n] != expected[..n] {
            self.sniffed = HTTP2_PREFACE.len();
            return Ok(());
        }
        self.sniffed += n;
        if self.sniffed == HTTP2_PREFACE.len() {
            crate::metrics::refused_connection("http2");
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "HTTP/2 cleartext is not served",
            ));
        }
        Ok(())
    }
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
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > filled {
            this.activity.touch();
            this.refuse_http2(&buf.filled()[filled..])?;
            if this.deadline.is_none() {
                let mut deadline = Box::pin(tokio::time::sleep(this.limit));
                // Registers the waker, so that a client that goes silent is cut off too.
                let _ = deadline.as_mut().poll(cx);
                this.deadline = Some(deadline);
            }
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
            // Only bytes count: hyper flushes whenever its task runs, the idle check's included.
            this.activity.touch();
            if !buf.starts_with(INTERIM_RESPONSE) {
                // The response has begun: the request is in.
                this.deadline = None;
            }
        }
        this.watch_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let interim =
            bufs.iter().find(|b| !b.is_empty()).is_some_and(|b| b.starts_with(INTERIM_RESPONSE));
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(written)) if written > 0) {
            this.activity.touch();
            if !interim {
                this.deadline = None;
            }
        }
        this.watch_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.watch_write(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_http2_preface_is_recognised_across_reads_and_nothing_else_is() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let per_address = Arc::new(PerAddress { cap: 0, open: Mutex::default() });
        let guarded = |io| Guarded {
            io,
            _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            _place: per_address.enter(IpAddr::from([127, 0, 0, 1])).unwrap(),
            limit: Duration::from_secs(1),
            deadline: None,
            write_timeout: Duration::from_secs(1),
            stalled: None,
            sniffed: 0,
            activity: Arc::new(Activity::now()),
        };
        let mut h2 = guarded(stream);
        assert!(h2.refuse_http2(b"PRI * HT").is_ok(), "not decided yet");
        assert!(h2.refuse_http2(b"TP/2.0\r\n\r\nSM").is_err());
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut h1 = guarded(stream);
        assert!(h1.refuse_http2(b"PRI").is_ok());
        assert!(h1.refuse_http2(b"ZE / HTTP/1.1\r\n").is_ok(), "a method that starts like it");
        assert!(h1.refuse_http2(b"PRI * HTTP/2.0\r\n").is_ok(), "decided: later bytes are data");
    }

    #[test]
    fn an_address_holds_at_most_its_cap_and_gets_places_back() {
        let per_address = Arc::new(PerAddress { cap: 2, open: Mutex::default() });
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = per_address.enter(a).unwrap();
        let _second = per_address.enter(a).unwrap();
        assert!(per_address.enter(a).is_none());
        assert!(per_address.enter(b).is_some(), "another address has its own count");
        drop(first);
        assert!(per_address.enter(a).is_some());
    }
}
