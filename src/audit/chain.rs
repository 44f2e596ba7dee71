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

use pingora::tls::hash::{Hasher, MessageDigest};
use std::collections::HashMap;

pub const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_FIELD: &str = ",\"hash\":\"";

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let Ok(mut h) = Hasher::new(MessageDigest::sha256()) else {
        return out;
    };
    for p in parts {
        if h.update(p).is_err() {
            return out;
        }
    }
    if let Ok(d) = h.finish() {
        out.copy_from_slice(&d);
    }
    out
}

/// HMAC-SHA256 (RFC 2104) over `data`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(&[key]));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = sha256(&[&ipad, data]);
    sha256(&[&opad, &inner])
}

pub fn hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

/// Hash of the bytes a line's `hash` covers.
pub fn digest(key: Option<&[u8]>, covered: &[u8]) -> String {
    hex(&match key {
        Some(k) => hmac_sha256(k, covered),
        None => sha256(&[covered]),
    })
}

/// Outcome of verifying one or more files.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub requests: u64,
    pub chain_starts: u64,
    pub gap_records: u64,
    pub lost: u64,
    pub instances: usize,
    /// (file, line number, problem) of the first failure.
    pub failure: Option<(String, usize, String)>,
}

#[derive(Default)]
struct Instance {
    seq: u64,
    hash: Option<String>,
}

/// Check `lines` from `file` (a file, or the next in a concatenated sequence).
pub fn verify_lines<'a>(
    file: &str,
    lines: impl Iterator<Item = &'a str>,
    key: Option<&[u8]>,
    state: &mut HashMap<String, (u64, Option<String>)>,
    report: &mut Report,
) {
    for (i, line) in lines.enumerate() {
        if report.failure.is_some() {
            return;
        }
        let n = i + 1;
        if let Err(problem) = verify_line(line, key, state, report) {
            report.failure = Some((file.to_string(), n, problem));
        }
        report.instances = state.len();
    }
    report.instances = state.len();
}

fn verify_line(
    line: &str,
    key: Option<&[u8]>,
    state: &mut HashMap<String, (u64, Option<String>)>,
    report: &mut Report,
) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON record: {e}"))?;
    if v["v"] != 1 {
        return Err("unknown record version".into());
    }
    let instance = v["instance"].as_str().ok_or("record without instance")?;
    let seq = v["seq"].as_u64().ok_or("record without seq")?;
    let kind = v["type"].as_str().ok_or("record without type")?;
    let entry = state.entry(instance.to_string()).or_default();
    let mut inst = Instance {
        seq: entry.0,
        hash: entry.1.clone(),
    };
    let expected = inst.seq + 1;
    let starts = kind == "chain_start";
    if !(starts && inst.seq == 0) && seq != expected {
        return Err(format!(
            "sequence {seq} of instance {instance}, expected {expected} (a record is missing, duplicated or out of order)"
        ));
    }
    if let Some(hash) = v.get("hash") {
        let hash = hash.as_str().ok_or("hash is not a string")?;
        let at = line.rfind(HASH_FIELD).ok_or("no hash field at the end")?;
        if !line.ends_with("\"}") || at + HASH_FIELD.len() + 64 + 2 != line.len() {
            return Err("hash field is not the last field".into());
        }
        let prev = v["prev"].as_str().ok_or("chained record without prev")?;
        match (&inst.hash, starts) {
            (Some(h), _) if h != prev => {
                return Err(format!(
                    "prev {prev:.16}… does not match the hash of the previous record of instance {instance}"
                ))
            }
            (None, true) if seq == 1 && prev != ZERO => {
                return Err("chain_start of a new process must have prev 0".into())
            }
            (None, false) => {
                return Err(format!(
                    "record of instance {instance} before its chain_start"
                ))
            }
            _ => {}
        }
        if digest(key, &line.as_bytes()[..at]) != hash {
            return Err(if key.is_some() {
                "hash does not match the record (edited, or a different HMAC key)".into()
            } else {
                "hash does not match the record (edited)".into()
            });
        }
        inst.hash = Some(hash.to_string());
    } else if inst.hash.is_some() {
        return Err("unchained record inside a chain".into());
    }
    inst.seq = seq;
    *entry = (inst.seq, inst.hash);
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
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
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
