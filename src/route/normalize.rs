//! Request-target normalisation, done once per request in `request_filter` before routing.
//!
//! The routing decision, every later policy check and the upstream request all use the one
//! path produced here, so a path cannot mean one thing to the policy and another to the
//! service. Rules (documented in docs/routing.md):
//!
//! - percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) and the sub-delimiters
//!   legal raw in a segment (`! $ & ' ( ) * + , = : @`) are decoded; every other
//!   percent-encoding is kept, with upper-case hex;
//! - dot-segments (`.`, `..`, also as `%2e`) are resolved (RFC 3986 §5.2.4; `..` at the root
//!   stays at the root) and runs of `/` are collapsed;
//! - rejected as ambiguous (400): encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, NUL and other
//!   control characters (raw or encoded), `;` path parameters (servlet containers strip them,
//!   so `/public/..;/admin` would be read differently upstream), double encoding (`%25`
//!   followed by two hex digits, also when assembled from escapes like `%25%32%65`), malformed
//!   `%` escapes, and bytes that do not decode to UTF-8
//!   (which covers overlong encodings like `%C0%AE`);
//! - raw characters that are not allowed in a path are percent-encoded.
//!
//! Paths are case-sensitive, as RFC 3986 says.

use thiserror::Error;

/// Why a request target was refused. Every variant maps to 400 `invalid_path`.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    #[error("the request target must be an absolute path")]
    NotAbsolute,
    #[error("encoded '/' or '\\' in the path")]
    EncodedSeparator,
    #[error("backslash in the path")]
    Backslash,
    #[error("NUL or control character in the path")]
    ControlChar,
    #[error("malformed percent-encoding in the path")]
    BadEncoding,
    #[error("double percent-encoding in the path")]
    DoubleEncoding,
    #[error("the path does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("';' path parameters are not accepted")]
    Semicolon,
    #[error("fragment in the request target")]
    Fragment,
    #[error("a path segment ends with '.'")]
    TrailingDot,
    #[error("a path segment starts or ends with a space")]
    SegmentWhitespace,
    #[error(
        "a character that Unicode normalisation turns into '/', '\\', '.', ';', '%' or a letter"
    )]
    Confusable,
}

impl PathError {
    /// Stable short code used in the JSON body (`detail`) and in logs.
    pub fn code(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::EncodedSeparator => "encoded_separator",
            PathError::Backslash => "backslash",
            PathError::ControlChar => "control_character",
            PathError::BadEncoding => "bad_percent_encoding",
            PathError::DoubleEncoding => "double_encoding",
            PathError::InvalidUtf8 => "invalid_utf8",
            PathError::Semicolon => "path_parameter",
            PathError::Fragment => "fragment",
            PathError::TrailingDot => "trailing_dot",
            PathError::SegmentWhitespace => "segment_whitespace",
            PathError::Confusable => "confusable_character",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Reserved characters that are legal raw in a path segment and that upstream frameworks decode
/// anyway (`%3A` → `:`): decoding them makes `/jobs%3Apurge` and `/jobs:purge` one path for
/// routing too. `/`, `\`, `?`, `#`, `;` and `%` are *not* in this set.
fn is_decodable_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

/// Characters that may appear raw in a path besides unreserved ones (RFC 3986 `pchar` and `/`,
/// minus `;`, which is rejected before this is consulted).
fn is_raw_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut Vec<u8>, b: u8) {
    out.push(b'%');
    out.push(HEX[(b >> 4) as usize]);
    out.push(HEX[(b & 15) as usize]);
}

/// Normalise the path part of a request target (no query string). Returns the canonical path.
pub fn normalize_path(raw: &[u8]) -> Result<String, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(raw) {
        // Fast path (the common case): nothing to decode, encode or resolve.
        return Ok(String::from_utf8_lossy(raw).into_owned());
    }
    // `canon` is the canonical (still partly encoded) form; `decoded` is the fully decoded byte
    // string, used only to prove the path is valid UTF-8.
    let mut canon: Vec<u8> = Vec::with_capacity(raw.len());
    let mut decoded: Vec<u8> = Vec::new();
    let mut any_non_ascii = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (h, l) = match (raw.get(i + 1), raw.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadEncoding),
                };
                let v = match (hex_val(h), hex_val(l)) {
                    (Some(h), Some(l)) => (h << 4) | l,
                    _ => return Err(PathError::BadEncoding),
                };
                if v == b'/' || v == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                // `%3B` is refused like a raw `;`: Tomcat and Jetty decode it before stripping
                // path parameters, so `/public/..%3B/admin` would reach `/admin` there.
                if v == b';' {
                    return Err(PathError::Semicolon);
                }
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::ControlChar);
                }
                if v == b'%'
                    && raw.get(i + 3).and_then(|&c| hex_val(c)).is_some()
                    && raw.get(i + 4).and_then(|&c| hex_val(c)).is_some()
                {
                    return Err(PathError::DoubleEncoding);
                }
                if is_unreserved(v) || is_decodable_delim(v) {
                    canon.push(v);
                } else {
                    push_encoded(&mut canon, v);
                }
                if v >= 0x80 {
                    any_non_ascii = true;
                }
                decoded.push(v);
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'#' => return Err(PathError::Fragment),
            0..=0x1f | 0x7f => return Err(PathError::ControlChar),
            0x80..=0xff => {
                any_non_ascii = true;
                push_encoded(&mut canon, b);
            }
            _ if is_raw_path_char(b) => canon.push(b),
            _ => push_encoded(&mut canon, b),
        }
        decoded.push(b);
        i += 1;
    }
    if any_non_ascii {
        let text = std::str::from_utf8(&decoded).map_err(|_| PathError::InvalidUtf8)?;
        if text.chars().any(is_confusable) {
            return Err(PathError::Confusable);
        }
    }
    // Double encoding can also be assembled from escapes: `%25%32%65` decodes to `%252e`.
    // Check the output, not only the raw input.
    if canon
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex_val(w[3]).is_some() && hex_val(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoding);
    }
    let out = remove_dot_segments(&canon);
    check_segments(&out)?;
    Ok(out)
}

/// Segments that some servers read differently from us: Windows/IIS and some Java stacks drop a
/// trailing `.` (`/admin.` → `/admin`), and whitespace trimming (Spring's `trimTokens`,
/// CVE-2016-5007) turns `/admin%20` into `/admin`. We cannot know the upstream, so refuse them.
fn check_segments(path: &str) -> Result<(), PathError> {
    for seg in path.split('/') {
        if seg.ends_with('.') {
            return Err(PathError::TrailingDot);
        }
        if seg.starts_with("%20") || seg.ends_with("%20") {
            return Err(PathError::SegmentWhitespace);
        }
    }
    Ok(())
}

/// Characters that NFKC normalisation or Windows "best fit" code-page mapping turn into path
/// syntax or ASCII letters (`／` → `/`, `．` → `.`, `ａ` → `a`, `∕` → `/`): an upstream that
/// normalises Unicode would see a different path than the one we routed. Legitimate paths do
/// not need them; other non-ASCII text (accents, CJK) is fine.
fn is_confusable(c: char) -> bool {
    matches!(c as u32,
        0xFF01..=0xFF5E      // fullwidth ASCII forms
        | 0xFE50..=0xFE6B    // small form variants (﹒ ﹔ ﹨ ﹪ …)
        | 0x2024..=0x2026    // one/two dot leader, ellipsis
        | 0x2044 | 0x2215 | 0x29F5 | 0x29F8 | 0x29F9 // fraction/division slash, reverse solidus operator, big solidi
        | 0x2100..=0x214F    // letterlike symbols (℀ ℁ K Å …)
        | 0x2160..=0x217F    // roman numerals (Ⅰ → I)
        | 0x1D400..=0x1D7FF  // mathematical alphanumerics (𝐚 → a)
        | 0x00AD             // soft hyphen (ignorable)
        | 0x200B..=0x200F    // zero-width and direction marks
        | 0x2060..=0x2064    // word joiner and invisible operators
        | 0xFEFF             // zero-width no-break space
    )
}

/// True when `raw` is already canonical: only raw path characters, no `%`, no empty segment,
/// no dot-segment.
fn is_canonical(raw: &[u8]) -> bool {
    let mut prev_slash = false;
    let mut seg_start = 0;
    for (i, &b) in raw.iter().enumerate() {
        if b == b'/' {
            if prev_slash && i > 0 {
                return false;
            }
            let seg = &raw[seg_start..i];
            // Dot-segments and segments ending in `.` go the slow way (resolved or refused).
            if seg.last() == Some(&b'.') {
                return false;
            }
            seg_start = i + 1;
            prev_slash = true;
        } else {
            if !is_raw_path_char(b) {
                return false;
            }
            prev_slash = false;
        }
    }
    raw[seg_start..].last() != Some(&b'.')
}

/// Resolve `.`/`..`, collapse empty segments, keep a trailing slash. Input starts with `/` and
/// is ASCII (everything else is percent-encoded by now).
fn remove_dot_segments(path: &[u8]) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in path.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    // A trailing slash survives (`/a/b/`), and a final dot-segment leaves one (`/a/b/..` →
    // `/a/`), as in RFC 3986.
    let last = path.rsplit(|&c| c == b'/').next().unwrap_or_default();
    let trailing_slash = last.is_empty() || last == b"." || last == b"..";
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        // ASCII by construction: everything else was percent-encoded.
        out.push_str(std::str::from_utf8(s).unwrap_or_default());
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

/// Why a `Host` (or URI authority) was refused. Maps to 400 `invalid_host`.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    #[error("missing Host header")]
    Missing,
    #[error("more than one Host header")]
    Duplicate,
    #[error("malformed host")]
    Malformed,
    #[error("the absolute-form request target names a different host than the Host header")]
    Conflict,
}

impl HostError {
    pub fn code(self) -> &'static str {
        match self {
            HostError::Missing => "missing_host",
            HostError::Duplicate => "duplicate_host",
            HostError::Malformed => "malformed_host",
            HostError::Conflict => "conflicting_host",
        }
    }
}

/// Lower-case a host, drop the port and one trailing dot, and check its characters.
pub fn normalize_host(raw: &[u8]) -> Result<String, HostError> {
    if raw.is_empty() || raw.len() > 255 {
        return Err(HostError::Malformed);
    }
    let (name, port): (&[u8], Option<&[u8]>) = if raw[0] == b'[' {
        // IPv6 literal
        let end = raw
            .iter()
            .position(|&c| c == b']')
            .ok_or(HostError::Malformed)?;
        let inner = &raw[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|c| c.is_ascii_hexdigit() || *c == b':' || *c == b'.')
        {
            return Err(HostError::Malformed);
        }
        let rest = &raw[end + 1..];
        match rest {
            [] => (&raw[..=end], None),
            [b':', p @ ..] => (&raw[..=end], Some(p)),
            _ => return Err(HostError::Malformed),
        }
    } else {
        match raw.iter().rposition(|&c| c == b':') {
            Some(p) => (&raw[..p], Some(&raw[p + 1..])),
            None => (raw, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
            return Err(HostError::Malformed);
        }
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Malformed);
    }
    if name[0] != b'['
        && !name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.' || *c == b'_')
    {
        return Err(HostError::Malformed);
    }
    if name.starts_with(b".") || name.windows(2).any(|w| w == b"..") {
        return Err(HostError::Malformed);
    }
    // Validated ASCII above (or a bracketed IPv6 literal of hex digits, ':' and '.').
    let mut out = String::with_capacity(name.len());
    out.extend(name.iter().map(|b| b.to_ascii_lowercase() as char));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p.as_bytes())
    }

    #[test]
    fn canonical_paths_are_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "/v1/orders/47",
            "/a:b@c!$&'()*+,=",
            "/%E2%82%AC",
            "/caf%C3%A9/%E6%97%A5%E6%9C%AC",
            "/a/..b/c.d/v1.2",
        ] {
            assert_eq!(n(p).unwrap(), p, "{p}");
        }
    }

    #[test]
    fn normalises() {
        let cases = [
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/a%3ab", "/a:b"),
            ("/jobs%3Apurge%40x%2B%21", "/jobs:purge@x+!"),
            ("/a%3f%23", "/a%3F%23"),
            ("/a b", "/a%20b"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/a/..b/c", "/a/..b/c"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_ambiguity() {
        let cases = [
            ("a/b", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a%00b", PathError::ControlChar),
            ("/a%09b", PathError::ControlChar),
            ("/a%0ab", PathError::ControlChar),
            ("/a\x01b", PathError::ControlChar),
            ("/a%zz", PathError::BadEncoding),
            ("/a%4", PathError::BadEncoding),
            ("/a%", PathError::BadEncoding),
            ("/a%252e", PathError::DoubleEncoding),
            ("/a%252F", PathError::DoubleEncoding),
            ("/a%25%32%65", PathError::DoubleEncoding),
            ("/a%252%65", PathError::DoubleEncoding),
            ("/x%25%32%66..%25%32%66admin", PathError::DoubleEncoding),
            ("/public/..;/admin", PathError::Semicolon),
            ("/a;jsessionid=1", PathError::Semicolon),
            ("/a%3b", PathError::Semicolon),
            ("/public/..%3B/admin", PathError::Semicolon),
            ("/a%C0%AE", PathError::InvalidUtf8),
            ("/a%ff", PathError::InvalidUtf8),
            ("/a#b", PathError::Fragment),
            ("/admin.", PathError::TrailingDot),
            ("/admin./x", PathError::TrailingDot),
            ("/admin%2e", PathError::TrailingDot),
            ("/a/.../b", PathError::TrailingDot),
            ("/admin%20", PathError::SegmentWhitespace),
            ("/%20admin/x", PathError::SegmentWhitespace),
            ("/admin%20/x", PathError::SegmentWhitespace),
            ("/%EF%BC%8Fadmin", PathError::Confusable),
            ("/%EF%BD%81dmin", PathError::Confusable),
            ("/a%E2%80%8Bb", PathError::Confusable),
            ("/a\u{ff0e}\u{ff0e}/b", PathError::Confusable),
            ("/a%E2%88%95b", PathError::Confusable),
        ];
        for (input, want) in cases {
            assert_eq!(n(input), Err(want), "{input}");
        }
    }

    /// Random paths over a hostile alphabet: normalisation is idempotent, its output is always
    /// canonical, and the fast path agrees with the full algorithm.
    #[test]
    fn idempotent_and_fast_path_agrees() {
        let alphabet: [&str; 14] = [
            "/", "a", "b", ".", "..", "%2e", "%41", "%7E", "~", "-", "%20", "%C3%A9", ":", "@",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut p = String::from("/");
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 59) as usize + 1;
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                p.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let once = match n(&p) {
                Ok(o) => o,
                Err(e) => {
                    assert!(
                        matches!(e, PathError::TrailingDot | PathError::SegmentWhitespace),
                        "{p}: {e:?}"
                    );
                    continue;
                }
            };
            assert_eq!(n(&once).unwrap(), once, "not idempotent: {p}");
            assert!(
                is_canonical(once.as_bytes()) || once.contains('%'),
                "{p} -> {once}"
            );
            if is_canonical(p.as_bytes()) {
                assert_eq!(
                    remove_dot_segments(p.as_bytes()),
                    p,
                    "fast path disagrees: {p}"
                );
            }
        }
    }

    #[test]
    fn lone_percent_25_is_kept_encoded() {
        assert_eq!(n("/100%25").unwrap(), "/100%25");
        assert_eq!(n("/100%25x").unwrap(), "/100%25x");
    }

    #[test]
    fn hosts() {
        assert_eq!(
            normalize_host(b"API.Example.com:8080").unwrap(),
            "api.example.com"
        );
        assert_eq!(normalize_host(b"example.com.").unwrap(), "example.com");
        assert_eq!(normalize_host(b"[::1]:80").unwrap(), "[::1]");
        assert_eq!(normalize_host(b"127.0.0.1").unwrap(), "127.0.0.1");
        for bad in [
            &b""[..],
            b":80",
            b"a b",
            b"a..b",
            b"[::1",
            b"host:port",
            b"h:123456",
            b"a/b",
        ] {
            assert!(
                normalize_host(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
