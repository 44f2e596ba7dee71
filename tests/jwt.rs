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
