//! `portcullis echo`: a small HTTP(S) upstream that answers every request with a JSON
//! description of what it received (method, target, headers, body size). The demo, the
//! black-box tests and the benchmarks use it as the real service behind the gateway.
//!
//! Test hooks, read from request headers: `x-echo-delay-ms` (sleep before answering, at most
//! 60 s), `x-echo-status` (status code to answer with) and `x-echo-bytes` (answer with that
//! many bytes of `x` instead of the JSON description, at most 64 MiB: a large response for
//! slow-reader tests).

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct EchoApp {
    pub name: String,
    /// Answer a fixed 2-byte body instead of the request description (benchmarks: the
    /// response must not depend on the headers each proxy adds).
    pub fixed: bool,
}

const MAX_BODY: usize = 64 * 1024 * 1024;

#[async_trait]
impl ServeHttp for EchoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if self.fixed {
            let _ = session.drain_request_body().await;
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain")
                .header("content-length", 2)
                .body(b"ok".to_vec())
                .unwrap_or_default();
        }
        let mut body_bytes = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body_bytes += chunk.len();
            if body_bytes > MAX_BODY {
                break;
            }
        }
        let req = session.req_header();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(ms) = header("x-echo-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
        let status = header("x-echo-status")
            .and_then(|v| v.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        if let Some(n) = header("x-echo-bytes").and_then(|v| v.parse::<usize>().ok()) {
            let body = vec![b'x'; n.min(MAX_BODY)];
            return Response::builder()
                .status(status)
                .header("content-type", "text/plain")
                .header("content-length", body.len())
                .body(body)
                .unwrap_or_default();
        }
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers.iter() {
            headers
                .entry(k.as_str().to_string())
                .or_default()
                .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let raw_target = String::from_utf8_lossy(req.raw_path()).into_owned();
        let body = serde_json::json!({
            "echo": self.name,
            "method": req.method.as_str(),
            "target": raw_target,
            "path": req.uri.path(),
            "query": req.uri.query(),
            "version": format!("{:?}", req.version),
            "headers": headers,
            "body_bytes": body_bytes,
        })
        .to_string()
        .into_bytes();
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("x-echo-name", self.name.as_str())
            .body(body)
            .unwrap_or_default()
    }
}

/// Run the echo server until the process is stopped.
pub fn run(
    listen: &[String],
    name: &str,
    tls: Option<(String, String)>,
    threads: usize,
    fixed: bool,
) -> Result<(), String> {
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/portcullis-echo-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/portcullis-echo-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    for addr in listen {
        crate::server::check_bind(addr)?;
    }
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut svc = Service::new(
        format!("echo {name}"),
        EchoApp {
            name: name.to_string(),
            fixed,
        },
    );
    for addr in listen {
        match &tls {
            Some((cert, key)) => svc
                .add_tls(addr, cert, key)
                .map_err(|e| format!("TLS setup for {addr} failed: {e}"))?,
            None => svc.add_tcp(addr),
        }
    }
    server.add_service(svc);
    server.run_forever()
}
