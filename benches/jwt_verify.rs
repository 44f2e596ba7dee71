//! JWT verification cost per algorithm (cache miss = full verification) and the
//! verified-token cache hit, on the same `JwtAuth` the gateway uses in `request_filter`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portcullis::auth::jwt::{key_from_pem, key_from_secret, JwtAuth, JwtOptions};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-bench-secret";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn options(alg: Algorithm, cache_entries: usize) -> JwtOptions {
    let mut o = JwtOptions::new(vec![alg]);
    o.issuer = Some("https://idp.test/".into());
    o.audiences = vec!["api".into()];
    o.cache_entries = cache_entries;
    o
}

fn bench(c: &mut Criterion) {
    let cases: [(Algorithm, &str, &str); 5] = [
        (Algorithm::HS256, "", ""),
        (Algorithm::RS256, "rsa.key", "rsa.pub.pem"),
        (Algorithm::PS256, "rsa.key", "rsa.pub.pem"),
        (Algorithm::ES256, "ec256.key", "ec256.pub.pem"),
        (Algorithm::EdDSA, "ed25519.key", "ed25519.pub.pem"),
    ];
    let claims = serde_json::json!({"sub": "alice", "iss": "https://idp.test/", "aud": "api", "exp": now() + 3600, "scope": "a b c"});
    for (alg, private, public) in cases {
        let (enc, key) = if private.is_empty() {
            (
                EncodingKey::from_secret(SECRET).unwrap(),
                key_from_secret(SECRET, Some("k".into())).unwrap(),
            )
        } else {
            let enc = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture(private)).unwrap(),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture(private)).unwrap(),
                _ => EncodingKey::from_rsa_pem(&fixture(private)).unwrap(),
            };
            (
                enc,
                key_from_pem(&fixture(public), Some("k".into())).unwrap(),
            )
        };
        let mut h = Header::new(alg);
        h.kid = Some("k".into());
        let token = encode(&h, &claims, &enc).unwrap();
        let no_cache = JwtAuth::new("b", options(alg, 0), vec![key], None);
        let t = now();
        assert!(no_cache.verify(token.as_bytes(), t).is_ok());
        c.bench_function(&format!("jwt_verify/{alg:?}/miss"), |b| {
            b.iter(|| no_cache.verify(black_box(token.as_bytes()), t))
        });
    }
    // Cache hit (independent of the algorithm).
    let enc = EncodingKey::from_rsa_pem(&fixture("rsa.key")).unwrap();
    let key = key_from_pem(&fixture("rsa.pub.pem"), Some("k".into())).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k".into());
    let token = encode(&h, &claims, &enc).unwrap();
    let cached = JwtAuth::new("b", options(Algorithm::RS256, 10_000), vec![key], None);
    let t = now();
    assert!(futures::executor::block_on(cached.verify_async(token.as_bytes(), t)).is_ok());
    c.bench_function("jwt_verify/RS256/cache_hit", |b| {
        b.iter(|| futures::executor::block_on(cached.verify_async(black_box(token.as_bytes()), t)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
