//! The audit trail: one record per request, built in the `logging` phase ([`record`]) from the
//! request context and handed to the writer thread ([`sink`]); `request_filter` consults
//! [`Audit::accepting`] (through the context) so that `on_overflow: reject` fails closed.
//!
//! Record schema (version 1) is documented in docs/audit.md. What a record never contains:
//! credentials (the `Authorization` header, cookies, API keys, tokens — at most a short token
//! fingerprint), query string values, or any request header outside `capture_headers`.

pub mod chain;
pub mod sink;

use crate::config::raw::AuditQuery;
use crate::config::AuditSettings;
use crate::gateway::RequestCtx;
use pingora::proxy::Session;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use sink::AuditSink;

/// RFC 3339 UTC with microseconds, e.g. `2026-12-04T00:45:12.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let mut s = String::with_capacity(27);
    rfc3339_into(&mut s, t);
    s
}

/// Append `n` as exactly `width` decimal digits (zero-padded; `n` < 10^width).
fn push_digits(out: &mut String, n: u64, width: u32) {
    let mut div = 10u64.pow(width.saturating_sub(1));
    for _ in 0..width {
        out.push(char::from(b'0' + ((n / div) % 10) as u8));
        div /= 10;
    }
}

/// [`rfc3339`] written into `out` (the audit record's `ts`, on every request: no `format!`).
pub fn rfc3339_into(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_digits(out, year.clamp(0, 9999) as u64, 4);
    out.push('-');
    push_digits(out, month as u64, 2);
    out.push('-');
    push_digits(out, day as u64, 2);
    out.push('T');
    push_digits(out, rem / 3600, 2);
    out.push(':');
    push_digits(out, (rem / 60) % 60, 2);
    out.push(':');
    push_digits(out, rem % 60, 2);
    out.push('.');
    push_digits(out, u64::from(d.subsec_micros()), 6);
    out.push('Z');
}

pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// A new instance id: 64 random bits, so records of concurrent processes stay apart.
pub fn new_instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// JSON string escaping for record fields and error bodies: quotes, backslashes, control
/// characters and U+2028/U+2029, so a value can never end its string or its line.
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    // Fast path: copy runs of bytes that need no escape in one go. The bytes that may need
    // one are ASCII controls, `"`, `\` and 0xE2 (the lead byte of U+2028/U+2029); a run
    // always ends before such a byte, so it ends on a char boundary.
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' && b != 0xE2 {
            continue;
        }
        out.push_str(&s[start..i]);
        start = i;
        // Escape (or copy) the one char starting here, then go on after it.
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        escape_char(out, c);
        start = i + c.len_utf8();
    }
    if start < bytes.len() {
        out.push_str(&s[start..]);
    }
    out.push('"');
}

fn escape_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => out.push(c),
    }
}

/// Writes `,"key":value` pairs (the first without the comma).
struct Fields {
    out: String,
    first: bool,
}

impl Fields {
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        json_str(&mut self.out, v);
    }
    fn opt(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => {
                self.key(k);
                self.out.push_str("null");
            }
        }
    }
    fn num(&mut self, k: &str, v: u64) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }
    /// A nested object: `f` writes its fields.
    fn obj(&mut self, k: &str, f: impl FnOnce(&mut Fields)) {
        self.key(k);
        let mut inner = Fields {
            out: std::mem::take(&mut self.out),
            first: true,
        };
        inner.out.push('{');
        f(&mut inner);
        inner.out.push('}');
        self.out = inner.out;
    }
}

fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The audit trail of this process.
#[derive(Debug)]
pub struct Audit {
    pub sink: Arc<AuditSink>,
}

impl Audit {
    pub fn new(settings: AuditSettings, instance: String) -> Audit {
        Audit {
            sink: AuditSink::new(settings, instance),
        }
    }
}

/// `new_ctx`: attach the sink; in `reject` mode reserve a queue slot for this request's record
/// or mark the request to be refused with 503.
pub fn admit(audit: &Audit, ctx: &mut RequestCtx) {
    let (accepting, reserved) = audit.sink.admit();
    ctx.audit_accepting = accepting;
    ctx.audit_reserved = reserved;
    ctx.audit_sink = Some(audit.sink.clone());
}

/// The fields every request record starts with.
fn request_fields(ctx: &RequestCtx, capacity: usize, method: Option<&str>) -> Fields {
    let mut f = Fields {
        out: String::with_capacity(capacity),
        first: true,
    };
    f.str("type", "request");
    f.key("ts");
    f.out.push('"');
    rfc3339_into(&mut f.out, SystemTime::now());
    f.out.push('"');
    f.str("request_id", &ctx.request_id);
    match ctx.client_ip {
        // Usually the TCP peer itself, already formatted.
        Some(_) if ctx.client_ip == ctx.peer_ip => f.str("client_ip", &ctx.peer_text),
        Some(ip) => f.str("client_ip", &crate::gateway::ip_text(&ip)),
        None => f.opt("client_ip", None),
    }
    f.str("peer_ip", &ctx.peer_text);
    if let Some(m) = method {
        f.str("method", m);
    }
    f.str("host", truncated(&ctx.host, 256));
    f.str("path", truncated(&ctx.path, 2048));
    f
}

/// The record of a request that never reached `logging` (see `RequestCtx`'s `Drop`).
pub fn record_cancelled(sink: &AuditSink, ctx: &RequestCtx) {
    let mut f = request_fields(ctx, 256, None);
    f.opt("route", ctx.route.as_ref().map(|r| &*r.id));
    f.num("status", 0);
    f.str(
        "decision",
        if ctx.reject.is_some() {
            "deny"
        } else {
            "allow"
        },
    );
    f.str("reason", "cancelled");
    f.num("duration_us", ctx.start.elapsed().as_micros() as u64);
    sink.submit(f.out, ctx.audit_reserved);
}

/// Outcome fields: `(decision, reason)`.
fn decision(ctx: &RequestCtx, status: u16) -> (&'static str, &'static str) {
    use crate::error::Reject;
    if let Some(r) = &ctx.reject {
        let upstream_failure = matches!(
            r,
            Reject::UpstreamConnect
                | Reject::UpstreamTimeout
                | Reject::UpstreamError
                | Reject::NoHealthyUpstream
        );
        return (if upstream_failure { "allow" } else { "deny" }, r.code());
    }
    if let Some(crate::authz::Decision::ShadowDenied(d)) = ctx.authz {
        return ("shadow_deny", d.code());
    }
    if ctx.limits.shadow_limited.is_some() {
        return ("shadow_deny", "rate_limited");
    }
    if status == 0 {
        return ("allow", "client_abort");
    }
    ("allow", "ok")
}

/// Build the record of this request (the `logging` phase) and queue it. Never blocks.
pub fn record(audit: &Audit, session: &Session, ctx: &mut RequestCtx) {
    ctx.audited = true;
    let s = audit.sink.settings();
    let req = session.req_header();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let (decision, reason) = decision(ctx, status);
    let mut f = request_fields(ctx, 768, Some(req.method.as_str()));
    if ctx.path.is_empty() {
        // Refused before normalisation (bad path, framing, limits): keep what was asked for,
        // without the query string.
        let raw = req.raw_path();
        let raw = &raw[..raw.iter().position(|&b| b == b'?').unwrap_or(raw.len())];
        f.str("raw_path", truncated(&String::from_utf8_lossy(raw), 2048));
    }
    if s.query == AuditQuery::Names {
        let names: Vec<&str> = ctx
            .query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split('=').next().unwrap_or(""))
            .collect();
        f.str("query_names", truncated(&names.join("&"), 512));
    }
    f.opt("route", ctx.route.as_ref().map(|r| &*r.id));
    f.opt("upstream", ctx.route.as_ref().map(|r| &*r.pool.name));
    match ctx.target {
        // A socket address needs no escaping: written straight into the record.
        Some(t) => {
            f.key("target");
            let _ = write!(f.out, "\"{t}\"");
        }
        None => f.opt("target", None),
    }
    f.num("status", u64::from(status));
    f.str("decision", decision);
    f.str("reason", reason);
    match &ctx.principal {
        Some(p) => f.obj("principal", |o| {
            o.str("method", p.method.as_str());
            o.str("authenticator", &p.authenticator);
            o.str("subject", &p.subject);
            o.opt("consumer", p.consumer.as_deref());
            o.opt("issuer", p.issuer.as_deref());
            o.opt("key_id", p.key_id.as_deref());
            if s.token_fingerprint && p.method == crate::auth::AuthMethod::Jwt {
                // Only a bearer token: a high-entropy JWT, so its hash prefix reveals nothing.
                let token = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim());
                if let Some(t) = token {
                    o.str("token_fp", &chain::digest(None, t.as_bytes())[..16]);
                }
            }
        }),
        None => {
            f.key("principal");
            f.out.push_str("null");
        }
    }
    match (&ctx.limits.limited, &ctx.limits.shadow_limited) {
        (Some(p), _) => f.obj("rate_limit", |o| {
            o.str("policy", p);
            o.str("result", "limited");
        }),
        (None, Some(p)) => f.obj("rate_limit", |o| {
            o.str("policy", p);
            o.str("result", "shadow_limited");
        }),
        _ => {}
    }
    f.num("bytes_in", session.body_bytes_read() as u64);
    f.num("bytes_out", session.body_bytes_sent() as u64);
    f.num("duration_us", ctx.start.elapsed().as_micros() as u64);
    if let (Some(a), Some(b)) = (ctx.upstream_start, ctx.upstream_answered) {
        f.num(
            "upstream_us",
            b.saturating_duration_since(a).as_micros() as u64,
        );
    }
    let tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .map(|t| t.version.to_string());
    if let Some(v) = tls {
        f.obj("tls", |o| {
            o.str("version", &v);
            o.opt(
                "client_cert_cn",
                ctx.client_cert
                    .as_ref()
                    .and_then(|c| c.subject_cn.as_deref()),
            );
        });
    }
    let ua = req
        .headers
        .get(http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    f.opt("user_agent", ua.as_deref().map(|v| truncated(v, 256)));
    if !s.capture_headers.is_empty() {
        f.obj("headers", |o| {
            for name in &s.capture_headers {
                // Non-UTF-8 bytes are replaced, never a reason to leave the value out.
                if let Some(v) = req.headers.get(name) {
                    o.str(
                        name.as_str(),
                        truncated(&String::from_utf8_lossy(v.as_bytes()), 256),
                    );
                }
            }
        });
    }
    audit.sink.submit(f.out, ctx.audit_reserved);
}

/// `response_filter`: the upstream's answer arrived (for `upstream_us`).
pub fn mark_upstream_answer(ctx: &mut RequestCtx) {
    ctx.upstream_answered = Some(std::time::Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_796_345_112_123_456);
        assert_eq!(rfc3339(t), "2026-12-04T00:45:12.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn json_strings_escape_exactly_what_must_be_escaped() {
        let esc = |s: &str| {
            let mut o = String::new();
            json_str(&mut o, s);
            o
        };
        assert_eq!(esc(""), "\"\"");
        assert_eq!(esc("plain /path?q=1"), "\"plain /path?q=1\"");
        assert_eq!(esc("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(esc("\n\r\t\u{1}\u{1f}"), r#""\n\r\t\u0001\u001f""#);
        // U+2028/U+2029 end a line in JavaScript; other chars with the 0xE2 lead byte (€,
        // U+2027) and other non-ASCII pass through.
        assert_eq!(esc("x\u{2028}y\u{2029}z"), r#""x\u2028y\u2029z""#);
        assert_eq!(esc("€ \u{2027} é 日本"), "\"€ \u{2027} é 日本\"");
        assert_eq!(esc("\u{2028}"), r#""\u2028""#);
        // Every escaped output is valid JSON that decodes to the input.
        for s in ["a\u{0}b", "é\"€\\\u{2029}", "\u{7f}\u{80}\u{10ffff}"] {
            assert_eq!(serde_json::from_str::<String>(&esc(s)).unwrap(), s);
        }
    }

    #[test]
    fn fields_escape_and_nest() {
        let mut f = Fields {
            out: String::new(),
            first: true,
        };
        f.str("a", "x\"\n\u{1}");
        f.obj("o", |o| {
            o.num("n", 3);
            o.opt("z", None);
        });
        let v: serde_json::Value = serde_json::from_str(&format!("{{{}}}", f.out)).unwrap();
        assert_eq!(v["a"], "x\"\n\u{1}");
        assert_eq!(v["o"]["n"], 3);
        assert!(v["o"]["z"].is_null());
    }

    #[test]
    fn truncation_keeps_utf8_whole() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
