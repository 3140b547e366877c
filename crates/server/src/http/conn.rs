//! Connection limits: what keeps idle, slow or hostile clients from taking
//! the server's sockets and file descriptors.
//!
//! - Every connection is registered in a [`Tracker`] with a cap on how many
//!   are served at once (by default half the file-descriptor limit, which is
//!   raised to its hard maximum at start).
//! - At the cap, a new connection evicts the connection that has been idle
//!   longest: one with no request in flight (still sending its headers, or
//!   kept alive between requests). A request being handled — a long poll, an
//!   upload, a download still streaming — is never evicted. When every
//!   connection is busy, the new one is answered `503` with `Retry-After` and
//!   closed.
//! - Headers must arrive within `header_timeout`, counted from accept (or
//!   from the end of the previous response on a kept-alive connection): the
//!   tracker's sweeper closes a connection that has sent no complete
//!   request head by then, including one that never sends a byte (hyper's
//!   own header timer only starts with the first byte). Non-artifact bodies
//!   must arrive within `body_timeout`; an artifact upload may be slow but
//!   may not pause longer than `upload_stall_timeout`.
//! - At the cap, a connection whose request body is still being read for a
//!   caller without a verified credential is evicted like an idle one (the
//!   one quiet longest goes first): anonymous slow bodies cannot fill the
//!   cap.
//!
//! Owns: the acceptor, the stream and service wrappers. Must not: know
//! routes or credentials.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use axum_server::accept::Accept;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Limits on connections and request bodies.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client has to send a request's headers; also the longest a
    /// kept-alive connection may sit idle between requests.
    pub header_timeout: Duration,
    /// Time a client has to send a whole non-artifact request body.
    pub body_timeout: Duration,
    /// Longest pause allowed in an artifact upload.
    pub upload_stall_timeout: Duration,
    /// Connections served at once; `None`: derived from the file limit.
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(60),
            upload_stall_timeout: Duration::from_secs(60),
            max_connections: None,
        }
    }
}

/// The connection cap for a file-descriptor limit: a connection may hold a
/// second descriptor (an artifact being served or stored), and the database
/// and logs need a few.
pub fn cap_for_fd_limit(fd_limit: u64) -> usize {
    ((fd_limit / 2) as usize).saturating_sub(32).max(16)
}

/// `Conn::awaiting_head_since` while a request is being served.
const NOT_WAITING: u64 = u64::MAX;

struct Conn {
    in_flight: AtomicUsize,
    /// Since when (tracker milliseconds) the connection has been waiting
    /// for a request head; `NOT_WAITING` while one is served.
    awaiting_head_since: AtomicU64,
    /// Request bodies being read for callers with no verified credential.
    unverified_bodies: AtomicUsize,
    /// Milliseconds since the tracker's epoch.
    last_active: AtomicU64,
    kill: CancellationToken,
}

/// The registry of open connections.
#[derive(Clone)]
pub(crate) struct Tracker(Arc<TrackerInner>);

struct TrackerInner {
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    evicted: AtomicU64,
    refused: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

/// A connection's place in the tracker, released when the connection ends.
struct Registration {
    tracker: Tracker,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tracker.0.conns.lock().unwrap().remove(&self.id);
    }
}

impl Tracker {
    pub(crate) fn new(max: usize) -> Self {
        Tracker(Arc::new(TrackerInner {
            max: max.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection, evicting the longest-idle one at the
    /// cap; `None` when every connection is busy.
    fn admit(&self) -> Option<Registration> {
        let now = self.now_ms();
        let mut conns = self.0.conns.lock().unwrap();
        if conns.len() >= self.0.max {
            let oldest = |pick: &dyn Fn(&Conn) -> bool| {
                conns
                    .iter()
                    .filter(|(_, c)| pick(c))
                    .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
                    .map(|(id, _)| *id)
            };
            // Idle connections and those reading a body for a caller with
            // no verified credential: the one that did anything longest
            // ago goes (a fresh connection still sending its head outlives
            // a body that has dribbled for seconds).
            let victim = oldest(&|c| {
                c.in_flight.load(Ordering::Acquire) == 0
                    || c.unverified_bodies.load(Ordering::Acquire) > 0
            });
            match victim {
                Some(id) => {
                    if let Some(c) = conns.remove(&id) {
                        c.kill.cancel();
                    }
                    self.0.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.0.refused.fetch_add(1, Ordering::Relaxed);
                    drop(conns);
                    self.warn();
                    return None;
                }
            }
            drop(conns);
            self.warn();
            conns = self.0.conns.lock().unwrap();
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            awaiting_head_since: AtomicU64::new(now),
            unverified_bodies: AtomicUsize::new(0),
            last_active: AtomicU64::new(now),
            kill: CancellationToken::new(),
        });
        conns.insert(id, conn.clone());
        Some(Registration {
            tracker: self.clone(),
            id,
            conn,
        })
    }

    /// Closes every connection that has waited longer than `header_timeout`
    /// for a request head; how many it closed.
    fn sweep(&self, header_timeout: Duration) -> usize {
        let now = self.now_ms();
        let limit = header_timeout.as_millis() as u64;
        let mut conns = self.0.conns.lock().unwrap();
        let late: Vec<u64> = conns
            .iter()
            .filter(|(_, c)| {
                let since = c.awaiting_head_since.load(Ordering::Acquire);
                since != NOT_WAITING
                    && c.in_flight.load(Ordering::Acquire) == 0
                    && now.saturating_sub(since) > limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &late {
            if let Some(c) = conns.remove(id) {
                c.kill.cancel();
            }
        }
        late.len()
    }

    /// Runs the sweeper until `stop`: a few times per header timeout, at
    /// most once every 100 ms, at least once a second.
    pub(crate) async fn sweeper(self, header_timeout: Duration, stop: CancellationToken) {
        let every = (header_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let n = self.sweep(header_timeout);
            if n > 0 {
                tracing::debug!(
                    closed = n,
                    "closed connections that sent no request head within the header timeout"
                );
            }
        }
    }

    /// At most one warning a minute while the cap is being hit.
    fn warn(&self) {
        let mut last = self.0.last_warning.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            max_connections = self.0.max,
            idle_evicted = self.0.evicted.load(Ordering::Relaxed),
            refused_503 = self.0.refused.load(Ordering::Relaxed),
            "connection limit reached: closing the longest-idle connections, answering 503 when all are busy (counts since start; next report in a minute at most)"
        );
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.0.conns.lock().unwrap().len()
    }
}

/// An acceptor that registers each connection in a [`Tracker`] before the
/// inner acceptor (plain or TLS) runs.
#[derive(Clone)]
pub(crate) struct LimitAcceptor<A> {
    inner: A,
    tracker: Tracker,
}

impl<A> LimitAcceptor<A> {
    pub(crate) fn new(inner: A, tracker: Tracker) -> Self {
        LimitAcceptor { inner, tracker }
    }
}

const BUSY_BODY: &str = "Server busy: too many connections; retry shortly\n";

/// The whole answer to a connection over the cap, with its true length.
fn busy() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Retry-After: 5\r\n\
         Connection: close\r\n\
         Content-Length: {}\r\n\r\n{BUSY_BODY}",
        BUSY_BODY.len()
    )
    .into_bytes()
}

impl<A, S> Accept<TcpStream, S> for LimitAcceptor<A>
where
    A: Accept<TcpStream, S> + Clone + Send + Sync + 'static,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    A::Future: Send + 'static,
{
    type Stream = Tracked<A::Stream>;
    type Service = TrackedService<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let registration = self.tracker.admit();
        let inner = self.inner.accept(stream, service);
        Box::pin(async move {
            let Some(reg) = registration else {
                // Every slot is busy: say so (after the TLS handshake, when
                // there is one) and close, reading what the client sent so
                // the close is not a reset that hides the answer.
                let (mut s, _) = inner.await?;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    // The request head first (a bounded read): a client is
                    // not answered before it asks (HTTP clients treat that
                    // as a broken connection).
                    let mut head = Vec::with_capacity(1024);
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                    })
                    .await;
                    s.write_all(&busy()).await?;
                    s.shutdown().await?;
                    let mut sink = [0u8; 4096];
                    while s.read(&mut sink).await? > 0 {}
                    Ok::<_, io::Error>(())
                })
                .await;
                return Err(io::Error::other("connection limit reached"));
            };
            let kill = reg.conn.kill.clone();
            let (stream, service) = tokio::select! {
                r = inner => r?,
                _ = kill.cancelled() => return Err(evicted()),
            };
            let conn = reg.conn.clone();
            Ok((
                Tracked {
                    inner: stream,
                    killed: Box::pin(kill.cancelled_owned()),
                    reg,
                },
                TrackedService {
                    inner: service,
                    conn,
                },
            ))
        })
    }
}

fn evicted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "idle connection closed: the server is at its connection limit",
    )
}

/// A connection's stream: notes activity, and ends when the connection is
/// evicted.
pub(crate) struct Tracked<S> {
    inner: S,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    reg: Registration,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        let now = self.reg.tracker.now_ms();
        self.reg.conn.last_active.store(now, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(evicted()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(evicted()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a connection's requests in flight, from the request's head until
/// its response body is finished or dropped.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Kept alive: the next request head is due within the timeout.
            // (The tracker's epoch is not at hand: `last_active` was just
            // set by the response's last write.)
            let at = self.0.last_active.load(Ordering::Relaxed);
            self.0.awaiting_head_since.store(at, Ordering::Release);
        }
    }
}

/// A request's connection, for the layers above that learn what the
/// connection layer cannot: whether the caller's credential verified.
#[derive(Clone)]
pub struct ConnSlot(Arc<Conn>);

impl ConnSlot {
    /// The request's body is being read for a caller with no verified
    /// credential: until the mark is dropped, the connection may be evicted
    /// at the cap when no connection is idle.
    pub fn unverified_body(&self) -> UnverifiedBody {
        self.0.unverified_bodies.fetch_add(1, Ordering::AcqRel);
        UnverifiedBody(self.0.clone())
    }
}

/// See [`ConnSlot::unverified_body`].
pub struct UnverifiedBody(Arc<Conn>);

impl Drop for UnverifiedBody {
    fn drop(&mut self) {
        self.0.unverified_bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The per-connection service, wrapped to count requests in flight.
#[derive(Clone)]
pub(crate) struct TrackedService<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S, B> tower::Service<Request<B>> for TrackedService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let guard = InFlight::new(self.conn.clone());
        self.conn
            .awaiting_head_since
            .store(NOT_WAITING, Ordering::Release);
        req.extensions_mut().insert(ConnSlot(self.conn.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|body| {
                Body::new(Guarded {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted until it is done.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests may use std::fs
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_goes_and_busy_ones_stay() {
        let t = Tracker::new(2);
        let a = t.admit().unwrap();
        let b = t.admit().unwrap();
        // `a` is busy (a long poll), `b` idle: the third evicts `b`.
        let _busy = InFlight::new(a.conn.clone());
        let c = t.admit().unwrap();
        assert!(b.conn.kill.is_cancelled());
        assert!(!a.conn.kill.is_cancelled());
        assert_eq!(t.open(), 2);
        // `a` busy and `c` busy: a fourth is refused.
        let _busy_c = InFlight::new(c.conn.clone());
        assert!(t.admit().is_none());
        drop(b);
        assert_eq!(t.open(), 2, "an evicted registration is already gone");
        drop(_busy_c);
        drop(c);
        assert_eq!(t.open(), 1);
        assert!(t.admit().is_some());
    }

    #[test]
    fn the_busy_answer_says_its_true_length() {
        let raw = busy();
        let text = std::str::from_utf8(&raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_head_is_swept_and_a_served_one_is_not() {
        let t = Tracker::new(10);
        let silent = t.admit().unwrap();
        let served = t.admit().unwrap();
        served
            .conn
            .awaiting_head_since
            .store(NOT_WAITING, Ordering::Release);
        let _busy = InFlight::new(served.conn.clone());
        assert_eq!(t.sweep(Duration::from_secs(3600)), 0, "not late yet");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(t.sweep(Duration::from_millis(10)), 1);
        assert!(silent.conn.kill.is_cancelled());
        assert!(!served.conn.kill.is_cancelled());
    }

    #[test]
    fn at_the_cap_an_unverified_slow_body_goes_before_a_verified_request() {
        let t = Tracker::new(2);
        let a = t.admit().unwrap();
        let b = t.admit().unwrap();
        let _busy_a = InFlight::new(a.conn.clone());
        let _busy_b = InFlight::new(b.conn.clone());
        let _slow = ConnSlot(b.conn.clone()).unverified_body();
        assert!(t.admit().is_some(), "the slow anonymous body is evicted");
        assert!(b.conn.kill.is_cancelled());
        assert!(!a.conn.kill.is_cancelled());
    }

    #[test]
    fn cap_follows_the_file_limit() {
        assert_eq!(cap_for_fd_limit(256), 96);
        assert_eq!(cap_for_fd_limit(20), 16);
        assert_eq!(cap_for_fd_limit(1 << 20), (1 << 19) - 32);
    }
}
