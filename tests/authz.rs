//! Route-level authorization through the real gateway: scopes, roles, groups, claims,
//! authentication methods, client-IP rules (direct, via X-Forwarded-For and via Forwarded),
//! named and inline policies, shadow mode, 401-vs-403 semantics, metrics, config refusals.

mod common;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-authz-secret";
const GOOD_KEY: &str = "pk_test_orders_reader_0123456789";
const PLAIN_KEY: &str = "pk_test_plain_consumer_987654321";

fn token(extra: Value) -> String {
    let mut c =
        json!({"sub": "alice", "iss": "https://idp.test/", "exp": now() + 600, "iat": now()});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    hs256(SECRET, &c)
}

struct Setup {
    gw: Gateway,
    _e: Echo,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let e = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let body = format!(
        r#"authenticators:
  idp:
    jwt:
      issuer: "https://idp.test/"
      algorithms: [HS256]
      hmac_secret: {{ file: "{secret}" }}
      roles_claim: realm_access.roles
      groups_claim: groups
  keys:
    api_key:
      keys:
        - {{ id: reader, sha256: "{good}", consumer: acme, scopes: [orders:read], groups: [partners], roles: [admin] }}
        - {{ id: plain, sha256: "{plain}", consumer: plain-co }}
policies:
  orders-read:
    scopes_all: [orders:read]
  rollout:
    roles_all: [auditor]
    mode: shadow
upstreams:
  e: {{ targets: ["{addr}"] }}
routes:
  - {{ id: orders, match: {{ path_prefix: /orders }}, upstream: e, authn: [idp, keys], policy: orders-read }}
  - id: admin
    match: {{ path_prefix: /admin }}
    upstream: e
    authn: [idp, keys]
    authz: {{ roles_any: [admin, root], scopes_any: [admin, "admin:all"] }}
  - {{ id: staff, match: {{ path_prefix: /staff }}, upstream: e, authn: [idp, keys], authz: {{ groups_all: [staff, eng] }} }}
  - id: tenant
    match: {{ path_prefix: /tenant }}
    upstream: e
    authn: [idp, keys]
    authz:
      claims:
        tenant: [acme, globex]
        org.region: eu
        "https://example.com/tier": 3
  - {{ id: internal, match: {{ path_prefix: /internal }}, upstream: e, authn: [idp, keys], authz: {{ auth_methods: [api_key] }} }}
  - id: net
    match: {{ path_prefix: /net }}
    upstream: e
    public: true
    authz: {{ client_ips: {{ allow: [10.0.0.0/8, "2001:db8::/32"], deny: [10.9.0.0/16] }} }}
  - id: net-auth
    match: {{ path_prefix: /netauth }}
    upstream: e
    authn: [idp]
    authz: {{ client_ips: {{ deny: [192.0.2.0/24] }}, scopes_all: [orders:read] }}
  - {{ id: shadow, match: {{ path_prefix: /shadow }}, upstream: e, authn: [idp], authz: {{ scopes_all: [never] }}, mode: shadow }}
  - {{ id: rollout, match: {{ path_prefix: /rollout }}, upstream: e, authn: [idp], policy: rollout }}
  - {{ id: plain, match: {{ path_prefix: /plain }}, upstream: e, authn: [idp] }}
  - {{ id: open, match: {{ path_prefix: /open }}, upstream: e, public: true }}
"#,
        secret = secret.display(),
        good = sha(GOOD_KEY),
        plain = sha(PLAIN_KEY),
        addr = e.addr
    );
    Setup {
        gw: Gateway::start("  trusted_proxies: [127.0.0.1/32]\n", &body),
        _e: e,
        _dir: dir,
    }
}

fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    request(gw.addr, raw.as_bytes())
}

fn bearer(gw: &Gateway, path: &str, t: &str) -> Response {
    call(gw, path, &[("Authorization", &format!("Bearer {t}"))])
}

fn key(gw: &Gateway, path: &str, k: &str) -> Response {
    call(gw, path, &[("X-Api-Key", k)])
}

fn assert_403(r: &Response, reason: &str, bearer: bool) {
    assert_eq!(r.status, 403, "{reason}: {}", r.text());
    let body = r.json();
    assert_eq!(body["error"], reason, "{}", r.text());
    assert!(body["request_id"].is_string());
    let wa = r.header("www-authenticate");
    if bearer {
        assert_eq!(
            wa,
            Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\""),
            "{reason}"
        );
    } else {
        assert_eq!(wa, None, "{reason}");
    }
}

fn assert_ok(r: &Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_eq!(r.json()["echo"], "e", "{what}");
}

#[test]
fn scopes_roles_groups_and_401_vs_403() {
    let s = setup();
    let gw = &s.gw;
    // scopes_all through a named policy; JWT and API key principals alike
    let reader = token(json!({"scope": "orders:read profile"}));
    let r = bearer(gw, "/orders/1", &reader);
    assert_ok(&r, "scope present");
    assert_eq!(
        r.echoed_header("x-portcullis-scopes").as_deref(),
        Some("orders:read profile")
    );
    assert_ok(
        &bearer(
            gw,
            "/orders/1",
            &token(json!({"scp": ["x", "orders:read"]})),
        ),
        "scp array",
    );
    let r = bearer(gw, "/orders/1", &token(json!({"scope": "orders:write"})));
    assert_403(&r, "insufficient_scope", true);
    // The body names the reason, never the policy's internals.
    assert!(!r.text().contains("orders:read"), "{}", r.text());
    assert!(!r.text().contains("orders-read"), "{}", r.text());
    // Prefix of a scope is not the scope.
    assert_403(
        &bearer(
            gw,
            "/orders/1",
            &token(json!({"scope": "orders:rea orders"})),
        ),
        "insufficient_scope",
        true,
    );
    assert_ok(&key(gw, "/orders", GOOD_KEY), "api key with scope");
    assert_403(&key(gw, "/orders", PLAIN_KEY), "insufficient_scope", false);
    // No or bad credentials: 401, not 403.
    let r = call(gw, "/orders", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "credentials_missing");
    let r = bearer(gw, "/orders", &format!("{reader}x"));
    assert_eq!(r.status, 401, "{}", r.text());

    // roles_any + scopes_any (AND between conditions, OR within each)
    let admin = token(json!({"realm_access": {"roles": ["user", "admin"]}, "scope": "admin"}));
    assert_ok(&bearer(gw, "/admin", &admin), "role and scope");
    assert_403(
        &bearer(
            gw,
            "/admin",
            &token(json!({"realm_access": {"roles": ["user"]}, "scope": "admin"})),
        ),
        "missing_role",
        true,
    );
    assert_403(
        &bearer(
            gw,
            "/admin",
            &token(json!({"realm_access": {"roles": ["root"]}, "scope": "read"})),
        ),
        "insufficient_scope",
        true,
    );
    // A top-level `roles` claim is not `realm_access.roles`.
    assert_403(
        &bearer(
            gw,
            "/admin",
            &token(json!({"roles": ["admin"], "scope": "admin"})),
        ),
        "missing_role",
        true,
    );
    // The API key has role admin but no admin scope.
    assert_403(&key(gw, "/admin", GOOD_KEY), "insufficient_scope", false);

    // groups_all
    assert_ok(
        &bearer(
            gw,
            "/staff",
            &token(json!({"groups": ["eng", "staff", "x"]})),
        ),
        "both groups",
    );
    assert_403(
        &bearer(gw, "/staff", &token(json!({"groups": ["eng"]}))),
        "missing_group",
        true,
    );
    assert_403(&key(gw, "/staff", GOOD_KEY), "missing_group", false);

    // auth_methods: only API keys on /internal
    assert_ok(&key(gw, "/internal", PLAIN_KEY), "api key allowed");
    assert_403(
        &bearer(gw, "/internal", &reader),
        "auth_method_not_allowed",
        true,
    );

    // Route without a policy: any authenticated caller.
    assert_ok(&bearer(gw, "/plain", &token(json!({}))), "authenticated");

    let m = gw.metrics();
    let series = |route: &str, decision: &str, reason: &str| {
        metric_value(
            &m,
            &format!("portcullis_authz_decisions_total{{decision=\"{decision}\",reason=\"{reason}\",route=\"{route}\"}}"),
        )
    };
    assert_eq!(series("orders", "allow", "policy"), 3.0, "{m}");
    assert_eq!(series("orders", "deny", "insufficient_scope"), 3.0, "{m}");
    assert_eq!(series("admin", "deny", "missing_role"), 2.0, "{m}");
    assert_eq!(series("internal", "deny", "auth_method_not_allowed"), 1.0);
    assert_eq!(series("plain", "allow", "authenticated"), 1.0);
    // 401s never reach authorization.
    assert!(!m
        .lines()
        .any(|l| l.starts_with("portcullis_authz_decisions_total") && l.contains("credentials")));
}

#[test]
fn claim_conditions() {
    let s = setup();
    let gw = &s.gw;
    let t = |v: Value| bearer(gw, "/tenant", &token(v));
    let good = json!({"tenant": "acme", "org": {"region": "eu"}, "https://example.com/tier": 3});
    assert_ok(&t(good.clone()), "all claims match");
    let mut array = good.clone();
    array["tenant"] = json!(["other", "globex"]);
    assert_ok(&t(array), "array claim with an accepted element");
    let mut tier_text = good.clone();
    tier_text["https://example.com/tier"] = json!("3");
    assert_ok(&t(tier_text), "number compared as text");
    for (field, value) in [
        ("tenant", json!("initech")),
        ("tenant", json!("ACME")),
        ("tenant", json!(["initech"])),
        ("tenant", json!({"name": "acme"})),
        ("tenant", Value::Null),
        ("org", json!({"region": "us"})),
        ("org", json!("eu")),
        ("https://example.com/tier", json!(4)),
    ] {
        let mut c = good.clone();
        c[field] = value.clone();
        assert_403(&t(c), "claim_mismatch", true);
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("tenant");
    assert_403(&t(missing), "claim_mismatch", true);
    // API keys carry no claims: fail closed.
    assert_403(&key(gw, "/tenant", GOOD_KEY), "claim_mismatch", false);
}

#[test]
fn client_ip_rules_use_the_resolved_client_ip() {
    let s = setup();
    let gw = &s.gw;
    let from = |ip: &str| call(gw, "/net", &[("X-Forwarded-For", ip)]);
    assert_ok(&from("10.1.2.3"), "allowed network");
    assert_ok(&from("2001:db8::7"), "allowed v6 network");
    assert_403(&from("10.9.0.1"), "ip_denied", false);
    assert_403(&from("192.0.2.1"), "ip_denied", false);
    // Rightmost untrusted hop: a client-written left part does not help.
    assert_403(&from("10.1.2.3, 192.0.2.1"), "ip_denied", false);
    // No header: the peer (127.0.0.1) is the client, and it is not allowed.
    assert_403(&call(gw, "/net", &[]), "ip_denied", false);
    // Spoofing headers other than the configured one change nothing.
    for h in ["X-Real-IP", "True-Client-IP", "Forwarded", "X-Client-IP"] {
        let v = if h == "Forwarded" {
            "for=10.1.2.3"
        } else {
            "10.1.2.3"
        };
        assert_403(&call(gw, "/net", &[(h, v)]), "ip_denied", false);
    }
    // IP rules run before authentication: a denied network gets 403 even without credentials.
    assert_403(
        &call(gw, "/netauth", &[("X-Forwarded-For", "192.0.2.9")]),
        "ip_denied",
        false,
    );
    let r = call(gw, "/netauth", &[("X-Forwarded-For", "198.51.100.1")]);
    assert_eq!(r.status, 401, "{}", r.text());
    let t = token(json!({"scope": "orders:read"}));
    let auth = format!("Bearer {t}");
    let r = call(
        gw,
        "/netauth",
        &[
            ("X-Forwarded-For", "198.51.100.1"),
            ("Authorization", &auth),
        ],
    );
    assert_ok(&r, "allowed network with token");
    let m = gw.metrics();
    assert_eq!(
        metric_value(
            &m,
            "portcullis_authz_decisions_total{decision=\"deny\",reason=\"ip_denied\",route=\"net\"}"
        ),
        8.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "portcullis_authz_decisions_total{decision=\"allow\",reason=\"public\",route=\"net\"}"
        ),
        2.0
    );
}

#[test]
fn forwarded_header_when_configured() {
    let e = Echo::start("e");
    let body = format!(
        r#"upstreams:
  e: {{ targets: ["{}"] }}
routes:
  - {{ id: net, match: {{ path_prefix: / }}, upstream: e, public: true, authz: {{ client_ips: {{ allow: [203.0.113.0/24] }} }} }}
"#,
        e.addr
    );
    let gw = Gateway::start(
        "  trusted_proxies: [127.0.0.1/32]\n  client_ip_header: forwarded\n",
        &body,
    );
    let r = call(
        &gw,
        "/x",
        &[(
            "Forwarded",
            "for=192.0.2.1, for=\"203.0.113.7:4711\";proto=https",
        )],
    );
    assert_ok(&r, "Forwarded rightmost hop");
    assert_eq!(
        r.echoed_header("forwarded"),
        None,
        "Forwarded is not passed on"
    );
    assert_403(
        &call(
            &gw,
            "/x",
            &[("Forwarded", "for=203.0.113.7, for=192.0.2.1")],
        ),
        "ip_denied",
        false,
    );
    // X-Forwarded-For is not consulted in this mode.
    assert_403(
        &call(&gw, "/x", &[("X-Forwarded-For", "203.0.113.7")]),
        "ip_denied",
        false,
    );
}

#[test]
fn shadow_mode_counts_and_lets_through() {
    let s = setup();
    let gw = &s.gw;
    let t = token(json!({"scope": "orders:read"}));
    // Route-level shadow: the policy would deny, the request passes.
    let r = bearer(gw, "/shadow/x", &t);
    assert_ok(&r, "shadow route");
    // Policy-level shadow (policies.rollout has mode: shadow).
    assert_ok(&bearer(gw, "/rollout", &t), "shadow policy");
    assert_ok(
        &bearer(
            gw,
            "/rollout",
            &token(json!({"realm_access": {"roles": ["auditor"]}})),
        ),
        "shadow policy satisfied",
    );
    // Shadow never relaxes authentication.
    let r = call(gw, "/shadow/x", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    let m = gw.metrics();
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(
        v("portcullis_authz_decisions_total{decision=\"shadow_deny\",reason=\"insufficient_scope\",route=\"shadow\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        v("portcullis_authz_decisions_total{decision=\"shadow_deny\",reason=\"missing_role\",route=\"rollout\"}"),
        1.0
    );
    assert_eq!(
        v("portcullis_authz_decisions_total{decision=\"allow\",reason=\"policy\",route=\"rollout\"}"),
        1.0
    );
    let log = gw.proc.log_text();
    assert!(
        log.contains("shadow_deny route=shadow reason=insufficient_scope"),
        "{log}"
    );
    // The token never appears in the log.
    assert!(!log.contains(&t), "token leaked into the log");
}

fn check(yaml_body: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(
        &p,
        format!(
            "server:\n  listen: [{{ addr: \"127.0.0.1:0\" }}]\nupstreams:\n  e: {{ targets: [\"127.0.0.1:1\"] }}\nauthenticators:\n  keys:\n    api_key:\n      keys: [{{ id: k, sha256: \"{}\", consumer: c }}]\n{yaml_body}",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", p.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[test]
fn policy_config_errors_name_their_paths() {
    let (code, out) = check(
        r#"policies:
  empty: {}
  badcidr: { client_ips: { allow: [10.0.0.1/8] } }
  badclaim: { claims: { tenant: [] } }
  unused: { scopes_all: [x] }
routes:
  - { id: a, match: { path: /a }, upstream: e, public: true, authz: { scopes_all: [x] } }
  - { id: b, match: { path: /b }, upstream: e, authn: [keys], policy: nope }
  - { id: c, match: { path: /c }, upstream: e, authn: [keys], policy: unused, authz: { scopes_all: [y] } }
  - { id: d, match: { path: /d }, upstream: e, authn: [keys], mode: shadow }
  - { id: f, match: { path: /f }, upstream: e, authn: [keys], authz: { auth_methods: [mtls] } }
  - { id: g, match: { path: /g }, upstream: e, authn: [keys], authz: { scopes_all: [""] } }
"#,
    );
    assert_ne!(code, 0, "{out}");
    for want in [
        "policies.empty: policy has no conditions",
        "policies.badcidr.client_ips.allow[0]: invalid CIDR",
        "policies.badclaim.claims.tenant: needs one or more non-empty values",
        "routes[0].public: a public route has no authenticated caller",
        "routes[1].policy: unknown policy \"nope\"",
        "routes[2].authz: use either policy",
        "routes[3].mode: shadow mode applies to an authorization policy",
        "routes[4].authn: none of these authenticators produces an authentication method the policy allows",
        "routes[5].authz.scopes_all[0]: invalid value",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Unknown fields and unknown enum values are syntax errors with their path.
    let (code, out) = check(
        "routes:\n  - { id: a, match: { path: /a }, upstream: e, authn: [keys], authz: { scope_all: [x] } }\n",
    );
    assert_ne!(code, 0);
    assert!(out.contains("scope_all"), "{out}");
    let (code, out) = check(
        "routes:\n  - { id: a, match: { path: /a }, upstream: e, authn: [keys], authz: { auth_methods: [basic] } }\n",
    );
    assert_ne!(code, 0);
    assert!(out.contains("basic"), "{out}");
    // An unused named policy is a warning, not an error.
    let (code, out) = check(
        "policies:\n  spare: { scopes_all: [x] }\nroutes:\n  - { id: a, match: { path: /a }, upstream: e, authn: [keys] }\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("policies.spare: policy is not used by any route"),
        "{out}"
    );
}
