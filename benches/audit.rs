//! Cost of the audit trail's per-record work on the writer thread: the chain hash of a
//! typical record line (SHA-256 and HMAC-SHA256), and the RFC 3339 timestamp every record
//! carries. (Formatting the record itself needs a live session; scripts/bench.sh measures the
//! whole per-request cost end to end, chain off and on.)

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::audit::{chain, rfc3339_now};

fn bench(c: &mut Criterion) {
    let line = format!(
        "{{\"v\":1,\"seq\":123456,\"instance\":\"0123456789abcdef\",\"type\":\"request\",\"ts\":\"2026-12-04T00:45:12.123456Z\",\"request_id\":\"{}\",\"client_ip\":\"203.0.113.7\",\"peer_ip\":\"10.0.0.2\",\"method\":\"GET\",\"host\":\"api.example.com\",\"path\":\"/v1/orders/42\",\"route\":\"orders-read\",\"upstream\":\"orders\",\"target\":\"10.1.0.5:9001\",\"status\":200,\"decision\":\"allow\",\"reason\":\"ok\",\"principal\":{{\"method\":\"jwt\",\"authenticator\":\"idp\",\"subject\":\"alice\",\"consumer\":null,\"issuer\":\"https://idp.example.com/\",\"key_id\":null}},\"bytes_in\":0,\"bytes_out\":1532,\"duration_us\":1840,\"upstream_us\":1210,\"user_agent\":\"curl/8.5.0\",\"prev\":\"{}\"",
        "a".repeat(32),
        chain::ZERO
    );
    c.bench_function("audit/chain_sha256_line", |b| {
        b.iter(|| chain::digest(None, black_box(line.as_bytes())))
    });
    let key = b"audit-hmac-key-0123456789abcdef0123456789";
    c.bench_function("audit/chain_hmac_sha256_line", |b| {
        b.iter(|| chain::digest(Some(key), black_box(line.as_bytes())))
    });
    c.bench_function("audit/rfc3339_timestamp", |b| b.iter(rfc3339_now));
}

criterion_group!(benches, bench);
criterion_main!(benches);
