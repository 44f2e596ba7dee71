//! Benchmark helper: an open-loop (paced) HTTP/1.1 load for latency at a fixed rate, which
//! wrk cannot do. `CONNS` keep-alive connections, each on its own thread, send requests on a
//! fixed schedule that together make `RATE` requests per second. Latency is measured from a
//! request's *scheduled* send time to the end of its response, so a stall delays every
//! request behind it and shows in the percentiles (no coordinated omission).
//!
//! `paced_load ADDR PATH RATE SECONDS CONNS ["Name: value" ...]`
//! Prints one line: `sent=N errors=E rate=R p50_us=… p90_us=… p99_us=… p999_us=… max_us=…`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

/// Read one response (head + `Content-Length` body) into `buf`; false on any error.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let mut need: Option<usize> = None;
    loop {
        if need.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                need = Some(end + 4 + len);
            }
        }
        if need.is_some_and(|n| buf.len() >= n) {
            return true;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        fail("usage: paced_load ADDR PATH RATE SECONDS CONNS [\"Name: value\" ...]");
    }
    let addr: SocketAddr = a[1].parse().unwrap_or_else(|_| fail("bad ADDR"));
    let path = a[2].clone();
    let rate: f64 = a[3].parse().unwrap_or_else(|_| fail("bad RATE"));
    let secs: f64 = a[4].parse().unwrap_or_else(|_| fail("bad SECONDS"));
    let conns: usize = a[5].parse().unwrap_or_else(|_| fail("bad CONNS"));
    if !(rate > 0.0 && secs > 0.0 && secs <= 600.0 && (1..=256).contains(&conns)) {
        fail("RATE > 0, 0 < SECONDS <= 600, 1 <= CONNS <= 256");
    }
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for h in &a[6..] {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let req = req.into_bytes();
    // Each connection sends every `conns / rate` seconds, offset so sends interleave.
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let per_conn = ((secs * rate) / conns as f64).ceil() as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let req = req.clone();
            std::thread::spawn(move || {
                let mut lat: Vec<u32> = Vec::with_capacity(per_conn);
                let mut errors = 0usize;
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return (lat, per_conn);
                };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::with_capacity(4096);
                let offset = interval.mul_f64(c as f64 / conns as f64);
                for k in 0..per_conn {
                    let due = start + offset + interval * k as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let ok = s.write_all(&req).is_ok() && read_response(&mut s, &mut buf);
                    if !ok {
                        errors += 1;
                        match TcpStream::connect(addr) {
                            Ok(n) => s = n,
                            Err(_) => break,
                        }
                        continue;
                    }
                    let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    lat.push(us);
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        if let Ok((l, e)) = h.join() {
            all.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    all.sort_unstable();
    let q = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
    };
    println!(
        "sent={} errors={} rate={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        all.len(),
        errors,
        all.len() as f64 / elapsed,
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        all.last().copied().unwrap_or(0)
    );
}
