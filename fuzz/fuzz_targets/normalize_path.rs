//! Path normalisation invariants (see docs/security-model.md):
//! - never panics, on any bytes;
//! - idempotent: normalising the output again changes nothing;
//! - the output is canonical: ASCII, starts with `/`, no empty, `.` or `..` segments, no
//!   segment ending in `.`, no `;`, `\`, controls;
//! - an upstream that percent-decodes the output sees the same segment structure (no new `/`,
//!   no new dot-segments) and the same routing decision as the gateway made.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{load_str, Snapshot};
use portcullis::route::normalize::normalize_path;
use portcullis::route::RouteMatch;
use std::path::Path;
use std::sync::OnceLock;

const CONFIG: &str = r#"
server:
  listen: [{ addr: "127.0.0.1:0" }]
upstreams:
  e: { targets: ["127.0.0.1:9"] }
authenticators:
  keys:
    api_key:
      keys: [{ id: k, sha256: "abababababababababababababababababababababababababababababababab", consumer: c }]
routes:
  - { id: public, match: { path_prefix: / }, upstream: e, public: true }
  - { id: admin, match: { path_prefix: /admin }, upstream: e, authn: [keys], authz: { scopes_all: [admin] } }
  - { id: api-admin, match: { path_prefix: /api/v1/admin }, upstream: e, authn: [keys] }
  - { id: exact, match: { path: /x/y }, upstream: e, authn: [keys] }
  - { id: colon, match: { path_prefix: "/jobs:purge" }, upstream: e, authn: [keys] }
"#;

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        load_str(CONFIG, Path::new("."))
            .expect("fuzz config compiles")
            .snapshot
    })
}

fn route_of(path: &str) -> String {
    match snapshot()
        .router
        .lookup("h", path, Some(portcullis::config::raw::Method::Get))
    {
        RouteMatch::Found(r) => r.id.to_string(),
        RouteMatch::NoRoute => "404".into(),
        RouteMatch::MethodNotAllowed(_) => "405".into(),
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// What a typical upstream framework does: decode every `%XX` once.
fn percent_decode(p: &str) -> Vec<u8> {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut raw = Vec::with_capacity(data.len() + 1);
    raw.push(b'/');
    raw.extend_from_slice(data);
    let Ok(p) = normalize_path(&raw) else {
        return;
    };
    assert_eq!(
        normalize_path(p.as_bytes()).as_deref(),
        Ok(p.as_str()),
        "not idempotent"
    );
    assert!(p.starts_with('/') && p.is_ascii(), "{p:?}");
    assert!(!p.contains("//"), "{p:?}");
    assert!(
        !p.bytes()
            .any(|b| b == b';' || b == b'\\' || b < 0x20 || b == 0x7f),
        "{p:?}"
    );
    for seg in p.split('/') {
        assert!(seg != "." && seg != "..", "dot-segment left in {p:?}");
        assert!(!seg.ends_with('.'), "trailing dot in {p:?}");
    }
    // An upstream that decodes once sees the same structure and the same route.
    let decoded = percent_decode(&p);
    assert_eq!(
        decoded.iter().filter(|&&b| b == b'/').count(),
        p.bytes().filter(|&b| b == b'/').count(),
        "decoding {p:?} creates separators"
    );
    for seg in decoded.split(|&b| b == b'/') {
        assert!(
            seg != b"." && seg != b"..",
            "decoding {p:?} creates dot-segments"
        );
    }
    if let Ok(d) = std::str::from_utf8(&decoded) {
        assert_eq!(route_of(&p), route_of(d), "decoded {p:?} routes elsewhere");
    }
});
