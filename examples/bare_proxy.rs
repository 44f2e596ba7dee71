//! The benchmark baseline: a bare Pingora proxy with no filters, built with the same profile,
//! allocator (mimalloc) and runtime settings (`work_stealing: false`) as portcullis, so the
//! ratio portcullis / bare measures exactly what the gateway's own logic costs.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM THREADS`
#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let upstream = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9001)));
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/bare-proxy-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/bare-proxy-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Bare { upstream });
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever()
}
