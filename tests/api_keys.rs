//! API key authentication through the real gateway: valid, missing, wrong, expired and disabled
//! keys; header (any case) and query parameter; ambiguity; credentials and spoofed identity
//! headers never reach the upstream; `portcullis keygen` output works as printed.

mod common;
use common::*;

struct Keys {
    good: String,
    expired: String,
    disabled: String,
    other: String,
}

fn keygen(id: &str, consumer: &str) -> (String, String) {
    let (code, out, err) = run_cli(&["keygen", "--id", id, "--consumer", consumer]);
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .next()
        .unwrap()
        .strip_prefix("key: ")
        .unwrap()
        .to_string();
    let line = out
        .lines()
        .find(|l| l.starts_with("- {"))
        .unwrap()
        .to_string();
    (key, line)
}

fn setup() -> (Gateway, Echo, Keys) {
    let e = Echo::start("e");
    let (good, good_line) = keygen("acme-1", "acme-corp");
    // keygen's hash is the plain SHA-256 of the key.
    assert!(good_line.contains(&sha(&good)), "{good_line}");
    let good_line = good_line.replace(
        "scopes: []",
        "scopes: [orders:read, orders:write], groups: [partners]",
    );
    let expired = "expired-key-123".to_string();
    let disabled = "disabled-key-456".to_string();
    let other = "other-authn-key-789".to_string();
    let body = format!(
        r#"authenticators:
  partners:
    api_key:
      header: X-Api-Key
      query: api_key
      keys:
        {good_line}
        - {{ id: old, sha256: "{}", consumer: old-corp, expires: "2020-01-01T00:00:00Z" }}
        - {{ id: off, sha256: "{}", consumer: off-corp, disabled: true }}
  internal:
    api_key:
      header: x-internal-key
      keys:
        - {{ id: int, sha256: "{}", consumer: internal-svc }}
upstreams:
  e: {{ targets: ["{}"] }}
routes:
  - {{ id: orders, match: {{ path_prefix: /orders }}, upstream: e, authn: [partners] }}
  - {{ id: both, match: {{ path_prefix: /both }}, upstream: e, authn: [partners, internal] }}
  - {{ id: public, match: {{ path_prefix: /public }}, upstream: e, public: true }}
"#,
        sha(&expired),
        sha(&disabled),
        sha(&other),
        e.addr
    );
    let gw = Gateway::start("", &body);
    (
        gw,
        e,
        Keys {
            good,
            expired,
            disabled,
            other,
        },
    )
}

fn req(gw: &Gateway, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw =
        format!("GET {target} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    request(gw.addr, raw.as_bytes())
}

fn assert_401(r: &Response, code: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("ApiKey")),
        "{:?}",
        r.headers
    );
}

#[test]
fn valid_key_reaches_upstream_with_identity_and_without_the_key() {
    let (gw, _e, k) = setup();
    let r = req(
        &gw,
        "/orders/1?x=1",
        &[
            ("x-api-key", &k.good),
            ("X-Portcullis-Subject", "admin"),
            ("x-portcullis-scopes", "root"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let h = &j["headers"];
    assert!(h.get("x-api-key").is_none(), "key forwarded: {j}");
    assert_eq!(h["x-portcullis-subject"][0], "acme-corp");
    assert_eq!(
        h["x-portcullis-subject"].as_array().unwrap().len(),
        1,
        "spoofed copy survived: {j}"
    );
    assert_eq!(h["x-portcullis-consumer"][0], "acme-corp");
    assert_eq!(h["x-portcullis-key-id"][0], "acme-1");
    assert_eq!(h["x-portcullis-scopes"][0], "orders:read orders:write");
    assert_eq!(h["x-portcullis-groups"][0], "partners");
    assert_eq!(h["x-portcullis-auth-method"][0], "api_key");
    assert_eq!(h["x-portcullis-authenticator"][0], "partners");
    assert_eq!(j["target"], "/orders/1?x=1");
    // Header name is case-insensitive.
    assert_eq!(req(&gw, "/orders/1", &[("X-API-KEY", &k.good)]).status, 200);
}

#[test]
fn query_parameter_key_is_accepted_and_stripped() {
    let (gw, _e, k) = setup();
    let r = req(&gw, &format!("/orders/1?a=1&api_key={}&b=2", k.good), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["target"], "/orders/1?a=1&b=2");
    let r = req(&gw, &format!("/orders/1?api_key={}", k.good), &[]);
    assert_eq!(r.json()["target"], "/orders/1");
}

#[test]
fn rejections_are_401_with_reason() {
    let (gw, _e, k) = setup();
    assert_401(&req(&gw, "/orders/1", &[]), "credentials_missing");
    assert_401(
        &req(&gw, "/orders/1", &[("x-api-key", "nope")]),
        "invalid_api_key",
    );
    assert_401(
        &req(&gw, "/orders/1", &[("x-api-key", "")]),
        "invalid_api_key",
    );
    assert_401(
        &req(&gw, "/orders/1", &[("x-api-key", &"a".repeat(600))]),
        "invalid_api_key",
    );
    assert_401(
        &req(&gw, "/orders/1", &[("x-api-key", &k.expired)]),
        "key_expired",
    );
    assert_401(
        &req(&gw, "/orders/1", &[("x-api-key", &k.disabled)]),
        "key_disabled",
    );
    // A key of another authenticator is not valid here.
    assert_401(
        &req(&gw, "/orders/1", &[("x-api-key", &k.other)]),
        "invalid_api_key",
    );
    assert_401(
        &req(&gw, "/orders/1", &[("x-internal-key", &k.other)]),
        "credentials_missing",
    );
    // Never "first wins": two copies of a credential are refused.
    assert_401(
        &req(
            &gw,
            "/orders/1",
            &[("x-api-key", &k.good), ("X-Api-Key", &k.good)],
        ),
        "ambiguous_credentials",
    );
    assert_401(
        &req(
            &gw,
            &format!("/orders/1?api_key={}", k.good),
            &[("x-api-key", &k.good)],
        ),
        "ambiguous_credentials",
    );
    let m = gw.metrics();
    assert!(m.contains("portcullis_auth_attempts_total{authenticator=\"partners\",reason=\"key_expired\",result=\"failure\"} 1"), "{m}");
    assert!(m.contains("portcullis_auth_attempts_total{authenticator=\"none\",reason=\"credentials_missing\",result=\"failure\"}"), "{m}");
    assert!(
        !m.contains(&k.good) && !m.contains("nope"),
        "secrets in metrics"
    );
}

#[test]
fn any_of_several_authenticators() {
    let (gw, _e, k) = setup();
    let r = req(&gw, "/both", &[("x-internal-key", &k.other)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-portcullis-authenticator"][0],
        "internal"
    );
    assert!(r.json()["headers"].get("x-internal-key").is_none());
    assert_eq!(req(&gw, "/both", &[("x-api-key", &k.good)]).status, 200);
    // Credentials for two authenticators at once are ambiguous.
    assert_401(
        &req(
            &gw,
            "/both",
            &[("x-api-key", &k.good), ("x-internal-key", &k.other)],
        ),
        "ambiguous_credentials",
    );
}

#[test]
fn spoofed_identity_headers_never_reach_upstream_on_public_routes() {
    let (gw, _e, _k) = setup();
    let r = req(
        &gw,
        "/public",
        &[
            ("X-Portcullis-Subject", "admin"),
            ("x-portcullis-auth-method", "mtls"),
            ("X-PORTCULLIS-NEW-THING", "1"),
        ],
    );
    assert_eq!(r.status, 200);
    let h = r.json()["headers"].clone();
    let leaked: Vec<_> = h
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-portcullis-"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[test]
fn invalid_api_key_configs_are_rejected_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(
        &p,
        r#"server:
  listen: [{ addr: "127.0.0.1:18081" }]
authenticators:
  k:
    api_key:
      keys:
        - { id: a, sha256: "abc", consumer: "bad consumer" }
        - { id: a, sha256: "856dd166b0544b69b93fc237db45865da8c7e8e367efcb04063b40c9c635a286", consumer: c, expires: "tomorrow" }
  both: { api_key: { keys: [] }, mtls: { identity: san_uri } }
upstreams:
  e: { targets: ["127.0.0.1:9"] }
routes:
  - { id: r, match: { path_prefix: / }, upstream: e, authn: [k, nope] }
"#,
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    for w in [
        "authenticators.k.api_key.keys[0].sha256: must be the 64 hex digits",
        "authenticators.k.api_key.keys[0].consumer: invalid consumer",
        "authenticators.k.api_key.keys[1].id: duplicate key id",
        "authenticators.k.api_key.keys[1].expires: invalid timestamp",
        "authenticators.both: exactly one of api_key, jwt or mtls",
        "routes[0].authn[1]: unknown authenticator \"nope\"",
    ] {
        assert!(err.contains(w), "missing {w:?} in\n{err}");
    }
}
