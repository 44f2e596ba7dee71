//! Tamper evidence for the audit file, and `portcullis audit verify`.
//!
//! With `chain: true` every line ends in `,"prev":"<hex>","hash":"<hex>"}`, where `hash` is
//! SHA-256 — or HMAC-SHA256 with `hmac_key` — over the exact bytes of the line up to (not
//! including) `,"hash":`, and `prev` is the `hash` of the previous record of the same process
//! (`instance`). Each process starts its chain with a `chain_start` record whose `prev` is 64
//! zeros; a reopen after log rotation writes a `chain_start` that links to the last hash, so
//! rotated files verify one by one or concatenated. Editing a byte breaks that line's hash,
//! deleting or reordering lines breaks `prev` and the per-instance sequence. Without the HMAC
//! key, someone who can write the file could recompute the SHA-256 chain; with it, they cannot.

use crate::auth::api_key::{hex, sha256};
use std::collections::HashMap;

pub const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_FIELD: &str = ",\"hash\":\"";

/// Written (and compared) when the hash cannot be computed: never equal to a real 64-hex hash, so
/// such a record fails verification instead of passing with a constant.
const NO_HASH: &str = "hash-unavailable";

/// HMAC-SHA256 (RFC 2104) over `data` (aws-lc; no copy of `data`).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Option<[u8; 32]> {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    aws_lc_rs::hmac::sign(&k, data).as_ref().try_into().ok()
}

/// Hash of the bytes a line's `hash` covers.
pub fn digest(key: Option<&[u8]>, covered: &[u8]) -> String {
    let d = match key {
        Some(k) => hmac_sha256(k, covered),
        None => sha256(covered),
    };
    d.map_or_else(|| NO_HASH.to_string(), |d| hex(&d))
}

/// Outcome of verifying one or more files.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub requests: u64,
    pub chain_starts: u64,
    pub gap_records: u64,
    pub lost: u64,
    /// Lines cut short by a failed write, each followed by the writer's gap record.
    pub torn_lines: u64,
    pub instances: usize,
    /// (file, line number, problem) of the first failure.
    pub failure: Option<(String, usize, String)>,
}

/// What `verify` carries from one line (and file) to the next.
pub struct VerifyState {
    /// Instance id → (last seq, last hash).
    instances: HashMap<String, (u64, Option<String>)>,
    /// Whether the stream is hash-chained: decided by the first record, or required by a key.
    chained: Option<bool>,
    key: Option<Vec<u8>>,
    /// Every instance must start at its process start (`seq` 1): nothing cut off the front.
    strict: bool,
    /// A line that is not a record, accepted only if the writer's next record says so
    /// (a `gap` with `torn: true`, written after a write that stopped mid-line).
    torn: Option<(String, usize, String)>,
}

impl VerifyState {
    pub fn new(key: Option<Vec<u8>>, strict: bool) -> VerifyState {
        VerifyState {
            instances: HashMap::new(),
            chained: key.as_ref().map(|_| true),
            key,
            strict,
            torn: None,
        }
    }

    /// After the last file: a torn line nobody accounted for is a failure.
    pub fn finish(&mut self, report: &mut Report) {
        if report.failure.is_none() {
            report.failure = self.torn.take();
        }
    }

    pub fn chained(&self) -> bool {
        self.chained == Some(true)
    }
}

/// Check `lines` from `file` (a file, or the next in a concatenated sequence).
pub fn verify_lines<'a>(
    file: &str,
    lines: impl Iterator<Item = &'a str>,
    state: &mut VerifyState,
    report: &mut Report,
) {
    for (i, line) in lines.enumerate() {
        if report.failure.is_some() {
            return;
        }
        let torn_before = state.torn.is_some();
        match verify_line(line, state, report) {
            Err(problem) if problem.starts_with("not a JSON record") && !torn_before => {
                state.torn = Some((file.to_string(), i + 1, problem));
            }
            Err(problem) => report.failure = Some((file.to_string(), i + 1, problem)),
            Ok(torn_gap) if torn_before => {
                if torn_gap {
                    state.torn = None;
                    report.torn_lines += 1;
                } else {
                    report.failure = state.torn.take();
                }
            }
            Ok(_) => {}
        }
        report.instances = state.instances.len();
    }
}

/// Ok(true) for a `gap` record that accounts for a torn line before it.
fn verify_line(line: &str, state: &mut VerifyState, report: &mut Report) -> Result<bool, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON record: {e}"))?;
    if v["v"] != 1 {
        return Err("unknown record version".into());
    }
    let instance = v["instance"].as_str().ok_or("record without instance")?;
    let seq = v["seq"].as_u64().ok_or("record without seq")?;
    let kind = v["type"].as_str().ok_or("record without type")?;
    let has_hash = v.get("hash").is_some();
    let chained = *state.chained.get_or_insert(has_hash);
    if chained != has_hash {
        return Err(if chained {
            "record without hash chain in a chained file (inserted?)".into()
        } else {
            "chained record in a file that started unchained".into()
        });
    }
    let starts = kind == "chain_start";
    let known = state.instances.get(instance).cloned();
    match &known {
        None if chained && !starts => {
            return Err(format!(
                "first record of instance {instance} is not a chain_start (inserted, or the file was cut)"
            ))
        }
        None if state.strict && !(starts && seq == 1) => {
            return Err(format!(
                "instance {instance} does not start at its process start (--strict)"
            ))
        }
        None if chained && state.key.is_some() && v["chain"] != "hmac-sha256" => {
            return Err("chain_start does not announce hmac-sha256, but a key was given".into())
        }
        Some((last, _)) if seq != last + 1 => {
            return Err(format!(
                "sequence {seq} of instance {instance}, expected {} (a record is missing, duplicated or out of order)",
                last + 1
            ))
        }
        _ => {}
    }
    let mut hash_out = None;
    if chained {
        let hash = v["hash"].as_str().ok_or("hash is not a string")?;
        let at = line.rfind(HASH_FIELD).ok_or("no hash field at the end")?;
        if !line.ends_with("\"}") || at + HASH_FIELD.len() + 64 + 2 != line.len() {
            return Err("hash field is not the last field".into());
        }
        let prev = v["prev"].as_str().ok_or("chained record without prev")?;
        match &known {
            Some((_, Some(h))) if h != prev => {
                return Err(format!(
                    "prev {prev:.16}… does not match the hash of the previous record of instance {instance}"
                ))
            }
            None if seq == 1 && prev != ZERO => {
                return Err("chain_start of a new process must have prev 0".into())
            }
            _ => {}
        }
        if digest(state.key.as_deref(), &line.as_bytes()[..at]) != hash {
            return Err(if state.key.is_some() {
                "hash does not match the record (edited, or a different HMAC key)".into()
            } else {
                "hash does not match the record (edited)".into()
            });
        }
        hash_out = Some(hash.to_string());
    }
    state
        .instances
        .insert(instance.to_string(), (seq, hash_out));
    report.records += 1;
    match kind {
        "request" => report.requests += 1,
        "chain_start" => report.chain_starts += 1,
        "gap" => {
            report.gap_records += 1;
            report.lost += v["dropped"].as_u64().unwrap_or(0);
        }
        other => return Err(format!("unknown record type {other:?}")),
    }
    Ok(kind == "gap" && v["torn"] == true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> Report {
        let mut state = VerifyState::new(None, false);
        let mut report = Report::default();
        verify_lines("f", lines.iter().copied(), &mut state, &mut report);
        state.finish(&mut report);
        report
    }

    #[test]
    fn a_torn_line_passes_only_when_the_writer_reported_it() {
        let start = r#"{"v":1,"seq":1,"instance":"a","type":"chain_start","reason":"start"}"#;
        let torn = r#"{"v":1,"seq":2,"instance":"a","type":"req"#;
        let gap = r#"{"v":1,"seq":2,"instance":"a","type":"gap","dropped":1,"torn":true}"#;
        let plain_gap = r#"{"v":1,"seq":2,"instance":"a","type":"gap","dropped":1}"#;
        let r = run(&[start, torn, gap]);
        assert!(r.failure.is_none(), "{:?}", r.failure);
        assert_eq!(r.torn_lines, 1);
        let r = run(&[start, torn, plain_gap]);
        assert_eq!(r.failure.unwrap().1, 2);
        let r = run(&[start, torn]);
        assert_eq!(r.failure.unwrap().1, 2, "a torn last line fails");
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn long_keys_are_hashed_first() {
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        )
        .unwrap();
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
