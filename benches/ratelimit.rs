//! Cost of one rate-limit check as `request_filter` runs it: the local sliding-window check
//! (count-min sketch sized for 100k keys), the sketch alone against pingora-limits'
//! `Estimator` (the baseline it replaced, same size, same run), and the Redis script on
//! loopback (a `redis-server` started here, when one is installed).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::ratelimit::{local, redis as rl_redis, Window};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let w = Window {
        limit: 1_000_000_000,
        interval: Duration::from_secs(3600),
    };
    let slots = local::slots_for(100_000);
    let counters = local::counters("bench|local".into(), w, slots);
    let key = b"\x01203.0.113.7\x1f".to_vec();
    c.bench_function("ratelimit/local_acquire_same_key", |b| {
        b.iter(|| black_box(counters.acquire(black_box(&key))))
    });
    let keys: Vec<Vec<u8>> = (0..100_000u32)
        .map(|i| format!("\x01198.51.{}.{}\x1f", i / 256, i % 256).into_bytes())
        .collect();
    let mut i = 0;
    c.bench_function("ratelimit/local_acquire_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(counters.acquire(&keys[i]))
        })
    });
    let sketch = portcullis::ratelimit::sketch::Sketch::new(4, slots);
    let estimator = pingora_limits::estimator::Estimator::new(4, slots);
    c.bench_function("ratelimit/sketch_incr_same_key", |b| {
        b.iter(|| black_box(sketch.incr(black_box(&key), 1)))
    });
    c.bench_function("ratelimit/estimator_incr_same_key (baseline)", |b| {
        b.iter(|| black_box(estimator.incr(black_box(&key[..]), 1)))
    });
    c.bench_function("ratelimit/sketch_incr_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(sketch.incr(&keys[i], 1))
        })
    });
    c.bench_function("ratelimit/estimator_incr_100k_keys (baseline)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(estimator.incr(&keys[i][..], 1))
        })
    });
    let inflight = local::inflight("bench|inflight".into(), 1_000_000);
    c.bench_function("ratelimit/inflight_enter_and_leave", |b| {
        b.iter(|| black_box(inflight.enter(black_box(&key))))
    });

    let Some((mut server, port)) = start_redis() else {
        eprintln!(
            "redis-server not installed: skipping the Redis bench (scripts/deps.sh installs it)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = rl_redis::backend(rl_redis::RedisSettings {
        url: format!("redis://127.0.0.1:{port}/0"),
        password: None,
        key_prefix: "bench:".into(),
        timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(1),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(1),
    });
    rt.block_on(async {
        for _ in 0..50 {
            backend.connect().await;
            if backend.connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let rkey = backend.key("bench", &key);
    c.bench_function("ratelimit/redis_check_loopback", |b| {
        b.iter(|| {
            rt.block_on(backend.check(&rkey, &w, rl_redis::Mode::Acquire(1)))
                .expect("redis check")
        })
    });
    let _ = server.kill();
    let _ = server.wait();
}

fn start_redis() -> Option<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

criterion_group!(benches, bench);
criterion_main!(benches);
