//! Admin listener: metrics content, health/readiness, separation from the proxy listener,
//! and SIGHUP reload (a good config is swapped in, a bad one changes nothing).

mod common;
use common::*;
use std::time::Duration;

fn body(echo: &Echo, extra_route: &str) -> String {
    format!(
        "upstreams:\n  e: {{ targets: [\"{}\"], health_check: {{ type: tcp, interval: 200ms }} }}\nroutes:\n  - {{ id: api, match: {{ path_prefix: /api }}, upstream: e, public: true }}\n{extra_route}",
        echo.addr
    )
}

#[test]
fn metrics_health_and_readiness() {
    let e = Echo::start("e");
    let gw = Gateway::start("", &body(&e, ""));
    assert_eq!(get(gw.admin, "/healthz").status, 200);
    let ready = get(gw.admin, "/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["generation"], 1);
    assert_eq!(get(gw.admin, "/nope").status, 404);
    // The admin endpoints are not reachable through the proxy listener.
    for p in ["/metrics", "/healthz", "/readyz"] {
        let r = gw.get(p);
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.json()["error"], "no_route");
    }
    for _ in 0..3 {
        assert_eq!(gw.get("/api/x").status, 200);
    }
    let r = request(
        gw.addr,
        b"DELETE /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // Metrics are recorded in the logging phase, which may finish just after the response.
    assert!(eventually(Duration::from_secs(3), || gw
        .metrics()
        .contains(
            "portcullis_request_duration_seconds_count{route=\"api\"} 4"
        )));
    let m = gw.metrics();
    let series = [
        "portcullis_requests_total{method=\"GET\",route=\"api\",status_class=\"2xx\"} 3",
        "portcullis_requests_total{method=\"DELETE\",route=\"api\",status_class=\"2xx\"} 1",
        "portcullis_requests_total{method=\"GET\",route=\"none\",status_class=\"4xx\"} 3",
        "portcullis_gateway_responses_total{reason=\"no_route\",route=\"none\"} 3",
        "portcullis_request_duration_seconds_count{route=\"api\"} 4",
        "portcullis_upstream_healthy_targets{pool=\"e\"} 1",
        "portcullis_config_generation 1",
        "portcullis_build_info{version=\"",
    ];
    for s in series {
        assert!(m.contains(s), "missing {s:?} in\n{m}");
    }
    let attempts = format!(
        "portcullis_upstream_attempts_total{{pool=\"e\",target=\"{}\"}} 4",
        e.addr
    );
    assert!(m.contains(&attempts), "missing {attempts} in\n{m}");
    // No raw paths or hosts in labels.
    assert!(!m.contains("/api/x"));
}

#[test]
fn sighup_reloads_and_bad_config_changes_nothing() {
    let e = Echo::start("e");
    let gw = Gateway::start("", &body(&e, ""));
    assert_eq!(gw.get("/new/x").status, 404);
    // The pid file names this process, so `kill -HUP "$(cat pid_file)"` works.
    let pid = std::fs::read_to_string(gw.dir.path().join("portcullis.pid")).unwrap();
    assert_eq!(pid.trim(), gw.proc.pid().to_string());
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let added = text.replace(
        "routes:\n",
        "routes:\n  - { id: new, match: { path_prefix: /new }, upstream: e, public: true }\n",
    );
    std::fs::write(&gw.config, &added).unwrap();
    gw.proc.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || gw.get("/new/x").status == 200),
        "{}",
        gw.proc.log_text()
    );
    assert_eq!(gw.metric("portcullis_config_generation"), 2.0);
    assert_eq!(get(gw.admin, "/readyz").json()["generation"], 2);

    // A broken config is rejected: generation and routes stay as they were.
    std::fs::write(
        &gw.config,
        added.replace(
            "upstream: e, public: true }\n  - { id: api",
            "upstream: nope, public: true }\n  - { id: api",
        ),
    )
    .unwrap();
    gw.proc.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gw
        .proc
        .log_text()
        .contains(
            "config reload rejected: routes[0].upstream: unknown upstream \"nope\""
        )));
    assert_eq!(gw.metric("portcullis_config_generation"), 2.0);
    assert_eq!(gw.get("/new/x").status, 200);
    assert_eq!(gw.get("/api/x").status, 200);
}
