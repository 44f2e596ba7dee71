//! Route matching with 1,000 routes, and path normalisation: the per-request cost of the
//! routing step in `request_filter`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::config::raw::Balance;
use portcullis::route::normalize::normalize_path;
use portcullis::route::{HostSpec, PathSpec, Route, Router, ALL_METHODS};
use portcullis::upstream::{HashKey, Pool, PoolSpec, Timeouts};
use std::sync::Arc;

fn router() -> Router {
    let pool = Arc::new(Pool::build(PoolSpec {
        name: "p".into(),
        targets: vec![(([127, 0, 0, 1], 9001).into(), 1)],
        balance: Balance::RoundRobin,
        hash_key: HashKey::ClientIp,
        timeouts: Timeouts::default(),
        retries: 1,
        tls: None,
        health: None,
    }));
    let mut r = Router::default();
    for i in 0..1000 {
        let route = Arc::new(Route {
            id: format!("r{i}").into(),
            pool: pool.clone(),
            public: true,
            authn: Vec::new(),
            strip_prefix: None,
            methods: ALL_METHODS,
            websocket: false,
            policy: None,
            rate_limits: Vec::new(),
            shadow: false,
            metrics: Default::default(),
        });
        // A realistic mix: host-specific, wildcard and host-less; prefixes and exact paths.
        let host = match i % 4 {
            0 => HostSpec::Exact(format!("svc{}.example.com", i % 50)),
            1 => HostSpec::Wildcard(format!(".tenant{}.example.com", i % 20)),
            _ => HostSpec::Any,
        };
        let path = if i % 3 == 0 {
            PathSpec::Exact(format!("/v{}/things/{i}/detail", i % 5))
        } else {
            PathSpec::Prefix(format!("/v{}/service{i}/items", i % 5))
        };
        r.insert(&host, &path, route);
    }
    r
}

fn bench(c: &mut Criterion) {
    let r = router();
    assert_eq!(r.len(), 1000);
    let get = Some(portcullis::config::raw::Method::Get);
    c.bench_function("route_match/1000_routes/prefix_hit", |b| {
        b.iter(|| {
            r.lookup(
                black_box("api.example.org"),
                black_box("/v2/service998/items/42/sub"),
                get,
            )
        })
    });
    c.bench_function("route_match/1000_routes/exact_host_hit", |b| {
        b.iter(|| {
            r.lookup(
                black_box("svc8.example.com"),
                black_box("/v4/service8/items/1"),
                get,
            )
        })
    });
    c.bench_function("route_match/1000_routes/wildcard_host", |b| {
        b.iter(|| {
            r.lookup(
                black_box("a.tenant1.example.com"),
                black_box("/v1/service1/items"),
                get,
            )
        })
    });
    c.bench_function("route_match/1000_routes/miss", |b| {
        b.iter(|| r.lookup(black_box("x.org"), black_box("/no/such/path/at/all"), get))
    });
    c.bench_function("normalize_path/clean", |b| {
        b.iter(|| normalize_path(black_box(b"/v1/orders/47/items")))
    });
    c.bench_function("normalize_path/dirty", |b| {
        b.iter(|| normalize_path(black_box(b"/v1//orders/./%34%37/../47/items%7e")))
    });
}

/// The raw HTTP/1 framing check every request pays (`gateway::raw_framing_bad`).
fn framing(c: &mut Criterion) {
    let typical = b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: application/json\r\nAuthorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU\r\nX-Request-Id: 0123456789abcdef\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n";
    c.bench_function("raw_framing_bad/typical_420B", |b| {
        b.iter(|| portcullis::gateway::raw_framing_bad(black_box(&typical[..])))
    });
    let chunked = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n";
    c.bench_function("raw_framing_bad/chunked", |b| {
        b.iter(|| portcullis::gateway::raw_framing_bad(black_box(&chunked[..])))
    });
}

criterion_group!(benches, bench, framing);
criterion_main!(benches);
