//! Upstream pools against real echo processes: failures map to 502/503/504 JSON, health
//! checks take dead targets out, connect failures retry elsewhere, balancing spreads load,
//! upstream TLS verifies the certificate.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

fn counts(gw: &Gateway, n: usize, mut path: impl FnMut(usize) -> String) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in 0..n {
        let r = gw.get(&path(i));
        assert_eq!(r.status, 200, "{}", r.text());
        *m.entry(r.json()["echo"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    m
}

fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn upstream_down_is_502_json() {
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  dead: {{ targets: [\"{}\"], retries: 0 }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: dead, public: true }}\n",
            dead_addr()
        ),
    );
    let r = gw.get("/x");
    assert_eq!(r.status, 502, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "upstream_connect_failed");
    assert_eq!(j["request_id"], r.header("x-request-id").unwrap());
    // Metrics are recorded in the logging phase, which may finish just after the response.
    let ok = eventually(Duration::from_secs(3), || {
        let m = gw.metrics();
        metric_value(
            &m,
            "portcullis_gateway_responses_total{reason=\"upstream_connect_failed\",route=\"r\"}",
        ) >= 1.0
            && m.contains("portcullis_upstream_errors_total{kind=\"connect\",pool=\"dead\"")
    });
    assert!(ok, "{}", gw.metrics());
}

#[test]
fn slow_upstream_is_504_not_a_hang() {
    let e = Echo::start("slow");
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  slow: {{ targets: [\"{}\"], timeouts: {{ read: 300ms }} }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: slow, public: true }}\n",
            e.addr
        ),
    );
    let t = std::time::Instant::now();
    let r = request(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nx-echo-delay-ms: 3000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn connect_failure_retries_another_target() {
    let live = Echo::start("live");
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  p: {{ targets: [\"{}\", \"{}\"], retries: 1 }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: p, public: true }}\n",
            dead_addr(),
            live.addr
        ),
    );
    let c = counts(&gw, 10, |i| format!("/r{i}"));
    assert_eq!(c.get("live"), Some(&10));
    assert!(
        eventually(Duration::from_secs(3), || gw.metrics().contains(
            "portcullis_upstream_errors_total{kind=\"connect\",pool=\"p\""
        )),
        "{}",
        gw.metrics()
    );
}

#[test]
fn health_check_takes_a_killed_target_out() {
    let a = Echo::start("a");
    let mut b = Echo::start("b");
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  p:\n    targets: [\"{}\", \"{}\"]\n    retries: 0\n    health_check: {{ type: http, path: /healthz, interval: 200ms, timeout: 200ms }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: p, public: true }}\n",
            a.addr, b.addr
        ),
    );
    let healthy = "portcullis_upstream_healthy_targets{pool=\"p\"}";
    assert!(eventually(Duration::from_secs(5), || gw.metric(healthy) == 2.0));
    let c = counts(&gw, 10, |i| format!("/{i}"));
    assert_eq!(c.len(), 2, "both targets serve while healthy: {c:?}");
    b.proc.kill();
    assert!(
        eventually(Duration::from_secs(5), || gw.metric(healthy) == 1.0),
        "{}",
        gw.metrics()
    );
    // With retries: 0, only the health check can keep these from failing.
    let c = counts(&gw, 20, |i| format!("/{i}"));
    assert_eq!(c.get("a"), Some(&20), "{c:?}");
    drop(a);
    assert!(eventually(Duration::from_secs(5), || gw.metric(healthy) == 0.0));
    let r = gw.get("/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_upstream");
}

#[test]
fn round_robin_weighted_random_and_consistent_hash() {
    let a = Echo::start("a");
    let b = Echo::start("b");
    let body = format!(
        r#"upstreams:
  rr: {{ targets: ["{a}", "{b}"] }}
  weighted: {{ targets: [{{ addr: "{a}", weight: 3 }}, {{ addr: "{b}", weight: 1 }}] }}
  random: {{ targets: ["{a}", "{b}"], balance: random }}
  hash: {{ targets: ["{a}", "{b}"], balance: consistent_hash, hash_on: header, hash_header: x-user }}
routes:
  - {{ id: rr, match: {{ path_prefix: /rr }}, upstream: rr, public: true }}
  - {{ id: w, match: {{ path_prefix: /w }}, upstream: weighted, public: true }}
  - {{ id: rand, match: {{ path_prefix: /rand }}, upstream: random, public: true }}
  - {{ id: hash, match: {{ path_prefix: /hash }}, upstream: hash, public: true }}
"#,
        a = a.addr,
        b = b.addr
    );
    let gw = Gateway::start("", &body);
    let rr = counts(&gw, 20, |_| "/rr".into());
    assert_eq!(
        (rr["a"], rr["b"]),
        (10, 10),
        "round robin alternates: {rr:?}"
    );
    let w = counts(&gw, 40, |_| "/w".into());
    assert_eq!((w["a"], w["b"]), (30, 10), "weights 3:1: {w:?}");
    let r = counts(&gw, 60, |_| "/rand".into());
    assert!(
        r.get("a").copied().unwrap_or(0) >= 10 && r.get("b").copied().unwrap_or(0) >= 10,
        "{r:?}"
    );
    // Same key → same target, every time; different keys use both targets.
    let mut seen = HashMap::new();
    for user in 0..30 {
        let mut first = None;
        for _ in 0..3 {
            let resp = request(
                gw.addr,
                format!(
                    "GET /hash HTTP/1.1\r\nHost: a\r\nx-user: u{user}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
            let name = resp.json()["echo"].as_str().unwrap().to_string();
            if let Some(f) = &first {
                assert_eq!(f, &name, "user {user} moved");
            }
            first = Some(name);
        }
        *seen.entry(first.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "30 keys all hashed to one target: {seen:?}");
}

#[test]
fn upstream_tls_verifies_certificates() {
    let e = Echo::start_tls("tls");
    let ca = fixture("tls/ca.pem");
    let other = fixture("tls/other-ca.pem");
    let body = format!(
        r#"upstreams:
  good: {{ targets: ["{e}"], tls: {{ sni: localhost, ca_file: "{ca}" }} }}
  wrong-ca: {{ targets: ["{e}"], retries: 0, tls: {{ sni: localhost, ca_file: "{other}" }} }}
  wrong-name: {{ targets: ["{e}"], retries: 0, tls: {{ sni: not-localhost.example, ca_file: "{ca}" }} }}
  unverified: {{ targets: ["{e}"], tls: {{ sni: localhost, verify: false, ca_file: "{other}" }} }}
routes:
  - {{ id: good, match: {{ path_prefix: /good }}, upstream: good, public: true }}
  - {{ id: wrong-ca, match: {{ path_prefix: /wrong-ca }}, upstream: wrong-ca, public: true }}
  - {{ id: wrong-name, match: {{ path_prefix: /wrong-name }}, upstream: wrong-name, public: true }}
  - {{ id: unverified, match: {{ path_prefix: /unverified }}, upstream: unverified, public: true }}
"#,
        e = e.addr
    );
    let gw = Gateway::start("", &body);
    let r = gw.get("/good/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["echo"], "tls");
    for p in ["/wrong-ca/x", "/wrong-name/x"] {
        let r = gw.get(p);
        assert_eq!(r.status, 502, "{p}: {}", r.text());
        assert_eq!(r.json()["error"], "upstream_connect_failed", "{p}");
    }
    assert_eq!(gw.get("/unverified/x").status, 200);
}
