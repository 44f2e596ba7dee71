//! The one place where a gateway decision becomes an HTTP response.
//!
//! Every response Portcullis writes itself is JSON: `{"error": <stable code>, "message": ...,
//! "request_id": ...}` (plus `detail` for path/host problems), with `Cache-Control: no-store`
//! and `X-Request-Id`. Codes are part of the API (docs/errors.md) and double as metric
//! `reason` labels; messages never contain internals (addresses, config, stack traces).

use crate::auth::AuthError;
use crate::authz::Denial;
use crate::ratelimit::LimitKind;
use crate::route::normalize::{HostError, PathError};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::sync::Arc;
use thiserror::Error;

/// Why the gateway answered instead of the upstream.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Reject {
    #[error("no route matches this request")]
    NoRoute,
    #[error("method not allowed on this route")]
    MethodNotAllowed { allow: u8 },
    #[error("invalid request path: {0}")]
    InvalidPath(PathError),
    #[error("invalid host: {0}")]
    InvalidHost(HostError),
    #[error("request target too long")]
    UriTooLong,
    #[error("request header section too large")]
    HeadersTooLarge,
    #[error("too many request header fields")]
    TooManyHeaders,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("ambiguous or malformed message framing")]
    AmbiguousFraming,
    #[error("the client was too slow sending its request")]
    RequestTimeout,
    #[error("no healthy upstream target")]
    NoHealthyUpstream,
    #[error("could not connect to the upstream")]
    UpstreamConnect,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream failed")]
    UpstreamError,
    #[error("malformed request")]
    BadRequest,
    #[error("protocol upgrade not allowed on this route")]
    UpgradeNotAllowed,
    #[error("{reason}")]
    Unauthenticated {
        reason: AuthError,
        /// `WWW-Authenticate` value of the authenticator that refused.
        challenge: &'static str,
    },
    #[error("{reason}")]
    Forbidden {
        reason: Denial,
        /// The caller presented a bearer token: answer with RFC 6750 `insufficient_scope`.
        bearer: bool,
    },
    #[error("the audit trail cannot record requests right now")]
    AuditUnavailable,
    #[error("{}", match kind {
        LimitKind::Rate => "rate limit exceeded",
        LimitKind::Inflight => "too many concurrent requests",
        LimitKind::Unavailable => "rate limit state unavailable",
    })]
    RateLimited {
        policy: Arc<str>,
        kind: LimitKind,
        /// Seconds, for `Retry-After`.
        retry_after: u64,
        /// `RateLimit-Policy` and `RateLimit` items (rate limits only).
        policy_item: Option<Arc<str>>,
        rate_item: Option<String>,
    },
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::NoRoute => 404,
            Reject::MethodNotAllowed { .. } => 405,
            Reject::InvalidPath(_)
            | Reject::InvalidHost(_)
            | Reject::AmbiguousFraming
            | Reject::BadRequest
            | Reject::UpgradeNotAllowed => 400,
            Reject::HeadersTooLarge | Reject::TooManyHeaders => 431,
            Reject::UriTooLong => 414,
            Reject::RequestTimeout => 408,
            Reject::BodyTooLarge => 413,
            Reject::NoHealthyUpstream | Reject::AuditUnavailable => 503,
            Reject::UpstreamConnect | Reject::UpstreamError => 502,
            Reject::UpstreamTimeout => 504,
            // Not the caller's fault: the IdP's keys were never loaded.
            Reject::Unauthenticated {
                reason: AuthError::KeysUnavailable,
                ..
            } => 503,
            Reject::Unauthenticated { .. } => 401,
            Reject::Forbidden { .. } => 403,
            // Fail-closed Redis outage: not the caller's fault either.
            Reject::RateLimited {
                kind: LimitKind::Unavailable,
                ..
            } => 503,
            Reject::RateLimited { .. } => 429,
        }
    }

    /// Stable machine-readable code (also the metrics `reason` label).
    pub fn code(&self) -> &'static str {
        match self {
            Reject::NoRoute => "no_route",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::InvalidPath(_) => "invalid_path",
            Reject::InvalidHost(_) => "invalid_host",
            Reject::UriTooLong => "uri_too_long",
            Reject::RequestTimeout => "request_timeout",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::TooManyHeaders => "too_many_headers",
            Reject::BodyTooLarge => "body_too_large",
            Reject::AmbiguousFraming => "ambiguous_framing",
            Reject::NoHealthyUpstream => "no_healthy_upstream",
            Reject::AuditUnavailable => "audit_unavailable",
            Reject::UpstreamConnect => "upstream_connect_failed",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::UpstreamError => "upstream_error",
            Reject::BadRequest => "bad_request",
            Reject::UpgradeNotAllowed => "upgrade_not_allowed",
            Reject::Unauthenticated { reason, .. } => reason.code(),
            Reject::Forbidden { reason, .. } => reason.code(),
            Reject::RateLimited {
                kind: LimitKind::Unavailable,
                ..
            } => "rate_limit_unavailable",
            Reject::RateLimited { .. } => "rate_limited",
        }
    }

    fn detail(&self) -> Option<&'static str> {
        match self {
            Reject::InvalidPath(e) => Some(e.code()),
            Reject::InvalidHost(e) => Some(e.code()),
            Reject::RateLimited {
                kind: LimitKind::Inflight,
                ..
            } => Some("max_inflight"),
            _ => None,
        }
    }

    /// Whether the connection must be closed after answering: for malformed framing or
    /// oversized input the rest of the byte stream cannot be trusted or is not worth reading.
    fn close_connection(&self) -> bool {
        matches!(
            self,
            Reject::AmbiguousFraming
                | Reject::BadRequest
                | Reject::UpgradeNotAllowed
                | Reject::HeadersTooLarge
                | Reject::UriTooLong
                | Reject::RequestTimeout
                | Reject::TooManyHeaders
                | Reject::BodyTooLarge
                | Reject::InvalidHost(_)
        ) || self.status() >= 500
    }
}

use crate::audit::json_str;

pub fn body(reject: &Reject, request_id: &str) -> String {
    let mut b = String::with_capacity(128);
    b.push_str("{\"error\":");
    json_str(&mut b, reject.code());
    b.push_str(",\"message\":");
    json_str(&mut b, &reject.to_string());
    if let Some(d) = reject.detail() {
        b.push_str(",\"detail\":");
        json_str(&mut b, d);
    }
    if let Reject::RateLimited { policy, .. } = reject {
        b.push_str(",\"policy\":");
        json_str(&mut b, policy);
    }
    b.push_str(",\"request_id\":");
    json_str(&mut b, request_id);
    b.push('}');
    b
}

/// Build the full response header for a rejection.
pub fn response_header(
    reject: &Reject,
    request_id: &str,
    body_len: usize,
) -> Result<ResponseHeader> {
    // No case map: refusals are the cheap path (S7 in benches/RESULTS.md), and every name
    // here is ours.
    let mut h = ResponseHeader::build_no_case(reject.status(), Some(8))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body_len.to_string())?;
    h.insert_header("cache-control", "no-store")?;
    h.insert_header("x-request-id", request_id)?;
    if let Reject::MethodNotAllowed { allow } = reject {
        h.insert_header("allow", crate::route::allow_header(*allow))?;
    }
    if let Reject::Unauthenticated { challenge, .. } = reject {
        h.insert_header("www-authenticate", *challenge)?;
    }
    if let Reject::Forbidden { bearer: true, .. } = reject {
        // No `scope=` attribute: which scope is missing is policy internals.
        h.insert_header(
            "www-authenticate",
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\"",
        )?;
    }
    if let Reject::RateLimited {
        retry_after,
        policy_item,
        rate_item,
        ..
    } = reject
    {
        h.insert_header("retry-after", retry_after.to_string())?;
        if let (Some(p), Some(r)) = (policy_item, rate_item) {
            h.insert_header("ratelimit-policy", &**p)?;
            h.insert_header("ratelimit", r.as_str())?;
        }
    }
    if reject.close_connection() {
        h.insert_header("connection", "close")?;
    }
    Ok(h)
}

/// A whole HTTP/1.1 error response as bytes, for the front door, which answers on the raw
/// stream before (or instead of) Pingora's HTTP layer: header timeouts, and requests
/// Pingora's parser refused. Always `Connection: close`; no challenge headers (these
/// answers never come from a route).
pub fn raw_http1(reject: &Reject, request_id: &str) -> Vec<u8> {
    let body = body(reject, request_id);
    let allow = match reject {
        Reject::MethodNotAllowed { allow } => {
            format!("allow: {}\r\n", crate::route::allow_header(*allow))
        }
        _ => String::new(),
    };
    let status = reject.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-request-id: {request_id}\r\n{allow}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Write the JSON error response for `reject`. Returns the status written.
pub async fn respond(session: &mut Session, reject: &Reject, request_id: &str) -> Result<u16> {
    let body = body(reject, request_id);
    let header = response_header(reject, request_id, body.len())?;
    if reject.close_connection() {
        session.set_keepalive(None);
    }
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let payload = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    session.write_response_body(Some(payload), true).await?;
    Ok(reject.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_code_and_request_id() {
        let b = body(&Reject::InvalidPath(PathError::EncodedSeparator), "abc\"1");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"], "invalid_path");
        assert_eq!(v["detail"], "encoded_separator");
        assert_eq!(v["request_id"], "abc\"1");
    }

    #[test]
    fn statuses() {
        assert_eq!(Reject::NoRoute.status(), 404);
        assert_eq!(Reject::MethodNotAllowed { allow: 1 }.status(), 405);
        assert_eq!(Reject::HeadersTooLarge.status(), 431);
        assert_eq!(Reject::BodyTooLarge.status(), 413);
        assert_eq!(Reject::UpstreamTimeout.status(), 504);
        assert_eq!(Reject::NoHealthyUpstream.status(), 503);
    }
}
