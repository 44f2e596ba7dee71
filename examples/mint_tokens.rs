//! Benchmark helper: print N distinct tokens, one per line (`sub` = `user-0` … `user-N-1`,
//! `scope: bench`, `exp` one day ahead).
//! `cargo run --release --example mint_tokens -- N KEY KID ISSUER [ALG]`
//! ALG is RS256 (default; KEY is an RSA private key PEM), ES256 (KEY is a P-256 private key
//! PEM) or HS256 (KEY is a file whose bytes, without a trailing newline, are the secret).
#![forbid(unsafe_code)]

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(1);
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: usize = a.get(1).and_then(|v| v.parse().ok()).unwrap_or(1);
    let key_file = a
        .get(2)
        .map_or("tests/fixtures/jwt/rsa.key", String::as_str);
    let bytes = std::fs::read(key_file).unwrap_or_else(|e| fail(&format!("{key_file}: {e}")));
    let kid = a.get(3).cloned().unwrap_or_else(|| "bench".into());
    let iss = a
        .get(4)
        .cloned()
        .unwrap_or_else(|| "https://bench.test/".into());
    let (alg, key) = match a.get(5).map_or("RS256", String::as_str) {
        "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&bytes)),
        "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&bytes)),
        "HS256" => {
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            (Algorithm::HS256, EncodingKey::from_secret(secret))
        }
        other => fail(&format!("unknown algorithm {other}: RS256, ES256 or HS256")),
    };
    let key = key.unwrap_or_else(|e| fail(&format!("{key_file}: {e}")));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    let mut h = Header::new(alg);
    h.kid = Some(kid);
    for i in 0..n {
        let claims = serde_json::json!({"sub": format!("user-{i}"), "iss": iss, "exp": exp, "scope": "bench"});
        match encode(&h, &claims, &key) {
            Ok(t) => println!("{t}"),
            Err(e) => fail(&e.to_string()),
        }
    }
}
