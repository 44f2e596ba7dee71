//! JWT authentication through the real gateway with real crypto: every algorithm, every
//! rejection reason, the classic attacks, several issuers, and config refusals.

mod common;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("jwt/{name}"))).unwrap()
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

fn enc_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(SECRET.as_bytes()).unwrap()
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key_file("ec256.key")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&key_file("ec384.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&key_file("ed25519.key")).unwrap(),
        _ => EncodingKey::from_rsa_pem(&key_file("rsa.key")).unwrap(),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, &enc_key(alg)).unwrap()
}

/// A token from raw JSON header/claims and a signature made by `key` (for attacks).
fn raw_token(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(sig)
    )
}

fn claims(iss: &str) -> Value {
    json!({"sub": "alice", "iss": iss, "aud": "orders-api", "exp": now() + 600, "iat": now(), "scope": "orders:read orders:write"})
}

struct Setup {
    gw: Gateway,
    _e: Echo,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let e = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    // JWKS for the EC authenticator, built from the test keys.
    let mut k1 = Jwk::from_encoding_key(&enc_key(Algorithm::ES256), Algorithm::ES256).unwrap();
    k1.common.key_id = Some("ec-1".into());
    let mut k2 = Jwk::from_encoding_key(&enc_key(Algorithm::ES384), Algorithm::ES384).unwrap();
    k2.common.key_id = Some("ec-2".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_vec(&JwkSet { keys: vec![k1, k2] }).unwrap(),
    )
    .unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let body = format!(
        r#"authenticators:
  rsa:
    jwt:
      issuer: "https://rsa.test/"
      audiences: [orders-api, other-api]
      algorithms: [RS256, RS384, RS512, PS256, PS384, PS512]
      keys: [{{ kid: rsa-1, pem_file: "{rsa}" }}]
      scopes_claim: [scope, scp]
  ec:
    jwt:
      issuer: "https://ec.test/"
      audiences: [orders-api]
      algorithms: [ES256, ES384]
      jwks_file: "{jwks}"
  ed:
    jwt:
      issuer: "https://ed.test/"
      audiences: [orders-api]
      algorithms: [EdDSA]
      keys: [{{ pem_file: "{ed}" }}]
  hs:
    jwt:
      issuer: "https://hs.test/"
      audiences: [orders-api]
      algorithms: [HS256, HS384, HS512]
      hmac_secret: {{ file: "{secret}" }}
      forward_token: true
upstreams:
  e: {{ targets: ["{addr}"] }}
routes:
  - {{ id: rsa, match: {{ path_prefix: /rsa }}, upstream: e, authn: [rsa] }}
  - {{ id: multi, match: {{ path_prefix: /multi }}, upstream: e, authn: [rsa, ec, ed, hs] }}
"#,
        rsa = fixture("jwt/rsa.pub.pem"),
        ed = fixture("jwt/ed25519.pub.pem"),
        jwks = jwks.display(),
        secret = secret.display(),
        addr = e.addr
    );
    Setup {
        gw: Gateway::start("", &body),
        _e: e,
        _dir: dir,
    }
}

fn call(gw: &Gateway, path: &str, auth: &[&str]) -> Response {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for a in auth {
        raw.push_str(&format!("Authorization: {a}\r\n"));
    }
    raw.push_str("\r\n");
    request(gw.addr, raw.as_bytes())
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    call(gw, path, &[&format!("Bearer {token}")])
}

fn assert_401(r: &Response, reason: &str) {
    assert_eq!(r.status, 401, "{reason}: {}", r.text());
    assert_eq!(r.json()["error"], reason, "{}", r.text());
    let wa = r.header("www-authenticate").unwrap_or_default();
    assert!(wa.starts_with("Bearer realm=\"portcullis\""), "{wa}");
    if reason != "credentials_missing" {
        assert!(wa.contains("error=\"invalid_token\""), "{wa}");
    }
}

#[test]
fn every_algorithm_is_verified_and_identity_is_forwarded() {
    let s = setup();
    let cases = [
        (Algorithm::RS256, Some("rsa-1"), "https://rsa.test/"),
        (Algorithm::RS384, Some("rsa-1"), "https://rsa.test/"),
        (Algorithm::RS512, Some("rsa-1"), "https://rsa.test/"),
        (Algorithm::PS256, Some("rsa-1"), "https://rsa.test/"),
        (Algorithm::PS384, Some("rsa-1"), "https://rsa.test/"),
        (Algorithm::PS512, Some("rsa-1"), "https://rsa.test/"),
        (Algorithm::ES256, Some("ec-1"), "https://ec.test/"),
        (Algorithm::ES384, Some("ec-2"), "https://ec.test/"),
        (Algorithm::EdDSA, None, "https://ed.test/"),
        (Algorithm::HS256, None, "https://hs.test/"),
        (Algorithm::HS384, None, "https://hs.test/"),
        (Algorithm::HS512, None, "https://hs.test/"),
    ];
    for (alg, kid, iss) in cases {
        let t = sign(alg, kid, &claims(iss));
        let r = bearer(&s.gw, "/multi/x", &t);
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
        let h = r.json()["headers"].clone();
        assert_eq!(h["x-portcullis-subject"][0], "alice", "{alg:?}");
        assert_eq!(h["x-portcullis-issuer"][0], iss);
        assert_eq!(h["x-portcullis-auth-method"][0], "jwt");
        assert_eq!(h["x-portcullis-scopes"][0], "orders:read orders:write");
        if let Some(k) = kid {
            assert_eq!(h["x-portcullis-key-id"][0], k);
        }
        // The token is removed unless the authenticator forwards it.
        assert_eq!(
            h.get("authorization").is_some(),
            iss == "https://hs.test/",
            "{alg:?}"
        );
    }
    // scp as an array, aud as an array, lower-case scheme.
    let c = json!({"sub": "bob", "iss": "https://rsa.test/", "aud": ["x", "other-api"], "exp": now() + 60, "scp": ["a", "b"]});
    let r = call(
        &s.gw,
        "/rsa",
        &[&format!(
            "bearer {}",
            sign(Algorithm::RS256, Some("rsa-1"), &c)
        )],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.echoed_header("x-portcullis-scopes").as_deref(),
        Some("a b")
    );
}

#[test]
fn openssl_signed_token_is_accepted() {
    // Independent of the library that verifies: sign RS256 with the openssl CLI.
    let s = setup();
    let head = b64(br#"{"alg":"RS256","typ":"JWT","kid":"rsa-1"}"#);
    let body = b64(claims("https://rsa.test/").to_string().as_bytes());
    let input = format!("{head}.{body}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in");
    std::fs::write(&f, &input).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-sign",
            &fixture("jwt/rsa.key"),
            f.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = format!("{input}.{}", b64(&out.stdout));
    assert_eq!(bearer(&s.gw, "/rsa", &token).status, 200);
    // One flipped signature byte: refused.
    let mut sig = out.stdout.clone();
    sig[10] ^= 1;
    assert_401(
        &bearer(&s.gw, "/rsa", &format!("{input}.{}", b64(&sig))),
        "bad_signature",
    );
}

#[test]
fn claim_checks() {
    let s = setup();
    let g = &s.gw;
    let rs = |c: Value| sign(Algorithm::RS256, Some("rsa-1"), &c);
    let mut c = claims("https://rsa.test/");
    assert_401(&call(g, "/rsa", &[]), "credentials_missing");
    c["exp"] = json!(now() - 100);
    assert_401(&bearer(g, "/rsa", &rs(c.clone())), "token_expired");
    c["exp"] = json!(now() - 10); // within the 30 s leeway
    assert_eq!(bearer(g, "/rsa", &rs(c.clone())).status, 200);
    let mut c = claims("https://rsa.test/");
    c["nbf"] = json!(now() + 100);
    assert_401(&bearer(g, "/rsa", &rs(c)), "token_not_yet_valid");
    let mut c = claims("https://rsa.test/");
    c["iat"] = json!(now() + 100);
    assert_401(&bearer(g, "/rsa", &rs(c)), "token_not_yet_valid");
    assert_401(
        &bearer(g, "/rsa", &rs(claims("https://evil.test/"))),
        "bad_issuer",
    );
    let mut c = claims("https://rsa.test/");
    c["aud"] = json!("someone-else");
    assert_401(&bearer(g, "/rsa", &rs(c)), "bad_audience");
    for missing in ["exp", "sub"] {
        let mut c = claims("https://rsa.test/");
        c.as_object_mut().unwrap().remove(missing);
        assert_401(&bearer(g, "/rsa", &rs(c)), "missing_claim");
    }
    for bad_exp in [json!("9999999999"), json!(1.5e9), json!(1e30), json!(-1)] {
        let mut c = claims("https://rsa.test/");
        c["exp"] = bad_exp.clone();
        let r = bearer(g, "/rsa", &rs(c));
        assert_eq!(r.status, 401, "exp {bad_exp}: {}", r.text());
    }
    // Several issuers: the token's iss selects; an unknown iss is refused.
    assert_401(
        &bearer(g, "/multi", &rs(claims("https://nobody.test/"))),
        "bad_issuer",
    );
}

#[test]
fn attacks_are_refused() {
    let s = setup();
    let g = &s.gw;
    let c = claims("https://rsa.test/");
    // alg none in every spelling, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = raw_token(&json!({"alg": alg, "typ": "JWT"}), &c, b"");
        assert_401(&bearer(g, "/rsa", &t), "alg_not_allowed");
        let t = format!("{}.", t.trim_end_matches('.'));
        assert_eq!(bearer(g, "/rsa", &t).status, 401);
    }
    // HS256 signed with the RSA public key PEM as the HMAC secret.
    let pem = key_file("rsa.pub.pem");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let t = encode(&h, &c, &EncodingKey::from_secret(&pem).unwrap()).unwrap();
    assert_401(&bearer(g, "/rsa", &t), "alg_not_allowed");
    // On a route that also accepts HMAC, the same trick still fails (key type mismatch).
    assert_eq!(bearer(g, "/multi", &t).status, 401);
    // Signed by another key, claiming our kid.
    let other = EncodingKey::from_rsa_pem(&key_file("rsa-other.key")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    assert_401(
        &bearer(g, "/rsa", &encode(&h, &c, &other).unwrap()),
        "bad_signature",
    );
    // Unknown and path-like kids.
    for kid in ["rsa-2", "../../../../etc/passwd", "rsa-1\u{0}"] {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        assert_401(
            &bearer(g, "/rsa", &encode(&h, &c, &other).unwrap()),
            "unknown_key",
        );
    }
    // Embedded jwk / jku / x5u: never used to find a key. The jku host must see no connection.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}/jwks.json", trap.local_addr().unwrap());
    let attacker_jwk = Jwk::from_encoding_key(&other, Algorithm::RS256).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.jwk = Some(attacker_jwk);
    h.jku = Some(trap_url.clone());
    h.x5u = Some(trap_url);
    assert_401(
        &bearer(g, "/rsa", &encode(&h, &c, &other).unwrap()),
        "unknown_key",
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        trap.accept().is_err(),
        "the gateway connected to a jku/x5u URL"
    );
    // crit header we do not understand.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    h.crit = Some(vec!["exp".into()]);
    let t = encode(&h, &c, &enc_key(Algorithm::RS256)).unwrap();
    assert_401(&bearer(g, "/rsa", &t), "malformed_token");
    // Malformed, oversized, duplicated.
    for t in [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
    ] {
        assert_401(&bearer(g, "/rsa", t), "malformed_token");
    }
    let mut big = claims("https://rsa.test/");
    big["pad"] = json!("x".repeat(9000));
    assert_401(
        &bearer(g, "/rsa", &sign(Algorithm::RS256, Some("rsa-1"), &big)),
        "token_too_large",
    );
    let good = sign(Algorithm::RS256, Some("rsa-1"), &c);
    let r = call(
        g,
        "/rsa",
        &[&format!("Bearer {good}"), &format!("Bearer {good}")],
    );
    assert_401(&r, "ambiguous_credentials");
    assert_401(&call(g, "/rsa", &["Bearer "]), "malformed_token");
    // Another scheme is not a bearer token.
    assert_401(
        &call(g, "/rsa", &["Basic YWxpY2U6c2VjcmV0"]),
        "credentials_missing",
    );
    // Nothing of the token leaks into metrics.
    let m = g.metrics();
    assert!(!m.contains(&good[..20]));
    assert!(m.contains("portcullis_auth_attempts_total{authenticator=\"rsa\",reason=\"alg_not_allowed\",result=\"failure\"}"), "{m}");
}

#[test]
fn unsafe_jwt_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The library refuses to even load a 1024-bit private key, so build the JWK from the
    // public modulus (openssl prints it in hex).
    let out = std::process::Command::new("openssl")
        .args([
            "rsa",
            "-pubin",
            "-in",
            &fixture("jwt/rsa-weak.pub.pem"),
            "-modulus",
            "-noout",
        ])
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(n.len(), 128);
    let jwks = dir.path().join("weak.json");
    std::fs::write(
        &jwks,
        json!({"keys": [{"kty": "RSA", "kid": "weak", "n": b64(&n), "e": "AQAB"}]}).to_string(),
    )
    .unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "too-short").unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(
        &p,
        format!(
            r#"server:
  listen: [{{ addr: "127.0.0.1:18082" }}]
authenticators:
  weak: {{ jwt: {{ algorithms: [RS256], jwks_file: "{jwks}" }} }}
  mixed: {{ jwt: {{ algorithms: [RS256, HS256], keys: [{{ pem_file: "{rsa}" }}], hmac_secret: {{ file: "{short}" }} }} }}
  noenv: {{ jwt: {{ algorithms: [HS256], hmac_secret: {{ env: PORTCULLIS_TEST_UNSET_VAR }} }} }}
  nokeys: {{ jwt: {{ algorithms: [ES256] }} }}
  badalg: {{ jwt: {{ algorithms: [none], keys: [{{ pem_file: "{rsa}" }}] }} }}
"#,
            jwks = jwks.display(),
            rsa = fixture("jwt/rsa.pub.pem"),
            short = short.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    // serde stops at the first syntax error (`none` is not an algorithm).
    assert!(
        err.contains("authenticators.badalg.jwt.algorithms[0]: unknown variant `none`"),
        "{err}"
    );
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "  badalg: { jwt: { algorithms: [none], keys: [{ pem_file: \"",
        "  #",
    );
    std::fs::write(&p, text).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    for w in [
        "authenticators.weak.jwt.jwks_file:",
        "RSA key of 1024 bits is too weak",
        "authenticators.mixed.jwt.algorithms: do not mix HMAC",
        "authenticators.mixed.jwt.hmac_secret: the secret must be at least 32 bytes",
        "authenticators.noenv.jwt.hmac_secret: environment variable PORTCULLIS_TEST_UNSET_VAR is not set",
        "authenticators.nokeys.jwt: public-key algorithms need keys, jwks_file or jwks",
    ] {
        assert!(err.contains(w), "missing {w:?} in\n{err}");
    }
}

#[test]
fn verified_tokens_are_cached_until_exp() {
    let s = setup();
    let g = &s.gw;
    let hits = "portcullis_token_cache_total{authenticator=\"rsa\",result=\"hit\"}";
    let misses = "portcullis_token_cache_total{authenticator=\"rsa\",result=\"miss\"}";
    let mut c = claims("https://rsa.test/");
    c["exp"] = json!(now() + 2);
    let t = sign(Algorithm::RS256, Some("rsa-1"), &c);
    assert_eq!(bearer(g, "/rsa", &t).status, 200);
    assert_eq!(bearer(g, "/rsa", &t).status, 200);
    assert_eq!(bearer(g, "/rsa", &t).status, 200);
    assert_eq!(g.metric(hits), 2.0);
    assert_eq!(g.metric(misses), 1.0);
    let entries = "portcullis_token_cache_entries{authenticator=\"rsa\"}";
    assert_eq!(g.metric(entries), 1.0);
    // Invalid tokens are never cached: the same bad token is verified (and refused) each time.
    let mut bad = t.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'A' { 'B' } else { 'A' });
    for _ in 0..2 {
        assert_eq!(bearer(g, "/rsa", &bad).status, 401);
    }
    assert_eq!(g.metric(hits), 2.0);
    // Past exp the entry is not used any more (the token still passes within the leeway, but
    // only after a fresh verification).
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let before = g.metric(misses);
    assert_eq!(bearer(g, "/rsa", &t).status, 200);
    assert_eq!(g.metric(misses), before + 1.0);
    // The fresh verification replaced the expired entry instead of adding one.
    assert_eq!(g.metric(entries), 1.0);
}

#[test]
fn cookie_and_header_sources_roles_groups_and_claims() {
    let e = Echo::start("e");
    let body = format!(
        r#"authenticators:
  web:
    jwt:
      issuer: "https://rsa.test/"
      algorithms: [RS256]
      keys: [{{ kid: rsa-1, pem_file: "{rsa}" }}]
      cookie: session
      header: x-access-token
      roles_claim: realm_access.roles
      groups_claim: groups
      forward_claims: [tenant, email_verified, level]
      required_claims: [tenant]
upstreams:
  e: {{ targets: ["{addr}"] }}
routes:
  - {{ id: web, match: {{ path_prefix: / }}, upstream: e, authn: [web] }}
"#,
        rsa = fixture("jwt/rsa.pub.pem"),
        addr = e.addr
    );
    let gw = Gateway::start("", &body);
    let mut c = claims("https://rsa.test/");
    c["realm_access"] = json!({"roles": ["reader", "admin"]});
    c["groups"] = "team-a team-b".into();
    c["tenant"] = "acme".into();
    c["email_verified"] = true.into();
    c["level"] = 3.into();
    c["ignored"] = "x".into();
    let t = sign(Algorithm::RS256, Some("rsa-1"), &c);
    let send = |extra: &str| {
        request(
            gw.addr,
            format!("GET /x HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    // From a cookie: other cookies pass, the token cookie does not.
    let r = send(&format!("Cookie: theme=dark; session={t}; lang=en\r\n"));
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json()["headers"].clone();
    assert_eq!(h["cookie"][0], "theme=dark; lang=en");
    assert_eq!(h["x-portcullis-roles"][0], "reader admin");
    assert_eq!(h["x-portcullis-groups"][0], "team-a team-b");
    assert_eq!(h["x-portcullis-claim-tenant"][0], "acme");
    assert_eq!(h["x-portcullis-claim-email-verified"][0], "true");
    assert_eq!(h["x-portcullis-claim-level"][0], "3");
    assert!(h.get("x-portcullis-claim-ignored").is_none());
    // From a custom header, removed before forwarding.
    let r = send(&format!("X-Access-Token: {t}\r\n"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["headers"].get("x-access-token").is_none());
    // Two sources at once, or the cookie twice: ambiguous, never "first wins".
    let r = send(&format!(
        "X-Access-Token: {t}\r\nAuthorization: Bearer {t}\r\n"
    ));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "ambiguous_credentials");
    let r = send(&format!("Cookie: session={t}\r\nCookie: session={t}\r\n"));
    assert_eq!(r.json()["error"], "ambiguous_credentials");
    // required_claims: a token without `tenant` is refused.
    let mut no_tenant = c.clone();
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let nt = sign(Algorithm::RS256, Some("rsa-1"), &no_tenant);
    let r = send(&format!("Authorization: Bearer {nt}\r\n"));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "missing_claim");
    // A spoofed claim header from the client never survives.
    let r = send(&format!(
        "Cookie: session={t}\r\nX-Portcullis-Claim-Tenant: evil\r\n"
    ));
    assert_eq!(
        r.json()["headers"]["x-portcullis-claim-tenant"],
        json!(["acme"])
    );
}

// ---------------------------------------------------------------------------------------------
// Attack corpus, part two (issue 9): every token below is refused with 401 and a stable reason,
// never 2xx/5xx or a panic, and none of them reaches the upstream (a raw recording upstream
// proves it). Tokens are built from raw JSON text, so duplicate keys, big numbers and odd
// encodings reach the gateway exactly as written, and most are *validly signed* over that text:
// the refusal then comes from the check under test, not from a broken signature.

/// Base64url of a JWS signature over `input` (the `header.payload` text) with our test keys.
fn sig_over(alg: Algorithm, input: &str) -> String {
    jsonwebtoken::crypto::sign(input.as_bytes(), &enc_key(alg), alg).unwrap()
}

/// `b64(header).b64(claims).sig`, validly signed with the test key for `alg` over exactly these
/// bytes (whatever the header says).
fn signed_raw(alg: Algorithm, header: &str, claims: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let sig = sig_over(alg, &input);
    format!("{input}.{sig}")
}

/// A canonical base64url segment made non-canonical: the unused low bits of its last character
/// set (RFC 4648 §3.5). `seg` must not be a multiple of 4 characters long.
fn non_canonical(seg: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_ne!(seg.len() % 4, 0, "no spare bits in {seg}");
    let mut s = seg.to_string();
    let last = s.pop().unwrap() as u8;
    let v = A.iter().position(|c| *c == last).unwrap();
    s.push(A[v | 1] as char);
    assert_ne!(s, seg);
    s
}

/// The P-256 group order n.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// ES256 signature over `input` as (r, s), each 32 bytes, made with openssl (independently of
/// the library that verifies).
fn es256_rs(input: &str) -> (Vec<u8>, Vec<u8>) {
    let key = openssl::pkey::PKey::private_key_from_pem(&key_file("ec256.key"))
        .unwrap()
        .ec_key()
        .unwrap();
    let digest = openssl::sha::sha256(input.as_bytes());
    let sig = openssl::ecdsa::EcdsaSig::sign(&digest, &key).unwrap();
    (
        sig.r().to_vec_padded(32).unwrap(),
        sig.s().to_vec_padded(32).unwrap(),
    )
}

struct Corpus {
    gw: Gateway,
    rec: Recorder,
    _dir: tempfile::TempDir,
}

/// One single-algorithm authenticator per route, in front of a recording upstream.
fn corpus_setup() -> Corpus {
    let rec = Recorder::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let body = format!(
        r#"authenticators:
  rs:
    jwt:
      issuer: "https://rsa.test/"
      audiences: [orders-api]
      algorithms: [RS256]
      keys: [{{ kid: rsa-1, pem_file: "{rsa}" }}]
  es:
    jwt:
      issuer: "https://ec.test/"
      audiences: [orders-api]
      algorithms: [ES256]
      keys: [{{ kid: ec-1, pem_file: "{ec}" }}]
  hs:
    jwt:
      issuer: "https://hs.test/"
      audiences: [orders-api]
      algorithms: [HS256]
      hmac_secret: {{ file: "{secret}" }}
upstreams:
  rec: {{ targets: ["{addr}"] }}
routes:
  - {{ id: rs, match: {{ path_prefix: /rs }}, upstream: rec, authn: [rs] }}
  - {{ id: es, match: {{ path_prefix: /es }}, upstream: rec, authn: [es] }}
  - {{ id: hs, match: {{ path_prefix: /hs }}, upstream: rec, authn: [hs] }}
"#,
        rsa = fixture("jwt/rsa.pub.pem"),
        ec = fixture("jwt/ec256.pub.pem"),
        secret = secret.display(),
        addr = rec.addr
    );
    Corpus {
        gw: Gateway::start("", &body),
        rec,
        _dir: dir,
    }
}

/// Claims text for `iss` with `fields` (raw JSON members, may repeat or be odd) appended.
fn raw_claims(iss: &str, fields: &str) -> String {
    format!(r#"{{"iss":"{iss}","aud":"orders-api",{fields}}}"#)
}

#[test]
fn attack_corpus_more() {
    let s = corpus_setup();
    let g = &s.gw;
    let t = now();
    let exp = t + 600;
    let rs_h = r#"{"alg":"RS256","typ":"JWT","kid":"rsa-1"}"#;
    let es_h = r#"{"alg":"ES256","typ":"JWT","kid":"ec-1"}"#;
    let hs_h = r#"{"alg":"HS256","typ":"JWT"}"#;
    let rs_c = raw_claims(
        "https://rsa.test/",
        &format!(r#""sub":"alice","exp":{exp}"#),
    );
    let es_c = raw_claims("https://ec.test/", &format!(r#""sub":"alice","exp":{exp}"#));
    let hs_c = raw_claims("https://hs.test/", &format!(r#""sub":"alice","exp":{exp}"#));

    // Controls: the raw builders produce tokens the gateway accepts, so every refusal below is
    // the check under test. (Recorded bytes are cleared afterwards.)
    let ok = |path: &str, token: &str| {
        let r = bearer(g, path, token);
        assert_eq!(r.status, 200, "{path} {token}: {}", r.text());
    };
    ok("/rs", &signed_raw(Algorithm::RS256, rs_h, &rs_c));
    ok("/es", &signed_raw(Algorithm::ES256, es_h, &es_c));
    ok("/hs", &signed_raw(Algorithm::HS256, hs_h, &hs_c));
    let es_input = format!("{}.{}", b64(es_h.as_bytes()), b64(es_c.as_bytes()));
    let (r, sv) = es256_rs(&es_input);
    ok(
        "/es",
        &format!("{es_input}.{}", b64(&[r.clone(), sv.clone()].concat())),
    );
    // RFC 9068 access tokens (`typ: at+jwt`) are ordinary JWS.
    ok(
        "/rs",
        &signed_raw(
            Algorithm::RS256,
            r#"{"alg":"RS256","typ":"at+jwt","kid":"rsa-1"}"#,
            &rs_c,
        ),
    );
    // A far-future exp signed by the issuer is the issuer's choice: no overflow anywhere.
    ok(
        "/rs",
        &signed_raw(
            Algorithm::RS256,
            rs_h,
            &raw_claims(
                "https://rsa.test/",
                r#""sub":"alice","exp":18446744073709551615"#,
            ),
        ),
    );
    assert!(!s.rec.received().is_empty());
    s.rec.clear();

    let mut cases: Vec<(String, &str, String, &str)> = Vec::new();
    let mut case = |what: &str, path: &'static str, token: String, code: &'static str| {
        cases.push((what.to_string(), path, token, code));
    };

    // 1. Stripped signature: `header.payload.`.
    for (path, alg, h, c) in [
        ("/rs", Algorithm::RS256, rs_h, &rs_c),
        ("/es", Algorithm::ES256, es_h, &es_c),
        ("/hs", Algorithm::HS256, hs_h, &hs_c),
    ] {
        let full = signed_raw(alg, h, c);
        let stripped = format!("{}.", &full[..full.rfind('.').unwrap()]);
        case("stripped signature", path, stripped, "bad_signature");
    }

    // 2. Psychic ECDSA signatures (CVE-2022-21449) and other malformed ECDSA signatures.
    let es_tok = |sig: &[u8]| format!("{es_input}.{}", b64(sig));
    case("ecdsa r=0 s=0", "/es", es_tok(&[0u8; 64]), "bad_signature");
    case(
        "ecdsa r=0 s=valid",
        "/es",
        es_tok(&[&[0u8; 32][..], &sv].concat()),
        "bad_signature",
    );
    case(
        "ecdsa r=valid s=0",
        "/es",
        es_tok(&[&r[..], &[0u8; 32]].concat()),
        "bad_signature",
    );
    case(
        "ecdsa r=n s=n",
        "/es",
        es_tok(&[P256_N, P256_N].concat()),
        "bad_signature",
    );
    case(
        "ecdsa r=n s=valid",
        "/es",
        es_tok(&[&P256_N[..], &sv].concat()),
        "bad_signature",
    );
    case(
        "ecdsa r,s swapped",
        "/es",
        es_tok(&[sv.clone(), r.clone()].concat()),
        "bad_signature",
    );
    let der = openssl::ecdsa::EcdsaSig::from_private_components(
        openssl::bn::BigNum::from_slice(&r).unwrap(),
        openssl::bn::BigNum::from_slice(&sv).unwrap(),
    )
    .unwrap()
    .to_der()
    .unwrap();
    case(
        "ecdsa DER instead of r||s",
        "/es",
        es_tok(&der),
        "bad_signature",
    );
    case(
        "ecdsa 63 bytes",
        "/es",
        es_tok(&[r.clone(), sv.clone()].concat()[..63]),
        "bad_signature",
    );
    case(
        "ecdsa 65 bytes",
        "/es",
        es_tok(&[r.clone(), sv.clone(), vec![0]].concat()),
        "bad_signature",
    );
    case(
        "ecdsa 0 padded r||s",
        "/es",
        es_tok(&[vec![0], r.clone(), vec![0], sv.clone()].concat()),
        "bad_signature",
    );

    // 5. kid injection: never a lookup outside the map, never a 500.
    let rs_kid = |kid: Value| {
        signed_raw(
            Algorithm::RS256,
            &json!({"alg": "RS256", "kid": kid}).to_string(),
            &rs_c,
        )
    };
    for kid in [
        "' OR 1=1 --",
        "rsa-1' --",
        "rsa-1\r\nX-Injected: 1",
        "",
        "RSA-1",
        " rsa-1",
        "${jndi:ldap://127.0.0.1/x}",
    ] {
        case("kid injection", "/rs", rs_kid(json!(kid)), "unknown_key");
    }
    case(
        "kid 5 KB",
        "/rs",
        rs_kid(json!("k".repeat(5000))),
        "unknown_key",
    );
    case(
        "kid 10 KB",
        "/rs",
        rs_kid(json!("k".repeat(10_000))),
        "token_too_large",
    );
    for kid in [
        json!(1),
        json!(["rsa-1"]),
        json!({"kid": "rsa-1"}),
        json!(null),
        json!(true),
    ] {
        case("non-string kid", "/rs", rs_kid(kid), "malformed_token");
    }

    // 6. Duplicate JSON keys: another parser may keep the first value where serde keeps the last.
    let dup_headers = [
        r#"{"alg":"none","alg":"RS256","kid":"rsa-1"}"#,
        r#"{"alg":"RS256","alg":"none","kid":"rsa-1"}"#,
        r#"{"alg":"RS256","kid":"other","kid":"rsa-1"}"#,
        r#"{"alg":"RS256","kid":"rsa-1","typ":"JWT","typ":"JWT"}"#,
    ];
    for h in dup_headers {
        case(
            "duplicate header key",
            "/rs",
            signed_raw(Algorithm::RS256, h, &rs_c),
            "malformed_token",
        );
    }
    let dup_claims = [
        format!(r#""sub":"alice","sub":"admin","exp":{exp}"#),
        format!(r#""sub":"alice","exp":{exp},"exp":{}"#, t - 3600),
        format!(r#""sub":"alice","exp":{},"exp":{exp}"#, t - 3600),
        format!(r#""sub":"alice","exp":{exp},"scope":"orders:read","scope":"admin""#),
        format!(r#""sub":"alice","s\u0075b":"admin","exp":{exp}"#),
        format!(r#""sub":"alice","exp":{exp},"realm_access":{{"roles":["a"],"roles":["admin"]}}"#),
        format!(r#""sub":"alice","exp":{exp},"x":[{{"a":1,"a":2}}]"#),
        format!(r#""sub":"alice","exp":{exp},"iss":"https://evil.test/""#),
    ];
    for c in &dup_claims {
        let c = raw_claims("https://rsa.test/", c);
        case(
            "duplicate claim",
            "/rs",
            signed_raw(Algorithm::RS256, rs_h, &c),
            "malformed_token",
        );
    }

    // 7. Dates that are not integer Unix seconds.
    for (fields, code) in [
        (r#""exp":"9999999999""#.to_string(), "malformed_token"),
        (r#""exp":1e300"#.into(), "malformed_token"),
        (r#""exp":18446744073709551616"#.into(), "malformed_token"),
        (r#""exp":-1"#.into(), "malformed_token"),
        (format!(r#""exp":{exp}.0"#), "malformed_token"),
        (format!(r#""exp":[{exp}]"#), "malformed_token"),
        (r#""exp":true"#.into(), "malformed_token"),
        (r#""exp":null"#.into(), "malformed_token"),
        (format!(r#""exp":{exp},"nbf":true"#), "malformed_token"),
        (format!(r#""exp":{exp},"nbf":"0""#), "malformed_token"),
        (format!(r#""exp":{exp},"nbf":-1"#), "malformed_token"),
        (
            format!(r#""exp":{exp},"nbf":18446744073709551615"#),
            "token_not_yet_valid",
        ),
        (
            format!(r#""exp":{exp},"iat":18446744073709551615"#),
            "token_not_yet_valid",
        ),
        (
            format!(r#""exp":{exp},"iat":18446744073709551616"#),
            "malformed_token",
        ),
        (format!(r#""exp":{exp},"iat":1e300"#), "malformed_token"),
        (format!(r#""exp":{exp},"iat":"0""#), "malformed_token"),
        (format!(r#""exp":{exp},"iat":null"#), "malformed_token"),
        (format!(r#""exp":{exp},"iat":-1"#), "malformed_token"),
    ] {
        let c = raw_claims("https://rsa.test/", &format!(r#""sub":"alice",{fields}"#));
        case(
            &format!("date {fields}"),
            "/rs",
            signed_raw(Algorithm::RS256, rs_h, &c),
            code,
        );
    }

    // 8. Oversized and many segments (the request-size limits are checked separately below).
    case("5000 dots", "/rs", ".".repeat(5000), "malformed_token");
    case("3000 segments", "/rs", "a.".repeat(3000), "malformed_token");
    case(
        "20 KB signature",
        "/rs",
        format!(
            "{}.{}",
            &signed_raw(Algorithm::RS256, rs_h, &rs_c),
            "A".repeat(20_000)
        ),
        "token_too_large",
    );
    let deep = format!(
        r#""sub":"alice","exp":{exp},"x":{}{}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    case(
        "deeply nested claims",
        "/rs",
        signed_raw(
            Algorithm::RS256,
            rs_h,
            &raw_claims("https://rsa.test/", &deep),
        ),
        "malformed_token",
    );

    // 9. Not base64url: other alphabets, padding, whitespace, percent-encoding, spare bits.
    let good = signed_raw(Algorithm::RS256, rs_h, &rs_c);
    let (h64, rest) = good.split_once('.').unwrap();
    let (p64, s64) = rest.split_once('.').unwrap();
    for bad in ["+", "/", "=", " ", "%", "%2B", "\t", "*"] {
        let mid = h64.len() / 2;
        let h = format!("{}{bad}{}", &h64[..mid], &h64[mid..]);
        case(
            "bad base64 in header",
            "/rs",
            format!("{h}.{p64}.{s64}"),
            "malformed_token",
        );
        let mid = p64.len() / 2;
        let p = format!("{}{bad}{}", &p64[..mid], &p64[mid..]);
        case(
            "bad base64 in payload",
            "/rs",
            format!("{h64}.{p}.{s64}"),
            "malformed_token",
        );
        let mid = s64.len() / 2;
        let sg = format!("{}{bad}{}", &s64[..mid], &s64[mid..]);
        case(
            "bad base64 in signature",
            "/rs",
            format!("{h64}.{p64}.{sg}"),
            "malformed_token",
        );
    }
    for pad in ["=", "=="] {
        case(
            "padded header",
            "/rs",
            format!("{h64}{pad}.{p64}.{s64}"),
            "malformed_token",
        );
        case(
            "padded signature",
            "/rs",
            format!("{h64}.{p64}.{s64}{pad}"),
            "malformed_token",
        );
    }
    // The standard alphabet for the signature bytes (`-`→`+`, `_`→`/`).
    let std_sig = (0..100)
        .map(|i| {
            let c = raw_claims(
                "https://rsa.test/",
                &format!(r#""sub":"alice","exp":{exp},"jti":"{i}""#),
            );
            signed_raw(Algorithm::RS256, rs_h, &c)
        })
        .find(|t| t.rsplit('.').next().unwrap().contains(['-', '_']))
        .unwrap();
    case(
        "standard-alphabet signature",
        "/rs",
        std_sig.replace('-', "+").replace('_', "/"),
        "malformed_token",
    );
    // Non-canonical encodings: the same bytes, other text. Header and payload are re-signed, so
    // only the encoding is wrong.
    let h_json = r#"{"alg":"RS256","kid":"rsa-1"}"#; // 29 bytes: 2 spare bits
    let h_nc = non_canonical(&b64(h_json.as_bytes()));
    let input = format!("{h_nc}.{p64}");
    case(
        "non-canonical header",
        "/rs",
        format!("{input}.{}", sig_over(Algorithm::RS256, &input)),
        "malformed_token",
    );
    let mut c_nc = rs_c.clone();
    while c_nc.len().is_multiple_of(3) {
        c_nc.push(' ');
    }
    let input = format!("{h64}.{}", non_canonical(&b64(c_nc.as_bytes())));
    case(
        "non-canonical payload",
        "/rs",
        format!("{input}.{}", sig_over(Algorithm::RS256, &input)),
        "malformed_token",
    );
    case(
        "non-canonical signature (RS256)",
        "/rs",
        format!("{h64}.{p64}.{}", non_canonical(s64)),
        "malformed_token",
    );
    let hs = signed_raw(Algorithm::HS256, hs_h, &hs_c);
    let (hs_input, hs_sig) = hs.rsplit_once('.').unwrap();
    case(
        "non-canonical signature (HS256)",
        "/hs",
        format!("{hs_input}.{}", non_canonical(hs_sig)),
        "malformed_token",
    );

    // 10. alg mismatches.
    case(
        "RS256 on an ES256 route",
        "/es",
        signed_raw(Algorithm::RS256, r#"{"alg":"RS256","kid":"ec-1"}"#, &es_c),
        "alg_not_allowed",
    );
    case(
        "ES384 on an ES256 route",
        "/es",
        signed_raw(Algorithm::ES384, r#"{"alg":"ES384","kid":"ec-1"}"#, &es_c),
        "alg_not_allowed",
    );
    case(
        "PS256 on an RS256 route",
        "/rs",
        signed_raw(Algorithm::PS256, r#"{"alg":"PS256","kid":"rsa-1"}"#, &rs_c),
        "alg_not_allowed",
    );
    case(
        "HS256 on an RS256 route",
        "/rs",
        signed_raw(Algorithm::HS256, r#"{"alg":"HS256","kid":"rsa-1"}"#, &rs_c),
        "alg_not_allowed",
    );
    for alg in [
        "rs256",
        "Rs256",
        "RS256 ",
        " RS256",
        "RS256\u{0}",
        "RS 256",
        "RS2560",
    ] {
        let h = json!({"alg": alg, "kid": "rsa-1"}).to_string();
        case(
            "alg spelling",
            "/rs",
            signed_raw(Algorithm::RS256, &h, &rs_c),
            "alg_not_allowed",
        );
    }
    for alg in [
        json!(null),
        json!(["RS256"]),
        json!(256),
        json!({"RS256": true}),
    ] {
        let h = json!({"alg": alg, "kid": "rsa-1"}).to_string();
        case(
            "non-string alg",
            "/rs",
            signed_raw(Algorithm::RS256, &h, &rs_c),
            "malformed_token",
        );
    }
    case(
        "no alg",
        "/rs",
        signed_raw(Algorithm::RS256, r#"{"kid":"rsa-1"}"#, &rs_c),
        "malformed_token",
    );

    // 11. typ / cty tricks and other header games.
    for h in [
        r#"{"alg":"RS256","kid":"rsa-1","cty":"JWT"}"#,
        r#"{"alg":"RS256","kid":"rsa-1","cty":"jwt"}"#,
        r#"{"alg":"RS256","kid":"rsa-1","typ":123}"#,
        r#"{"alg":"RS256","kid":"rsa-1","b64":false}"#,
        r#"{"alg":"RS256","kid":"rsa-1","b64":false,"crit":["b64"]}"#,
        r#"["RS256"]"#,
    ] {
        case(
            "header trick",
            "/rs",
            signed_raw(Algorithm::RS256, h, &rs_c),
            "malformed_token",
        );
    }
    // A nested JWT (`cty: JWT`): the payload is the inner token, not a claims set.
    let inner = signed_raw(Algorithm::RS256, rs_h, &rs_c);
    let nested_h = r#"{"alg":"RS256","kid":"rsa-1","cty":"JWT"}"#;
    let input = format!("{}.{}", b64(nested_h.as_bytes()), b64(inner.as_bytes()));
    case(
        "nested JWT",
        "/rs",
        format!("{input}.{}", sig_over(Algorithm::RS256, &input)),
        "malformed_token",
    );
    let input = format!(
        "{}.{}",
        b64(nested_h.as_bytes()),
        b64(json!(inner).to_string().as_bytes())
    );
    case(
        "nested JWT as a JSON string",
        "/rs",
        format!("{input}.{}", sig_over(Algorithm::RS256, &input)),
        "malformed_token",
    );

    let mut wrong = Vec::new();
    for (what, path, token, code) in &cases {
        let r = bearer(g, path, token);
        let got = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|j| j["error"].as_str().map(str::to_string));
        if r.status != 401 || got.as_deref() != Some(code) {
            wrong.push(format!(
                "{what} on {path}: want 401 {code}, got {} {:?} (token {:.80})",
                r.status, got, token
            ));
        } else {
            assert_401(&r, code);
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // 8. Megabyte segments are refused by the front door before any JWT code runs (today a
    // 400 from the HTTP/1 parser's own limit; a token over max_header_bytes is a 431); the
    // connection may also just be closed. Never 2xx, never 5xx.
    let mega = "A".repeat(1 << 20);
    for token in [
        format!("eyJ{mega}.{p64}.{s64}"),
        format!("{h64}.{p64}.{mega}"),
        format!("{h64}.{mega}.{s64}"),
    ] {
        let raw = format!("GET /rs HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        match try_request(g.addr, raw.as_bytes()) {
            Ok(r) => assert!(
                (400..500).contains(&r.status),
                "1 MB segment: {} {}",
                r.status,
                r.text()
            ),
            Err(e) => eprintln!("1 MB segment: connection closed ({e})"),
        }
    }
    let r = bearer(g, "/rs", &"A".repeat(40_000));
    assert_eq!(r.status, 431, "{}", r.text());

    assert!(
        s.rec.received().is_empty(),
        "a refused token reached the upstream"
    );
    // Still healthy, and nothing panicked.
    ok("/rs", &good);
    let log = g.proc.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// Hostile or useless key material in the config: `check` names the exact YAML path and the
/// reason (issue 9: blank or short HMAC secrets, weak RSA keys in PEM files, RSA exponents that
/// make forgery trivial, `oct` keys and duplicate kids in a JWKS file).
#[test]
fn weak_keys_and_secrets_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, body: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let empty = write("empty.txt", b"");
    let newline = write("newline.txt", b"\n");
    let blank = write("blank.txt", format!("{}\n", " ".repeat(40)).as_bytes());
    let tabs = write("tabs.txt", "\t \t ".repeat(10).as_bytes());
    let short = write("short.txt", &[b'x'; 31]);
    // A 512-bit key, made here; the 1024-bit one is a fixture.
    let k512 = openssl::rsa::Rsa::generate(512).unwrap();
    let pem512 = write("rsa512.pub.pem", &k512.public_key_to_pem().unwrap());
    // JWKS documents built from the good key's modulus with a hostile exponent.
    let good = openssl::rsa::Rsa::public_key_from_pem(&key_file("rsa.pub.pem")).unwrap();
    let n = b64(&good.n().to_vec());
    let rsa_jwk = |kid: &str, e: &[u8]| json!({"kty": "RSA", "kid": kid, "n": n, "e": b64(e)});
    let e1 = write(
        "e1.json",
        json!({"keys": [rsa_jwk("e1", &[1])]})
            .to_string()
            .as_bytes(),
    );
    let e2 = write(
        "e2.json",
        json!({"keys": [rsa_jwk("e2", &[2])]})
            .to_string()
            .as_bytes(),
    );
    let e_even = write(
        "e-even.json",
        json!({"keys": [rsa_jwk("ee", &[1, 0, 0])]})
            .to_string()
            .as_bytes(),
    );
    let e_big = write(
        "e-big.json",
        json!({"keys": [rsa_jwk("eb", &[1, 0, 0, 0, 0, 1])]})
            .to_string()
            .as_bytes(),
    );
    let k512_jwk = json!({"kty": "RSA", "kid": "w", "n": b64(&k512.n().to_vec()), "e": "AQAB"});
    let weak_jwks = write(
        "w512.json",
        json!({"keys": [k512_jwk]}).to_string().as_bytes(),
    );
    let oct = write(
        "oct.json",
        json!({"keys": [{"kty": "oct", "kid": "o", "alg": "HS256", "k": b64(SECRET.as_bytes())}]})
            .to_string()
            .as_bytes(),
    );
    let dup = write(
        "dup.json",
        json!({"keys": [rsa_jwk("same", &[1, 0, 1]), rsa_jwk("same", &[1, 0, 1])]})
            .to_string()
            .as_bytes(),
    );
    let hs = |name: &str, file: &str| {
        format!(
            "  {name}: {{ jwt: {{ algorithms: [HS256], hmac_secret: {{ file: \"{file}\" }} }} }}\n"
        )
    };
    let jwks = |name: &str, file: &str| {
        format!("  {name}: {{ jwt: {{ algorithms: [RS256], jwks_file: \"{file}\" }} }}\n")
    };
    let pem = |name: &str, file: &str| {
        format!("  {name}: {{ jwt: {{ algorithms: [RS256], keys: [{{ kid: k, pem_file: \"{file}\" }}] }} }}\n")
    };
    let config = [
        "server:\n  listen: [{ addr: \"127.0.0.1:18083\" }]\nauthenticators:\n".to_string(),
        hs("empty", &empty),
        hs("newline", &newline),
        hs("blank", &blank),
        hs("tabs", &tabs),
        hs("short", &short),
        pem("pem1024", &fixture("jwt/rsa-weak.pub.pem")),
        pem("pem512", &pem512),
        pem("pemprivate", &fixture("jwt/rsa.key")),
        jwks("jwks512", &weak_jwks),
        jwks("e1", &e1),
        jwks("e2", &e2),
        jwks("eeven", &e_even),
        jwks("ebig", &e_big),
        jwks("oct", &oct),
        jwks("dup", &dup),
        pem("fine", &fixture("jwt/rsa.pub.pem")),
    ]
    .concat();
    let p = d.join("c.yaml");
    std::fs::write(&p, &config).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let short_msg = "the secret must be at least 32 bytes";
    for (path, msg) in [
        ("empty.jwt.hmac_secret", short_msg),
        ("newline.jwt.hmac_secret", short_msg),
        ("blank.jwt.hmac_secret", "the secret is blank"),
        ("tabs.jwt.hmac_secret", "the secret is blank"),
        ("short.jwt.hmac_secret", short_msg),
        (
            "pem1024.jwt.keys[0].pem_file",
            "RSA key of 1024 bits is too weak",
        ),
        (
            "pem512.jwt.keys[0].pem_file",
            "RSA key of 512 bits is too weak",
        ),
        ("pemprivate.jwt.keys[0].pem_file", "not an RSA public key"),
        (
            "jwks512.jwt.jwks_file",
            "keys[0]: RSA key of 512 bits is too weak",
        ),
        ("e1.jwt.jwks_file", "keys[0]: RSA exponent must be odd"),
        ("e2.jwt.jwks_file", "keys[0]: RSA exponent must be odd"),
        ("eeven.jwt.jwks_file", "keys[0]: RSA exponent must be odd"),
        ("ebig.jwt.jwks_file", "keys[0]: RSA exponent must be odd"),
        (
            "oct.jwt.jwks_file",
            "keys[0]: symmetric (oct) keys are not accepted",
        ),
        ("dup.jwt.jwks_file", "keys[1]: duplicate kid \"same\""),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("authenticators.{path}:")))
            .unwrap_or_else(|| panic!("no error at {path} in\n{err}"));
        assert!(line.contains(msg), "{path}: want {msg:?}, got {line}");
    }
    assert!(!err.contains("authenticators.fine"), "{err}");
    // Secrets never appear in the output.
    assert!(!err.contains(&"x".repeat(31)), "{err}");
}
