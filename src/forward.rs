//! Shapes the request sent upstream; called from `upstream_request_filter`.
//!
//! - The request target becomes exactly the normalised path that routing matched (minus
//!   `strip_prefix`) plus the original query string, so the service sees what the policy saw.
//! - `X-Forwarded-For/-Proto/-Host` and `X-Request-Id` are written by the gateway. A client's
//!   own values are kept only when the TCP peer is a trusted proxy; `X-Real-IP` and
//!   `Forwarded` are always removed so no spoofed variant reaches the service.
//! - Headers some frameworks use to override the path or method (`X-Original-URL`,
//!   `X-Rewrite-URL`, `X-HTTP-Method-Override`, …), client-IP claims (`True-Client-IP`, …),
//!   every `X-Forwarded-*` from untrusted peers, and any header with `_` in its name (CGI
//!   servers read `X_Forwarded_For` as `X-Forwarded-For`) are removed.

use crate::gateway::RequestCtx;
use http::header::HeaderName;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, OrErr, Result};

// Lookups use `HeaderName` constants; inserts use static strings, which Pingora's header map
// takes without copying (see docs/performance.md).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: &str = "X-Request-Id";

/// Removed from every upstream request: client-IP and scheme claims that only the gateway may
/// make (services read the gateway-written `X-Forwarded-For`/`-Proto`), and path/method
/// overrides. `X-Original-*` and, from untrusted peers, every `X-Forwarded-*` go by prefix.
const OVERRIDE_HEADERS: [&str; 15] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "forwarded",
    "front-end-https",
    "x-url-scheme",
    "x-rewrite-url",
    "x-override-url",
    "x-proxy-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-prefix",
    "x-forwarded-port",
];

/// Whether a client header must not reach the upstream.
fn must_drop(name: &str, peer_trusted: bool) -> bool {
    // CGI-style servers (Rack, WSGI, PHP) map `_` and `-` to the same variable, so
    // `X_Forwarded_For` could override the gateway's `X-Forwarded-For` (nginx drops these too).
    name.contains('_')
        || OVERRIDE_HEADERS.contains(&name)
        || name.starts_with("x-original-")
        || name.starts_with(IDENTITY_PREFIX)
        || (!peer_trusted && name.starts_with("x-forwarded-"))
}

/// Remove the cookies that carry a JWT for the route's authenticators (the token must not
/// travel upstream unless `forward_token`).
fn strip_token_cookies(req: &mut RequestHeader, route: &crate::route::Route) -> Result<()> {
    let names: Vec<&str> = route
        .authn
        .iter()
        .filter_map(|a| match a.as_ref() {
            crate::auth::Authenticator::Jwt(j) => j.cookie.as_deref(),
            _ => None,
        })
        .collect();
    if names.is_empty() || !req.headers.contains_key(http::header::COOKIE) {
        return Ok(());
    }
    let kept: Vec<String> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(|p| String::from_utf8_lossy(p.trim_ascii()).into_owned())
        .filter(|p| !p.is_empty() && !names.iter().any(|n| p.split('=').next() == Some(n)))
        .collect();
    req.remove_header(&http::header::COOKIE);
    if !kept.is_empty() {
        req.insert_header("Cookie", kept.join("; "))?;
    }
    Ok(())
}

/// Prefix of every identity header. Client-sent headers with it are always removed.
pub const IDENTITY_PREFIX: &str = "x-portcullis-";

/// The verified identity, as headers the services can trust (docs/authentication.md).
fn set_identity(req: &mut RequestHeader, p: &crate::auth::Principal) -> Result<()> {
    req.insert_header("X-Portcullis-Auth-Method", p.method.as_str())?;
    req.insert_header("X-Portcullis-Authenticator", &*p.authenticator)?;
    req.insert_header("X-Portcullis-Subject", &*p.subject)?;
    if let Some(c) = &p.consumer {
        req.insert_header("X-Portcullis-Consumer", &**c)?;
    }
    if let Some(k) = &p.key_id {
        req.insert_header("X-Portcullis-Key-Id", &**k)?;
    }
    if let Some(i) = &p.issuer {
        req.insert_header("X-Portcullis-Issuer", &**i)?;
    }
    if !p.scopes.is_empty() {
        req.insert_header("X-Portcullis-Scopes", p.scopes.join(" "))?;
    }
    if !p.roles.is_empty() {
        req.insert_header("X-Portcullis-Roles", p.roles.join(" "))?;
    }
    if !p.groups.is_empty() {
        req.insert_header("X-Portcullis-Groups", p.groups.join(" "))?;
    }
    for (name, value) in p.claims.iter() {
        // `_` → `-`: header names with `_` are dropped by many proxies (and by us, inbound).
        let header = format!("X-Portcullis-Claim-{}", name.replace('_', "-"));
        req.insert_header(header, value.as_str())?;
    }
    Ok(())
}

/// Rebuild the upstream request without Pingora's case-preserving name map.
///
/// Why: with the map every insert parses the name, copies it, and writes and grows two
/// header maps: ≈ 1.8 k instructions per header, and a request gets 4 (public) to 10
/// (authenticated) of them (`cargo bench --bench forward`; docs/performance.md). One copy of
/// the header map up front is cheaper than that. The cost: header names reach the upstream
/// in canonical form (title case for standard headers, lower case otherwise) instead of the
/// client's spelling. Names are case-insensitive (RFC 9110 §5.1), HTTP/2 lowercases them
/// anyway, and Envoy does the same by default.
///
/// Only called once the target round-trips through the URI (the rebuilt header is written
/// from its URI): `prepare_upstream_request` has just made sure of that.
fn drop_case_map(req: &mut RequestHeader) {
    if !req.has_case() {
        return;
    }
    let end_stream = req.send_end_stream();
    *req = RequestHeader::from(req.as_owned_parts());
    if let Some(end) = end_stream {
        // (HTTP/2 upstreams: END_STREAM on HEADERS only for a request without a body.)
        req.set_send_end_stream(end);
    }
}

pub fn prepare_upstream_request(req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    ctx.upstream_start = Some(std::time::Instant::now());
    let Some(route) = &ctx.route else {
        return Error::e_explain(ErrorType::InternalError, "no route on upstream request");
    };
    let path = route.upstream_path(&ctx.path);
    // Common case: the client already sent the canonical origin-form target. Skip re-parsing.
    let unchanged = {
        let raw = req.raw_path();
        let (p, q) = match raw.iter().position(|&c| c == b'?') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        p == path.as_bytes() && q == ctx.query.as_deref().map(str::as_bytes)
    };
    if !unchanged {
        let target = match &ctx.query {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let uri: http::Uri = target.parse().or_err(
            ErrorType::InternalError,
            "normalised target is not a valid URI",
        )?;
        req.set_uri(uri);
    }
    drop_case_map(req);

    // One pass to find the headers we must drop (usually none), instead of a hash lookup per
    // name on every request: path/method overrides, any client-sent `X-Portcullis-*` (the
    // identity contract: only the gateway writes those), and the route's credential headers.
    let forward_token = ctx.principal.as_ref().is_some_and(|p| {
        route.authn.iter().any(|a| match a.as_ref() {
            crate::auth::Authenticator::Jwt(j) => j.forward_token && j.name == p.authenticator,
            _ => false,
        })
    });
    let drop: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| {
            must_drop(k.as_str(), ctx.peer_trusted)
                || route.authn.iter().any(|a| match a.as_ref() {
                    crate::auth::Authenticator::ApiKey(x) => x.header == **k,
                    // The token goes upstream only if the authenticator that verified it
                    // says `forward_token: true`.
                    crate::auth::Authenticator::Jwt(j) => {
                        (*k == http::header::AUTHORIZATION || j.header.as_ref() == Some(*k))
                            && !forward_token
                    }
                    crate::auth::Authenticator::Mtls(_) => false,
                })
        })
        .cloned()
        .collect();
    for h in &drop {
        // `remove_header` drops every value of the name.
        req.remove_header(h);
    }
    if !forward_token {
        strip_token_cookies(req, route)?;
    }
    if let Some(p) = &ctx.principal {
        set_identity(req, p)?;
    }

    // X-Forwarded-For: append the peer to a trusted chain, otherwise start a new one.
    let mut chain = String::new();
    if ctx.peer_trusted {
        for v in req.headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(v) = v.to_str() {
                if !chain.is_empty() {
                    chain.push_str(", ");
                }
                chain.push_str(v);
            }
        }
    }
    if !ctx.peer_text.is_empty() {
        if chain.is_empty() {
            req.insert_header("X-Forwarded-For", ctx.peer_text.as_str())?;
        } else {
            chain.push_str(", ");
            chain.push_str(&ctx.peer_text);
            req.insert_header("X-Forwarded-For", chain)?;
        }
    } else if req.headers.contains_key(&X_FORWARDED_FOR) {
        req.remove_header(&X_FORWARDED_FOR);
    }

    if !ctx.peer_trusted || !req.headers.contains_key(&X_FORWARDED_PROTO) {
        req.insert_header("X-Forwarded-Proto", if ctx.tls { "https" } else { "http" })?;
    }
    if !ctx.peer_trusted || !req.headers.contains_key(&X_FORWARDED_HOST) {
        // The Host the client asked for, port included (already validated by `admit`).
        let host = req
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| http::HeaderValue::from_str(&ctx.host).ok())
            .filter(|h| !h.is_empty());
        match host {
            Some(h) => {
                req.insert_header("X-Forwarded-Host", h)?;
            }
            None => {
                req.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    if !ctx.host.is_empty()
        && !req.headers.contains_key(http::header::HOST)
        && req.uri.authority().is_none()
    {
        // Absolute-form or HTTP/1.0 without Host: give the upstream the host routing used, so
        // a multi-vhost service cannot fall back to its default vhost.
        req.insert_header("Host", ctx.host.as_str())?;
    }
    req.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    Ok(())
}
