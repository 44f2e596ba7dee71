//! Shapes the request sent upstream; called from `upstream_request_filter`.
//!
//! - The request target becomes exactly the normalised path that routing matched (minus
//!   `strip_prefix`) plus the original query string, so the service sees what the policy saw.
//! - `X-Forwarded-For/-Proto/-Host` and `X-Request-Id` are written by the gateway. A client's
//!   own values are kept only when the TCP peer is a trusted proxy; `X-Real-IP` and
//!   `Forwarded` are always replaced/removed so no spoofed variant reaches the service.
//! - Headers some frameworks use to override the path or method (`X-Original-URL`,
//!   `X-Rewrite-URL`, `X-HTTP-Method-Override`, …) are removed: they would let a client make
//!   the service act on a different path or method than the one the gateway authorised.

use crate::gateway::RequestCtx;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, OrErr, Result};

/// Removed from every upstream request.
const OVERRIDE_HEADERS: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
];

pub fn prepare_upstream_request(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(route) = &ctx.route else {
        return Error::e_explain(ErrorType::InternalError, "no route on upstream request");
    };
    let path = route.upstream_path(&ctx.path);
    let target = match &ctx.query {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    let uri: http::Uri = target.parse().or_err(
        ErrorType::InternalError,
        "normalised target is not a valid URI",
    )?;
    req.set_uri(uri);

    for h in OVERRIDE_HEADERS {
        req.remove_header(h);
    }

    let peer = ctx
        .peer_ip
        .map(|ip| crate::clientip::canonical(&ip).to_string());
    // X-Forwarded-For: append the peer to a trusted chain, otherwise start a new one.
    let prior: Vec<String> = if ctx.peer_trusted {
        req.headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    req.remove_header("x-forwarded-for");
    if let Some(peer) = &peer {
        let mut chain = prior.join(", ");
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        chain.push_str(peer);
        req.insert_header("x-forwarded-for", chain)?;
    }

    if !ctx.peer_trusted || req.headers.get("x-forwarded-proto").is_none() {
        req.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
    }
    if !ctx.peer_trusted || req.headers.get("x-forwarded-host").is_none() {
        // The Host the client asked for, port included (already validated by `admit`).
        let host = req
            .headers
            .get("host")
            .cloned()
            .or_else(|| http::HeaderValue::from_str(&ctx.host).ok())
            .filter(|h| !h.is_empty());
        req.remove_header("x-forwarded-host");
        if let Some(h) = host {
            req.insert_header("x-forwarded-host", h)?;
        }
    }
    req.remove_header("x-real-ip");
    if let Some(ip) = ctx.client_ip {
        req.insert_header("x-real-ip", ip.to_string())?;
    }
    req.insert_header("x-request-id", ctx.request_id.as_str())?;
    Ok(())
}
