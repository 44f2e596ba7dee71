//! JWKS URL: keys fetched in the background from a JWKS server started by the test. Rotation
//! (a new kid works without restart, via a rate-limited refetch), the IdP going down (cached keys
//! keep working), and never loaded (503 keys_unavailable).

mod common;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct JwksServer {
    addr: std::net::SocketAddr,
    body: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let body = Arc::new(Mutex::new((200u16, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, h, s) = (body.clone(), hits.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded: stops with the test (flag) or after 5 minutes.
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).ok();
                        c.set_read_timeout(Some(Duration::from_secs(2))).ok();
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, text) = b.lock().unwrap().clone();
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                            text.len()
                        );
                        let _ = c.write_all(resp.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        JwksServer {
            addr,
            body,
            hits,
            stop,
        }
    }
    fn set(&self, status: u16, body: String) {
        *self.body.lock().unwrap() = (status, body);
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture(&format!("jwt/{name}"))).unwrap()).unwrap()
}

fn jwks(keys: &[(&str, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(file, kid)| {
            let mut j = Jwk::from_encoding_key(&rsa(file), Algorithm::RS256).unwrap();
            j.common.key_id = Some(kid.to_string());
            j
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn token(file: &str, kid: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    encode(
        &h,
        &json!({"sub": "u", "iss": "https://idp.test/", "exp": now + 600}),
        &rsa(file),
    )
    .unwrap()
}

fn gateway(jwks_addr: std::net::SocketAddr, refresh: &str, min: &str) -> (Gateway, Echo) {
    let e = Echo::start("e");
    let body = format!(
        r#"authenticators:
  idp:
    jwt:
      issuer: "https://idp.test/"
      algorithms: [RS256]
      jwks: {{ url: "http://{jwks_addr}/.well-known/jwks.json", refresh: {refresh}, min_refetch: {min} }}
upstreams:
  e: {{ targets: ["{}"] }}
routes:
  - {{ id: r, match: {{ path_prefix: / }}, upstream: e, authn: [idp] }}
"#,
        e.addr
    );
    (Gateway::start("", &body), e)
}

fn call(gw: &Gateway, t: &str) -> Response {
    request(
        gw.addr,
        format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

#[test]
fn rotation_is_picked_up_without_restart() {
    let server = JwksServer::start(jwks(&[("rsa.key", "k1")]));
    let (gw, _e) = gateway(server.addr, "10m", "1s");
    assert_eq!(call(&gw, &token("rsa.key", "k1")).status, 200);
    // The IdP rotates: k2 appears. The first request with k2 triggers a refetch and waits for it.
    std::thread::sleep(Duration::from_millis(1100));
    server.set(200, jwks(&[("rsa.key", "k1"), ("rsa-other.key", "k2")]));
    let before = server.hits();
    let r = call(&gw, &token("rsa-other.key", "k2"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.hits(), before + 1);
    // Unknown kids cannot make the gateway hammer the IdP: at most one refetch per min_refetch.
    let before = server.hits();
    for _ in 0..5 {
        let r = call(&gw, &token("rsa-other.key", "nope"));
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"], "unknown_key");
    }
    assert!(
        server.hits() <= before + 1,
        "{} refetches",
        server.hits() - before
    );
    let m = gw.metrics();
    assert!(
        m.contains("portcullis_jwks_keys{authenticator=\"idp\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_jwks_fetches_total{authenticator=\"idp\",result=\"ok\"}"),
        "{m}"
    );
    // k1 is retired by the IdP: once the new key set is fetched, the token that was verified
    // (and cached) before no longer passes — the cache is emptied when the key set changes.
    let k1 = token("rsa.key", "k1");
    assert_eq!(call(&gw, &k1).status, 200);
    server.set(200, jwks(&[("rsa-other.key", "k2")]));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(call(&gw, &token("rsa-other.key", "k9")).status, 401); // triggers the refetch
    let r = call(&gw, &k1);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "unknown_key");
}

#[test]
fn idp_down_keeps_the_last_good_keys() {
    let server = JwksServer::start(jwks(&[("rsa.key", "k1")]));
    let (gw, _e) = gateway(server.addr, "1s", "200ms");
    assert_eq!(call(&gw, &token("rsa.key", "k1")).status, 200);
    server.set(500, "oops".into());
    assert!(eventually(Duration::from_secs(5), || gw
        .metrics()
        .contains(
            "portcullis_jwks_fetches_total{authenticator=\"idp\",result=\"error\"}"
        )));
    assert_eq!(call(&gw, &token("rsa.key", "k1")).status, 200);
    // A broken document is rejected too, keeping the keys.
    server.set(200, "{\"keys\": \"no\"}".into());
    assert!(eventually(Duration::from_secs(5), || gw
        .metrics()
        .contains(
            "portcullis_jwks_fetches_total{authenticator=\"idp\",result=\"invalid\"}"
        )));
    assert_eq!(call(&gw, &token("rsa.key", "k1")).status, 200);
}

#[test]
fn never_loaded_is_503_keys_unavailable() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (gw, _e) = gateway(dead, "10m", "1s");
    let r = call(&gw, &token("rsa.key", "k1"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "keys_unavailable");
    // Without a token it is still a 401: the caller's problem comes first.
    let r = request(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401);
}

// ---------------------------------------------------------------------------------------------
// Hostile keys in a fetched JWKS (issue 9). A JWKS is public, and whoever can influence what the
// IdP serves (or sits on the path to it) must not get a key the gateway will verify with: a
// document with a weak RSA key, an exponent that makes forgery trivial, a symmetric key anyone
// can read, or two keys under one kid is rejected as a whole and the last good key set stays.

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = c.iter().fold(0u32, |a, &b| a << 8 | b as u32) << (8 * (3 - c.len()));
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("jwt/{name}"))).unwrap()
}

fn claims_text() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"sub": "u", "iss": "https://idp.test/", "exp": now + 600}).to_string()
}

/// `header.claims.` signed with `sign` over the signing input.
fn token_with(header: serde_json::Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims_text().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// RS256 with openssl, which (unlike the library) signs with any key size.
fn rs256_openssl(key: &openssl::rsa::Rsa<openssl::pkey::Private>, kid: &str) -> String {
    let pkey = openssl::pkey::PKey::from_rsa(key.clone()).unwrap();
    token_with(json!({"alg": "RS256", "kid": kid}), |input| {
        let mut s =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
        s.update(input).unwrap();
        s.sign_to_vec().unwrap()
    })
}

/// EMSA-PKCS1-v1_5 encoding of SHA-256(`msg`) for a `k`-byte modulus: with e = 1 the
/// "signature" is this block itself, no private key needed (RFC 8017 §9.2).
fn pkcs1_sha256_block(msg: &[u8], k: usize) -> Vec<u8> {
    const DIGEST_INFO: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let mut em = vec![0x00, 0x01];
    em.resize(k - DIGEST_INFO.len() - 32 - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(&DIGEST_INFO);
    em.extend_from_slice(&openssl::sha::sha256(msg));
    em
}

fn rsa_jwk(kid: &str, n: &[u8], e: &[u8]) -> serde_json::Value {
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": b64(n), "e": b64(e)})
}

fn good_jwk() -> serde_json::Value {
    let mut j = Jwk::from_encoding_key(&rsa("rsa.key"), Algorithm::RS256).unwrap();
    j.common.key_id = Some("k1".into());
    serde_json::to_value(j).unwrap()
}

fn doc(keys: &[serde_json::Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn call_path(gw: &Gateway, path: &str, t: &str) -> Response {
    request(
        gw.addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

#[test]
fn hostile_jwks_keys_are_not_usable() {
    let good_pub = openssl::rsa::Rsa::public_key_from_pem(&fixture_bytes("rsa.pub.pem")).unwrap();
    let good_n = good_pub.n().to_vec();
    let weak1024 = openssl::rsa::Rsa::private_key_from_pem(&fixture_bytes("rsa-weak.key")).unwrap();
    let weak512 = openssl::rsa::Rsa::generate(512).unwrap();
    // The oct secret an attacker reads from the public JWKS.
    let oct_k = b"attacker-can-read-this-from-the-jwks!!";
    let oct_jwk = json!({"kty": "oct", "kid": "oct", "alg": "HS256", "k": b64(oct_k)});
    let hs256_with = |key: &[u8], header: serde_json::Value| {
        token_with(header, |input| {
            let k = openssl::pkey::PKey::hmac(key).unwrap();
            let mut s =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &k).unwrap();
            s.update(input).unwrap();
            s.sign_to_vec().unwrap()
        })
    };

    let idp = JwksServer::start(doc(&[good_jwk()]));
    // An HMAC authenticator that also names a JWKS URL: the oct key there must not join it.
    let octs = JwksServer::start(doc(std::slice::from_ref(&oct_jwk)));
    // An IdP that never served anything usable.
    let weak_only = JwksServer::start(doc(&[rsa_jwk(
        "weak1024",
        &weak1024.n().to_vec(),
        &weak1024.e().to_vec(),
    )]));
    let rec = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef-hs").unwrap();
    let jwks = |s: &JwksServer| {
        format!(
            "{{ url: \"http://{}/jwks.json\", refresh: 10m, min_refetch: 100ms }}",
            s.addr
        )
    };
    let body = format!(
        r#"authenticators:
  idp: {{ jwt: {{ issuer: "https://idp.test/", algorithms: [RS256], jwks: {idp} }} }}
  hs: {{ jwt: {{ issuer: "https://idp.test/", algorithms: [HS256], hmac_secret: {{ file: "{secret}" }}, jwks: {octs} }} }}
  weak: {{ jwt: {{ issuer: "https://idp.test/", algorithms: [RS256], jwks: {weak} }} }}
upstreams:
  rec: {{ targets: ["{addr}"] }}
routes:
  - {{ id: idp, match: {{ path_prefix: /idp }}, upstream: rec, authn: [idp] }}
  - {{ id: hs, match: {{ path_prefix: /hs }}, upstream: rec, authn: [hs] }}
  - {{ id: weak, match: {{ path_prefix: /weak }}, upstream: rec, authn: [weak] }}
"#,
        idp = jwks(&idp),
        octs = jwks(&octs),
        weak = jwks(&weak_only),
        secret = secret.display(),
        addr = rec.addr
    );
    let gw = Gateway::start("", &body);
    let k1 = token("rsa.key", "k1");
    assert_eq!(call_path(&gw, "/idp/ok", &k1).status, 200);
    let refused = |path: &str, t: &str, code: &str| {
        let r = call_path(&gw, &format!("{path}/refused"), t);
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], code, "{path}: {}", r.text());
    };

    // e = 1: the forged token is the bare PKCS#1 block, valid for any lax RSA verifier.
    let e1_forged = token_with(json!({"alg": "RS256", "kid": "e1"}), |input| {
        pkcs1_sha256_block(input, good_n.len())
    });
    let variants: Vec<(&str, serde_json::Value, String, &str, &str)> = vec![
        (
            "1024-bit RSA",
            rsa_jwk("weak1024", &weak1024.n().to_vec(), &weak1024.e().to_vec()),
            rs256_openssl(&weak1024, "weak1024"),
            "unknown_key",
            "RSA key of 1024 bits is too weak",
        ),
        (
            "512-bit RSA",
            rsa_jwk("weak512", &weak512.n().to_vec(), &weak512.e().to_vec()),
            rs256_openssl(&weak512, "weak512"),
            "unknown_key",
            "RSA key of 512 bits is too weak",
        ),
        (
            "e = 1",
            rsa_jwk("e1", &good_n, &[1]),
            e1_forged,
            "unknown_key",
            "RSA exponent must be odd",
        ),
        (
            "even e",
            rsa_jwk("even", &good_n, &[1, 0, 0]),
            token("rsa.key", "even"),
            "unknown_key",
            "RSA exponent must be odd",
        ),
        (
            "oct key (RS256 token naming it)",
            oct_jwk.clone(),
            token("rsa.key", "oct"),
            "unknown_key",
            "symmetric (oct) keys are not accepted",
        ),
        (
            "a second key under kid k1",
            {
                let mut j = serde_json::to_value(
                    Jwk::from_encoding_key(&rsa("rsa-other.key"), Algorithm::RS256).unwrap(),
                )
                .unwrap();
                j["kid"] = "k1".into();
                j
            },
            token("rsa-other.key", "k1"),
            "bad_signature",
            "duplicate kid \"k1\"",
        ),
    ];
    for (what, hostile, t, code, reason) in &variants {
        idp.set(200, doc(&[good_jwk(), hostile.clone()]));
        let before = idp.hits();
        let logged = gw.proc.log_text().matches(reason).count();
        // Each try is refused. An unknown kid asks for a refetch (at most one per min_refetch);
        // a known one waits for the retry that follows every rejected document. The new
        // document is rejected for the expected reason.
        assert!(
            eventually(Duration::from_secs(5), || {
                refused("/idp", t, code);
                idp.hits() > before && gw.proc.log_text().matches(reason).count() > logged
            }),
            "{what}: document not fetched or not rejected for {reason:?}:\n{}",
            gw.proc.log_text()
        );
        // The last good key set is kept.
        assert_eq!(call_path(&gw, "/idp/ok", &k1).status, 200, "{what}");
    }
    // An oct key never makes HS256 acceptable on a public-key authenticator.
    refused(
        "/idp",
        &hs256_with(oct_k, json!({"alg": "HS256", "kid": "oct"})),
        "alg_not_allowed",
    );
    // On an HMAC authenticator, knowing the JWKS's oct key gives nothing either: the kid is
    // unknown (the document was refused), and without a kid only the configured secret counts.
    refused(
        "/hs",
        &hs256_with(oct_k, json!({"alg": "HS256", "kid": "oct"})),
        "unknown_key",
    );
    refused(
        "/hs",
        &hs256_with(oct_k, json!({"alg": "HS256"})),
        "bad_signature",
    );
    let ok = hs256_with(
        b"0123456789abcdef0123456789abcdef-hs",
        json!({"alg": "HS256"}),
    );
    assert_eq!(call_path(&gw, "/hs/ok", &ok).status, 200);
    // An IdP that only ever served a hostile key: nothing is loaded, so a token signed with it
    // meets the documented "keys never loaded" answer, not a verification with that key.
    let r = call_path(&gw, "/weak/refused", &rs256_openssl(&weak1024, "weak1024"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "keys_unavailable");

    let m = gw.metrics();
    assert!(
        m.contains("portcullis_jwks_fetches_total{authenticator=\"idp\",result=\"invalid\"}"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_jwks_keys{authenticator=\"idp\"} 1"),
        "{m}"
    );
    let seen = String::from_utf8_lossy(&rec.received()).into_owned();
    assert!(
        seen.contains("/idp/ok") && seen.contains("/hs/ok"),
        "{seen}"
    );
    assert!(
        !seen.contains("/refused"),
        "a refused token reached the upstream:\n{seen}"
    );
    let log = gw.proc.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
