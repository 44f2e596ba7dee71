//! The front door: every accepted downstream connection passes through here before Pingora's
//! HTTP code reads a byte of it. Installed as the proxy service's app ([`FrontDoor`] wraps
//! `HttpProxy<Gateway>`); the request phases only signal it (`proxy.rs`:
//! `early_request_filter` → [`header_complete`], `logging` → [`request_complete`]).
//!
//! Pingora bounds each *read* of a request header (60 s), not the whole header section, so a
//! client trickling one byte every 59 s holds a connection forever (slowloris). HTTP/1
//! connections therefore get a [`Guarded`] stream that keeps one deadline per phase:
//!
//! | phase | from | deadline | on expiry |
//! |---|---|---|---|
//! | header | accept, or the first byte of the next request | `limits.header_timeout` | best-effort JSON 408, connection closed (silently if no byte came) |
//! | body | header section complete | `limits.idle_timeout` without progress while a body read or a response write waits | 408 if nothing was answered yet (`proxy.rs`), else the connection is cut |
//! | keep-alive | response complete | `limits.keepalive_timeout` | clean close (EOF to Pingora) |
//!
//! The body-phase idle timer is armed only when a read or write actually waits (`Pending`)
//! and disarmed by progress, so a request whose reads and writes complete at once pays no
//! timer at all. (Pingora's own per-operation read/write timeouts would register a timer on
//! its timer wheel for every write: ≈ 2.5 per request, ≈ 5 k instructions — see
//! docs/performance.md.) Once the request body is complete (or there is none), a waiting
//! read is Pingora's probe for the client closing and is not timed: the upstream may take
//! as long as its own timeouts allow.
//!
//! A stalled connection costs a parked task and its buffer, never a thread. Everything cut
//! is counted (`portcullis_client_timeouts_total{phase}`); a response Pingora writes while
//! the header phase is still open (it refused to parse the request: 400, or CONNECT: 405)
//! is counted too (`portcullis_protocol_rejections_total{status}`), because those requests
//! never reach `logging`.
//!
//! On HTTP/2 connections (ALPN `h2`) only the client preface is timed (`header_timeout`,
//! closed without an answer); after it the h2 layer's own limits apply (`server.rs`:
//! `h2_options`: streams, header list, reset floods; idle connections closed after
//! `keepalive_timeout`).

mod chunks;

use crate::error::{self, Reject};
use crate::gateway;
use crate::proxy::Gateway;
use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The proxy service's app: wraps each HTTP/1 connection, then hands it to Pingora.
pub struct FrontDoor {
    pub proxy: Arc<HttpProxy<Gateway>>,
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Timeouts come from the snapshot current at accept (reloadable).
        let limits = self.state.snapshot.load().limits;
        let mut guarded = Guarded::new(stream, limits.header_timeout, limits.keepalive_timeout);
        guarded.h2 = matches!(guarded.inner.selected_alpn_proto(), Some(ALPN::H2));
        let stream: Stream = Box::new(guarded);
        ServerApp::process_new(&self.proxy, stream, shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await
    }
}

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`
const H2_PREFACE_LEN: u64 = 24;

const HEADER: u8 = 0;
const BODY: u8 = 1;
const KEEPALIVE: u8 = 2;

/// The request's header section is complete (called from `early_request_filter`): the
/// header deadline is off, and body reads and response writes get the idle timeout.
pub fn header_complete(session: &mut Session, idle_timeout: Duration) {
    let headers = &session.req_header().headers;
    let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
    // A body is expected when it is chunked or has a non-zero length (an HTTP/1 request
    // with neither has none: RFC 9112 §6.3).
    let body = chunked
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    match guarded(session.as_downstream().stream()) {
        Some(g) if !g.h2 => {
            g.idle_ms
                .store(idle_timeout.as_millis() as u64, Ordering::Relaxed);
            g.body_open.store(body, Ordering::Relaxed);
            g.phase.store(BODY, Ordering::Release);
            // Pingora's default 60 s per-read timeout would put a timer on every body read;
            // the idle timer above replaces it.
            session.set_read_timeout(None);
        }
        // HTTP/2 (or a stream we do not wrap): Pingora's per-operation timeouts.
        _ => {
            session.set_read_timeout(Some(idle_timeout));
            session.set_write_timeout(Some(idle_timeout));
        }
    }
    // Only a chunked request needs where its header section ended.
    let header_len = match session.as_http1() {
        Some(h1) if chunked => h1.get_headers_raw_bytes().len() as u64,
        _ => 0,
    };
    if let Some(g) = guarded(session.as_downstream().stream()) {
        g.start_body_check(chunked, header_len);
    }
}

/// The request body has been read to its end (`request_body_filter`, end of stream): a
/// waiting read is no longer timed (see the module comment).
pub fn body_complete(session: &Session) {
    if let Some(g) = guarded(session.as_downstream().stream()) {
        g.body_open.store(false, Ordering::Relaxed);
    }
}

/// The body-phase idle timeout cut this request (for `fail_to_proxy`'s answer: 408).
pub fn idle_timed_out(session: &Session) -> bool {
    guarded(session.as_downstream().stream()).is_some_and(|g| g.idle_fired.load(Ordering::Relaxed))
}

/// The chunked body's raw framing was found malformed (for `fail_to_proxy`'s answer).
pub fn body_framing_bad(session: &Session) -> bool {
    guarded(session.as_downstream().stream()).is_some_and(|g| g.framing_bad.load(Ordering::Relaxed))
}

/// The request is answered (called from `logging`). A connection whose request body was not
/// read to its end is closed rather than drained: draining would parse framing we refused
/// to trust, at our cost, with no deadline of ours. Otherwise it waits for the next request
/// under the keep-alive deadline.
pub fn request_complete(session: &mut Session) {
    if !session.as_downstream_mut().is_body_done() {
        session.set_keepalive(None);
        // ...with a lingering close: see `Drop for Guarded`.
        if let Some(g) = guarded(session.as_downstream().stream()) {
            g.linger.store(true, Ordering::Relaxed);
        }
        return;
    }
    set_phase(session.as_downstream().stream(), KEEPALIVE);
}

/// Pingora's retry buffer: what it can replay to the upstream of a body read early.
const REPLAY_CAP: u64 = 64 * 1024;
/// Room kept for one read that parses a chunk head (≤ 8 KiB in Pingora) without data.
const PREREAD_SLACK: u64 = 16 * 1024;

/// Read the start of a chunked HTTP/1 request body before the upstream is contacted
/// (called from `request_filter` once the request is admitted).
///
/// Pingora connects upstream and forwards the header before it reads a body, so a
/// malformed chunk (size overflow, bare LF, bad hex, data longer than its size) or a body
/// over the limit would be found only after the upstream had the request head. Here up to
/// ~48 KiB of the body (the whole body of most requests) is parsed first; Pingora replays
/// it from its 64 KiB retry buffer. The [`Guarded`] stream caps socket reads meanwhile, so
/// the buffer cannot overflow (an overflow would lose the bytes). Framing errors later in
/// a larger body abort the upstream request mid-body: the upstream never sees a complete
/// request. Skipped for `Expect: 100-continue`: that client waits for the 100 only the
/// upstream sends.
pub async fn preread_chunked(session: &mut Session, max_body: u64) -> Result<(), Reject> {
    let h = session.req_header();
    if h.headers.get(http::header::TRANSFER_ENCODING).is_none()
        || h.headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        return Ok(());
    }
    let Some(header_len) = session
        .as_http1()
        .map(|h1| h1.get_headers_raw_bytes().len() as u64)
    else {
        return Ok(());
    };
    let Some(guard) = guarded(session.as_downstream().stream()) else {
        return Ok(());
    };
    if guard.framing_bad.load(Ordering::Relaxed) {
        return Err(Reject::AmbiguousFraming);
    }
    let limit = header_len + REPLAY_CAP;
    guard.read_limit.store(limit, Ordering::Relaxed);
    session.enable_retry_buffering();
    let mut total = 0u64;
    let outcome = loop {
        if session.as_downstream_mut().is_body_done() {
            break Ok(());
        }
        let seen = guarded(session.as_downstream().stream())
            .map_or(u64::MAX, |g| g.since_head.load(Ordering::Relaxed));
        if limit.saturating_sub(seen) < PREREAD_SLACK {
            break Ok(());
        }
        match session.read_request_body().await {
            Ok(Some(b)) => {
                total += b.len() as u64;
                if total > max_body {
                    break Err(Reject::BodyTooLarge);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                crate::metrics::client_timeout("idle");
                break Err(Reject::RequestTimeout);
            }
            Err(_) if idle_timed_out(session) => break Err(Reject::RequestTimeout),
            // The client went away mid-body: not a framing verdict.
            Err(e)
                if matches!(
                    e.etype(),
                    ErrorType::ConnectionClosed | ErrorType::ReadError
                ) =>
            {
                break Err(Reject::BadRequest)
            }
            Err(_) => break Err(Reject::AmbiguousFraming),
        }
    };
    if let Some(g) = guarded(session.as_downstream().stream()) {
        g.read_limit.store(u64::MAX, Ordering::Relaxed);
    }
    if outcome.is_ok() && session.retry_buffer_truncated() {
        // Cannot happen with the read cap; if it did, the early bytes are lost: refuse.
        log::error!("request body pre-read overflowed the replay buffer");
        return Err(Reject::BadRequest);
    }
    outcome
}

fn guarded(stream: Option<&Stream>) -> Option<&Guarded> {
    stream.and_then(|s| s.as_any().downcast_ref::<Guarded>())
}

fn set_phase(stream: Option<&Stream>, phase: u8) {
    if let Some(g) = guarded(stream) {
        g.phase.store(phase, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct BodyCheck {
    /// A copy of the last read of the header phase: the body's first bytes may be in it.
    head_tail: Vec<u8>,
    /// Set for a chunked request until its last chunk: every body byte read is fed to it.
    chunks: Option<chunks::ChunkCheck>,
}

/// A downstream HTTP/1 stream with a deadline for the header and keep-alive phases.
pub struct Guarded {
    inner: Stream,
    /// Set by the request phases through a shared reference; read by `poll_read`.
    phase: AtomicU8,
    /// The phase the current `deadline` was armed for.
    armed: u8,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    /// `Sleep` is not `Sync`, which Pingora's `IO` requires. Only `poll_read` touches it,
    /// through `&mut self` (`Mutex::get_mut`): the lock is never taken.
    deadline: Mutex<Pin<Box<Sleep>>>,
    /// Whether `deadline` applies in the armed phase (not while a body is read).
    timed: bool,
    /// A response was seen for the current header phase (counted once).
    answered_in_header: bool,
    /// The raw-byte check of a chunked body, and the bytes it may need from the header read.
    body_check: Mutex<BodyCheck>,
    /// The chunked body broke strict framing: reads fail from then on.
    framing_bad: std::sync::atomic::AtomicBool,
    /// Close lingering (the request body was left unread): see `Drop`.
    linger: std::sync::atomic::AtomicBool,
    /// A JSON answer replacing Pingora's bare refusal, while it is being written.
    reply: Option<Vec<u8>>,
    /// Bytes the last `poll_read` returned.
    last_read: usize,
    /// Bytes read since the current header phase began (see [`preread_chunked`]).
    since_head: AtomicU64,
    /// While `preread_chunked` runs: reads stop at this `since_head` value.
    read_limit: AtomicU64,
    timed_out: bool,
    /// `limits.idle_timeout` of the current request, in ms (set by [`header_complete`]).
    idle_ms: AtomicU64,
    /// The request body is not yet read to its end: a waiting read is timed.
    body_open: std::sync::atomic::AtomicBool,
    /// `deadline` is running as the body-phase idle timer (since the first wait after the
    /// last progress).
    idle_armed: bool,
    /// The idle timer fired during this request.
    idle_fired: std::sync::atomic::AtomicBool,
    /// An HTTP/2 connection (ALPN h2): only the preface is timed here (`header_timeout`);
    /// after it, the h2 layer's idle timeout and limits apply.
    h2: bool,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .finish()
    }
}

impl Guarded {
    pub fn new(inner: Stream, header_timeout: Duration, keepalive_timeout: Duration) -> Guarded {
        Guarded {
            inner,
            phase: AtomicU8::new(HEADER),
            armed: HEADER,
            header_timeout,
            keepalive_timeout,
            deadline: Mutex::new(Box::pin(tokio::time::sleep(header_timeout))),
            timed: true,
            answered_in_header: false,
            last_read: 0,
            reply: None,
            linger: std::sync::atomic::AtomicBool::new(false),
            body_check: Mutex::new(BodyCheck::default()),
            framing_bad: std::sync::atomic::AtomicBool::new(false),
            since_head: AtomicU64::new(0),
            read_limit: AtomicU64::new(u64::MAX),
            timed_out: false,
            idle_ms: AtomicU64::new(0),
            body_open: std::sync::atomic::AtomicBool::new(false),
            idle_armed: false,
            idle_fired: std::sync::atomic::AtomicBool::new(false),
            h2: false,
        }
    }

    /// A body-phase read or write is waiting: whether the idle timeout has passed since the
    /// first wait after the last progress (arms the timer on that first wait, and registers
    /// the waker). Only called on `Pending`, so progress costs nothing.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Ok(d) = self.deadline.get_mut() else {
            return false;
        };
        if !self.idle_armed {
            let ms = self.idle_ms.load(Ordering::Relaxed);
            d.as_mut().reset(Instant::now() + Duration::from_millis(ms));
            self.idle_armed = true;
        }
        if d.as_mut().poll(cx).is_pending() {
            return false;
        }
        if !self.idle_fired.swap(true, Ordering::Relaxed) {
            crate::metrics::client_timeout("idle");
        }
        true
    }

    /// The body-phase rules for a write's outcome (HTTP/1 only; see the module comment).
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.h2 {
            return r;
        }
        match r {
            Poll::Pending if self.phase.load(Ordering::Relaxed) == BODY => {
                if self.idle_expired(cx) {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "response write idle timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.idle_armed = false;
                ready
            }
        }
    }

    fn arm(&mut self, phase: u8) {
        let after = match phase {
            HEADER => Some(self.header_timeout),
            KEEPALIVE => Some(self.keepalive_timeout),
            _ => None,
        };
        self.armed = phase;
        self.answered_in_header = false;
        self.idle_armed = false;
        if phase == BODY {
            self.idle_fired.store(false, Ordering::Relaxed);
        }
        if phase == HEADER {
            self.since_head.store(0, Ordering::Relaxed);
        }
        if phase != BODY {
            // A body check never outlives its request.
            if let Ok(check) = self.body_check.get_mut() {
                check.chunks = None;
            }
        }
        self.timed = after.is_some();
        if let (Some(t), Ok(d)) = (after, self.deadline.get_mut()) {
            // One timer per connection, moved rather than reallocated for each phase.
            d.as_mut().reset(Instant::now() + t);
        }
    }

    /// Whether the deadline of the armed phase has passed (registers the waker if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.timed {
            return false;
        }
        match self.deadline.get_mut() {
            Ok(d) => d.as_mut().poll(cx).is_ready(),
            Err(_) => false,
        }
    }

    /// Arm the strict chunk check for this request's body (see `chunks`), starting with the
    /// body bytes that came with the header section.
    fn start_body_check(&self, chunked: bool, header_len: u64) {
        let Ok(mut check) = self.body_check.lock() else {
            return;
        };
        if !chunked || self.h2 {
            check.chunks = None;
            // A large first read (a body sent with the header) is not kept per connection.
            check.head_tail.clear();
            check.head_tail.shrink_to(4096);
            return;
        }
        let mut c = chunks::ChunkCheck::default();
        let seen = self.since_head.load(Ordering::Relaxed);
        let early = seen.saturating_sub(header_len) as usize;
        let tail = &check.head_tail;
        let prefix = &tail[tail.len().saturating_sub(early)..];
        if c.feed(prefix).is_err() {
            self.framing_bad.store(true, Ordering::Relaxed);
            check.chunks = None;
        } else {
            check.chunks = (!c.done()).then_some(c);
        }
        check.head_tail.clear();
        check.head_tail.shrink_to(4096);
    }

    /// Read from the inner stream, at most up to `read_limit`; counts `since_head`.
    fn read_limited(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.last_read = 0;
        let before = buf.filled().len();
        let seen = self.since_head.load(Ordering::Relaxed);
        let limit = self.read_limit.load(Ordering::Relaxed);
        let room = limit.saturating_sub(seen);
        let res = if room >= buf.remaining() as u64 {
            let r = Pin::new(&mut self.inner).poll_read(cx, buf);
            self.last_read = buf.filled().len() - before;
            r
        } else if room == 0 {
            // Only reachable while a pre-read parses a chunk head or trailer longer than
            // the slack it kept; Pingora's idle timeout ends the wait (408).
            return Poll::Pending;
        } else {
            let mut small = ReadBuf::new(buf.initialize_unfilled_to(room as usize));
            let r = Pin::new(&mut self.inner).poll_read(cx, &mut small);
            let n = small.filled().len();
            buf.advance(n);
            self.last_read = n;
            r
        };
        self.since_head
            .fetch_add(self.last_read as u64, Ordering::Relaxed);
        if self.last_read > 0 && !self.h2 {
            let new = &buf.filled()[before..];
            if let Ok(check) = self.body_check.get_mut() {
                // (A read in the keep-alive phase is the next request's first.)
                if self.armed == HEADER || self.armed == KEEPALIVE {
                    check.head_tail.clear();
                    check.head_tail.extend_from_slice(new);
                } else if let Some(c) = check.chunks.as_mut() {
                    if c.feed(new).is_err() {
                        // Pingora never sees these bytes; its body read fails instead.
                        self.framing_bad.store(true, Ordering::Relaxed);
                        check.chunks = None;
                        buf.set_filled(before);
                        self.last_read = 0;
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "malformed chunked framing",
                        )));
                    }
                    if c.done() {
                        check.chunks = None;
                    }
                }
            }
        }
        res
    }

    /// Best effort: the socket's send buffer is empty while we wait for a request header,
    /// so one non-blocking write of ~250 bytes goes out whole or not at all.
    fn answer_408(&mut self, cx: &mut Context<'_>) {
        let response = error::raw_http1(&Reject::RequestTimeout, &gateway::new_request_id());
        let inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(_)) = inner.poll_write(cx, &response) {
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
    }

    /// Write what is left of a replacement answer; `Ready(Ok)` once it is all out.
    fn flush_reply(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(reply) = self.reply.as_mut().filter(|r| !r.is_empty()) {
            match Pin::new(&mut self.inner).poll_write(cx, reply) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    reply.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

use std::future::Future;

/// Lingering closes in progress, process-wide, and their bound.
static LINGERING: AtomicU64 = AtomicU64::new(0);
const MAX_LINGERING: u64 = 1024;
/// A lingering close reads and discards for at most this long, this long between reads,
/// and this much.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
const LINGER_IDLE: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Closing a socket with unread bytes makes the kernel send RST, which can destroy the
/// answer still in flight to the client: a refused upload (401, 413, …) would look like a
/// network error. So, like nginx's lingering close, the stream's last owner half-closes it
/// and reads and discards what the client still sends, within bounds, in a task of its own.
impl Drop for Guarded {
    fn drop(&mut self) {
        if !self.linger.load(Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let dummy: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
        let mut inner = std::mem::replace(&mut self.inner, dummy);
        rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = inner.shutdown().await;
            let mut buf = vec![0u8; 16 * 1024];
            let mut left = LINGER_BYTES;
            let _ = tokio::time::timeout(LINGER_TOTAL, async {
                while left > 0 {
                    match tokio::time::timeout(LINGER_IDLE, inner.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                        _ => break,
                    }
                }
            })
            .await;
            LINGERING.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        let phase = this.phase.load(Ordering::Acquire);
        if phase != this.armed {
            this.arm(phase);
        }
        let result = this.read_limited(cx, buf);
        match result {
            Poll::Ready(r) if this.armed == BODY => {
                this.idle_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending if this.armed == BODY => {
                if this.h2 || !this.body_open.load(Ordering::Relaxed) || !this.idle_expired(cx) {
                    return Poll::Pending;
                }
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request body idle timeout",
                )))
            }
            Poll::Ready(r) => {
                if this.h2
                    && this.armed == HEADER
                    && this.since_head.load(Ordering::Relaxed) >= H2_PREFACE_LEN
                {
                    this.phase.store(BODY, Ordering::Release);
                    this.arm(BODY);
                }
                // The first byte of the next request starts its header deadline.
                if this.armed == KEEPALIVE && this.last_read > 0 {
                    this.phase.store(HEADER, Ordering::Release);
                    this.arm(HEADER);
                    this.since_head
                        .store(this.last_read as u64, Ordering::Relaxed);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !this.expired(cx) {
                    return Poll::Pending;
                }
                this.timed_out = true;
                if this.armed == KEEPALIVE || this.since_head.load(Ordering::Relaxed) == 0 {
                    // Idle, no request begun (also a preconnect that never sent a byte): EOF
                    // makes Pingora close it quietly; nobody asked anything to answer 408 to.
                    crate::metrics::client_timeout("keepalive");
                    return Poll::Ready(Ok(()));
                }
                crate::metrics::client_timeout("header");
                if !this.h2 {
                    this.answer_408(cx);
                }
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request header timeout",
                )))
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // (An h2 server speaks first: its SETTINGS are not a refusal.)
        if !this.h2 && this.phase.load(Ordering::Acquire) == HEADER {
            if !this.answered_in_header {
                // No request phase ran: Pingora is refusing the request itself (its parser
                // failed: 400; CONNECT: 405). Its bare answer is swapped for our JSON one,
                // so every refusal carries a stable code.
                this.answered_in_header = true;
                let reject = match buf.get(9..12) {
                    Some(b"400") => Some(Reject::BadRequest),
                    Some(b"405") => Some(Reject::MethodNotAllowed {
                        allow: crate::route::ALL_METHODS,
                    }),
                    _ => None,
                };
                crate::metrics::protocol_rejection(match reject {
                    Some(Reject::BadRequest) => "400",
                    Some(_) => "405",
                    None => "other",
                });
                this.reply = reject.map(|r| error::raw_http1(&r, &gateway::new_request_id()));
            }
            if this.reply.is_some() {
                // Pingora's own bytes are dropped; ours go out instead.
                return match this.flush_reply(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if !this.h2 && this.phase.load(Ordering::Acquire) == HEADER {
            // A possible refusal: through `poll_write`, which may replace it.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.flush_reply(cx) {
            Poll::Ready(Ok(())) => {
                let r = Pin::new(&mut this.inner).poll_flush(cx);
                this.after_write(cx, r)
            }
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.flush_reply(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
