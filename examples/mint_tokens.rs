//! Benchmark helper: print N distinct RS256 tokens, one per line.
//! `cargo run --release --example mint_tokens -- N PRIVATE_KEY_PEM KID ISSUER`
#![forbid(unsafe_code)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: usize = a.get(1).and_then(|v| v.parse().ok()).unwrap_or(1);
    let pem = std::fs::read(
        a.get(2)
            .map_or("tests/fixtures/jwt/rsa.key", String::as_str),
    )
    .unwrap_or_default();
    let kid = a.get(3).cloned().unwrap_or_else(|| "bench".into());
    let iss = a
        .get(4)
        .cloned()
        .unwrap_or_else(|| "https://bench.test/".into());
    let Ok(key) = EncodingKey::from_rsa_pem(&pem) else {
        eprintln!("cannot read the RSA private key");
        std::process::exit(1);
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid);
    for i in 0..n {
        let claims = serde_json::json!({"sub": format!("user-{i}"), "iss": iss, "exp": exp, "scope": "bench"});
        match encode(&h, &claims, &key) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
}
