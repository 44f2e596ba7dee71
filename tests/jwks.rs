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
