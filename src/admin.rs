//! Admin listener (`server.admin`, default 127.0.0.1:9100): `/metrics`, `/healthz`,
//! `/readyz`, `/config`. A separate Pingora service on its own address, so none of it is ever reachable
//! through a proxy listener (the config compiler also refuses a shared port).

use crate::state::GatewayState;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct AdminApp {
    pub state: Arc<GatewayState>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", body.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed"}),
            );
        }
        match req.uri.path() {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::encode(),
            ),
            "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            // What is being served and how the last reload went (see `reload::ConfigStatus`).
            "/config" => json(StatusCode::OK, self.state.config_status.load().to_json()),
            "/readyz" => {
                let snap = self.state.snapshot.load();
                // Ready once upstream health checks and every JWKS URL had a first round, and
                // every signal we answer has its handler (a SIGHUP before that would kill us).
                if self.state.ready.load(Ordering::Acquire)
                    && crate::upgrade::signals_ready()
                    && crate::auth::jwks::all_attempted(&snap)
                {
                    json(
                        StatusCode::OK,
                        serde_json::json!({"status": "ready", "generation": snap.generation}),
                    )
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "starting"}),
                    )
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found"}),
            ),
        }
    }
}
