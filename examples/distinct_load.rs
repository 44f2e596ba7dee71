//! Benchmark helper for the memory checks: send exactly N requests, each with something
//! distinct, as fast as CONNS keep-alive connections allow, and count the statuses.
//!
//! `distinct_load ADDR N CONNS tokens TOKEN` — GET /rs256/bench with a distinct, well-formed
//!   token whose signature is wrong (the first 11 signature characters replaced by a counter):
//!   each is parsed and verified, and refused.
//! `distinct_load ADDR N CONNS keys` — GET /keys/bench with a distinct `X-Client` header (a
//!   distinct rate-limit key per request).
//! Prints `requests=N statuses=401:N,...` .
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

/// Read one response; returns its status, or None on a broken connection.
fn read_status(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.get(9..12)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(status);
        }
        let n = s.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        fail("usage: distinct_load ADDR N CONNS (tokens TOKEN | keys)");
    }
    let addr: SocketAddr = a[1].parse().unwrap_or_else(|_| fail("bad ADDR"));
    let n: usize = a[2].parse().unwrap_or_else(|_| fail("bad N"));
    let conns: usize = a[3].parse().unwrap_or_else(|_| fail("bad CONNS"));
    let mode = a[4].clone();
    let (head, sig) = match (mode.as_str(), a.get(5)) {
        ("tokens", Some(t)) => match t.rsplit_once('.') {
            Some((h, s)) if s.len() > 11 => (format!("{h}."), s[11..].to_string()),
            _ => fail("TOKEN must be a JWT with a signature"),
        },
        ("keys", _) => (String::new(), String::new()),
        _ => fail("mode: tokens TOKEN | keys"),
    };
    if n > 50_000_000 || !(1..=256).contains(&conns) {
        fail("N <= 50,000,000, 1 <= CONNS <= 256");
    }
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let (next, mode, head, sig) = (next.clone(), mode.clone(), head.clone(), sig.clone());
            std::thread::spawn(move || {
                let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
                let connect = || {
                    let s = TcpStream::connect(addr).ok()?;
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                    let _ = s.set_nodelay(true);
                    Some(s)
                };
                let Some(mut s) = connect() else {
                    return statuses;
                };
                let mut buf = Vec::with_capacity(4096);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let req = if mode == "tokens" {
                        format!("GET /rs256/bench HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {head}{i:011}{sig}\r\n\r\n")
                    } else {
                        format!("GET /keys/bench HTTP/1.1\r\nHost: {addr}\r\nX-Client: client-{i}\r\n\r\n")
                    };
                    let st = if s.write_all(req.as_bytes()).is_ok() {
                        read_status(&mut s, &mut buf)
                    } else {
                        None
                    };
                    *statuses.entry(st.unwrap_or(0)).or_default() += 1;
                    if st.is_none() {
                        match connect() {
                            Some(c) => s = c,
                            None => break,
                        }
                    }
                }
                statuses
            })
        })
        .collect();
    let mut all: BTreeMap<u16, usize> = BTreeMap::new();
    for h in handles {
        if let Ok(m) = h.join() {
            for (k, v) in m {
                *all.entry(k).or_default() += v;
            }
        }
    }
    let total: usize = all.values().sum();
    let list: Vec<String> = all.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!("requests={total} statuses={}", list.join(","));
}
