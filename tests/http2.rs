//! HTTP/2 limits, spoken frame by frame over TLS (ALPN h2): the settings the gateway
//! advertises come from `server.limits`, streams over the limit are refused, oversized header
//! lists are refused, and a rapid-reset flood ends the connection without hurting others.

mod common;
use common::*;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Append one frame (9-byte header, then the payload) to `out`.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A TLS connection to `port` that negotiated ALPN h2 (nothing sent yet).
fn tls_h2(port: u16) -> SslStream<TcpStream> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x02h2").unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = b.build().connect("localhost", tcp).unwrap();
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    s
}

struct H2 {
    s: SslStream<TcpStream>,
}

impl H2 {
    fn connect(port: u16) -> H2 {
        let mut h = H2 { s: tls_h2(port) };
        h.s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        h.send(SETTINGS, 0, 0, &[]);
        h
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = Vec::new();
        frame(&mut f, kind, flags, stream, payload);
        self.s.write_all(&f).unwrap();
    }

    /// The next frame, or `None` when the connection is closed or quiet for 5 s.
    fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// The server's SETTINGS as (id, value) pairs; acknowledges them.
    fn server_settings(&mut self) -> Vec<(u16, u32)> {
        loop {
            let f = self.read().expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                self.send(SETTINGS, ACK, 0, &[]);
                return f
                    .payload
                    .chunks(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
        }
    }
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A request header block: `method` GET (0x82) or POST (0x83), https, `path`, authority
/// `localhost`, plus literal extra fields (never indexed, no Huffman).
fn request_block(method: u8, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![method, 0x87];
    hpack_int(&mut b, 0x00, 4, 4); // :path, literal without indexing, indexed name
    hpack_int(&mut b, 0x00, 7, path.len());
    b.extend_from_slice(path.as_bytes());
    hpack_int(&mut b, 0x00, 4, 1); // :authority
    hpack_int(&mut b, 0x00, 7, 9);
    b.extend_from_slice(b"localhost");
    for (k, v) in extra {
        b.push(0x00);
        hpack_int(&mut b, 0x00, 7, k.len());
        b.extend_from_slice(k.as_bytes());
        hpack_int(&mut b, 0x00, 7, v.len());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// Upstream attempts over all pools and targets.
fn attempts(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_upstream_attempts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn start(limits: &str) -> (Gateway, Echo, u16) {
    let e = Echo::start("e");
    let port = free_port();
    let extra = tls_listener(port);
    let gw = Gateway::start_with(&extra, limits, &public_route("e", e.addr));
    (gw, e, port)
}

/// Read frames until one for `stream` that ends it (RST_STREAM, or HEADERS/DATA with
/// END_STREAM); returns its kind and, for RST_STREAM, the error code (else the status byte).
fn outcome(h: &mut H2, stream: u32) -> Option<(u8, u32)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let f = h.read()?;
        if f.kind == GOAWAY {
            return Some((GOAWAY, u32::from_be_bytes(f.payload[4..8].try_into().ok()?)));
        }
        if f.stream != stream {
            continue;
        }
        match f.kind {
            RST_STREAM => {
                return Some((
                    RST_STREAM,
                    u32::from_be_bytes(f.payload[..4].try_into().ok()?),
                ))
            }
            HEADERS => return Some((HEADERS, status(&f.payload)?)),
            _ => {}
        }
    }
    None
}

/// The `:status` of a response header block (the h2 server sends it first).
fn status(block: &[u8]) -> Option<u32> {
    let static_table = [200, 204, 206, 304, 400, 404, 500];
    match block.first()? {
        b @ 0x88..=0x8e => Some(static_table[(b - 0x88) as usize]),
        // Literal with an indexed :status name (incremental indexing, or not): length, digits.
        0x48 | 0x08 => {
            let len = (block.get(1)? & 0x7f) as usize;
            let raw = block.get(2..2 + len)?;
            if block[1] & 0x80 == 0 {
                return std::str::from_utf8(raw).ok()?.parse().ok();
            }
            huffman_digits(raw)
        }
        _ => None,
    }
}

/// Decode a Huffman-coded (RFC 7541 Appendix B) string of digits: '0'-'2' are 5-bit codes
/// 0-2, '3'-'9' are 6-bit codes 0x19-0x1f; the padding is all ones.
fn huffman_digits(raw: &[u8]) -> Option<u32> {
    let bits: Vec<u8> = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let (mut i, mut out) = (0, 0u32);
    while i + 5 <= bits.len() {
        let v5 = bits[i..i + 5].iter().fold(0u8, |a, b| a << 1 | b);
        if v5 <= 2 {
            out = out * 10 + v5 as u32;
            i += 5;
            continue;
        }
        if i + 6 > bits.len() {
            break;
        }
        let v6 = bits[i..i + 6].iter().fold(0u8, |a, b| a << 1 | b);
        if !(0x19..=0x1f).contains(&v6) {
            break;
        }
        out = out * 10 + (v6 - 0x19 + 3) as u32;
        i += 6;
    }
    Some(out)
}

#[test]
fn settings_come_from_limits_and_extra_streams_are_refused() {
    let (gw, _e, port) =
        start("  limits: { max_header_bytes: 4KiB, h2_max_concurrent_streams: 5 }\n");
    let mut h = H2::connect(port);
    let settings = h.server_settings();
    assert!(
        settings.contains(&(0x3, 5)),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert!(
        settings.contains(&(0x6, 4096)),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );
    // Five POSTs whose bodies never come hold their streams open; the sixth is refused.
    for i in 0..6u32 {
        let block = request_block(0x83, "/hold", &[("content-length", "10")]);
        h.send(HEADERS, END_HEADERS, 1 + 2 * i, &block);
    }
    assert_eq!(outcome(&mut h, 11), Some((RST_STREAM, REFUSED_STREAM)));
    // A GET on a fresh connection still works.
    let mut h2 = H2::connect(port);
    h2.server_settings();
    h2.send(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block(0x82, "/ok", &[]),
    );
    assert_eq!(outcome(&mut h2, 1), Some((HEADERS, 200)), "200 expected");
    drop(gw);
}

#[test]
fn oversized_header_lists_are_refused() {
    let (gw, _e, port) = start("  limits: { max_header_bytes: 4KiB }\n");
    let mut h = H2::connect(port);
    h.server_settings();
    let big = "v".repeat(8000);
    h.send(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block(0x82, "/big", &[("x-big", &big)]),
    );
    let got = outcome(&mut h, 1);
    eprintln!("oversized header list: {got:?}");
    // The h2 layer answers 431 itself, before any route (or the upstream) sees it.
    assert_eq!(got, Some((HEADERS, 431)));
    let m = gw.metrics();
    assert_eq!(attempts(&m), 0.0, "{m}");
}

#[test]
fn rapid_reset_flood_ends_the_connection_and_spares_others() {
    let (gw, _e, port) = start("");
    let mut h = H2::connect(port);
    h.server_settings();
    // HEADERS then RST_STREAM(CANCEL), 1000 times, as fast as the socket takes them.
    let mut sent = 0;
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        let block = request_block(0x82, "/reset", &[]);
        let mut frames = Vec::new();
        for (kind, flags, payload) in [
            (HEADERS, END_HEADERS | END_STREAM, block),
            (RST_STREAM, 0, 0x8u32.to_be_bytes().to_vec()),
        ] {
            frame(&mut frames, kind, flags, id, &payload);
        }
        if h.s.write_all(&frames).is_err() {
            break;
        }
        sent += 1;
    }
    // The server ends the connection (GOAWAY, or close) rather than serve the flood.
    let mut goaway = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match h.read() {
            Some(f) if f.kind == GOAWAY => {
                goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    eprintln!("sent {sent} HEADERS+RST pairs, GOAWAY: {goaway:?}");
    // Other clients are served.
    let mut other = H2::connect(port);
    other.server_settings();
    other.send(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block(0x82, "/ok", &[]),
    );
    assert_eq!(outcome(&mut other, 1), Some((HEADERS, 200)));
    let m = gw.metrics();
    let forwarded = attempts(&m);
    eprintln!("forwarded upstream: {forwarded}");
    // ENHANCE_YOUR_CALM, long before the 1000th pair; almost nothing reached the upstream.
    assert_eq!(goaway, Some(0xb), "sent {sent}");
    assert!(forwarded < 100.0, "{forwarded} flood requests forwarded");
    drop(gw);
}

#[test]
fn silent_and_idle_h2_connections_are_closed() {
    let (gw, _e, port) = start("  limits: { header_timeout: 1s, keepalive_timeout: 2s }\n");
    // TLS done, ALPN h2, but no preface: closed after header_timeout, no HTTP/1 408 text.
    let mut s = tls_h2(port);
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1"));
    // A served h2 connection left idle: GOAWAY or close after keepalive_timeout.
    let mut h = H2::connect(port);
    h.server_settings();
    h.send(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block(0x82, "/ok", &[]),
    );
    assert_eq!(outcome(&mut h, 1), Some((HEADERS, 200)));
    let t = Instant::now();
    loop {
        match h.read() {
            Some(f) if f.kind == GOAWAY => break,
            Some(_) => continue,
            None => break,
        }
    }
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(5),
        "{idle:?}"
    );
    let m = gw.metrics();
    assert!(
        metric_value(&m, "portcullis_client_timeouts_total{phase=\"keepalive\"}") >= 1.0,
        "{m}"
    );
}
