//! Request hygiene: forwarded headers and request ids believed only from trusted proxies,
//! override headers stripped, size limits and framing checks, TLS listener.

mod common;
use common::*;

fn gateway(server_extra: &str, echo: &Echo) -> Gateway {
    Gateway::start(server_extra, &public_route("e", echo.addr))
}

const SPOOF: &str = "GET /x HTTP/1.1\r\nHost: api.example.com:8443\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Request-Id: client-chosen-id\r\nConnection: close\r\n\r\n";

#[test]
fn untrusted_peer_cannot_spoof_forwarding_headers() {
    let e = Echo::start("e");
    let gw = gateway("", &e);
    let r = request(gw.addr, SPOOF.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.echoed_header("x-real-ip"), None);
    assert_eq!(
        r.echoed_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.echoed_header("x-forwarded-host").as_deref(),
        Some("api.example.com:8443")
    );
    assert_eq!(r.echoed_header("forwarded"), None);
    let rid = r.echoed_header("x-request-id").unwrap();
    assert_ne!(rid, "client-chosen-id");
    assert_eq!(rid.len(), 32);
    assert_eq!(r.header("x-request-id"), Some(rid.as_str()));
}

#[test]
fn trusted_proxy_chain_is_extended() {
    let e = Echo::start("e");
    let gw = gateway("  trusted_proxies: [\"127.0.0.1/32\"]\n", &e);
    let r = request(gw.addr, SPOOF.as_bytes());
    assert_eq!(
        r.echoed_header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1")
    );
    assert_eq!(r.echoed_header("x-real-ip"), None);
    assert_eq!(
        r.echoed_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        r.echoed_header("x-forwarded-host").as_deref(),
        Some("evil.example")
    );
    assert_eq!(
        r.echoed_header("x-request-id").as_deref(),
        Some("client-chosen-id")
    );
    assert_eq!(r.header("x-request-id"), Some("client-chosen-id"));
    // Garbage ids are replaced even from a trusted proxy.
    let r = request(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: has space\r\nConnection: close\r\n\r\n",
    );
    assert_ne!(
        r.echoed_header("x-request-id").as_deref(),
        Some("has space")
    );
}

#[test]
fn path_and_method_override_headers_are_stripped() {
    let e = Echo::start("e");
    let gw = gateway("", &e);
    let r = request(
        gw.addr,
        b"GET /public HTTP/1.1\r\nHost: a\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-HTTP-Method-Override: DELETE\r\nX-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    for k in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "x-http-method",
    ] {
        assert!(h.get(k).is_none(), "{k} reached the upstream");
    }
}

#[test]
fn body_and_header_limits() {
    let e = Echo::start("e");
    let gw = gateway(
        "  limits: { max_body_bytes: 1KiB, max_headers: 20, max_header_bytes: 2KiB }\n",
        &e,
    );
    // Declared length over the limit: 413 before anything is read or forwarded.
    let r = request(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    // Within the limit: forwarded with its body.
    let body = "a".repeat(1000);
    let r = request(
        gw.addr,
        format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{body}").as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 1000);
    // Chunked body over the limit.
    let chunk = format!("{:x}\r\n{}\r\n", 800, "b".repeat(800));
    let r = request(
        gw.addr,
        format!("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // Too many headers, too many header bytes.
    let many: String = (0..25).map(|i| format!("x-h{i}: v\r\n")).collect();
    let r = request(
        gw.addr,
        format!("GET /x HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "too_many_headers");
    let big = "v".repeat(3000);
    let r = request(
        gw.addr,
        format!("GET /x HTTP/1.1\r\nHost: a\r\nx-big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "headers_too_large");
}

#[test]
fn ambiguous_framing_is_rejected() {
    let e = Echo::start("e");
    let gw = gateway("", &e);
    let cases: [&[u8]; 5] = [
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length:\r\n\r\n0\r\n\r\n",
    ];
    for raw in cases {
        let r = request(gw.addr, raw);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    // Nothing was forwarded.
    assert!(
        !gw.metrics().contains("portcullis_upstream_attempts_total{"),
        "{}",
        gw.metrics()
    );
}

#[test]
fn tls_listener_serves_https_and_sets_proto() {
    let e = Echo::start("e");
    let port = free_port();
    let extra = tls_listener(port);
    let gw = Gateway::start_with(&extra, "", &public_route("e", e.addr));
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &fixture("tls/ca.pem"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/tls-check"),
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(j["path"], "/tls-check");

    // HTTP/2 over TLS (ALPN h2): no Host header, the :authority routes; normalisation and
    // forwarded headers are the same as on HTTP/1.1.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--path-as-is",
            "-w",
            "\n%{http_version}",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "--cacert",
            &fixture("tls/ca.pem"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/a/../h2-check/./x"),
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "{text}");
    let j: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["target"], "/h2-check/x");
    assert_eq!(j["headers"]["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"][0], "https");
    // An h2 request for a path with an encoded slash is refused like on HTTP/1.1.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &fixture("tls/ca.pem"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/a%2fb"),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    drop(gw);
}

#[test]
fn spoofing_variants_are_stripped() {
    let e = Echo::start("e");
    let gw = gateway("", &e);
    let r = request(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 8.8.8.8\r\nX-Real_IP: 8.8.8.8\r\nX_Request_Id: spoof\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Server: s\r\nX-Original-URI: /admin\r\nTrue-Client-IP: 8.8.8.8\r\nX-Client-IP: 8.8.8.8\r\nFront-End-Https: on\r\nX-Url-Scheme: https\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let h = r.json()["headers"].clone();
    let names: Vec<&String> = h.as_object().unwrap().keys().collect();
    for n in &names {
        assert!(!n.contains('_'), "{n} reached the upstream: {names:?}");
    }
    for bad in [
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-original-uri",
        "true-client-ip",
        "x-client-ip",
        "front-end-https",
        "x-url-scheme",
    ] {
        assert!(h.get(bad).is_none(), "{bad} reached the upstream");
    }
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
}

#[test]
fn absolute_form_without_host_gets_the_routed_host() {
    let e = Echo::start("e");
    let gw = gateway("", &e);
    let r = request(
        gw.addr,
        b"GET http://svc.example.com/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed_header("host").as_deref(), Some("svc.example.com"));
    assert_eq!(r.json()["target"], "/x");
}

#[test]
fn upgrades_are_opt_in_and_websocket_only() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  e: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ id: ws, match: {{ path_prefix: /ws }}, upstream: e, public: true, websocket: true }}\n  - {{ id: plain, match: {{ path_prefix: / }}, upstream: e, public: true }}\n",
            e.addr
        ),
    );
    let up = |path: &str, proto: &str| {
        request(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes(),
        )
    };
    let r = up("/plain", "websocket");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "upgrade_not_allowed");
    let r = up("/ws/chat", "h2c");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "upgrade_not_allowed");
    // On a websocket route the upgrade request is forwarded (the echo answers 200, no switch).
    let r = up("/ws/chat", "websocket");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed_header("upgrade").as_deref(), Some("websocket"));
}
