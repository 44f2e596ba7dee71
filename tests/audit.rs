//! The audit trail through the real gateway: exactly one record per request for every outcome
//! (concurrent, mixed), contiguous sequence numbers, `portcullis audit verify` on clean and
//! tampered files (edited byte, deleted line, swapped lines, wrong HMAC key), no secrets in
//! records, SIGTERM under load, an unwritable sink in drop and reject mode, and SIGUSR1 reopen.

mod common;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "pk_test_audit_secret_key_0123456789";
const HMAC: &str = "audit-hmac-key-0123456789abcdef0123456789";

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn requests(path: &Path) -> Vec<Value> {
    records(path)
        .into_iter()
        .filter(|r| r["type"] == "request")
        .collect()
}

fn wait_requests(path: &Path, n: usize) -> Vec<Value> {
    let ok = eventually(Duration::from_secs(10), || requests(path).len() >= n);
    let got = requests(path);
    assert!(ok, "{} of {n} records", got.len());
    got
}

fn verify(files: &[&Path], key_file: Option<&Path>) -> (i32, String) {
    let mut args: Vec<String> = vec!["audit".into(), "verify".into()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    if let Some(k) = key_file {
        args.push("--hmac-key-file".into());
        args.push(k.to_string_lossy().into_owned());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli(&refs);
    (code, out + &err)
}

struct Setup {
    gw: Gateway,
    _e: Echo,
    dir: tempfile::TempDir,
    file: PathBuf,
    key: PathBuf,
}

fn setup(audit_extra: &str) -> Setup {
    let e = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, HMAC).unwrap();
    let body = format!(
        r#"audit:
  file: "{file}"
  chain: true
  hmac_key: {{ file: "{key}" }}
  capture_headers: [x-tenant]
  token_fingerprint: true
{audit_extra}
authenticators:
  keys:
    api_key:
      header: x-api-key
      query: api_key
      keys:
        - {{ id: k1, sha256: "{sha}", consumer: acme }}
policies:
  admins: {{ scopes_all: [admin] }}
rate_limits:
  once: {{ key: route, rate: 1/h }}
upstreams:
  e: {{ targets: ["{addr}"] }}
  down: {{ targets: ["127.0.0.1:1"] }}
routes:
  - {{ id: ok, match: {{ path_prefix: /ok }}, upstream: e, public: true }}
  - {{ id: keyed, match: {{ path_prefix: /k }}, upstream: e, authn: [keys] }}
  - {{ id: admin, match: {{ path_prefix: /admin }}, upstream: e, authn: [keys], policy: admins }}
  - {{ id: limited, match: {{ path_prefix: /rl }}, upstream: e, public: true, rate_limits: [once] }}
  - {{ id: down, match: {{ path_prefix: /down }}, upstream: down, public: true }}
"#,
        file = file.display(),
        key = key.display(),
        sha = sha(KEY),
        addr = e.addr,
    );
    let gw = Gateway::start("", &body);
    Setup {
        gw,
        _e: e,
        dir,
        file,
        key,
    }
}

/// Raw GET with extra header lines; returns (status, x-request-id).
fn hit(gw: &Gateway, path: &str, headers: &str) -> (u16, String) {
    let raw =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    let r = request(gw.addr, raw.as_bytes());
    (r.status, r.header("x-request-id").unwrap_or("").to_string())
}

#[test]
fn every_request_gets_exactly_one_record_and_the_chain_verifies() {
    let s = setup("");
    let case = |p: &str, h: &str, status: u16, reason: &'static str| {
        (p.to_string(), h.to_string(), status, reason)
    };
    let cases = vec![
        case("/ok/a?token=hunter2", "X-Tenant: t-1\r\nAuthorization: Bearer sekrit-bearer-value\r\nCookie: session=cookie-secret\r\n", 200, "ok"),
        case("/k/x", &format!("x-api-key: {KEY}\r\n"), 200, "ok"),
        case(&format!("/k/q?api_key={KEY}&b=2"), "", 200, "ok"),
        case("/k/x", "x-api-key: wrong-key\r\n", 401, "invalid_api_key"),
        case("/admin", &format!("x-api-key: {KEY}\r\n"), 403, "insufficient_scope"),
        case("/nowhere", "", 404, "no_route"),
        case("/down", "", 502, "upstream_connect_failed"),
        case("/ok/%2f", "", 400, "invalid_path"),
    ];
    // 8 clients × 3 rounds of every case, plus the rate-limited route (1 allowed, rest 429).
    let addr_cases = std::sync::Arc::new(cases);
    let gw = &s.gw;
    let mut sent: Vec<(u16, String, &str)> = Vec::new();
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let cases = addr_cases.clone();
                sc.spawn(move || {
                    let mut out = Vec::new();
                    for _ in 0..3 {
                        for (path, headers, want, reason) in cases.iter() {
                            let (status, id) = hit(gw, path, headers);
                            assert_eq!(status, *want, "{path}");
                            out.push((status, id, *reason));
                        }
                        let (status, id) = hit(gw, "/rl", "");
                        out.push((
                            status,
                            id,
                            if status == 200 { "ok" } else { "rate_limited" },
                        ));
                    }
                    out
                })
            })
            .collect();
        for h in handles {
            sent.extend(h.join().unwrap());
        }
    });
    let n = sent.len();
    assert_eq!(n, 8 * 3 * 9);
    let got = wait_requests(&s.file, n);
    assert_eq!(got.len(), n, "exactly one record per request");
    let all = records(&s.file);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["seq"], (i + 1) as u64, "contiguous sequence numbers");
    }
    assert_eq!(all[0]["type"], "chain_start");
    let by_id: HashMap<&str, &Value> = got
        .iter()
        .map(|r| (r["request_id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_id.len(), n, "request ids are unique");
    for (status, id, reason) in &sent {
        let r = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(r["status"], *status as u64);
        assert_eq!(r["reason"], *reason, "{r}");
        let want = if *status < 400 || *status == 502 {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(r["decision"], want, "{r}");
    }
    let limited = got.iter().filter(|r| r["reason"] == "rate_limited").count();
    assert_eq!(limited, 8 * 3 - 1);
    let one = got.iter().find(|r| r["reason"] == "rate_limited").unwrap();
    assert_eq!(one["rate_limit"]["policy"], "once");
    let keyed = got
        .iter()
        .find(|r| r["route"] == "keyed" && r["status"] == 200)
        .unwrap();
    assert_eq!(keyed["principal"]["key_id"], "k1");
    assert_eq!(keyed["principal"]["consumer"], "acme");
    assert!(keyed["duration_us"].as_u64().is_some() && keyed["upstream_us"].as_u64().is_some());
    let bad_path = got.iter().find(|r| r["reason"] == "invalid_path").unwrap();
    assert_eq!(
        bad_path["raw_path"], "/ok/%2f",
        "refused before normalisation: raw target kept"
    );
    let tenant = got
        .iter()
        .find(|r| r["headers"]["x-tenant"] == "t-1")
        .unwrap();
    assert_eq!(tenant["path"], "/ok/a");
    assert!(tenant.get("query").is_none());

    // No secret in any record.
    let text = std::fs::read_to_string(&s.file).unwrap();
    for secret in [
        KEY,
        "wrong-key",
        "sekrit-bearer-value",
        "cookie-secret",
        "hunter2",
        HMAC,
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the audit file"
        );
    }

    let (code, out) = verify(&[&s.file], Some(&s.key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{} requests", n)), "{out}");
    // Without the HMAC key (or with another) the chain does not verify.
    let (code, out) = verify(&[&s.file], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":1: hash does not match"), "{out}");
    let m = s.gw.metrics();
    assert_eq!(
        metric_value(&m, "portcullis_audit_records_total"),
        (n + 1) as f64
    );
    assert_eq!(
        metric_value(&m, "portcullis_audit_dropped_total{cause=\"queue_full\"}"),
        0.0
    );
}

#[test]
fn a_client_that_goes_away_still_gets_a_record() {
    use std::io::Write;
    let s = setup("");
    let mut c = std::net::TcpStream::connect(s.gw.addr).unwrap();
    c.write_all(b"GET /ok/abandoned HTTP/1.1\r\nHost: a\r\nx-echo-delay-ms: 1500\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    let got = wait_requests(&s.file, 1);
    assert_eq!(got[0]["path"], "/ok/abandoned");
    assert_eq!(got[0]["reason"], "client_abort", "{}", got[0]);
    assert_eq!(got[0]["status"], 0);
}

#[test]
fn tampering_is_detected_at_the_right_line() {
    let s = setup("");
    for i in 0..6 {
        hit(&s.gw, &format!("/ok/{i}"), "");
    }
    wait_requests(&s.file, 6);
    let text = std::fs::read_to_string(&s.file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, ls: &[String]| {
        let p = s.dir.path().join(name);
        std::fs::write(&p, ls.join("\n") + "\n").unwrap();
        p
    };
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    assert_eq!(verify(&[&s.file], Some(&s.key)).0, 0);

    // Records follow `logging`, which Pingora runs after the answer: two worker threads may
    // log back-to-back requests in either order, so find the line rather than assume it.
    let mut edited = owned.clone();
    let at = edited.iter().position(|l| l.contains("/ok/2")).unwrap();
    edited[at] = edited[at].replacen("/ok/2", "/ok/9", 1);
    let (code, out) = verify(&[&write("edited", &edited)], Some(&s.key));
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("edited:{}: hash does not match", at + 1)),
        "{out}"
    );

    let mut deleted = owned.clone();
    deleted.remove(4);
    let (code, out) = verify(&[&write("deleted", &deleted)], Some(&s.key));
    assert_eq!(code, 1);
    assert!(out.contains("deleted:5: sequence 6"), "{out}");

    let mut swapped = owned.clone();
    swapped.swap(2, 3);
    let (code, out) = verify(&[&write("swapped", &swapped)], Some(&s.key));
    assert_eq!(code, 1);
    assert!(out.contains("swapped:3: sequence 4"), "{out}");

    // Records forged by someone without the key: an unchained line, or a chain of its own
    // under a new instance id.
    let mut forged = owned.clone();
    forged.insert(3, r#"{"v":1,"seq":1,"instance":"bbbbbbbbbbbbbbbb","type":"request","path":"/admin/transfer","decision":"allow"}"#.into());
    let (code, out) = verify(&[&write("forged", &forged)], Some(&s.key));
    assert_eq!(code, 1);
    assert!(out.contains("forged:4: record without hash chain"), "{out}");
    let mut anchored = owned.clone();
    let fake = format!("{{\"v\":1,\"seq\":1,\"instance\":\"cccccccccccccccc\",\"type\":\"chain_start\",\"reason\":\"start\",\"chain\":\"hmac-sha256\",\"prev\":\"{}\",\"hash\":\"{}\"}}", "0".repeat(64), "1".repeat(64));
    anchored.insert(2, fake);
    let (code, out) = verify(&[&write("anchored", &anchored)], Some(&s.key));
    assert_eq!(code, 1);
    assert!(out.contains("anchored:3: hash does not match"), "{out}");

    let other = s.dir.path().join("other.key");
    std::fs::write(&other, "another-key-0123456789abcdef0123456789").unwrap();
    let (code, out) = verify(&[&s.file], Some(&other));
    assert_eq!(code, 1);
    assert!(out.contains(":1: hash does not match"), "{out}");
}

#[test]
fn sigterm_during_load_leaves_a_record_for_every_answered_request() {
    let mut s = setup("");
    let addr = s.gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answered = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let delay = if t % 2 == 0 { "300" } else { "0" };
                    let raw = format!("GET /ok/{t} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nx-echo-delay-ms: {delay}\r\n\r\n");
                    match try_request(addr, raw.as_bytes()) {
                        Ok(r) if r.status > 0 => {
                            answered.push(r.header("x-request-id").unwrap_or("").to_string())
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    s.gw.proc.signal("TERM");
    let exited = eventually(Duration::from_secs(15), || {
        matches!(s.gw.proc.child.try_wait(), Ok(Some(_)))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(exited, "gateway did not exit:\n{}", s.gw.proc.log_text());
    assert!(answered.len() > 20, "only {} answered", answered.len());
    let got = requests(&s.file);
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    for id in &answered {
        assert!(
            ids.contains(id.as_str()),
            "answered request {id} has no record"
        );
    }
    assert_eq!(verify(&[&s.file], Some(&s.key)).0, 0);
}

/// Requests still in flight when the grace period ends (5-second requests, 1 s grace, SIGINT
/// draining like SIGTERM) are cancelled, and each still gets a record.
#[test]
fn requests_cancelled_by_a_fast_shutdown_are_recorded() {
    let mut s = setup("");
    let addr = s.gw.addr;
    let slow: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let raw = format!("GET /ok/slow{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nx-echo-delay-ms: 5000\r\n\r\n");
                let _ = try_request(addr, raw.as_bytes());
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    s.gw.proc.signal("INT");
    assert!(eventually(Duration::from_secs(10), || matches!(
        s.gw.proc.child.try_wait(),
        Ok(Some(_))
    )));
    for t in slow {
        t.join().unwrap();
    }
    let got = requests(&s.file);
    let cancelled: Vec<&Value> = got.iter().filter(|r| r["reason"] == "cancelled").collect();
    assert_eq!(cancelled.len(), 4, "{got:?}");
    assert!(cancelled
        .iter()
        .all(|r| r["path"].as_str().unwrap().starts_with("/ok/slow")));
    assert_eq!(verify(&[&s.file], Some(&s.key)).0, 0);
}

#[cfg(unix)]
#[test]
fn an_unwritable_sink_drops_with_a_gap_record_or_rejects() {
    // Drop mode: /dev/full answers every write with ENOSPC.
    let s = setup("");
    hit(&s.gw, "/ok/warm", "");
    wait_requests(&s.file, 1);
    std::fs::remove_file(&s.file).unwrap();
    std::os::unix::fs::symlink("/dev/full", &s.file).unwrap();
    s.gw.proc.signal("USR1");
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        assert_eq!(
            hit(&s.gw, &format!("/ok/{i}"), "").0,
            200,
            "drop mode keeps serving"
        );
    }
    assert!(eventually(Duration::from_secs(5), || s.gw.metric(
        "portcullis_audit_dropped_total{cause=\"write_failed\"}"
    ) >= 5.0));
    assert!(s.gw.metric("portcullis_audit_write_errors_total") >= 1.0);
    // The disk "recovers": a regular file again. The writer retries and reports the loss.
    std::fs::remove_file(&s.file).unwrap();
    hit(&s.gw, "/ok/after", "");
    let got = wait_requests(&s.file, 1);
    assert_eq!(got[0]["path"], "/ok/after");
    let all = records(&s.file);
    let gap = all
        .iter()
        .find(|r| r["type"] == "gap")
        .expect("a gap record");
    let dropped =
        s.gw.metric("portcullis_audit_dropped_total{cause=\"write_failed\"}");
    assert_eq!(gap["dropped"].as_u64().unwrap() as f64, dropped);
    let (code, out) = verify(&[&s.file], Some(&s.key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("reporting {dropped} lost")), "{out}");

    // Reject mode: while records cannot be written, new requests get 503.
    let r = setup("  on_overflow: reject");
    hit(&r.gw, "/ok/warm", "");
    wait_requests(&r.file, 1);
    std::fs::remove_file(&r.file).unwrap();
    std::os::unix::fs::symlink("/dev/full", &r.file).unwrap();
    r.gw.proc.signal("USR1");
    assert!(
        eventually(Duration::from_secs(5), || hit(&r.gw, "/ok/x", "").0 == 503),
        "reject mode did not fail closed"
    );
    let raw = b"GET /ok/y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let resp = request(r.gw.addr, raw);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"], "audit_unavailable");
    std::fs::remove_file(&r.file).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || hit(&r.gw, "/ok/z", "").0 == 200),
        "reject mode did not recover"
    );
}

#[test]
fn sigusr1_reopens_the_file_and_rotated_files_verify() {
    let s = setup("  stdout: true");
    for i in 0..3 {
        hit(&s.gw, &format!("/ok/{i}"), "");
    }
    wait_requests(&s.file, 3);
    let rotated = s.dir.path().join("audit.jsonl.1");
    std::fs::rename(&s.file, &rotated).unwrap();
    s.gw.proc.signal("USR1");
    std::thread::sleep(Duration::from_millis(300));
    for i in 3..6 {
        hit(&s.gw, &format!("/ok/{i}"), "");
    }
    let fresh = wait_requests(&s.file, 3);
    assert_eq!(fresh.len(), 3);
    let first = &records(&s.file)[0];
    assert_eq!(first["type"], "chain_start");
    assert_eq!(first["reason"], "reopen");
    assert_eq!(verify(&[&rotated], Some(&s.key)).0, 0);
    assert_eq!(
        verify(&[&s.file], Some(&s.key)).0,
        0,
        "a rotated file verifies alone"
    );
    let (code, out) = verify(&[&rotated, &s.file], Some(&s.key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 requests"), "{out}");
    // The same records went to stdout (the gateway's log here).
    assert!(s.gw.proc.log_text().contains("\"path\":\"/ok/4\""));
}

#[test]
fn bad_audit_config_is_refused_with_its_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "audit:\n  stdout: false\n",
            "audit: set file, stdout: true, or both",
        ),
        (
            "audit:\n  stdout: true\n  capture_headers: [Authorization]\n",
            "audit.capture_headers[0]: \"Authorization\" carries credentials",
        ),
        (
            "audit:\n  stdout: true\n  hmac_key: { env: NOPE_NOT_SET }\n",
            "audit.hmac_key: only used with chain: true",
        ),
        (
            "audit:\n  file: /nonexistent-dir/a.jsonl\n",
            "audit.file: directory of /nonexistent-dir/a.jsonl does not exist",
        ),
        (
            "audit:\n  stdout: true\n  on_overflow: block\n",
            "audit.on_overflow: unknown variant `block`",
        ),
        (
            "audit:\n  stdout: true\n  capture_headers: [X-Access-Token]\n",
            "audit.capture_headers[0]: \"X-Access-Token\" carries credentials",
        ),
    ];
    for (i, (section, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(
            &path,
            format!("server:\n  listen: [{{ addr: \"127.0.0.1:1\" }}]\n{section}upstreams:\n  e: {{ targets: [\"127.0.0.1:2\"] }}\nroutes:\n  - {{ id: r, match: {{ path_prefix: / }}, upstream: e, public: true }}\n"),
        )
        .unwrap();
        let (code, out, err) = run_cli(&["check", "-c", &path.to_string_lossy()]);
        assert_ne!(code, 0, "case {i} accepted");
        assert!(
            (out.clone() + &err).contains(want),
            "case {i}: want {want:?} in\n{out}{err}"
        );
    }
}
