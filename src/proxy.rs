//! Pingora `ProxyHttp` wiring. Each phase delegates to one module function; no policy here.
//!
//! | phase                   | delegate                                   |
//! |-------------------------|--------------------------------------------|
//! | `new_ctx`               | pin the current `Snapshot`                 |
//! | `early_request_filter`  | `frontdoor::header_complete` (deadlines), `gateway::identify` (request id, client IP) |
//! | `request_filter`        | `gateway::admit`, `frontdoor::preread_chunked`; rejections via `error::respond` |
//! | `request_body_filter`   | body size limit for chunked bodies         |
//! | `upstream_peer`         | `upstream::choose_peer`                    |
//! | `fail_to_connect`       | retry on another target (`upstream`)       |
//! | `upstream_request_filter` | `forward::prepare_upstream_request`      |
//! | `response_filter`       | `X-Request-Id`; `ratelimit::add_response_headers`; close after a refused upgrade |
//! | `fail_to_proxy`         | `error::respond` (502/504/…)               |
//! | `logging`               | `frontdoor::request_complete`, metrics, `audit::record` |

use crate::error::{self, Reject};
use crate::gateway::{self, Conn, RequestCtx};
use crate::state::GatewayState;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use std::sync::Arc;

pub struct Gateway {
    pub state: Arc<GatewayState>,
}

fn conn_facts(session: &Session) -> Conn {
    // Only the raw header bytes show what Pingora's lenient parse normalised away.
    let raw_framing_bad = session
        .as_http1()
        .is_some_and(|h1| gateway::raw_framing_bad(&h1.get_headers_raw_bytes()));
    let client_cert = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<crate::auth::mtls::ClientCert>())
        .map(|c| Arc::new(c.clone()));
    Conn {
        raw_framing_bad,
        client_cert,
        peer: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
    }
}

/// Map a Pingora error that ended proxying to our rejection.
fn classify(e: &Error) -> Option<Reject> {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(413) => return Some(Reject::BodyTooLarge),
        HTTPStatus(400) => return Some(Reject::BadRequest),
        _ => {}
    }
    // The client's side first: Pingora reports some client faults with connect-like types
    // (bytes pipelined behind a request whose answer is pending are a downstream
    // `ConnectError`), and none of them may look like an upstream failure (a 502 invites
    // a retry of a request the upstream may already have run).
    if e.esource() == &ErrorSource::Downstream {
        return match e.etype() {
            ReadTimedout | WriteTimedout => {
                // `limits.idle_timeout` on HTTP/2 (set by `frontdoor::header_complete`).
                crate::metrics::client_timeout("idle");
                matches!(e.etype(), ReadTimedout).then_some(Reject::RequestTimeout)
            }
            // The client went away: nobody to answer.
            WriteError | ReadError | ConnectionClosed => None,
            _ => Some(Reject::BadRequest),
        };
    }
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            Some(Reject::UpstreamTimeout)
        }
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | ConnectProxyFailure
        | TLSHandshakeFailure | InvalidCert => Some(Reject::UpstreamConnect),
        _ => Some(Reject::UpstreamError),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = gateway::Ctx;

    fn new_ctx(&self) -> gateway::Ctx {
        let mut ctx = RequestCtx::new(self.state.snapshot.load_full());
        if let Some(audit) = &self.state.audit {
            crate::audit::admit(audit, &mut ctx);
        }
        gateway::Ctx::new(ctx)
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut gateway::Ctx,
    ) -> Result<()> {
        crate::frontdoor::header_complete(session, ctx.snapshot.limits.idle_timeout);
        let conn = conn_facts(session);
        gateway::identify(session.req_header(), &conn, ctx);
        crate::upgrade::close_when_handing_over(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut gateway::Ctx) -> Result<bool> {
        let mut admitted = gateway::admit(session.req_header(), ctx).await;
        if admitted.is_ok() {
            let max_body = ctx.snapshot.limits.max_body_bytes;
            admitted = crate::frontdoor::preread_chunked(session, max_body).await;
        }
        match admitted {
            Ok(()) => Ok(false),
            Err(reject) => {
                // Recorded before writing: if the client is gone and the write fails, the
                // audit record and metrics still show this refusal, not an upstream error.
                ctx.reject = Some(reject.clone());
                error::respond(session, &reject, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut gateway::Ctx,
    ) -> Result<()> {
        gateway::body_chunk(session, body.as_ref(), end_of_stream, ctx)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut gateway::Ctx,
    ) -> Result<Box<HttpPeer>> {
        crate::upstream::choose_peer(session.req_header(), ctx).map_err(|reject| {
            ctx.reject = Some(reject);
            Error::explain(ErrorType::ConnectProxyFailure, "no upstream target")
        })
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut gateway::Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(target)) = (&ctx.route, ctx.target) {
            let pool = &route.pool;
            let kind = if matches!(e.etype(), ErrorType::ConnectTimedout) {
                "timeout"
            } else {
                "connect"
            };
            crate::metrics::upstream_error(&pool.name, &pool.target_label(&target), kind);
            // Nothing was sent yet, so another target is safe for any method.
            if ctx.tried.len() <= pool.retries {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut gateway::Ctx,
    ) -> Result<()> {
        crate::forward::prepare_upstream_request(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut gateway::Ctx,
    ) -> Result<()> {
        crate::audit::mark_upstream_answer(ctx);
        if gateway::upgrade_refused(session.req_header(), upstream_response) {
            // Whatever the client sent after the upgrade request is not trusted as HTTP.
            session.set_keepalive(None);
        }
        crate::forward::with_plain_response_headers(upstream_response, |h| {
            crate::forward::response_headers(h, &ctx.request_id)?;
            crate::ratelimit::add_response_headers(&ctx.limits, h)
        })
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut gateway::Ctx,
    ) -> FailToProxy {
        let reject = ctx.reject.clone().or_else(|| {
            // A body whose raw chunk framing the front door refused, or a client the front
            // door's idle timer cut.
            if crate::frontdoor::body_framing_bad(session) {
                Some(Reject::AmbiguousFraming)
            } else if crate::frontdoor::idle_timed_out(session) {
                Some(Reject::RequestTimeout)
            } else {
                classify(e)
            }
        });
        let mut code = 0;
        if let Some(reject) = &reject {
            if let (Some(route), Some(target), Reject::UpstreamTimeout | Reject::UpstreamError) =
                (&ctx.route, ctx.target, reject)
            {
                let kind = if *reject == Reject::UpstreamTimeout {
                    "timeout"
                } else {
                    "response"
                };
                crate::metrics::upstream_error(
                    &route.pool.name,
                    &route.pool.target_label(&target),
                    kind,
                );
            }
            if session.response_written().is_none() {
                code = error::respond(session, reject, &ctx.request_id)
                    .await
                    .unwrap_or_else(|err| {
                        log::debug!("could not send error response: {err}");
                        0
                    });
            }
        }
        ctx.reject = reject;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut gateway::Ctx) {
        crate::frontdoor::request_complete(session);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route_label();
        crate::metrics::record_request(
            route,
            ctx.route.as_deref().map(|r| &r.metrics),
            crate::metrics::method_label(&session.req_header().method),
            status,
            ctx.start.elapsed().as_secs_f64(),
        );
        if let Some(r) = &ctx.reject {
            crate::metrics::gateway_response(route, r.code());
        }
        if let Some(d) = ctx.authz {
            crate::authz::record(route, ctx.route.as_deref(), d, &ctx.request_id);
        }
        if let Some(audit) = &self.state.audit {
            crate::audit::record(audit, session, ctx);
        }
    }
}
