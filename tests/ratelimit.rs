//! Rate limiting through the real gateway: exactness (sequential and 50 concurrent clients),
//! 429 answers and RateLimit headers, several policies per route, trusted-proxy chains and
//! header rotation, API-key buckets, credential stuffing, fallback keys, shadow mode,
//! concurrency limits, counters across reloads, and the Redis backend — two gateway processes
//! sharing one real `redis-server`, restarts, and Redis hanging or killed mid-run.

mod common;
use common::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tests that load the machine (many clients) or measure latency run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

const TRUST_LOCAL: &str = "  trusted_proxies: [\"127.0.0.1/32\"]\n";

fn body(e: &Echo, limits: &str, routes: &str) -> String {
    format!(
        "rate_limits:\n{limits}\nupstreams:\n  e: {{ targets: [\"{}\"] }}\nroutes:\n{routes}",
        e.addr
    )
}

fn statuses(rs: &[Response]) -> Vec<u16> {
    rs.iter().map(|r| r.status).collect()
}

fn from_ip(gw: &Gateway, path: &str, ip: &str) -> Response {
    get_with(gw.addr, path, &[("x-forwarded-for", ip)])
}

/// `clients` threads each send `each` GETs for `path`, alternating over `addrs`; all statuses.
fn load(
    addrs: &[std::net::SocketAddr],
    clients: usize,
    each: usize,
    path: &'static str,
) -> Vec<u16> {
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let addrs = addrs.to_vec();
            std::thread::spawn(move || {
                (0..each)
                    .map(|i| get(addrs[(t + i) % addrs.len()], path).status)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn sequential_requests_get_exactly_the_limit_then_429_with_headers() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        "",
        &body(
            &e,
            "  per-ip: { key: client_ip, rate: 5/min, headers: true }",
            "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [per-ip] }",
        ),
    );
    let rs: Vec<Response> = (0..10).map(|_| gw.get("/r")).collect();
    assert_eq!(
        statuses(&rs),
        [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]
    );
    for (i, r) in rs[..5].iter().enumerate() {
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per-ip\";q=5;w=60"),
            "allowed responses carry the policy"
        );
        let rl = r.header("ratelimit").unwrap();
        assert!(
            rl.starts_with(&format!("\"per-ip\";r={};t=", 4 - i)),
            "remaining counts down: {rl}"
        );
    }
    let limited = &rs[5];
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"per-ip\";q=5;w=60")
    );
    assert_eq!(
        limited.header("ratelimit"),
        Some(format!("\"per-ip\";r=0;t={retry}").as_str())
    );
    let j = limited.json();
    assert_eq!(j["error"], "rate_limited");
    assert_eq!(j["policy"], "per-ip");
    assert!(j["request_id"].as_str().is_some());
    let m = gw.metrics();
    assert_eq!(
        metric_value(
            &m,
            "portcullis_ratelimit_decisions_total{policy=\"per-ip\",result=\"allowed\",route=\"r\"}"
        ),
        5.0
    );
    assert_eq!(
        metric_value(
            &m,
            "portcullis_ratelimit_decisions_total{policy=\"per-ip\",result=\"limited\",route=\"r\"}"
        ),
        5.0
    );
    assert_eq!(
        metric_value(
            &m,
            "portcullis_gateway_responses_total{reason=\"rate_limited\",route=\"r\"}"
        ),
        5.0
    );
}

#[test]
fn a_new_window_admits_again_and_a_stale_one_is_forgotten() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        "",
        &body(
            &e,
            "  per-ip: { key: client_ip, rate: 3/s }",
            "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [per-ip] }",
        ),
    );
    let burst = || (0..4).map(|_| gw.get("/r").status).collect::<Vec<u16>>();
    assert_eq!(burst(), [200, 200, 200, 429]);
    let retry: u64 = gw.get("/r").header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&retry),
        "Retry-After {retry} for a 1 s window"
    );
    // Two windows later the previous window no longer weighs: the full limit again.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(burst(), [200, 200, 200, 429]);
}

#[test]
fn fifty_concurrent_clients_never_pass_more_than_the_limit() {
    let _g = heavy();
    let e = Echo::start("e");
    let gw = Gateway::start(
        "",
        &body(
            &e,
            "  shared: { key: route, rate: 200/min }",
            "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [shared] }",
        ),
    );
    let all = load(&[gw.addr], 50, 8, "/r");
    let ok = all.iter().filter(|&&s| s == 200).count();
    let limited = all.iter().filter(|&&s| s == 429).count();
    assert_eq!(ok + limited, 400, "only 200 or 429: {all:?}");
    // The issue allows +1 %; for one key alone in its sketch cells the count is exact (200).
    assert!(
        (200..=202).contains(&ok),
        "{ok} of 400 passed a limit of 200"
    );
}

#[test]
fn every_policy_of_a_route_is_enforced_and_proxies_are_walked_correctly() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        TRUST_LOCAL,
        &body(
            &e,
            "  per-ip: { key: client_ip, rate: 3/min }\n  per-route: { key: route, rate: 5/min }",
            "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [per-ip, per-route] }",
        ),
    );
    let a: Vec<Response> = (0..4).map(|_| from_ip(&gw, "/r", "10.0.0.1")).collect();
    assert_eq!(statuses(&a), [200, 200, 200, 429]);
    assert_eq!(a[3].json()["policy"], "per-ip");
    // Behind a trusted proxy the client is the rightmost untrusted hop: rotating what the
    // client itself put in front does not give it a new bucket.
    let b: Vec<Response> = (0..3)
        .map(|i| from_ip(&gw, "/r", &format!("198.51.100.{i}, 10.0.0.2")))
        .collect();
    assert_eq!(statuses(&b), [200, 200, 429]);
    assert_eq!(b[2].json()["policy"], "per-route", "route total is 5");
    assert_eq!(from_ip(&gw, "/r", "10.0.0.3").status, 429);
}

#[test]
fn ipv6_clients_are_bucketed_per_64_prefix() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        TRUST_LOCAL,
        &body(
            &e,
            "  per-ip: { key: client_ip, rate: 2/min }",
            "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [per-ip] }",
        ),
    );
    // One host rotating through its /64 stays in one bucket; another /64 is another client.
    let same: Vec<u16> = [
        "2001:db8:1:2::1",
        "2001:db8:1:2::ffff",
        "2001:db8:1:2:abcd::9",
    ]
    .iter()
    .map(|ip| from_ip(&gw, "/r", ip).status)
    .collect();
    assert_eq!(same, [200, 200, 429]);
    assert_eq!(from_ip(&gw, "/r", "2001:db8:1:3::1").status, 200);
}

/// A request one policy admitted and a later one refused costs the first nothing.
#[test]
fn a_refused_request_is_taken_back_from_earlier_policies() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        TRUST_LOCAL,
        &body(
            &e,
            "  per-ip: { key: client_ip, rate: 3/min }\n  tight: { key: route, rate: 1/min }",
            "  - { id: t, match: { path_prefix: /t }, upstream: e, public: true, rate_limits: [per-ip, tight] }\n  - { id: u, match: { path_prefix: /u }, upstream: e, public: true, rate_limits: [per-ip] }",
        ),
    );
    let t: Vec<u16> = (0..4)
        .map(|_| from_ip(&gw, "/t", "10.0.0.9").status)
        .collect();
    assert_eq!(t, [200, 429, 429, 429]);
    // per-ip holds 1 for this address, not 4.
    let u: Vec<u16> = (0..3)
        .map(|_| from_ip(&gw, "/u", "10.0.0.9").status)
        .collect();
    assert_eq!(u, [200, 200, 429]);
}

#[test]
fn rotating_client_ip_headers_from_an_untrusted_peer_gives_no_new_bucket() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        "",
        &body(
            &e,
            "  per-ip: { key: client_ip, rate: 3/min }",
            "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [per-ip] }",
        ),
    );
    let mut ok = 0;
    for i in 0..8 {
        let ip = format!("203.0.113.{i}");
        let fwd = format!("for={ip}");
        let r = get_with(
            gw.addr,
            "/r",
            &[
                ("X-Forwarded-For", &ip),
                ("X-Real-IP", &ip),
                ("True-Client-IP", &ip),
                ("Forwarded", &fwd),
                ("CF-Connecting-IP", &ip),
            ],
        );
        ok += usize::from(r.status == 200);
    }
    assert_eq!(ok, 3);
}

#[test]
fn api_key_buckets_ignore_presentation_and_failed_logins_are_throttled() {
    let e = Echo::start("e");
    let key = "pk_test_ratelimit_0123456789abcdef";
    let limits = "  per-key: { key: api_key, rate: 3/min }\n  stuffing: { key: client_ip, rate: 4/min, count: auth_failures }\nauthenticators:\n  keys:\n    api_key:\n      header: x-api-key\n      query: api_key\n      keys:\n        - { id: k1, sha256: \"".to_string()
        + &sha(key)
        + "\", consumer: acme }";
    let gw = Gateway::start(
        TRUST_LOCAL,
        &body(
            &e,
            &limits,
            "  - { id: r, match: { path_prefix: /r }, upstream: e, authn: [keys], rate_limits: [stuffing, per-key] }",
        ),
    );
    let a = "10.1.1.1";
    for _ in 0..4 {
        let r = get_with(
            gw.addr,
            "/r",
            &[("x-forwarded-for", a), ("x-api-key", "wrong")],
        );
        assert_eq!(r.status, 401);
    }
    let r = get_with(
        gw.addr,
        "/r",
        &[("x-forwarded-for", a), ("x-api-key", "wrong")],
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["policy"], "stuffing");
    // Over the limit, not even a valid key is checked from that address.
    let r = get_with(gw.addr, "/r", &[("x-forwarded-for", a), ("x-api-key", key)]);
    assert_eq!(r.status, 429);

    let b = "10.1.1.2";
    let via = [
        get_with(gw.addr, "/r", &[("x-forwarded-for", b), ("X-API-KEY", key)]),
        get_with(gw.addr, "/r", &[("x-forwarded-for", b), ("x-api-key", key)]),
        get_with(
            gw.addr,
            &format!("/r?api_key={key}"),
            &[("x-forwarded-for", "10.1.1.3")],
        ),
        get_with(
            gw.addr,
            "/r",
            &[("x-forwarded-for", "10.1.1.4"), ("X-Api-Key", key)],
        ),
    ];
    assert_eq!(statuses(&via), [200, 200, 200, 429]);
    assert_eq!(via[3].json()["policy"], "per-key");
    assert_eq!(
        gw.metric("portcullis_ratelimit_decisions_total{policy=\"stuffing\",result=\"auth_failure_counted\",route=\"r\"}"),
        4.0
    );
}

#[test]
fn anonymous_fallback_shadow_mode_and_concurrency_limits() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        "",
        &body(
            &e,
            "  by-consumer: { key: consumer, rate: 2/min }\n  trial: { key: client_ip, rate: 1/min, mode: shadow }\n  conc: { key: client_ip, max_inflight: 2 }",
            "  - { id: anon, match: { path_prefix: /anon }, upstream: e, public: true, rate_limits: [by-consumer] }\n  - { id: shadow, match: { path_prefix: /shadow }, upstream: e, public: true, rate_limits: [trial] }\n  - { id: slow, match: { path_prefix: /slow }, upstream: e, public: true, rate_limits: [conc] }",
        ),
    );
    // No consumer on a public route: the fallback key (client_ip) limits, never "unlimited".
    let anon: Vec<Response> = (0..3).map(|_| gw.get("/anon")).collect();
    assert_eq!(statuses(&anon), [200, 200, 429]);
    // Shadow: counted, not enforced.
    let sh: Vec<Response> = (0..4).map(|_| gw.get("/shadow")).collect();
    assert_eq!(statuses(&sh), [200, 200, 200, 200]);

    let addr = gw.addr;
    let slow: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(i * 30));
                get_with(addr, "/slow", &[("x-echo-delay-ms", "1500")])
            })
        })
        .collect();
    let slow: Vec<Response> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    let mut codes = statuses(&slow);
    codes.sort_unstable();
    assert_eq!(codes, [200, 200, 429, 429]);
    let refused = slow.iter().find(|r| r.status == 429).unwrap().json();
    assert_eq!(refused["detail"], "max_inflight");
    assert_eq!(refused["policy"], "conc");
    assert_eq!(gw.get("/slow").status, 200, "slots are given back");

    let m = gw.metrics();
    assert_eq!(
        metric_value(
            &m,
            "portcullis_ratelimit_key_fallbacks_total{policy=\"by-consumer\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            "portcullis_ratelimit_decisions_total{policy=\"trial\",result=\"shadow_limited\",route=\"shadow\"}"
        ),
        3.0
    );
}

#[test]
fn counters_of_unchanged_policies_survive_a_reload() {
    let e = Echo::start("e");
    let route = "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [per-ip] }";
    let gw = Gateway::start(
        "",
        &body(&e, "  per-ip: { key: client_ip, rate: 3/min }", route),
    );
    let first: Vec<u16> = (0..3).map(|_| gw.get("/r").status).collect();
    assert_eq!(first, [200, 200, 200]);
    let original = std::fs::read_to_string(&gw.config).unwrap();
    let extra = "\n  - { id: s, match: { path_prefix: /s }, upstream: e, public: true, rate_limits: [per-ip] }\n";
    std::fs::write(&gw.config, format!("{original}{extra}")).unwrap();
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || gw
        .metric("portcullis_config_generation")
        == 2.0));
    assert_eq!(
        gw.get("/s").status,
        429,
        "the new route shares the policy's buckets"
    );
    assert_eq!(
        gw.get("/r").status,
        429,
        "the reload did not refill the bucket"
    );
    // A changed definition is a new policy with fresh counters.
    let changed = original.replace("rate: 3/min", "rate: 4/min");
    std::fs::write(&gw.config, changed).unwrap();
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || gw
        .metric("portcullis_config_generation")
        == 3.0));
    assert_eq!(gw.get("/r").status, 200);
}

fn redis_gateway(
    e: &Echo,
    redis: &RedisServer,
    redis_extra: &str,
    limits: &str,
    routes: &str,
) -> Gateway {
    let text = format!(
        "redis:\n  url: \"{}\"\n{redis_extra}\n{}",
        redis.url(),
        body(e, limits, routes)
    );
    let gw = Gateway::start("", &text);
    assert!(
        eventually(Duration::from_secs(10), || gw
            .metric("portcullis_redis_connected")
            == 1.0),
        "gateway did not connect to redis:\n{}",
        gw.proc.log_text()
    );
    gw
}

#[test]
fn two_gateways_share_one_redis_limit_and_it_survives_a_restart() {
    let _g = heavy();
    let e = Echo::start("e");
    let redis = RedisServer::start();
    let limits = "  shared: { key: route, rate: 100/h, backend: redis, on_redis_error: deny }";
    let routes = "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [shared] }";
    let extra = "  timeout: 250ms";
    let g1 = redis_gateway(&e, &redis, extra, limits, routes);
    let g2 = redis_gateway(&e, &redis, extra, limits, routes);
    let all = load(&[g1.addr, g2.addr], 20, 15, "/r");
    let ok = all.iter().filter(|&&s| s == 200).count();
    let limited = all.iter().filter(|&&s| s == 429).count();
    assert_eq!(
        ok + limited,
        300,
        "only 200 or 429 (no Redis errors): {all:?}"
    );
    assert!(
        (95..=105).contains(&ok),
        "{ok} of 300 passed a cluster-wide limit of 100"
    );
    eprintln!("two gateways, one redis: {ok} of 300 admitted for a limit of 100");
    // Counters live in Redis: a restarted gateway still sees the spent budget.
    drop(g1);
    let g3 = redis_gateway(&e, &redis, extra, limits, routes);
    assert_eq!(g3.get("/r").status, 429);
    assert!(g3.metric("portcullis_redis_duration_seconds_count") >= 1.0);
}

#[test]
fn leases_cut_redis_round_trips_and_never_over_admit() {
    let _g = heavy();
    let e = Echo::start("e");
    let redis = RedisServer::start();
    let limits =
        "  leased: { key: route, rate: 100/h, backend: redis, on_redis_error: deny, lease: 10 }";
    let routes = "  - { id: r, match: { path_prefix: /r }, upstream: e, public: true, rate_limits: [leased] }";
    let extra = "  timeout: 250ms";
    let g1 = redis_gateway(&e, &redis, extra, limits, routes);
    let g2 = redis_gateway(&e, &redis, extra, limits, routes);
    let all = load(&[g1.addr, g2.addr], 10, 30, "/r");
    let ok = all.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        ok + all.iter().filter(|&&s| s == 429).count(),
        300,
        "{all:?}"
    );
    // Never looser; stricter by at most gateways × (lease − 1) = 18. (An hour window: Redis
    // windows are aligned to the server clock, and leases end with their window.)
    assert!(
        (82..=100).contains(&ok),
        "{ok} admitted for a limit of 100 with leases of 10"
    );
    let trips = g1.metric("portcullis_redis_duration_seconds_count")
        + g2.metric("portcullis_redis_duration_seconds_count");
    eprintln!("leases of 10: {ok} of 300 admitted, {trips} Redis round trips");
    assert!(trips < 100.0, "{trips} round trips for 300 requests");
}

fn timed(addr: std::net::SocketAddr, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = get(addr, path);
    (r.status, t.elapsed())
}

fn p99(mut d: Vec<Duration>) -> Duration {
    d.sort_unstable();
    d[(d.len() * 99 / 100).min(d.len() - 1)]
}

#[test]
fn redis_hanging_or_killed_mid_run_follows_on_redis_error_without_adding_latency() {
    let _g = heavy();
    let e = Echo::start("e");
    let mut redis = RedisServer::start();
    let limits = "  p-allow: { key: route, rate: 10000/min, backend: redis, on_redis_error: allow }\n  p-deny: { key: route, rate: 10000/min, backend: redis, on_redis_error: deny }\n  p-local: { key: route, rate: 3/min, backend: redis, on_redis_error: local }";
    let routes = "  - { id: allow, match: { path_prefix: /allow }, upstream: e, public: true, rate_limits: [p-allow] }\n  - { id: deny, match: { path_prefix: /deny }, upstream: e, public: true, rate_limits: [p-deny] }\n  - { id: local, match: { path_prefix: /local }, upstream: e, public: true, rate_limits: [p-local] }";
    let gw = redis_gateway(
        &e,
        &redis,
        "  timeout: 25ms\n  breaker_failures: 3\n  breaker_cooldown: 1s",
        limits,
        routes,
    );
    assert_eq!(gw.get("/allow").status, 200);
    assert_eq!(gw.get("/deny").status, 200);
    assert_eq!(gw.get("/local").status, 200, "1 of 3 in Redis");

    let run = |gw: &Gateway, n: usize| {
        let mut lat = Vec::new();
        let mut by_route = [Vec::new(), Vec::new()];
        for i in 0..n {
            let path = ["/allow", "/deny"][i % 2];
            let (s, d) = timed(gw.addr, path);
            lat.push(d);
            by_route[i % 2].push(s);
        }
        (p99(lat), by_route)
    };

    // Hanging Redis (SIGSTOP): checks time out after 25 ms until the breaker opens.
    redis.proc.signal("STOP");
    let (p, [allow, deny]) = run(&gw, 100);
    assert!(
        allow.iter().all(|&s| s == 200),
        "allow lets through: {allow:?}"
    );
    assert!(
        deny.iter().all(|&s| s == 503),
        "deny fails closed: {deny:?}"
    );
    let r = gw.get("/deny");
    assert_eq!(r.json()["error"], "rate_limit_unavailable");
    let local: Vec<u16> = (0..4).map(|_| gw.get("/local").status).collect();
    assert_eq!(
        local,
        [200, 200, 200, 429],
        "local fallback enforces the same limit"
    );
    eprintln!("redis hanging: p99 {p:?}");
    assert!(p < Duration::from_millis(50), "p99 {p:?} while Redis hangs");
    let m = gw.metrics();
    assert!(metric_value(&m, "portcullis_redis_errors_total{kind=\"timeout\"}") >= 1.0);
    assert!(metric_value(&m, "portcullis_redis_errors_total{kind=\"breaker_open\"}") >= 1.0);
    assert!(
        metric_value(
            &m,
            "portcullis_ratelimit_redis_fallbacks_total{action=\"allow\",policy=\"p-allow\"}"
        ) >= 50.0
    );
    // The gauge is refreshed by the connector every 250 ms.
    assert!(
        eventually(Duration::from_secs(2), || metric_value(
            &gw.metrics(),
            "portcullis_redis_connected"
        ) == 0.0),
        "portcullis_redis_connected stayed 1 while Redis hangs"
    );

    // Redis answers again: after the cooldown one probe closes the breaker.
    redis.proc.signal("CONT");
    assert!(
        eventually(Duration::from_secs(10), || gw.get("/deny").status == 200),
        "breaker did not close after Redis came back"
    );

    // Killed Redis: connection refused, then the breaker skips it.
    redis.proc.kill();
    let (p, [allow, deny]) = run(&gw, 100);
    assert!(allow.iter().all(|&s| s == 200), "{allow:?}");
    assert!(deny.iter().all(|&s| s == 503), "{deny:?}");
    eprintln!("redis killed: p99 {p:?}");
    assert!(p < Duration::from_millis(50), "p99 {p:?} with Redis down");
}

#[test]
fn bad_rate_limit_config_is_refused_with_its_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 10] = [
        (
            "rate_limits:\n  x: { key: \"header:x-user\", rate: 1/s, count: auth_failures }\n",
            "rate_limits.x.key: count: auth_failures cannot key on header",
        ),
        (
            "rate_limits:\n  x: { key: \"header:authorization\", rate: 1/s }\n",
            "rate_limits.x.key: header \"authorization\" is not a usable key",
        ),
        (
            "rate_limits:\n  x: { key: client_ip, rate: 1/s, lease: 5 }\n",
            "rate_limits.x.lease: only used with backend: redis",
        ),
        (
            "rate_limits:\n  x: { key: ip, rate: 1/s }\n",
            "rate_limits.x.key: unknown key \"ip\"",
        ),
        (
            "rate_limits:\n  x: { key: client_ip, rate: 10/fortnight }\n",
            "rate_limits.x.rate: invalid rate",
        ),
        (
            "rate_limits:\n  x: { key: client_ip, rate: 0/s }\n",
            "rate_limits.x.rate: invalid rate \"0/s\"",
        ),
        (
            "rate_limits:\n  x: { key: client_ip, rate: 1/s, backend: redis }\n",
            "rate_limits.x.backend: backend: redis needs a top-level redis: section",
        ),
        (
            "rate_limits:\n  x: { key: consumer, rate: 1/s, count: auth_failures }\n",
            "rate_limits.x.key: count: auth_failures keys cannot use the caller's identity",
        ),
        (
            "rate_limits:\n  x: { key: [client_ip, subject], fallback: subject, rate: 1/s }\n",
            "rate_limits.x.fallback: a fallback key may use only client_ip and route",
        ),
        (
            "rate_limits:\n  x: { key: client_ip }\n",
            "rate_limits.x: set rate, max_inflight or both",
        ),
    ];
    for (i, (section, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        let text = format!(
            "server:\n  listen: [{{ addr: \"127.0.0.1:1\" }}]\n{section}upstreams:\n  e: {{ targets: [\"127.0.0.1:2\"] }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: e, public: true, rate_limits: [x] }}\n"
        );
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = run_cli(&["check", "-c", &path.to_string_lossy()]);
        assert_ne!(code, 0, "case {i} accepted");
        assert!(
            err.contains(want) || out.contains(want),
            "case {i}: want {want:?} in\n{out}{err}"
        );
    }
    let path = dir.path().join("unknown.yaml");
    std::fs::write(
        &path,
        "server:\n  listen: [{ addr: \"127.0.0.1:1\" }]\nupstreams:\n  e: { targets: [\"127.0.0.1:2\"] }\nroutes:\n  - { id: r, match: { path_prefix: / }, upstream: e, public: true, rate_limits: [nope] }\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", &path.to_string_lossy()]);
    assert_ne!(code, 0);
    assert!(
        (out.clone() + &err).contains("routes[0].rate_limits[0]: unknown rate limit \"nope\""),
        "{out}{err}"
    );
}
