//! Fuzzing entry points. `fuzz/fuzz_targets/*` (cargo-fuzz, `scripts/fuzz.sh`) call these
//! with arbitrary bytes, and `tests/fuzz_seeds.rs` replays every checked-in seed through them
//! on each test run, so a finding fixed once stays fixed. Each must never panic, hang or
//! allocate without bound, and checks invariants of its own (a failed `assert!` is a
//! finding). Not used by the gateway itself.
//!
//! | target | what it drives |
//! |---|---|
//! | [`config`] | YAML → `config::load_str` (parse, compile, validate) |
//! | [`jwt`] | our token splitting, base64url, header and claims handling, claim mapping |
//! | [`credentials`] | API key and bearer extraction from headers and query, credential stripping |
//! | [`front_door`] | raw bytes → Pingora's HTTP/1 parser behind our [`Guarded`] stream → every check `request_filter` makes, body pre-read included |
//!
//! [`Guarded`]: crate::frontdoor::Guarded

use crate::auth::{self, Authenticator, Credentials};
use crate::config::{load_str, Snapshot};
use crate::gateway::{self, Conn, RequestCtx};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The HMAC secret of the fuzzing config's JWT authenticator.
pub const SECRET: &[u8] = b"portcullis-fuzzing-secret-32-bytes!!";
/// An API key the fuzzing config accepts.
pub const API_KEY: &str = "fuzz-key-1";

/// The config every target runs against: API keys by header and query, HS256 JWTs by header
/// and cookie, a policy, a local rate limit.
fn config_text(secret_file: &Path) -> String {
    format!(
        r#"
server:
  listen: [{{ addr: "127.0.0.1:1" }}]
  limits: {{ max_body_bytes: 4KiB, max_header_bytes: 8KiB, max_headers: 50, max_uri_bytes: 2KiB }}
authenticators:
  keys:
    api_key:
      header: x-api-key
      query: api_key
      keys: [{{ id: k1, sha256: "{key}", consumer: c1, scopes: [read] }}]
  jwt:
    jwt:
      issuer: https://issuer.test/
      audiences: [api]
      algorithms: [HS256]
      hmac_secret: {{ file: "{secret}" }}
      cookie: session
      roles_claim: realm.roles
      groups_claim: groups
      forward_claims: [email, tenant]
rate_limits:
  per-ip: {{ key: client_ip, rate: 1000000/s }}
upstreams:
  u: {{ targets: ["127.0.0.1:9"] }}
routes:
  - {{ id: open, match: {{ path_prefix: /open }}, upstream: u, public: true, rate_limits: [per-ip] }}
  - {{ id: keys, match: {{ path_prefix: /keys }}, upstream: u, authn: [keys], authz: {{ scopes_all: [read] }} }}
  - {{ id: jwt, match: {{ path_prefix: /jwt }}, upstream: u, authn: [jwt], strip_prefix: true }}
  - {{ id: either, match: {{ path_prefix: / }}, upstream: u, authn: [keys, jwt] }}
"#,
        key = crate::auth::api_key::hex(
            &crate::auth::api_key::sha256(API_KEY.as_bytes()).unwrap_or_default()
        ),
        secret = secret_file.display(),
    )
}

fn snapshot() -> &'static Arc<Snapshot> {
    static SNAPSHOT: OnceLock<Arc<Snapshot>> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let secret = dir.join("hmac.secret");
        let _ = std::fs::write(&secret, SECRET);
        match load_str(&config_text(&secret), &dir) {
            Ok(c) => Arc::new(c.snapshot),
            Err(e) => panic!("fuzzing config does not compile: {e}"),
        }
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        }
    })
}

fn authenticators(names: &[&str]) -> Vec<Arc<Authenticator>> {
    names
        .iter()
        .filter_map(|n| snapshot().authenticators.get(*n).cloned())
        .collect()
}

/// Config loading: any bytes as YAML. Relative file names resolve in an empty directory.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = std::env::temp_dir().join("portcullis-fuzz-empty");
    let _ = std::fs::create_dir_all(&dir);
    if let Err(e) = load_str(text, &dir) {
        // Every error names where it is (or is a syntax error from the parser).
        for line in e.lines() {
            assert!(!line.is_empty());
        }
    }
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 4);
    for c in data.chunks(3) {
        let n = c.iter().fold(0u32, |a, &b| a << 8 | b as u32) << (8 * (3 - c.len()));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// JWT handling on our side. The input is used twice: as a whole token, and split at the
/// first NUL into a header and a claims document that are then correctly signed — so the
/// fuzzer reaches header and claims parsing, which a forged signature would never get past.
pub fn jwt(data: &[u8]) {
    let _ = jwt_outcome(data);
}

/// [`jwt`], telling how many of its (at most two) tokens were accepted.
pub fn jwt_outcome(data: &[u8]) -> usize {
    let mut accepted = 0;
    let authn = authenticators(&["jwt"]);
    let now = auth::time::now();
    let mut tokens = vec![data.to_vec()];
    if let Some(i) = data.iter().position(|&b| b == 0) {
        let signing_input = format!("{}.{}", b64url(&data[..i]), b64url(&data[i + 1..]));
        let sig =
            crate::audit::chain::hmac_sha256(SECRET, signing_input.as_bytes()).unwrap_or_default();
        tokens.push(format!("{signing_input}.{}", b64url(&sig)).into_bytes());
    }
    let _ = auth::jwt::split(data);
    let _ = auth::jwt::b64url_decode(data);
    for t in tokens {
        let Ok(value) = http::HeaderValue::from_bytes(&[b"Bearer ", &t[..]].concat()) else {
            continue;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        let creds = Credentials {
            headers: &headers,
            query: None,
            client_cert: None,
        };
        if let Ok(p) = runtime().block_on(auth::authenticate(&authn, &creds, now)) {
            // Whatever was accepted has a subject and came through this authenticator.
            assert!(!p.subject.is_empty());
            assert_eq!(&*p.authenticator, "jwt");
            accepted += 1;
        }
    }
    accepted
}

/// Credential extraction: the first line is a query string, the rest `name: value` headers.
pub fn credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let query = lines.next().filter(|q| !q.is_empty());
    let mut headers = http::HeaderMap::new();
    for line in lines.take(64) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) {
            headers.append(n, v);
        }
    }
    let _ = auth::bearer(&headers);
    let authn = authenticators(&["keys", "jwt"]);
    let creds = Credentials {
        headers: &headers,
        query,
        client_cert: None,
    };
    let _ = runtime().block_on(auth::authenticate(&authn, &creds, auth::time::now()));
    // What goes upstream carries no query credential any more.
    if let Some(q) = query {
        let stripped = auth::strip_query_credentials(&authn, q);
        let empty = http::HeaderMap::new();
        for a in &authn {
            if let Authenticator::ApiKey(k) = a.as_ref() {
                let after = Credentials {
                    headers: &empty,
                    query: stripped.as_deref(),
                    client_cert: None,
                };
                assert!(
                    matches!(k.extract(&after), Ok(None)),
                    "a query credential survived stripping: {q:?} -> {stripped:?}"
                );
            }
        }
    }
}

/// The raw HTTP/1 front door: bytes from a client that then closes its side.
pub fn front_door(data: &[u8]) {
    let _ = front_door_outcome(data);
}

/// [`front_door`], telling what happened: `None` when the parser refused the bytes (or they
/// were not a whole request), `Some(0)` when the request would be proxied, else the status
/// the gateway answers.
pub fn front_door_outcome(data: &[u8]) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let data = &data[..data.len().min(60 * 1024)];
    let snapshot = snapshot().clone();
    runtime().block_on(async move {
        // The duplex buffer holds the whole input, so the write never waits for a reader.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let limits = snapshot.limits;
        let stream: pingora::protocols::Stream = Box::new(crate::frontdoor::Guarded::new(
            Box::new(server),
            limits.header_timeout,
            limits.keepalive_timeout,
        ));
        let mut session = pingora::proxy::Session::new_h1(stream);
        let limit = Duration::from_secs(5);
        // The client has closed its side: every read ends, so a timeout is a hang (a finding).
        match tokio::time::timeout(limit, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(_) => return None,
            Err(_) => panic!("read_request hung"),
        }
        crate::frontdoor::header_complete(&mut session, limits.idle_timeout);
        let raw_bad = session
            .as_http1()
            .is_some_and(|h| gateway::raw_framing_bad(&h.get_headers_raw_bytes()));
        let conn = Conn {
            peer: Some(std::net::IpAddr::from([127, 0, 0, 1])),
            tls: false,
            raw_framing_bad: raw_bad,
            client_cert: None,
        };
        let mut ctx = RequestCtx::new(snapshot.clone());
        gateway::identify(session.req_header(), &conn, &mut ctx);
        let mut admitted = gateway::admit(session.req_header(), &mut ctx).await;
        if admitted.is_ok() {
            let preread = crate::frontdoor::preread_chunked(&mut session, limits.max_body_bytes);
            admitted = match tokio::time::timeout(limit, preread).await {
                Ok(r) => r,
                Err(_) => panic!("the body pre-read hung"),
            };
        }
        match admitted {
            Ok(()) => {
                let req = session.req_header();
                if let Some(h1) = session.as_http1() {
                    strict_head(&h1.get_headers_raw_bytes());
                }
                assert!(ctx.path.starts_with('/'), "admitted path {:?}", ctx.path);
                assert!(req.raw_path().len() <= limits.max_uri_bytes);
                assert!(req.headers.len() <= limits.max_headers);
                let te = req.headers.get_all("transfer-encoding").iter().count();
                let cl = req.headers.get_all("content-length").iter().count();
                assert!(te + cl <= 1, "admitted TE {te} and CL {cl}");
                let mut upstream = req.clone();
                let _ = crate::forward::prepare_upstream_request(&mut upstream, &mut ctx);
                // Credentials never travel upstream: not the key header, not the bearer
                // token, not the JWT cookie, not the query key.
                let id = ctx.route.as_ref().map_or("", |r| &*r.id);
                let (keys, jwt) = (
                    matches!(id, "keys" | "either"),
                    matches!(id, "jwt" | "either"),
                );
                if keys {
                    assert!(
                        upstream.headers.get("x-api-key").is_none(),
                        "key header forwarded"
                    );
                    let query = upstream.uri.query().unwrap_or_default();
                    assert!(
                        !query
                            .split('&')
                            .any(|p| p.split('=').next() == Some("api_key")),
                        "query key forwarded: {query:?}"
                    );
                }
                if jwt {
                    assert!(
                        upstream.headers.get("authorization").is_none(),
                        "token forwarded"
                    );
                    for c in upstream.headers.get_all("cookie") {
                        let jar = String::from_utf8_lossy(c.as_bytes()).into_owned();
                        assert!(
                            !jar.split(';')
                                .any(|p| p.trim_start().starts_with("session=")),
                            "JWT cookie forwarded: {jar:?}"
                        );
                    }
                }
                // The rest of the body, as the proxy would read it (bounded).
                for _ in 0..256 {
                    match tokio::time::timeout(limit, session.read_request_body()).await {
                        Ok(Ok(Some(_))) => {}
                        Ok(_) => break,
                        Err(_) => panic!("body read hung"),
                    }
                }
                Some(0)
            }
            Err(reject) => {
                let body = crate::error::body(&reject, &ctx.request_id);
                assert!(body.starts_with("{\"error\":"));
                let status = reject.status();
                assert!((400..600).contains(&status));
                let _ = crate::error::response_header(&reject, &ctx.request_id, body.len());
                Some(status)
            }
        }
    })
}

/// An independent oracle for an admitted HTTP/1 header section (written apart from
/// `gateway::raw_framing_bad`, on purpose): lines end in CRLF and hold no other CR or LF,
/// field names are tokens, at most one framing field, and `Transfer-Encoding` is `chunked`.
fn strict_head(raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    assert!(
        text.ends_with("\r\n\r\n"),
        "head does not end in CRLF CRLF: {text:?}"
    );
    let lines: Vec<&str> = text[..text.len() - 4].split("\r\n").collect();
    let mut framing = Vec::new();
    // Empty lines before the request line are allowed (RFC 9112 §2.2).
    let start = lines.iter().position(|l| !l.is_empty()).unwrap_or(0);
    for (i, line) in lines.iter().enumerate() {
        assert!(
            !line.contains(['\r', '\n']),
            "bare CR/LF in line {i}: {line:?}"
        );
        if i <= start {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("no colon: {line:?}"));
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
            "field name is not a token: {name:?}"
        );
        let lower = name.to_ascii_lowercase();
        if lower == "transfer-encoding" || lower == "content-length" {
            framing.push((lower, value.trim_matches(' ').to_string()));
        }
    }
    assert!(
        framing.len() <= 1,
        "several framing fields admitted: {framing:?}"
    );
    if let Some((name, value)) = framing.first() {
        if name == "transfer-encoding" {
            assert_eq!(value, "chunked", "admitted Transfer-Encoding {value:?}");
        } else {
            assert!(
                !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
                "admitted Content-Length {value:?}"
            );
        }
    }
}
