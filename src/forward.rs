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
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, OkOrErr, OrErr, Result};

// Header names as constants: no parsing per request (see `with_plain_headers`).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
fn strip_token_cookies(headers: &mut HeaderMap, route: &crate::route::Route) -> Result<()> {
    let names: Vec<&str> = route
        .authn
        .iter()
        .filter_map(|a| match a.as_ref() {
            crate::auth::Authenticator::Jwt(j) => j.cookie.as_deref(),
            _ => None,
        })
        .collect();
    if names.is_empty() || !headers.contains_key(http::header::COOKIE) {
        return Ok(());
    }
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(|p| String::from_utf8_lossy(p.trim_ascii()).into_owned())
        .filter(|p| !p.is_empty() && !names.iter().any(|n| p.split('=').next() == Some(n)))
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty() {
        headers.insert(http::header::COOKIE, value(kept.join("; "))?);
    }
    Ok(())
}

/// Prefix of every identity header. Client-sent headers with it are always removed.
pub const IDENTITY_PREFIX: &str = "x-portcullis-";

const ID_AUTH_METHOD: HeaderName = HeaderName::from_static("x-portcullis-auth-method");
const ID_AUTHENTICATOR: HeaderName = HeaderName::from_static("x-portcullis-authenticator");
const ID_SUBJECT: HeaderName = HeaderName::from_static("x-portcullis-subject");
const ID_CONSUMER: HeaderName = HeaderName::from_static("x-portcullis-consumer");
const ID_KEY_ID: HeaderName = HeaderName::from_static("x-portcullis-key-id");
const ID_ISSUER: HeaderName = HeaderName::from_static("x-portcullis-issuer");
const ID_SCOPES: HeaderName = HeaderName::from_static("x-portcullis-scopes");
const ID_ROLES: HeaderName = HeaderName::from_static("x-portcullis-roles");
const ID_GROUPS: HeaderName = HeaderName::from_static("x-portcullis-groups");

/// A header value from gateway-held text (an identity claim, a host): text that cannot be a
/// header value (control characters) fails the request rather than being sent altered.
fn value(v: impl TryInto<HeaderValue>) -> Result<HeaderValue> {
    v.try_into().ok().or_err(
        ErrorType::InvalidHTTPHeader,
        "invalid upstream header value",
    )
}

/// The verified identity, as headers the services can trust (docs/authentication.md).
fn set_identity(headers: &mut HeaderMap, p: &crate::auth::Principal) -> Result<()> {
    headers.insert(ID_AUTH_METHOD, HeaderValue::from_static(p.method.as_str()));
    headers.insert(ID_AUTHENTICATOR, value(&*p.authenticator)?);
    headers.insert(ID_SUBJECT, value(&*p.subject)?);
    if let Some(c) = &p.consumer {
        headers.insert(ID_CONSUMER, value(&**c)?);
    }
    if let Some(k) = &p.key_id {
        headers.insert(ID_KEY_ID, value(&**k)?);
    }
    if let Some(i) = &p.issuer {
        headers.insert(ID_ISSUER, value(&**i)?);
    }
    if !p.scopes.is_empty() {
        headers.insert(ID_SCOPES, value(p.scopes.join(" "))?);
    }
    if !p.roles.is_empty() {
        headers.insert(ID_ROLES, value(p.roles.join(" "))?);
    }
    if !p.groups.is_empty() {
        headers.insert(ID_GROUPS, value(p.groups.join(" "))?);
    }
    for (name, v) in p.claims.iter() {
        // `_` → `-`: header names with `_` are dropped by many proxies (and by us, inbound).
        let header = format!("x-portcullis-claim-{}", name.replace('_', "-"));
        let header = HeaderName::try_from(header).ok().or_err(
            ErrorType::InvalidHTTPHeader,
            "invalid identity claim header name",
        )?;
        headers.insert(header, value(v.as_str())?);
    }
    Ok(())
}

/// The upstream request as plain `http` parts, without Pingora's case-preserving name map;
/// `edit` shapes its headers, then the request is put back together.
///
/// Why: through Pingora's `insert_header` every header name is converted and parsed again,
/// and with the case map it is also copied into a second map: ≈ 1–2 k instructions per
/// header, and a request gets 4 (public) to 10 (authenticated) of them (`cargo bench --bench
/// forward`; docs/performance.md). The parts are moved out and back, not copied, and edited
/// with `HeaderName` constants. The cost: header names reach the upstream in canonical form
/// (title case for standard headers, lower case otherwise) instead of the client's spelling.
/// Names are case-insensitive (RFC 9110 §5.1), HTTP/2 lowercases them anyway, and HAProxy
/// does the same by default.
///
/// Only called once the target round-trips through the URI (the rebuilt header is written
/// from its URI): `prepare_upstream_request` has just made sure of that.
fn with_plain_headers(
    req: &mut RequestHeader,
    extra: usize,
    edit: impl FnOnce(&mut HeaderMap) -> Result<()>,
) -> Result<()> {
    let end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, placeholder).into();
    // Room for what the gateway adds, so the inserts below never regrow the map.
    parts.headers.reserve(extra);
    let r = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(end) = end_stream {
        // (HTTP/2 upstreams: END_STREAM on HEADERS only for a request without a body.)
        req.set_send_end_stream(end);
    }
    r
}

/// The same for the response sent to the client: its headers without Pingora's case map
/// (names in canonical form, as over HTTP/2; HAProxy does the same), a non-standard reason
/// phrase kept.
pub fn with_plain_response_headers(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut HeaderMap) -> Result<()>,
) -> Result<()> {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, placeholder).into();
    parts.headers.reserve(2);
    let r = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    r
}

/// What the gateway adds to every proxied response: the request id.
pub fn response_headers(headers: &mut HeaderMap, request_id: &str) -> Result<()> {
    headers.insert(X_REQUEST_ID, value(request_id)?);
    Ok(())
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
    let has_authority = req.uri.authority().is_some();
    // The gateway writes 4 headers, plus the identity of an authenticated caller.
    let extra = 5 + ctx.principal.as_ref().map_or(0, |p| 6 + p.claims.len());
    with_plain_headers(req, extra, |headers| {
        shape_headers(headers, ctx, route, has_authority)
    })
}

/// Everything `prepare_upstream_request` does to the headers (see the module doc).
fn shape_headers(
    headers: &mut HeaderMap,
    ctx: &RequestCtx,
    route: &crate::route::Route,
    has_authority: bool,
) -> Result<()> {
    // One pass to find the headers we must drop (usually none), instead of a hash lookup per
    // name on every request: path/method overrides, any client-sent `X-Portcullis-*` (the
    // identity contract: only the gateway writes those), and the route's credential headers.
    let forward_token = ctx.principal.as_ref().is_some_and(|p| {
        route.authn.iter().any(|a| match a.as_ref() {
            crate::auth::Authenticator::Jwt(j) => j.forward_token && j.name == p.authenticator,
            _ => false,
        })
    });
    let drop: Vec<HeaderName> = headers
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
        // `remove` drops every value of the name.
        headers.remove(h);
    }
    if !forward_token {
        strip_token_cookies(headers, route)?;
    }
    if let Some(p) = &ctx.principal {
        set_identity(headers, p)?;
    }

    // X-Forwarded-For: append the peer to a trusted chain, otherwise start a new one.
    let mut chain = String::new();
    if ctx.peer_trusted {
        for v in headers.get_all(&X_FORWARDED_FOR) {
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
            headers.insert(X_FORWARDED_FOR, value(ctx.peer_text.as_str())?);
        } else {
            chain.push_str(", ");
            chain.push_str(&ctx.peer_text);
            headers.insert(X_FORWARDED_FOR, value(chain)?);
        }
    } else {
        headers.remove(&X_FORWARDED_FOR);
    }

    if !ctx.peer_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if ctx.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !ctx.peer_trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        // The Host the client asked for, port included (already validated by `admit`).
        let host = headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| HeaderValue::from_str(&ctx.host).ok())
            .filter(|h| !h.is_empty());
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !ctx.host.is_empty() && !headers.contains_key(http::header::HOST) && !has_authority {
        // Absolute-form or HTTP/1.0 without Host: give the upstream the host routing used, so
        // a multi-vhost service cannot fall back to its default vhost.
        headers.insert(http::header::HOST, value(ctx.host.as_str())?);
    }
    headers.insert(X_REQUEST_ID, value(ctx.request_id.as_str())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_headers_keep_everything_but_the_name_case() {
        let mut req = RequestHeader::build("POST", b"/a/b?c=d", None).unwrap();
        req.set_version(http::Version::HTTP_10);
        req.append_header("X-Mixed-Case", "1").unwrap();
        req.append_header("x-mixed-case", "2").unwrap();
        with_plain_headers(&mut req, 3, |h| {
            h.insert(X_REQUEST_ID, HeaderValue::from_static("rid"));
            Ok(())
        })
        .unwrap();
        assert!(!req.has_case());
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.raw_path(), b"/a/b?c=d");
        assert_eq!(req.version, http::Version::HTTP_10);
        // HTTP/2 upstreams: END_STREAM on HEADERS is kept as the proxy set it.
        let mut h2 = RequestHeader::build("POST", b"/", None).unwrap();
        h2.set_version(http::Version::HTTP_2);
        h2.set_send_end_stream(false);
        with_plain_headers(&mut h2, 1, |_| Ok(())).unwrap();
        assert_eq!(h2.send_end_stream(), Some(false));
        let v: Vec<_> = req.headers.get_all("x-mixed-case").iter().collect();
        assert_eq!(v, ["1", "2"], "values and their order are kept");
        assert_eq!(req.headers["x-request-id"], "rid");
    }

    #[test]
    fn plain_response_headers_keep_status_and_a_custom_reason() {
        let mut resp = ResponseHeader::build(418, None).unwrap();
        resp.set_reason_phrase(Some("Short And Stout")).unwrap();
        resp.append_header("X-Upstream", "u").unwrap();
        with_plain_response_headers(&mut resp, |h| response_headers(h, "rid")).unwrap();
        assert_eq!(resp.status.as_u16(), 418);
        assert_eq!(resp.get_reason_phrase(), Some("Short And Stout"));
        assert_eq!(resp.headers["x-upstream"], "u");
        assert_eq!(resp.headers["x-request-id"], "rid");
        // A request id that cannot be a header value fails instead of being altered.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        assert!(with_plain_response_headers(&mut resp, |h| response_headers(h, "a\nb")).is_err());
        assert_eq!(resp.status.as_u16(), 200);
    }
}
