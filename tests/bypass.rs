//! Path-confusion bypass corpus against the real gateway, in the style of public lists
//! (double slashes, dot-segments, encoded and double-encoded separators, `;` parameters, NUL
//! and TAB, trailing dots and spaces, overlong UTF-8, Unicode confusables, case variants,
//! override headers, absolute-form targets, host spellings).
//!
//! For every attempt the gateway must either answer exactly as it answers the canonical form
//! of the request (same status; when proxied, the echo upstream proves it received the
//! canonical path and none of the override headers) or refuse it with 400. The protected
//! routes require the `admin` scope; the caller's token does not have it, so a bypass would
//! show up as a 200 from the echo upstream where the canonical request gets 403.

mod common;
use common::*;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "0123456789abcdef0123456789abcdef-bypass-secret";

fn user_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = json!({"sub": "mallory", "exp": now + 600, "scope": "read"});
    hs256(SECRET, &c)
}

struct Setup {
    gw: Gateway,
    _e: Echo,
    _dir: tempfile::TempDir,
}

fn setup(server_extra: &str) -> Setup {
    let e = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let body = format!(
        r#"authenticators:
  idp:
    jwt:
      algorithms: [HS256]
      hmac_secret: {{ file: "{secret}" }}
policies:
  admin-only: {{ scopes_all: [admin] }}
upstreams:
  e: {{ targets: ["{addr}"] }}
routes:
  - {{ id: admin, match: {{ path_prefix: /admin }}, upstream: e, authn: [idp], policy: admin-only }}
  - {{ id: api-admin, match: {{ path_prefix: /api/admin }}, upstream: e, authn: [idp], policy: admin-only }}
  - {{ id: internal, match: {{ hosts: [internal.test], path_prefix: / }}, upstream: e, authn: [idp], policy: admin-only }}
  - {{ id: public, match: {{ path_prefix: / }}, upstream: e, public: true }}
"#,
        secret = secret.display(),
        addr = e.addr
    );
    Setup {
        gw: Gateway::start(server_extra, &body),
        _e: e,
        _dir: dir,
    }
}

/// What an attempt must produce.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// The same answer as this canonical request (target, host); if proxied, the upstream
    /// received exactly this target.
    Same(&'static str, &'static str),
    /// 400, nothing proxied.
    Reject,
    /// A case variant: with case-sensitive routing it is a different (public) resource that
    /// the upstream receives spelled exactly as given; with `path_case: insensitive` it gets
    /// the same answer as the given canonical request.
    Case(&'static str, &'static str),
}

struct Attempt {
    method: &'static str,
    target: &'static str,
    host: &'static str,
    /// Extra header lines, each ending in \r\n.
    extra: &'static str,
    want: Want,
}

const H: &str = "api.test";

fn a(target: &'static str, want: Want) -> Attempt {
    Attempt {
        method: "GET",
        target,
        host: H,
        extra: "",
        want,
    }
}

fn same(canon: &'static str) -> Want {
    Want::Same(canon, H)
}

fn corpus() -> Vec<Attempt> {
    use Want::*;
    let mut v = vec![
        // duplicate slashes
        a("//admin", same("/admin")),
        a("///admin//", same("/admin/")),
        a("/admin//users", same("/admin/users")),
        a("//admin//..//admin", same("/admin")),
        a("/api//admin", same("/api/admin")),
        // dot-segments
        a("/./admin", same("/admin")),
        a("/public/../admin", same("/admin")),
        a("/admin/./", same("/admin/")),
        a("/x/y/../../admin", same("/admin")),
        a("/../admin", same("/admin")),
        a("/../../../admin/users", same("/admin/users")),
        a("/admin/../admin", same("/admin")),
        a("/admin/..", same("/")),
        a("/api/x/../admin", same("/api/admin")),
        // encoded dots
        a("/%2e/admin", same("/admin")),
        a("/%2e%2e/admin", same("/admin")),
        a("/public/%2e%2e/admin", same("/admin")),
        a("/public/.%2e/admin", same("/admin")),
        a("/public/%2E%2E/admin", same("/admin")),
        a("/public/%2e./admin", same("/admin")),
        // encoded separators
        a("/%2e%2e%2fadmin", Reject),
        a("/admin%2fusers", Reject),
        a("/%2fadmin", Reject),
        a("/public%2f..%2fadmin", Reject),
        a("/public%5c..%5cadmin", Reject),
        a("/public\\..\\admin", Reject),
        a("/admin%5c", Reject),
        a("/public/..%2Fadmin", Reject),
        // double encoding
        a("/%252e%252e/admin", Reject),
        a("/public/%252e%252e/admin", Reject),
        a("/admin%252f", Reject),
        a("/%25%32%65%25%32%65/admin", Reject),
        a("/%252fadmin", Reject),
        a("/public/%25%32%66admin", Reject),
        // path parameters
        a("/admin;x=1", Reject),
        a("/public/..;/admin", Reject),
        a("/admin;/", Reject),
        a("/;/admin", Reject),
        a("/admin%3b", Reject),
        a("/public/..%3B/admin", Reject),
        // NUL, TAB, CR/LF, spaces
        a("/admin%00", Reject),
        a("/admin%00.json", Reject),
        a("/%00/admin", Reject),
        a("/admin%09", Reject),
        a("/%09admin", Reject),
        a("/admin%0d%0a", Reject),
        a("/admin%20", Reject),
        a("/%20admin", Reject),
        // trailing dots and slashes
        a("/admin.", Reject),
        a("/admin./", Reject),
        a("/admin..", Reject),
        a("/admin%2e", Reject),
        a("/admin/", same("/admin/")),
        a("/admin/.", same("/admin/")),
        a("/admin/users/", same("/admin/users/")),
        // overlong UTF-8 and invalid UTF-8
        a("/%c0%ae%c0%ae/admin", Reject),
        a("/%c0%afadmin", Reject),
        a("/%e0%80%ae%e0%80%ae/admin", Reject),
        a("/%c1%9cadmin", Reject),
        a("/admin%ff", Reject),
        // Unicode that normalises to ASCII
        a("/%ef%bc%8fadmin", Reject),
        a("/%ef%bd%81dmin", Reject),
        a("/ad%e2%80%8bmin", Reject),
        a("/public%ef%bc%8f..%ef%bc%8fadmin", Reject),
        a("/admin%e2%80%a4", Reject),
        // encoded letters
        a("/%61dmin", same("/admin")),
        a("/%61%64%6d%69%6e", same("/admin")),
        a("/adm%69n/users", same("/admin/users")),
        a("/api/%61dmin", same("/api/admin")),
        // case variants
        a("/ADMIN", Case("/admin", H)),
        a("/Admin/users", Case("/admin/users", H)),
        a("/%41dmin", Case("/admin", H)),
        a("/aDmIn/", Case("/admin/", H)),
        a("/API/Admin", Case("/api/admin", H)),
        // query strings and fragments
        a("/admin?x=/public", same("/admin?x=/public")),
        a("/public?/admin", same("/public?/admin")),
        // Pingora drops the fragment while parsing; what remains is routed and forwarded.
        a("/admin#x", same("/admin")),
        a("/public#/../admin", same("/public")),
        // absolute-form targets
        a("http://api.test/admin", same("/admin")),
        // Pingora compares the absolute-form authority with Host byte for byte: 400.
        a("http://API.TEST/public/../admin", Reject),
        a("http://api.test/public/../admin", same("/admin")),
        a("https://api.test//admin", same("/admin")),
        a("http://internal.test/public", Reject),
        a("http://api.test@internal.test/x", Reject),
        // host spellings
        Attempt {
            host: "INTERNAL.test",
            ..a("/public", Same("/public", "internal.test"))
        },
        Attempt {
            host: "internal.test.",
            ..a("/x", Same("/x", "internal.test"))
        },
        Attempt {
            host: "internal.test:8080",
            ..a("/x", Same("/x", "internal.test"))
        },
        Attempt {
            extra: "Host: internal.test\r\n",
            ..a("/public", Reject)
        },
    ];
    // Override headers on a public path: the answer is the public one, and the header never
    // reaches the upstream (checked below for every proxied attempt).
    for extra in [
        "X-Original-URL: /admin\r\n",
        "X-Rewrite-URL: /admin\r\n",
        "X-Override-URL: /admin\r\n",
        "X-HTTP-Method-Override: DELETE\r\n",
        "X-HTTP-Method: DELETE\r\n",
        "X-Method-Override: DELETE\r\n",
        "X-Forwarded-Prefix: /admin\r\n",
        "X-Original-Path: /admin\r\n",
        "X_Original_URL: /admin\r\n",
    ] {
        v.push(Attempt {
            extra,
            ..a("/public", same("/public"))
        });
    }
    // Method variants on the protected prefix.
    for method in ["POST", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
        v.push(Attempt {
            method,
            ..a("/admin", same("/admin"))
        });
    }
    v
}

fn send(gw: &Gateway, method: &str, target: &str, host: &str, extra: &str) -> Response {
    let token = user_token();
    let raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
    );
    request(gw.addr, raw.as_bytes())
}

const OVERRIDE_HEADERS: [&str; 8] = [
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-prefix",
    "x-original-path",
];

/// The checks for one proxied response: it came from the echo upstream, with the expected
/// target, and no override header.
fn assert_proxied(r: &Response, want_target: &str, what: &str) {
    let j = r.json();
    assert_eq!(j["echo"], "e", "{what}: not proxied: {}", r.text());
    assert_eq!(
        j["target"], want_target,
        "{what}: upstream saw another target"
    );
    let headers = j["headers"].as_object().unwrap();
    for h in OVERRIDE_HEADERS {
        assert!(!headers.contains_key(h), "{what}: {h} reached the upstream");
    }
    assert!(
        !headers.keys().any(|k| k.contains('_')),
        "{what}: underscore header reached the upstream"
    );
}

fn run_corpus(gw: &Gateway, insensitive: bool) -> usize {
    let corpus = corpus();
    let mut checked = 0;
    for at in &corpus {
        let what = format!("{} {} (Host: {})", at.method, at.target, at.host);
        let r = send(gw, at.method, at.target, at.host, at.extra);
        let head = at.method == "HEAD";
        match at.want {
            Want::Reject => {
                assert_eq!(r.status, 400, "{what}: {}", r.text());
            }
            Want::Same(canon, host) | Want::Case(canon, host)
                if insensitive || matches!(at.want, Want::Same(..)) =>
            {
                let c = send(gw, at.method, canon, host, "");
                assert_eq!(
                    r.status,
                    c.status,
                    "{what}: answered {} but the canonical {canon} gets {}: {}",
                    r.status,
                    c.status,
                    r.text()
                );
                if r.status == 200 && !head {
                    assert_proxied(&r, canon, &what);
                } else if !head {
                    // The gateway's own answer, not the upstream's.
                    assert!(r.json()["error"].is_string(), "{what}: {}", r.text());
                }
            }
            Want::Same(..) | Want::Case(..) => {
                // Case-sensitive routing: a different resource, public here, and the upstream
                // receives the path as spelled (after normalisation), never a folded one.
                assert_eq!(r.status, 200, "{what}: {}", r.text());
                let spelled =
                    portcullis::route::normalize::normalize_path(at.target.as_bytes()).unwrap();
                assert_proxied(&r, &spelled, &what);
            }
        }
        checked += 1;
    }
    checked
}

#[test]
fn bypass_corpus_case_sensitive() {
    let s = setup("");
    let n = run_corpus(&s.gw, false);
    assert!(n >= 100, "corpus has only {n} attempts");
    // Sanity: the protected route really is protected for this caller (403 with the token,
    // 401 without), so "same answer as canonical" means "denied".
    assert_eq!(send(&s.gw, "GET", "/admin", H, "").status, 403);
    assert_eq!(s.gw.get("/admin").status, 401);
}

#[test]
fn bypass_corpus_case_insensitive() {
    let s = setup("  path_case: insensitive\n");
    run_corpus(&s.gw, true);
}
