//! The upstream request's shaping (`forward::prepare_upstream_request`, called from
//! `upstream_request_filter`): forwarded headers and request id on a public route, plus the
//! identity headers and credential removal on an authenticated one. The request header is
//! built the way Pingora's HTTP/1 parser builds it (case-preserving, sized to what arrived),
//! because Pingora's header map growth is a large part of the cost.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use portcullis::auth::{AuthMethod, Principal};
use portcullis::config::raw::Method;
use portcullis::gateway::RequestCtx;
use portcullis::route::RouteMatch;
use std::sync::Arc;

const CONFIG: &str = r#"
server:
  listen: [{ addr: "127.0.0.1:19080" }]
authenticators:
  idp:
    jwt:
      issuer: "https://bench.test/"
      algorithms: [RS256]
      keys: [{ kid: bench, pem_file: tests/fixtures/jwt/rsa.pub.pem }]
upstreams:
  echo: { targets: ["127.0.0.1:9001"] }
routes:
  - { id: jwt, match: { path_prefix: /jwt }, upstream: echo, authn: [idp] }
  - { id: bench, match: { path_prefix: / }, upstream: echo, public: true }
"#;

/// What wrk sends (Host only) and what curl sends (Host, User-Agent, Accept), plus a token.
fn request(path: &str, extra: &[(&str, &str)]) -> RequestHeader {
    let mut headers: Vec<(&str, &str)> = vec![("Host", "127.0.0.1:19080")];
    headers.extend_from_slice(extra);
    let mut r = RequestHeader::build("GET", path.as_bytes(), Some(headers.len())).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), v).unwrap();
    }
    r
}

fn ctx(snapshot: &Arc<portcullis::config::Snapshot>, path: &str, jwt: bool) -> RequestCtx {
    let mut c = RequestCtx::new(snapshot.clone());
    c.peer_text = "127.0.0.1".into();
    c.host = "127.0.0.1:19080".into();
    c.path = path.into();
    c.query = Some("q=1".into());
    c.request_id = "0123456789abcdef0123456789abcdef".into();
    c.route = match snapshot.router.lookup("127.0.0.1", path, Some(Method::Get)) {
        RouteMatch::Found(r) => Some(r.clone()),
        _ => panic!("no route for {path}"),
    };
    if jwt {
        c.principal = Some(Principal {
            method: AuthMethod::Jwt,
            authenticator: "idp".into(),
            subject: "user-1".into(),
            consumer: None,
            key_id: None,
            issuer: Some("https://bench.test/".into()),
            scopes: Arc::new(["bench".to_string()]),
            roles: Arc::new([]),
            groups: Arc::new([]),
            claims: Arc::new([]),
            policy_claims: Arc::new([]),
            expires_at: None,
        });
    }
    c
}

/// (name, path, authenticated, extra request headers)
type Case<'a> = (&'a str, &'a str, bool, Vec<(&'a str, &'a str)>);

fn bench(c: &mut Criterion) {
    let cfg = portcullis::config::load_str(CONFIG, std::path::Path::new(".")).unwrap();
    let snapshot = Arc::new(cfg.snapshot);
    let token = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl";
    let curl = [("User-Agent", "curl/7.88.1"), ("Accept", "*/*")];
    let cases: [Case; 3] = [
        ("public_wrk_1_header", "/bench/path", false, vec![]),
        ("public_curl_3_headers", "/bench/path", false, curl.to_vec()),
        (
            "jwt_curl_plus_token",
            "/jwt/bench/path",
            true,
            [curl.as_slice(), &[("Authorization", token)]].concat(),
        ),
    ];
    let mut g = c.benchmark_group("prepare_upstream_request");
    for (name, path, jwt, extra) in &cases {
        let mut cx = ctx(&snapshot, path, *jwt);
        let template = request(&format!("{path}?q=1"), extra);
        g.bench_function(*name, |b| {
            b.iter_batched(
                || template.clone(),
                |mut req| {
                    portcullis::forward::prepare_upstream_request(&mut req, &mut cx).unwrap();
                    black_box(req)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // The primitive: one header insert into a request header as Pingora parsed it.
    let mut g = c.benchmark_group("header_insert");
    let template = request("/bench/path?q=1", &curl);
    g.bench_function("pingora_insert_header_x4", |b| {
        b.iter_batched(
            || template.clone(),
            |mut req| {
                req.insert_header("X-Forwarded-For", "127.0.0.1").unwrap();
                req.insert_header("X-Forwarded-Proto", "http").unwrap();
                req.insert_header("X-Forwarded-Host", "127.0.0.1:19080")
                    .unwrap();
                req.insert_header("X-Request-Id", "0123456789abcdef")
                    .unwrap();
                black_box(req)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
