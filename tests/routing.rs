//! Routing through the real gateway: host and path precedence, 404/405/400, strip_prefix,
//! normalisation, and what the upstream actually receives.

mod common;
use common::*;

struct Setup {
    gw: Gateway,
    _echos: Vec<Echo>,
}

/// One echo per route family, so the answering echo's name proves which route won.
fn setup() -> Setup {
    let names = [
        "exact-host",
        "wild-host",
        "any-host",
        "api",
        "api-v1",
        "health",
        "root",
        "writes",
        "strip",
    ];
    let echos: Vec<Echo> = names.iter().map(|n| Echo::start(n)).collect();
    let mut body = String::from("upstreams:\n");
    for e in &echos {
        body.push_str(&format!("  {}: {{ targets: [\"{}\"] }}\n", e.name, e.addr));
    }
    body.push_str(
        r#"routes:
  - { id: exact-host, match: { hosts: [api.example.com], path_prefix: /api }, upstream: exact-host, public: true }
  - { id: wild-host, match: { hosts: ["*.example.com"], path_prefix: /api }, upstream: wild-host, public: true }
  - { id: api, match: { path_prefix: /api, methods: [GET, HEAD] }, upstream: api, public: true }
  - { id: api-writes, match: { path_prefix: /api, methods: [POST, PUT] }, upstream: writes, public: true }
  - { id: api-v1, match: { path_prefix: /api/v1 }, upstream: api-v1, public: true }
  - { id: health, match: { path: /healthz }, upstream: health, public: true }
  - { id: strip, match: { path_prefix: /svc/orders, methods: [GET] }, upstream: strip, public: true, strip_prefix: true }
  - { id: root-exact, match: { path: / }, upstream: root, public: true }
"#,
    );
    Setup {
        gw: Gateway::start("", &body),
        _echos: echos,
    }
}

fn req_host(gw: &Gateway, method: &str, host: &str, target: &str) -> Response {
    request(
        gw.addr,
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
}

fn echo_name(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["echo"].as_str().unwrap_or_default().to_string()
}

#[test]
fn host_and_path_precedence() {
    let s = setup();
    let g = &s.gw;
    let cases = [
        ("api.example.com", "/api/x", "exact-host"),
        ("API.Example.COM:8080", "/api/x", "exact-host"),
        ("a.example.com", "/api/x", "wild-host"),
        ("a.b.example.com", "/api", "wild-host"),
        ("example.com", "/api/x", "api"),
        ("other.org", "/api/x", "api"),
        ("other.org", "/api/v1/x", "api-v1"),
        ("other.org", "/api/v1", "api-v1"),
        // more specific host has no /healthz route: falls back to host-less routes
        ("api.example.com", "/healthz", "health"),
        ("x", "/healthz", "health"),
        ("x", "/healthz/", "health"),
        ("x", "/", "root"),
    ];
    for (host, path, want) in cases {
        let r = req_host(g, "GET", host, path);
        assert_eq!(echo_name(&r), want, "{host} {path}");
    }
}

#[test]
fn segment_aware_prefix_and_404_json() {
    let s = setup();
    for path in ["/apiv2", "/apix/y", "/healthzz", "/svc/ordersx", "/nothing"] {
        let r = s.gw.get(path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        let j = r.json();
        assert_eq!(j["error"], "no_route");
        let rid = r.header("x-request-id").expect("x-request-id");
        assert_eq!(j["request_id"], rid);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

#[test]
fn method_routing_and_405() {
    let s = setup();
    let g = &s.gw;
    assert_eq!(echo_name(&req_host(g, "GET", "x", "/api/a")), "api");
    assert_eq!(echo_name(&req_host(g, "POST", "x", "/api/a")), "writes");
    let r = req_host(g, "DELETE", "x", "/api/a");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, PUT"));
    assert_eq!(r.json()["error"], "method_not_allowed");
    // TRACE and unknown methods never reach a service.
    for m in ["TRACE", "FOO"] {
        let r = req_host(g, m, "x", "/api/a");
        assert_eq!(r.status, 405, "{m}");
    }
    // strip route is GET only; the 405 does not fall through to a less specific route.
    let r = req_host(g, "POST", "x", "/svc/orders/1");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn head_gets_no_body() {
    let s = setup();
    let r = request(
        s.gw.addr,
        b"HEAD /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
}

#[test]
fn strip_prefix_and_query() {
    let s = setup();
    let r = s.gw.get("/svc/orders/47/items?expand=a%20b&x=1");
    assert_eq!(echo_name(&r), "strip");
    let j = r.json();
    assert_eq!(j["target"], "/47/items?expand=a%20b&x=1");
    let r = s.gw.get("/svc/orders");
    assert_eq!(r.json()["target"], "/");
}

#[test]
fn upstream_receives_the_normalised_path() {
    let s = setup();
    let cases = [
        ("//api///v1//x", "/api/v1/x", "api-v1"),
        ("/api/./v1/x", "/api/v1/x", "api-v1"),
        ("/api/v1/../x", "/api/x", "api"),
        ("/api/%2e%2e/healthz", "/healthz", "health"),
        ("/api/%2E/v1", "/api/v1", "api-v1"),
        ("/%61pi/v1/x", "/api/v1/x", "api-v1"),
        ("/api/a%3ab%7e%40%2B", "/api/a:b~@+", "api"),
        ("/api/a%3fb%23c", "/api/a%3Fb%23c", "api"),
        ("/api/caf%c3%a9", "/api/caf%C3%A9", "api"),
        ("/../../api/x", "/api/x", "api"),
        ("/svc/orders/../../svc/orders/1", "/1", "strip"),
    ];
    for (sent, want_target, want_echo) in cases {
        let r = s.gw.get(sent);
        assert_eq!(echo_name(&r), want_echo, "{sent}");
        assert_eq!(r.json()["target"], want_target, "{sent}");
    }
}

#[test]
fn ambiguous_paths_are_400() {
    let s = setup();
    let cases = [
        ("/api/a%2fb", "encoded_separator"),
        ("/api/a%2Fb", "encoded_separator"),
        ("/api/a%5cb", "encoded_separator"),
        ("/api/a\\b", "backslash"),
        ("/api/a%00b", "control_character"),
        ("/api/a%0d%0ab", "control_character"),
        ("/api/%252e%252e/x", "double_encoding"),
        ("/api/%25%32%65%25%32%65/x", "double_encoding"),
        ("/api/x%25%32%66..%25%32%66admin", "double_encoding"),
        ("/api/..;/healthz", "path_parameter"),
        ("/api/x;a=b", "path_parameter"),
        ("/api/x%3b", "path_parameter"),
        ("/api/x.", "trailing_dot"),
        ("/api/x%20/y", "segment_whitespace"),
        ("/api/%ef%bc%8fx", "confusable_character"),
        ("/api/%c0%ae%c0%ae/x", "invalid_utf8"),
        ("/api/%zz", "bad_percent_encoding"),
        ("/api/%", "bad_percent_encoding"),
    ];
    for (path, detail) in cases {
        let r = s.gw.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let j = r.json();
        assert_eq!(j["error"], "invalid_path", "{path}");
        assert_eq!(j["detail"], detail, "{path}");
    }
}

#[test]
fn host_problems_are_400() {
    let s = setup();
    let g = &s.gw;
    let cases: [(&[u8], &str); 2] = [
        (
            b"GET /api HTTP/1.1\r\nConnection: close\r\n\r\n",
            "missing_host",
        ),
        (
            b"GET /api HTTP/1.1\r\nHost: a..b\r\nConnection: close\r\n\r\n",
            "malformed_host",
        ),
    ];
    for (raw, detail) in cases {
        let r = request(g.addr, raw);
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            String::from_utf8_lossy(raw),
            r.text()
        );
        assert_eq!(r.json()["detail"], detail);
        assert_eq!(r.header("connection"), Some("close"));
    }
    // Pingora's parser refuses these before any filter runs (bare 400, connection closed):
    // still rejected, never forwarded. See docs/routing.md "Limits of the JSON error contract".
    let parser_rejects: [&[u8]; 3] = [
        b"GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        b"GET http://evil.example.org/api HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        b"GET http://u:p@api.example.com/api HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    ];
    for raw in parser_rejects {
        let r = request(g.addr, raw);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
    }
    // Absolute-form that agrees with Host is routed by it; the upstream gets origin-form.
    let r = request(
        g.addr,
        b"GET http://api.example.com/api/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(echo_name(&r), "exact-host");
    assert_eq!(r.json()["target"], "/api/x");
}
