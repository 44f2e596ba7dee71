//! Compile step for `audit:` (called from `process_settings`): the sink, chain key and the
//! header allow-list, with credentials refused by name.

use super::{secret_bytes, Ctx};
use crate::config::raw::{FsyncMode, RawAudit, RawConfig};
use crate::config::{AuditSettings, SecretBytes};
use http::header::HeaderName;
use std::time::Duration;

/// Headers that carry credentials or session state: never written to the audit trail.
const NEVER_CAPTURED: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// Header names containing these are refused too (`x-access-token`, `x-vault-token`,
/// `x-goog-api-key`, `x-session-id`, …): better one header less than one secret in the log.
const SECRET_WORDS: [&str; 7] = [
    "token", "secret", "auth", "key", "session", "passw", "cookie",
];

pub(super) fn settings(cx: &mut Ctx, a: &RawAudit, raw: &RawConfig) -> Option<AuditSettings> {
    let before = cx.issues.len();
    let file = a.file.as_ref().map(|f| cx.base.join(f));
    if file.is_none() && !a.stdout {
        cx.err("audit", "set file, stdout: true, or both");
    }
    if let Some(f) = &file {
        match f.parent() {
            Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {}
            _ => cx.err(
                "audit.file",
                format!("directory of {} does not exist", f.display()),
            ),
        }
    }
    let queue = a.queue.unwrap_or(65_536);
    if !(16..=10_000_000).contains(&queue) {
        cx.err("audit.queue", "must be between 16 and 10000000 records");
    }
    let fsync_interval = a.fsync_interval.map_or(Duration::from_secs(1), |d| d.0);
    if a.fsync_interval.is_some() && a.fsync != FsyncMode::Interval {
        cx.err("audit.fsync_interval", "only used with fsync: interval");
    }
    if fsync_interval < Duration::from_millis(10) {
        cx.err("audit.fsync_interval", "must be at least 10ms");
    }
    let hmac_key = match &a.hmac_key {
        None => None,
        Some(sec) => {
            if !a.chain {
                cx.err("audit.hmac_key", "only used with chain: true");
            }
            match secret_bytes(cx, "audit.hmac_key", sec) {
                Some(b) if b.len() < 32 => {
                    cx.err("audit.hmac_key", "the key must be at least 32 bytes");
                    None
                }
                other => other.map(SecretBytes),
            }
        }
    };
    // Header names that authenticators read credentials from are refused as well.
    let mut secret_headers: Vec<String> = NEVER_CAPTURED.iter().map(|s| s.to_string()).collect();
    for auth in raw.authenticators.values() {
        if let Some(h) = auth.api_key.as_ref().and_then(|k| k.header.as_ref()) {
            secret_headers.push(h.to_ascii_lowercase());
        }
        if let Some(h) = auth.jwt.as_ref().and_then(|j| j.header.as_ref()) {
            secret_headers.push(h.to_ascii_lowercase());
        }
    }
    let mut capture_headers = Vec::new();
    for (i, h) in a.capture_headers.iter().enumerate() {
        let path = format!("audit.capture_headers[{i}]");
        match HeaderName::from_bytes(h.as_bytes()) {
            Err(_) => cx.err(path, format!("invalid header name {h:?}")),
            Ok(name)
                if secret_headers.iter().any(|s| s == name.as_str())
                    || SECRET_WORDS.iter().any(|w| name.as_str().contains(w)) =>
            {
                cx.err(
                    path,
                    format!("{h:?} carries credentials and is never written to the audit trail"),
                )
            }
            Ok(name) if capture_headers.contains(&name) => {
                cx.err(path, format!("{h:?} listed twice"))
            }
            Ok(name) => capture_headers.push(name),
        }
    }
    if capture_headers.len() > 32 {
        cx.err("audit.capture_headers", "at most 32 headers");
    }
    if cx.issues.len() != before {
        return None;
    }
    Some(AuditSettings {
        file,
        stdout: a.stdout,
        queue,
        on_overflow: a.on_overflow,
        fsync: a.fsync,
        fsync_interval,
        chain: a.chain,
        hmac_key,
        capture_headers,
        token_fingerprint: a.token_fingerprint,
        query: a.query,
    })
}
