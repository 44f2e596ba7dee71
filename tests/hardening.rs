//! Hostile input at the front door, over raw TCP (HTTP client libraries normalise the attacks
//! away): request smuggling, size limits, upgrades, slow clients, HTTP/2 limits. A recording
//! upstream shows byte for byte that nothing was forwarded.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn gateway(server_extra: &str, rec: &Recorder) -> Gateway {
    Gateway::start(server_extra, &public_route("r", rec.addr))
}

/// (name, raw request, status, error code — `None` for a request Pingora's parser refuses
/// before any route sees it: the front door answers those `bad_request` in JSON too).
type Case = (&'static str, &'static [u8], u16, Option<&'static str>);

const AMBIGUOUS: Option<&str> = Some("ambiguous_framing");

const SMUGGLING: &[Case] = &[
    ("CL then TE", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE then CL", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE with empty CL", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length:\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("conflicting CL", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, None),
    ("duplicate equal CL", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, AMBIGUOUS),
    ("CL list", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400, AMBIGUOUS),
    ("CL plus sign", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400, None),
    ("CL negative", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nabc", 400, None),
    ("CL hex", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400, None),
    ("CL overflow", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nabc", 400, None),
    ("TE case", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE upper", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE tab", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE trailing space", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE leading comma", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE xchunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, None),
    ("TE identity", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400, None),
    ("TE list", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE chunked twice", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE header twice", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("TE obs-fold", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400, None),
    ("TE space before colon", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, None),
    ("TE vertical tab", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400, None),
    ("HTTP/1.0 chunked", b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, None),
    ("chunk size overflow", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("chunk size negative", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("chunk size not hex", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("chunk bare LF", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400, AMBIGUOUS),
    ("chunk ext bare LF", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\nc\r\nA\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("chunk size trailing space", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\nA\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("chunk ext control byte", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a\x01\r\nA\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("trailer bare LF", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\nX: y\n\r\n", 400, AMBIGUOUS),
    ("chunk longer than its size", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", 400, AMBIGUOUS),
    ("bare LF header", b"GET /x HTTP/1.1\nHost: a\n\n", 400, AMBIGUOUS),
    ("bare LF mixed", b"GET /x HTTP/1.1\r\nHost: a\nX-Y: z\r\n\r\n", 400, AMBIGUOUS),
    ("bare CR", b"GET /x HTTP/1.1\rHost: a\r\n\r\n", 400, None),
    ("obs-fold", b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, None),
    ("NUL in a value", b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400, None),
    ("HTTP/0.9", b"GET /x\r\n\r\n", 400, None),
    ("HTTP/2.0 over HTTP/1", b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 400, None),
];

fn check_refused(gw: &Gateway, rec: &Recorder, case: &Case) {
    let (name, raw, status, code) = *case;
    rec.clear();
    let (out, closed) = exchange(gw.addr, raw, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&out), vec![status], "{name}: {text}");
    assert!(closed, "{name}: connection left open: {text}");
    match code {
        Some(code) => assert!(
            text.contains(&format!("{{\"error\":\"{code}\"")),
            "{name}: {text}"
        ),
        None => assert!(
            text.contains("{\"error\":\"bad_request\"") && text.contains("x-request-id: "),
            "{name}: {text}"
        ),
    }
    // Let a forwarded request (if any) arrive before looking.
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        rec.received().is_empty(),
        "{name}: forwarded: {:?}",
        String::from_utf8_lossy(&rec.received())
    );
}

#[test]
fn smuggling_corpus_is_refused_and_nothing_is_forwarded() {
    let rec = Recorder::start();
    let gw = gateway("", &rec);
    // The recorder does see what it should: a clean chunked and a clean CL request.
    let (out, _) = exchange(
        gw.addr,
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_statuses(&out, &[200]);
    let (out, _) = exchange(
        gw.addr,
        b"POST /ok2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_secs(5),
    );
    assert_eq!(statuses(&out), vec![200]);
    let seen = String::from_utf8_lossy(&rec.received()).into_owned();
    assert!(seen.contains("POST /ok HTTP/1.1") && seen.contains("3\r\nabc\r\n0\r\n\r\n"));
    assert!(seen.contains("POST /ok2 HTTP/1.1") && seen.ends_with("\r\n\r\nabc"));

    for case in SMUGGLING {
        check_refused(&gw, &rec, case);
    }
    // Every refusal is counted: ours by reason, the parser's by status.
    let m = gw.metrics();
    let ours = SMUGGLING.iter().filter(|c| c.3.is_some()).count() as f64;
    let parser = SMUGGLING.iter().filter(|c| c.3.is_none()).count() as f64;
    assert_eq!(
        metric_value(
            &m,
            "portcullis_gateway_responses_total{reason=\"ambiguous_framing\",route=\"none\"}"
        ) + metric_value(
            &m,
            "portcullis_gateway_responses_total{reason=\"ambiguous_framing\",route=\"all\"}"
        ),
        ours,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "portcullis_protocol_rejections_total{status=\"400\"}"),
        parser,
        "{m}"
    );
}

#[test]
fn size_limits_answer_414_431_413_before_the_upstream() {
    let rec = Recorder::start();
    let gw = gateway(
        "  limits: { max_uri_bytes: 1KiB, max_header_bytes: 4KiB, max_headers: 20, max_body_bytes: 2KiB }\n",
        &rec,
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(1100));
    let many: String = (0..25).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /x HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    // More fields than Pingora's parser holds (256): its bare 400, counted.
    let huge: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!("GET /x HTTP/1.1\r\nHost: a\r\n{huge}\r\n");
    let chunk = format!("{:x}\r\n{}\r\n", 1500, "b".repeat(1500));
    let chunked = format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        (long, 414, Some("uri_too_long")),
        (many, 431, Some("too_many_headers")),
        (big, 431, Some("headers_too_large")),
        (huge, 400, None),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n".into(),
            413,
            Some("body_too_large"),
        ),
        // Over the limit within the first read: refused before the upstream hears of it.
        (chunked, 413, Some("body_too_large")),
    ];
    for (raw, status, code) in &cases {
        let raw: &'static [u8] = Box::leak(raw.clone().into_bytes().into_boxed_slice());
        check_refused(&gw, &rec, &("limit", raw, *status, *code));
    }
    // A chunked body that goes over the limit after the first read: the upstream stream is
    // aborted mid-body, so the upstream never has a complete request.
    let gw = gateway("  limits: { max_body_bytes: 100KiB }\n", &rec);
    rec.clear();
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    use std::io::Write;
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let piece = format!("{:x}\r\n{}\r\n", 8192, "z".repeat(8192));
    let mut sent = 0;
    for _ in 0..40 {
        if s.write_all(piece.as_bytes()).is_err() {
            break;
        }
        sent += 8192;
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let out = read_to_close(&mut s, 5);
    assert_statuses(&out, &[413]);
    std::thread::sleep(Duration::from_millis(50));
    let got = rec.received();
    let z = got.iter().filter(|&&b| b == b'z').count();
    assert!(
        z > 0 && z <= 100 * 1024 + 8192,
        "upstream got {z} of {sent} body bytes"
    );
    assert!(
        !got.ends_with(b"0\r\n\r\n"),
        "the upstream received a complete request"
    );
}

#[test]
fn upgrades_pass_the_whole_chain_and_pipelined_bytes_go_nowhere() {
    let rec = Recorder::start();
    let key_sha = sha("ws-key-1");
    let gw = Gateway::start(
        "",
        &format!(
            "authenticators:\n  keys:\n    api_key:\n      keys: [{{ id: k1, sha256: \"{key_sha}\", consumer: c }}]\nupstreams:\n  r: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ id: ws, match: {{ path_prefix: /ws }}, upstream: r, authn: [keys], websocket: true }}\n  - {{ id: open, match: {{ path_prefix: / }}, upstream: r, public: true }}\n",
            rec.addr
        ),
    );
    let upgrade = |path: &str, proto: &str, key: Option<&str>, then: &str| {
        let key = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{key}\r\n{then}")
    };
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    // No credentials: the upgrade is refused like any request, and nothing reaches upstream.
    rec.clear();
    let (out, closed) = exchange(
        gw.addr,
        upgrade("/ws/chat", "websocket", None, smuggled).as_bytes(),
        Duration::from_secs(5),
    );
    assert_statuses(&out, &[401]);
    assert!(closed);
    std::thread::sleep(Duration::from_millis(20));
    assert!(rec.received().is_empty());
    // h2c, or an upgrade on a route that did not ask for it: 400.
    for (path, proto) in [("/ws/chat", "h2c"), ("/plain", "websocket")] {
        let raw = upgrade(path, proto, Some("ws-key-1"), smuggled);
        let raw: &'static [u8] = Box::leak(raw.into_bytes().into_boxed_slice());
        check_refused(
            &gw,
            &rec,
            &("upgrade", raw, 400, Some("upgrade_not_allowed")),
        );
    }
    // Authenticated: forwarded. The upstream answers 200, not 101, so the connection stays
    // HTTP and is closed after the answer: the pipelined request is never forwarded.
    rec.clear();
    let (out, closed) = exchange(
        gw.addr,
        upgrade("/ws/chat", "websocket", Some("ws-key-1"), smuggled).as_bytes(),
        Duration::from_secs(5),
    );
    assert_statuses(&out, &[200]);
    assert!(closed, "connection kept open after a refused upgrade");
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.contains("connection: close"), "{text}");
    std::thread::sleep(Duration::from_millis(50));
    let seen = String::from_utf8_lossy(&rec.received()).into_owned();
    assert!(seen.starts_with("GET /ws/chat HTTP/1.1"), "{seen}");
    assert!(!seen.contains("x-api-key"), "credential forwarded: {seen}");
    assert!(
        !seen.contains("/smuggled"),
        "pipelined request forwarded: {seen}"
    );
}

/// Threads of a process, from /proc.
fn threads(pid: i32) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_clients_are_cut_without_holding_threads() {
    let rec = Recorder::start();
    let gw = Gateway::start_edited(
        "",
        "  limits: { header_timeout: 1s, idle_timeout: 1s, keepalive_timeout: 2s }\n",
        &public_route("r", rec.addr),
        |t| t.replace("threads: 2", "threads: 1"),
    );
    let before = threads(gw.proc.pid());
    // 200 slowloris connections: each sends a partial header, then a byte every 200 ms.
    use std::io::{Read, Write};
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: ")
                .unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    // Meanwhile, on one worker thread, ordinary requests are answered.
    let mut answered = 0;
    while start.elapsed() < Duration::from_millis(800) {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        let r = get(gw.addr, "/normal");
        assert_eq!(r.status, 200);
        answered += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered >= 3);
    let during = threads(gw.proc.pid());
    assert!(
        during <= before + 2,
        "threads grew from {before} to {during} with 200 slow clients"
    );
    // After the header timeout every slow connection got a 408 and was closed.
    let mut cut = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        loop {
            let _ = s.write_all(b"a");
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        if statuses(&out) == vec![408]
            && String::from_utf8_lossy(&out).contains("\"error\":\"request_timeout\"")
        {
            cut += 1;
        }
    }
    assert_eq!(cut, 200, "slow connections answered 408 and closed");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        start.elapsed()
    );
    assert!(!String::from_utf8_lossy(&rec.received()).contains("/slow"));

    // A connection that never sends a byte (a browser preconnect) is closed quietly.
    let (out, closed) = exchange(gw.addr, b"", Duration::from_secs(4));
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(closed);
    // A stalled body: 408 when nothing was answered yet; the upstream has no full request.
    let (out, closed) = exchange(
        gw.addr,
        b"POST /stall HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab",
        Duration::from_secs(4),
    );
    assert_statuses(&out, &[408]);
    assert!(closed);
    // An idle keep-alive connection is closed quietly after keepalive_timeout.
    let t = Instant::now();
    let (out, closed) = exchange(
        gw.addr,
        b"GET /ka HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(statuses(&out), vec![200]);
    assert!(closed);
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    let m = gw.metrics();
    assert!(metric_value(&m, "portcullis_client_timeouts_total{phase=\"header\"}") >= 200.0);
    assert!(metric_value(&m, "portcullis_client_timeouts_total{phase=\"idle\"}") >= 1.0);
    assert!(metric_value(&m, "portcullis_client_timeouts_total{phase=\"keepalive\"}") >= 1.0);
}

/// Decode the chunked body of the first request in `raw`.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut i = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut out = Vec::new();
    loop {
        let eol = i + raw[i..].windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&raw[i..eol]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        i = eol + 2;
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[i..i + size]);
        i += size + 2;
    }
}

#[test]
fn chunked_bodies_arrive_intact_after_the_pre_read() {
    use std::io::Write;
    let rec = Recorder::start();
    let gw = gateway("", &rec);
    let payload = |n: usize| -> Vec<u8> { (0..n).map(|i| b'a' + (i * 7 % 26) as u8).collect() };
    let chunked = |body: &[u8], size: usize| -> Vec<u8> {
        let mut v = Vec::new();
        for c in body.chunks(size) {
            v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            v.extend_from_slice(c);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n\r\n");
        v
    };
    // (body size, chunk size, pieces the client writes it in)
    for (size, chunk, pieces) in [
        (10_000, 1_000, 1),
        (48_000, 3_000, 1),
        (200_000, 7_000, 3),
        (100_000, 100_000, 1),
        (150_000, 4_096, 40),
    ] {
        rec.clear();
        let body = payload(size);
        let wire = chunked(&body, chunk);
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .unwrap();
        for part in wire.chunks(wire.len().div_ceil(pieces)) {
            s.write_all(part).unwrap();
            if pieces > 1 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let out = read_to_close(&mut s, 10);
        assert_eq!(
            statuses(&out),
            vec![200],
            "{size}/{chunk}: {}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(dechunk(&rec.received()), body, "{size}/{chunk}/{pieces}");
    }
}

#[test]
fn bytes_pipelined_behind_a_pending_answer_are_a_client_error_not_a_502() {
    use std::io::Write;
    let e = Echo::start("e");
    let gw = Gateway::start("", &public_route("e", e.addr));
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\nx-echo-delay-ms: 600\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    s.write_all(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let out = read_to_close(&mut s, 5);
    let got = statuses(&out);
    assert!(!got.contains(&502), "{}", String::from_utf8_lossy(&out));
    assert!(
        !got.is_empty() && got.len() == 1,
        "{}",
        String::from_utf8_lossy(&out)
    );
    let m = gw.metrics();
    assert!(!m.contains("portcullis_upstream_errors_total{"), "{m}");
    assert!(!m.contains("reason=\"upstream_connect_failed\""), "{m}");
}

#[test]
fn a_refused_upload_gets_its_answer_not_a_reset() {
    use std::io::Write;
    let rec = Recorder::start();
    let key_sha = sha("k-1");
    let gw = Gateway::start(
        "  limits: { max_body_bytes: 64MiB }\n",
        &format!(
            "authenticators:\n  keys:\n    api_key:\n      keys: [{{ id: k1, sha256: \"{key_sha}\", consumer: c }}]\nupstreams:\n  r: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ id: up, match: {{ path_prefix: / }}, upstream: r, authn: [keys] }}\n",
            rec.addr
        ),
    );
    // A client that writes its whole 4 MiB body before it reads (no Expect: 100-continue).
    let body = vec![b'x'; 4 * 1024 * 1024];
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4194304\r\n\r\n")
        .unwrap();
    let sent = s.write_all(&body);
    assert!(sent.is_ok(), "upload reset by the gateway: {sent:?}");
    let out = read_to_close(&mut s, 5);
    assert_statuses(&out, &[401]);
    assert!(rec.received().is_empty());
}

#[test]
fn chunked_framing_is_checked_on_the_raw_bytes_all_the_way() {
    use std::io::Write;
    let rec = Recorder::start();
    let gw = gateway("", &rec);
    // Legal extensions and whitespace before `;` pass, in pieces as well as whole.
    for body in [
        &b"3;a=b\r\nabc\r\n5 ;q=\"x y\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"[..],
        &b"1\r\nA\r\n0\r\n\r\n"[..],
    ] {
        rec.clear();
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .unwrap();
        for b in body.chunks(4) {
            s.write_all(b).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = read_to_close(&mut s, 5);
        assert_statuses(&out, &[200]);
    }
    // A desync form far into a large body (after the pre-read window): the request fails
    // with 400 and the upstream's copy stays incomplete.
    rec.clear();
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let piece = format!("{:x}\r\n{}\r\n", 8192, "z".repeat(8192));
    for _ in 0..12 {
        s.write_all(piece.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = s.write_all(b"1;a=b\nc\r\nA\r\n0\r\n\r\n");
    let out = read_to_close(&mut s, 5);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(statuses(&out), vec![400], "{text}");
    assert!(text.contains("\"error\":\"ambiguous_framing\""), "{text}");
    std::thread::sleep(Duration::from_millis(50));
    let got = rec.received();
    assert!(!got.is_empty(), "the large body was streamed");
    assert!(
        !got.ends_with(b"0\r\n\r\n"),
        "the upstream received a complete request"
    );
    assert!(
        !got.windows(5).any(|w| w == b"a=b\nc"),
        "the malformed line reached the upstream"
    );
}

#[test]
fn a_chunked_upload_on_a_reused_connection_is_checked_from_its_first_byte() {
    use std::io::{Read, Write};
    let rec = Recorder::start();
    let gw = gateway("", &rec);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let read_one = |s: &mut std::net::TcpStream| {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while parse_response(&out, false).is_none() {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        parse_response(&out, false).unwrap()
    };
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_one(&mut s).status, 200);
    // The second request's head and first chunks in one write, the rest in pieces later.
    let piece = format!("{:x}\r\n{}\r\n", 5000, "q".repeat(5000));
    let mut first =
        b"POST /second HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    first.extend_from_slice(piece.as_bytes());
    s.write_all(&first).unwrap();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(3));
        s.write_all(piece.as_bytes()).unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_one(&mut s);
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(50));
    let got = rec.received();
    let second = got.windows(12).position(|w| w == b"POST /second").unwrap();
    let body = dechunk(&got[second..]);
    assert_eq!(
        body.len(),
        21 * 5000,
        "{}",
        String::from_utf8_lossy(&got[second..second + 400])
    );
    assert!(body.iter().all(|&b| b == b'q'));
}

/// The front door's idle timer (`limits.idle_timeout`, armed only while a body read or a
/// response write waits): a stalled chunked body is cut during the pre-read (408), a client
/// that stops reading a large answer is cut, and a slow upstream is not (after the request
/// is complete, waiting for the client's next bytes is not "idle").
#[test]
fn idle_timer_cuts_stalled_clients_but_waits_for_slow_upstreams() {
    let e = Echo::start("e");
    let gw = Gateway::start(
        "  limits: { idle_timeout: 1s, keepalive_timeout: 5s }\n",
        &public_route("e", e.addr),
    );
    let idle = |gw: &Gateway| {
        metric_value(
            &gw.metrics(),
            "portcullis_client_timeouts_total{phase=\"idle\"}",
        )
    };

    // A slow upstream (2.5 s) on a GET, and on a POST whose body is complete: 200, not cut.
    let t = Instant::now();
    let r = get_with(gw.addr, "/slow", &[("x-echo-delay-ms", "2500")]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(t.elapsed() >= Duration::from_millis(2400));
    let (out, _) = exchange(
        gw.addr,
        b"POST /slow HTTP/1.1\r\nHost: a\r\nx-echo-delay-ms: 2500\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_secs(6),
    );
    assert_statuses(&out, &[200]);
    assert_eq!(idle(&gw), 0.0, "nothing was idle");

    // A chunked body that stalls inside its first chunk: 408 from the pre-read.
    let t = Instant::now();
    let (out, closed) = exchange(
        gw.addr,
        b"POST /stall HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
        Duration::from_secs(5),
    );
    assert_statuses(&out, &[408]);
    assert!(closed);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(idle(&gw), 1.0);

    // A client that asks for 32 MiB and reads nothing: once the socket buffers are full the
    // write waits, and after idle_timeout the connection is cut.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nx-echo-bytes: 33554432\r\n\r\n")
        .unwrap();
    let cut = eventually(Duration::from_secs(8), || idle(&gw) >= 2.0);
    assert!(cut, "a stalled reader was not cut");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < 32 << 20, "the whole answer arrived ({got} bytes)");
}
