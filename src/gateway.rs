//! Per-request admission: everything `request_filter` decides before a request may be proxied.
//!
//! Order matters and is fixed: request id and client IP (so every answer, even a 400, carries
//! them) → size and framing limits → host → path normalisation → route → upgrade check →
//! network policy → (auth-failure limits → authentication → principal policy) → rate limits. The function
//! never writes a response itself; it returns a [`Reject`] for `error::respond` to render.

use crate::auth;
use crate::authz;
use crate::clientip;
use crate::config::raw::{ClientIpHeader, Method};
use crate::config::Snapshot;
use crate::error::Reject;
use crate::ratelimit;
use crate::route::normalize::{normalize_host, normalize_path, HostError, PathError};
use crate::route::{Route, RouteMatch};
use pingora::http::RequestHeader;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// State of one request, created in `new_ctx` with the snapshot pinned for its whole life.
pub struct RequestCtx {
    pub snapshot: Arc<Snapshot>,
    pub start: Instant,
    pub request_id: String,
    pub peer_ip: Option<IpAddr>,
    /// `peer_ip` as text (IPv4-mapped addresses shown as IPv4), formatted once.
    pub peer_text: String,
    pub client_ip: Option<IpAddr>,
    /// The TCP peer is in `server.trusted_proxies`.
    pub peer_trusted: bool,
    /// The downstream connection is TLS.
    pub tls: bool,
    pub host: String,
    /// Normalised path (what routing saw and what the upstream gets, minus `strip_prefix`).
    pub path: String,
    /// Raw query string, forwarded unchanged.
    pub query: Option<String>,
    pub route: Option<Arc<Route>>,
    /// The verified caller, on routes that require authentication.
    pub principal: Option<crate::auth::Principal>,
    /// The authorization outcome, once the route's checks ran (None: rejected before).
    pub authz: Option<authz::Decision>,
    /// Set when the gateway answered itself (or failed to proxy), for metrics.
    pub reject: Option<Reject>,
    /// Upstream targets already tried for this request (connect retries skip them).
    pub tried: Vec<SocketAddr>,
    pub target: Option<SocketAddr>,
    /// Request body bytes seen so far (chunked bodies are counted against the limit).
    pub body_bytes: u64,
    /// See [`Conn::raw_framing_bad`].
    pub raw_framing_bad: bool,
    pub client_cert: Option<Arc<auth::mtls::ClientCert>>,
    /// Rate-limit state: concurrency slots held, headers for the response, what fired.
    pub limits: ratelimit::RequestLimits,
    /// The audit sink can take this request's record (`on_overflow: reject` fails closed).
    pub audit_accepting: bool,
    /// The audit sink, and whether a queue slot was reserved for this request's record.
    pub audit_sink: Option<Arc<crate::audit::AuditSink>>,
    pub audit_reserved: bool,
    /// The record was queued (by `logging`; otherwise dropping the context writes one).
    pub audited: bool,
    /// When the request was handed to the upstream, and when its answer arrived (audit).
    pub upstream_start: Option<Instant>,
    pub upstream_answered: Option<Instant>,
}

/// The per-request context as Pingora holds it: one pointer. Pingora keeps `CTX` inline in
/// its per-request future and moves that future into a box once per request, so every byte
/// of the context is copied on every request (and appears several times in the future's
/// layout); boxing it costs one small allocation instead (callgrind: ≈ 2 k instructions per
/// request less).
pub struct Ctx(Box<RequestCtx>);

impl Ctx {
    pub fn new(ctx: RequestCtx) -> Ctx {
        Ctx(Box::new(ctx))
    }
}

impl std::ops::Deref for Ctx {
    type Target = RequestCtx;
    fn deref(&self) -> &RequestCtx {
        &self.0
    }
}

impl std::ops::DerefMut for Ctx {
    fn deref_mut(&mut self) -> &mut RequestCtx {
        &mut self.0
    }
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>) -> RequestCtx {
        RequestCtx {
            snapshot,
            start: Instant::now(),
            request_id: String::new(),
            peer_ip: None,
            peer_text: String::new(),
            client_ip: None,
            peer_trusted: false,
            tls: false,
            host: String::new(),
            path: String::new(),
            query: None,
            route: None,
            principal: None,
            authz: None,
            reject: None,
            tried: Vec::new(),
            target: None,
            body_bytes: 0,
            raw_framing_bad: false,
            client_cert: None,
            limits: ratelimit::RequestLimits::default(),
            audit_accepting: true,
            audit_sink: None,
            audit_reserved: false,
            audited: false,
            upstream_start: None,
            upstream_answered: None,
        }
    }

    pub fn route_label(&self) -> &str {
        self.route.as_ref().map_or("none", |r| &r.id)
    }
}

/// A request whose task was cancelled (runtime shut down after the grace period, or a panic)
/// never reaches `logging`: its record is written here, marked `cancelled`.
impl Drop for RequestCtx {
    fn drop(&mut self) {
        if !self.audited {
            if let Some(sink) = self.audit_sink.take() {
                crate::audit::record_cancelled(&sink, self);
            }
        }
    }
}

/// Connection facts the proxy hands to [`admit`] (kept separate so `admit` is testable
/// without a live session).
pub struct Conn {
    pub peer: Option<IpAddr>,
    pub tls: bool,
    /// The raw HTTP/1 header bytes show a framing problem the parsed header hides (see
    /// [`raw_framing_bad`]).
    pub raw_framing_bad: bool,
    /// The connection's verified client certificate (mTLS listeners).
    pub client_cert: Option<Arc<auth::mtls::ClientCert>>,
}

/// Whether raw HTTP/1 header bytes (request line to the blank line) show a framing problem
/// that Pingora's lenient parse hides from the parsed header:
/// - a bare LF line ending (httparse accepts them; a backend that does not would see one
///   header line where we saw two);
/// - `Content-Length` next to `Transfer-Encoding` (Pingora silently drops the former);
/// - a `Transfer-Encoding` value other than exactly `chunked`: case variants, tabs, trailing
///   spaces and lists are all legal-looking ways to make two parsers disagree.
///
/// One pass with `memchr` over the lines: every HTTP/1 request pays for it (tens of ns).
pub fn raw_framing_bad(raw: &[u8]) -> bool {
    let mut start = 0;
    let (mut te, mut cl) = (false, false);
    for pos in memchr::memchr_iter(b'\n', raw) {
        if pos == 0 || raw[pos - 1] != b'\r' {
            return true;
        }
        let line = &raw[start..pos - 1];
        start = pos + 1;
        match line.first() {
            Some(b't' | b'T') if starts_with_ci(line, b"transfer-encoding:") => {
                te = true;
                let value = &line[18..];
                let value = &value[value.iter().take_while(|&&b| b == b' ').count()..];
                if value != b"chunked" {
                    return true;
                }
            }
            Some(b'c' | b'C') if starts_with_ci(line, b"content-length:") => cl = true,
            _ => {}
        }
    }
    te && cl
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Identify the request (id, client IP). Runs first so even rejections carry both.
pub fn identify(req: &RequestHeader, conn: &Conn, ctx: &mut RequestCtx) {
    ctx.tls = conn.tls;
    ctx.peer_ip = conn.peer;
    ctx.raw_framing_bad = conn.raw_framing_bad;
    ctx.client_cert = conn.client_cert.clone();
    if let Some(peer) = conn.peer {
        ctx.peer_text = ip_text(&peer);
        let trusted_set = &ctx.snapshot.trusted_proxies;
        let (client, trusted) = match ctx.snapshot.client_ip_header {
            ClientIpHeader::XForwardedFor => {
                let values = req.headers.get_all("x-forwarded-for").iter();
                clientip::resolve(peer, trusted_set, values.map(|v| v.as_bytes()))
            }
            ClientIpHeader::Forwarded => {
                let values = req.headers.get_all("forwarded").iter();
                clientip::resolve_forwarded(peer, trusted_set, values.map(|v| v.as_bytes()))
            }
        };
        ctx.client_ip = Some(client);
        ctx.peer_trusted = trusted;
    }
    let incoming = req
        .headers
        .get("x-request-id")
        .filter(|_| ctx.peer_trusted)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v));
    ctx.request_id = match incoming {
        Some(id) => id.to_string(),
        None => new_request_id(),
    };
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// 128 random bits as 32 hex characters.
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = rand::random::<u128>();
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 15) as usize];
        v >>= 4;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Format an IP without the `fmt` machinery for the common IPv4 case (hot path: every request).
pub fn ip_text(ip: &IpAddr) -> String {
    match clientip::canonical(ip) {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if *o >= 100 {
                    s.push((b'0' + o / 100) as char);
                }
                if *o >= 10 {
                    s.push((b'0' + (o / 10) % 10) as char);
                }
                s.push((b'0' + o % 10) as char);
            }
            s
        }
        v6 => v6.to_string(),
    }
}

/// `request_body_filter`: the body size limit (chunked bodies have no length to check up
/// front), and the end of the body for the front door's idle timer.
pub fn body_chunk(
    session: &pingora::proxy::Session,
    chunk: Option<&bytes::Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) -> pingora::Result<()> {
    if let Some(b) = chunk {
        ctx.body_bytes += b.len() as u64;
        if ctx.body_bytes > ctx.snapshot.limits.max_body_bytes {
            return pingora::Error::e_explain(
                pingora::ErrorType::HTTPStatus(413),
                "request body over limit",
            );
        }
    }
    if end_of_stream {
        crate::frontdoor::body_complete(session);
    }
    Ok(())
}

/// Decide whether the request may proceed to the upstream, and on which route.
pub async fn admit(req: &RequestHeader, ctx: &mut RequestCtx) -> Result<(), Reject> {
    if !ctx.audit_accepting {
        // Fail closed: a request that could not be audited is not served.
        return Err(Reject::AuditUnavailable);
    }
    let snapshot = ctx.snapshot.clone();
    check_limits(req, &snapshot)?;
    if ctx.raw_framing_bad {
        return Err(Reject::AmbiguousFraming);
    }
    check_framing(req, snapshot.limits.max_body_bytes)?;
    let (authority, path, query) = split_target(req.raw_path())?;
    ctx.host = resolve_host(req, authority)?;
    ctx.path = normalize_path(path).map_err(Reject::InvalidPath)?;
    ctx.query = match query {
        Some(q) => Some(
            std::str::from_utf8(q)
                .map_err(|_| Reject::InvalidPath(PathError::InvalidUtf8))?
                .to_string(),
        ),
        None => None,
    };
    let method = Method::from_http(&req.method);
    let route = match snapshot.router.lookup(&ctx.host, &ctx.path, method) {
        RouteMatch::Found(r) => r.clone(),
        RouteMatch::NoRoute => return Err(Reject::NoRoute),
        RouteMatch::MethodNotAllowed(allow) => return Err(Reject::MethodNotAllowed { allow }),
    };
    ctx.route = Some(route.clone());
    check_upgrade(req, &route)?;
    // Shadow-mode denials are collected here; the first one is what enforcing would have sent.
    let mut shadowed = None;
    if let Some(policy) = &route.policy {
        // Before authentication: a blocked network never gets to spend our CPU on signatures.
        let r = authz::check_network(policy, ctx.client_ip);
        authorize(ctx, authz::apply_mode(route.shadow, r, &mut shadowed))?;
    }
    if route.public {
        ctx.authz = Some(decided(shadowed, authz::Decision::Public));
        let facts = ratelimit::facts(req, ctx.client_ip, &route.id, None);
        return ratelimit::acquire(&route.rate_limits, &facts, &mut ctx.limits).await;
    }
    let facts = ratelimit::facts(req, ctx.client_ip, &route.id, None);
    // An address that failed authentication too often is refused before its credentials are
    // checked; the attempt is reserved up front so parallel attempts cannot overshoot.
    let reservation =
        ratelimit::reserve_auth_attempt(&route.rate_limits, &facts, &mut ctx.limits).await?;
    let creds = auth::Credentials {
        headers: &req.headers,
        query: ctx.query.as_deref(),
        client_cert: ctx.client_cert.as_deref(),
    };
    let principal = match auth::authenticate(&route.authn, &creds, auth::time::now()).await {
        Ok(p) => {
            ratelimit::auth_succeeded(reservation);
            p
        }
        Err((reason, challenge)) => {
            if reason == auth::AuthError::KeysUnavailable {
                // Not the caller's failure.
                ratelimit::auth_succeeded(reservation);
            } else {
                ratelimit::auth_failed(reservation, &route.id, &route.rate_limits);
            }
            return Err(Reject::Unauthenticated { reason, challenge });
        }
    };
    let outcome = match &route.policy {
        Some(policy) if policy.needs_principal() => {
            let r = authz::check_principal(policy, &principal);
            let bearer = principal.method == auth::AuthMethod::Jwt;
            ctx.principal = Some(principal);
            authorize(ctx, authz::apply_mode(route.shadow, r, &mut shadowed)).map_err(
                |e| match e {
                    Reject::Forbidden { reason, .. } => Reject::Forbidden { reason, bearer },
                    other => other,
                },
            )?;
            authz::Decision::Allowed
        }
        _ => {
            ctx.principal = Some(principal);
            authz::Decision::Authenticated
        }
    };
    ctx.authz = Some(decided(shadowed, outcome));
    let facts = ratelimit::facts(req, ctx.client_ip, &route.id, ctx.principal.as_ref());
    ratelimit::acquire(&route.rate_limits, &facts, &mut ctx.limits).await?;
    // Credentials never travel upstream: drop query-parameter keys here, headers in `forward`.
    if let Some(q) = ctx.query.take() {
        ctx.query = auth::strip_query_credentials(&route.authn, &q);
    }
    Ok(())
}

/// Record an enforced denial in the context and turn it into the rejection.
fn authorize(ctx: &mut RequestCtx, r: Result<(), authz::Denial>) -> Result<(), Reject> {
    r.map_err(|d| {
        ctx.authz = Some(authz::Decision::Denied(d));
        Reject::Forbidden {
            reason: d,
            bearer: false,
        }
    })
}

fn decided(shadowed: Option<authz::Denial>, allowed: authz::Decision) -> authz::Decision {
    shadowed.map_or(allowed, authz::Decision::ShadowDenied)
}

/// Upgrades are opt-in per route and only to WebSocket: after a 101 the connection becomes a
/// byte tunnel that no later routing or policy sees, so it must be something the route asked
/// for. (`h2c` upgrades, a known smuggling vector, are always refused.)
fn check_upgrade(req: &RequestHeader, route: &Route) -> Result<(), Reject> {
    let mut it = req.headers.get_all(http::header::UPGRADE).iter();
    let Some(v) = it.next() else { return Ok(()) };
    if !route.websocket || it.next().is_some() || !v.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return Err(Reject::UpgradeNotAllowed);
    }
    Ok(())
}

/// The request asked for a protocol upgrade and the upstream did not switch (no 101).
pub fn upgrade_refused(req: &RequestHeader, resp: &pingora::http::ResponseHeader) -> bool {
    resp.status != http::StatusCode::SWITCHING_PROTOCOLS
        && req.headers.contains_key(http::header::UPGRADE)
}

fn check_limits(req: &RequestHeader, s: &Snapshot) -> Result<(), Reject> {
    if req.raw_path().len() > s.limits.max_uri_bytes {
        return Err(Reject::UriTooLong);
    }
    if req.headers.len() > s.limits.max_headers {
        return Err(Reject::TooManyHeaders);
    }
    // Request line plus "name: value\r\n" for every field.
    let mut size = req.method.as_str().len() + req.raw_path().len() + 12;
    for (k, v) in req.headers.iter() {
        size += k.as_str().len() + v.len() + 4;
    }
    if size > s.limits.max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    Ok(())
}

/// Reject ambiguous body framing ourselves: Pingora accepts `Content-Length` together with
/// `Transfer-Encoding` (TE wins), which is the classic request-smuggling setup.
fn check_framing(req: &RequestHeader, max_body: u64) -> Result<(), Reject> {
    let te: Vec<_> = req.headers.get_all("transfer-encoding").iter().collect();
    let cl: Vec<_> = req.headers.get_all("content-length").iter().collect();
    if !te.is_empty() {
        if !cl.is_empty() || req.version == http::Version::HTTP_10 || te.len() > 1 {
            return Err(Reject::AmbiguousFraming);
        }
        // Exactly `chunked`: see `raw_framing_bad` (HTTP/2 has no raw bytes; it forbids TE).
        if te[0].as_bytes() != b"chunked" {
            return Err(Reject::AmbiguousFraming);
        }
    }
    match cl.as_slice() {
        [] => Ok(()),
        [one] => {
            let s = one.to_str().map_err(|_| Reject::AmbiguousFraming)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Reject::AmbiguousFraming);
            }
            match s.parse::<u64>() {
                Ok(n) if n <= max_body => Ok(()),
                _ => Err(Reject::BodyTooLarge),
            }
        }
        _ => Err(Reject::AmbiguousFraming),
    }
}

type Target<'a> = (Option<&'a [u8]>, &'a [u8], Option<&'a [u8]>);

/// Split a request target into (absolute-form authority, path, query).
fn split_target(raw: &[u8]) -> Result<Target<'_>, Reject> {
    let (authority, rest) = if raw.first() == Some(&b'/') {
        (None, raw)
    } else {
        let lower: Vec<u8> = raw.iter().take(8).map(u8::to_ascii_lowercase).collect();
        let skip = if lower.starts_with(b"http://") {
            7
        } else if lower.starts_with(b"https://") {
            8
        } else {
            return Err(Reject::InvalidPath(PathError::NotAbsolute));
        };
        let after = &raw[skip..];
        let end = after
            .iter()
            .position(|&c| c == b'/' || c == b'?')
            .unwrap_or(after.len());
        let auth = &after[..end];
        if auth.contains(&b'@') {
            // userinfo in the target is never legitimate for a gateway
            return Err(Reject::InvalidHost(HostError::Malformed));
        }
        (Some(auth), &after[end..])
    };
    let (path, query) = match rest.iter().position(|&c| c == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    Ok((authority, path, query))
}

fn resolve_host(req: &RequestHeader, abs_authority: Option<&[u8]>) -> Result<String, Reject> {
    let mut host_headers = req.headers.get_all("host").iter();
    let header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(Reject::InvalidHost(HostError::Duplicate));
    }
    let authority = abs_authority.or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    let from_header = header
        .map(|h| normalize_host(h.as_bytes()))
        .transpose()
        .map_err(Reject::InvalidHost)?;
    let from_authority = authority
        .map(normalize_host)
        .transpose()
        .map_err(Reject::InvalidHost)?;
    match (from_authority, from_header) {
        (Some(a), Some(h)) if a != h => Err(Reject::InvalidHost(HostError::Conflict)),
        (Some(a), _) => Ok(a),
        (None, Some(h)) => Ok(h),
        (None, None) if req.version == http::Version::HTTP_10 => Ok(String::new()),
        (None, None) => Err(Reject::InvalidHost(HostError::Missing)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            split_target(b"/a?b=1").unwrap(),
            (None, &b"/a"[..], Some(&b"b=1"[..]))
        );
        assert_eq!(
            split_target(b"http://Example.com:80/x?y").unwrap(),
            (Some(&b"Example.com:80"[..]), &b"/x"[..], Some(&b"y"[..]))
        );
        assert_eq!(
            split_target(b"https://h").unwrap(),
            (Some(&b"h"[..]), &b"/"[..], None)
        );
        assert!(split_target(b"*").is_err());
        assert!(split_target(b"ftp://h/x").is_err());
        assert!(split_target(b"http://u:p@h/x").is_err());
    }

    #[test]
    fn raw_framing_detection() {
        let ok: [&[u8]; 4] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\ntransfer-encoding:chunked\r\n\r\n",
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in ok {
            assert!(!raw_framing_bad(raw), "{}", String::from_utf8_lossy(raw));
        }
        let bad: [&[u8]; 9] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length:5\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked \r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
            b"\n",
        ];
        for raw in bad {
            assert!(raw_framing_bad(raw), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "255.255.255.255",
            "100.9.99.199",
            "::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(&ip), ip.to_string());
        }
        assert_eq!(ip_text(&"::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }

    #[test]
    fn request_ids() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
        assert!(valid_request_id("abc-123_x.y:z"));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"a".repeat(129)));
    }
}
