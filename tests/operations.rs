//! Operations, black-box against the real binary: the admin `/config`, reload metrics,
//! `portcullis reload`, `server.watch_config`, state kept across reloads (verified-token cache,
//! upstream health), and the proofs under load: a reload every 500 ms for 20 s alternating two
//! versions (one adds a route and rotates an API key) with invalid configs written mid-load,
//! and a binary upgrade with 2-second requests in flight and exactly one audit record per
//! request across both processes.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn config_status(gw: &Gateway) -> serde_json::Value {
    get(gw.admin, "/config").json()
}

fn attempts(gw: &Gateway) -> u64 {
    config_status(gw)["reloads"]["attempts"].as_u64().unwrap()
}

/// Wait until the instance reports more than `before` reload attempts; returns its status.
fn wait_attempt(gw: &Gateway, before: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = config_status(gw);
        if s["reloads"]["attempts"].as_u64().unwrap() > before {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no reload attempt reported:\n{}",
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Replace the file the way editors and config management do: write aside, rename over.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn simple_body(e: &Echo) -> String {
    format!(
        "upstreams:\n  e: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ id: api, match: {{ path_prefix: /api }}, upstream: e, public: true }}\n",
        e.addr
    )
}

#[test]
fn config_endpoint_reload_metrics_and_the_reload_command() {
    let e = Echo::start("e");
    let gw = Gateway::start("", &simple_body(&e));
    let cfg = gw.config.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&gw.config).unwrap();

    let s = config_status(&gw);
    assert_eq!(s["generation"], 1);
    assert_eq!(s["pid"], gw.proc.pid());
    assert_eq!(s["config_sha256"], sha(&text));
    assert_eq!(s["reloads"]["attempts"], 0);
    assert!(s["last_reload"].is_null());
    assert!(s["path"].as_str().unwrap().ends_with("portcullis.yaml"));
    assert!(s["loaded_at"].as_f64().unwrap() > 1.7e9);
    let m = gw.metrics();
    assert_eq!(
        metric_value(&m, "portcullis_config_last_reload_successful"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "portcullis_config_reloads_total{result=\"rejected\"}"),
        0.0
    );
    assert!(
        metric_value(
            &m,
            "portcullis_config_last_reload_success_timestamp_seconds"
        ) > 1.7e9
    );

    // `portcullis reload` checks, signals the pid file's process and reports its answer.
    let added = text.replace(
        "routes:\n",
        "routes:\n  - { id: new, match: { path_prefix: /new }, upstream: e, public: true }\n",
    );
    std::fs::write(&gw.config, &added).unwrap();
    let (code, out, err) = run_cli(&["reload", "-c", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded: generation 2 (pid "), "{out}");
    assert_eq!(gw.get("/new/x").status, 200);
    let s = config_status(&gw);
    assert_eq!(s["generation"], 2);
    assert_eq!(s["config_sha256"], sha(&added));
    assert_eq!(s["last_reload"]["result"], "ok");
    assert_eq!(s["last_reload"]["trigger"], "sighup");
    assert_eq!(
        gw.metric("portcullis_config_reloads_total{result=\"ok\"}"),
        1.0
    );

    // An invalid file: the command reports every error with its YAML path and does not signal.
    let broken = added.replace(
        "upstream: e, public: true }\n  - { id: api",
        "upstream: nope, public: true }\n  - { id: api",
    );
    std::fs::write(&gw.config, &broken).unwrap();
    let (code, _, err) = run_cli(&["reload", "-c", &cfg]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: routes[0].upstream: unknown upstream \"nope\""),
        "{err}"
    );
    assert!(
        err.contains("the running instance was not signalled"),
        "{err}"
    );
    assert_eq!(attempts(&gw), 1);

    // SIGHUP with the invalid file: rejected, nothing changes, the error is on /config.
    gw.proc.signal("HUP");
    let s = wait_attempt(&gw, 1);
    assert_eq!(s["last_reload"]["result"], "rejected");
    assert_eq!(
        s["last_reload"]["errors"][0],
        "routes[0].upstream: unknown upstream \"nope\""
    );
    assert_eq!(s["generation"], 2);
    assert_eq!(s["config_sha256"], sha(&added));
    let m = gw.metrics();
    assert_eq!(metric_value(&m, "portcullis_config_generation"), 2.0);
    assert_eq!(
        metric_value(&m, "portcullis_config_reloads_total{result=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "portcullis_config_last_reload_successful"),
        0.0
    );
    assert_eq!(gw.get("/new/x").status, 200);
    assert!(gw
        .proc
        .log_text()
        .contains("config reload rejected: routes[0].upstream: unknown upstream \"nope\""));

    // Key and JWKS files that cannot be read reject the reload (a directory, a missing file).
    let dir = gw.dir.path().display().to_string();
    let with_files = added
        .replace(
            "upstreams:",
            &format!(
                "authenticators:\n  j:\n    jwt:\n      algorithms: [ES256]\n      jwks_file: \"{dir}\"\n  k:\n    jwt:\n      algorithms: [RS256]\n      keys: [{{ pem_file: \"{dir}/missing.pem\" }}]\nupstreams:"
            ),
        )
        .replace(
            "id: api, match: { path_prefix: /api }, upstream: e, public: true",
            "id: api, match: { path_prefix: /api }, upstream: e, authn: [j, k]",
        );
    std::fs::write(&gw.config, &with_files).unwrap();
    gw.proc.signal("HUP");
    let s = wait_attempt(&gw, 2);
    let errors = s["last_reload"]["errors"].to_string();
    assert!(
        errors.contains("authenticators.j.jwt.jwks_file:") && errors.contains("Is a directory"),
        "{errors}"
    );
    assert!(
        errors.contains("authenticators.k.jwt.keys[0].pem_file: cannot read"),
        "{errors}"
    );
    assert_eq!(s["generation"], 2);
    assert_eq!(gw.get("/api/x").status, 200, "the API route stayed public");

    // A deleted config file is a rejected reload too.
    std::fs::remove_file(&gw.config).unwrap();
    gw.proc.signal("HUP");
    let s = wait_attempt(&gw, 3);
    assert_eq!(s["last_reload"]["result"], "rejected");
    assert_eq!(s["generation"], 2);

    // Listener changes apply the rest and are reported as waiting for an upgrade.
    let port = free_port();
    let relisten = added.replace(
        "  admin:",
        &format!("    - addr: \"127.0.0.1:{port}\"\n  admin:"),
    );
    std::fs::write(&gw.config, &relisten).unwrap();
    let (code, out, err) = run_cli(&["reload", "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("; server.listen changed and need an upgrade or restart"),
        "{out}"
    );
    let s = config_status(&gw);
    assert_eq!(s["generation"], 3);
    assert_eq!(s["restart_needed"][0], "server.listen");
    assert_eq!(gw.metric("portcullis_config_restart_required"), 1.0);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    // `reload` refuses a pid file that names another process.
    std::fs::write(gw.dir.path().join("portcullis.pid"), "1\n").unwrap();
    let (code, _, err) = run_cli(&["reload", "-c", &cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("pid 1 (from "), "{err}");
    assert!(
        err.contains("is not a `portcullis run` process; not signalling"),
        "{err}"
    );
    // A pid file naming another gateway than the one on the admin address.
    let (code, _, err) = {
        let e2 = Echo::start("e2");
        let other = Gateway::start("", &simple_body(&e2));
        std::fs::write(
            gw.dir.path().join("portcullis.pid"),
            format!("{}\n", other.proc.pid()),
        )
        .unwrap();
        run_cli(&["reload", "-c", &cfg])
    };
    assert_eq!(code, 1);
    assert!(err.contains("but the gateway on"), "{err}");
}

#[test]
fn watch_config_applies_changes_without_a_signal() {
    let e = Echo::start("e");
    let gw = Gateway::start("  watch_config: true\n", &simple_body(&e));
    let text = std::fs::read_to_string(&gw.config).unwrap();
    assert_eq!(gw.get("/new/x").status, 404);
    let added = text.replace(
        "routes:\n",
        "routes:\n  - { id: new, match: { path_prefix: /new }, upstream: e, public: true }\n",
    );
    write_atomically(&gw.config, &added);
    let s = wait_attempt(&gw, 0);
    assert_eq!(s["last_reload"]["trigger"], "watch");
    assert_eq!(s["generation"], 2);
    assert_eq!(gw.get("/new/x").status, 200);

    // Same bytes written again: no reload attempt.
    write_atomically(&gw.config, &added);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(attempts(&gw), 1);

    // An invalid edit is rejected like a SIGHUP would be.
    write_atomically(
        &gw.config,
        &added.replace("upstream: e, public", "upstream: x, public"),
    );
    let s = wait_attempt(&gw, 1);
    assert_eq!(s["last_reload"]["result"], "rejected");
    assert_eq!(s["generation"], 2);
    assert_eq!(gw.get("/new/x").status, 200);
}

#[test]
fn reload_keeps_the_token_cache_and_upstream_health_of_unchanged_parts() {
    let e = Echo::start("e");
    let dead = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef-ops";
    let secret_file = dir.path().join("hs.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let body = format!(
        r#"authenticators:
  hs:
    jwt:
      issuer: "https://hs.test/"
      algorithms: [HS256]
      hmac_secret: {{ file: "{}" }}
upstreams:
  u:
    targets: ["{dead}", "{}"]
    health_check: {{ type: tcp, interval: 200ms }}
routes:
  - {{ id: jwt, match: {{ path_prefix: /jwt }}, upstream: u, authn: [hs] }}
"#,
        secret_file.display(),
        e.addr
    );
    let gw = Gateway::start("", &body);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("portcullis_upstream_healthy_targets{pool=\"u\"}")
            == 1.0),
        "the dead target was never marked down"
    );
    let token = hs256(
        secret,
        &serde_json::json!({"iss": "https://hs.test/", "sub": "alice", "exp": now() + 600}),
    );
    let auth = format!("Bearer {token}");
    let call = || get_with(gw.addr, "/jwt/x", &[("authorization", &auth)]);
    assert_eq!(call().status, 200);
    assert_eq!(call().status, 200);
    let hits = "portcullis_token_cache_total{authenticator=\"hs\",result=\"hit\"}";
    let misses = "portcullis_token_cache_total{authenticator=\"hs\",result=\"miss\"}";
    let dead_attempts =
        format!("portcullis_upstream_attempts_total{{pool=\"u\",target=\"{dead}\"}}");
    let m = gw.metrics();
    assert_eq!(metric_value(&m, misses), 1.0);
    assert_eq!(metric_value(&m, hits), 1.0);
    let dead_before = metric_value(&m, &dead_attempts);

    // Reload with an unrelated change: the same pool (with its health) and the same cache.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let added = text.replace(
        "routes:\n",
        "routes:\n  - { id: other, match: { path_prefix: /other }, upstream: u, public: true }\n",
    );
    std::fs::write(&gw.config, &added).unwrap();
    gw.proc.signal("HUP");
    assert_eq!(wait_attempt(&gw, 0)["generation"], 2);
    for _ in 0..10 {
        assert_eq!(call().status, 200);
    }
    let m = gw.metrics();
    assert_eq!(metric_value(&m, misses), 1.0, "the token cache was emptied");
    assert_eq!(metric_value(&m, hits), 11.0);
    assert_eq!(
        metric_value(&m, &dead_attempts),
        dead_before,
        "a reload sent traffic to a target known to be down"
    );

    // A changed authenticator starts with an empty cache.
    std::fs::write(
        &gw.config,
        added.replace(
            "algorithms: [HS256]",
            "algorithms: [HS256]\n      leeway: 10s",
        ),
    )
    .unwrap();
    gw.proc.signal("HUP");
    assert_eq!(wait_attempt(&gw, 1)["generation"], 3);
    assert_eq!(call().status, 200);
    assert_eq!(gw.metric(misses), 2.0);
}

/// Two versions of one config: `v2` adds `/new` and rotates the `rotating` key from k1 to k2.
fn versioned(e: &Echo, stable: &str, rotating: &str, with_new: bool) -> String {
    let new_route = if with_new {
        "  - { id: new, match: { path_prefix: /new }, upstream: e, public: true }\n"
    } else {
        ""
    };
    format!(
        r#"authenticators:
  keys:
    api_key:
      keys:
        - {{ id: stable, sha256: "{}", consumer: stable-co }}
        - {{ id: rotating, sha256: "{}", consumer: rotating-co }}
upstreams:
  e: {{ targets: ["{}"] }}
routes:
{new_route}  - {{ id: api, match: {{ path_prefix: /api }}, upstream: e, authn: [keys] }}
  - {{ id: pub, match: {{ path_prefix: /pub }}, upstream: e, public: true }}
"#,
        sha(stable),
        sha(rotating),
        e.addr
    )
}

#[test]
fn reload_every_500ms_for_20s_under_load() {
    let e = Echo::start("e");
    let (stable, k1, k2) = ("stable-key-0001", "rotating-key-v1", "rotating-key-v2");
    let v1_body = versioned(&e, stable, k1, false);
    let v2_body = versioned(&e, stable, k2, true);
    let gw = Gateway::start("", &v1_body);
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let v1 = text.clone();
    let v2 = text.replace(&v1_body, &v2_body);
    assert_ne!(v1, v2);
    let invalid = v2.replace(
        "upstream: e, public: true }\n  - { id: api",
        "upstream: gone, public: true }\n  - { id: api",
    );
    assert_ne!(invalid, v2);

    let load = Load::start(
        gw.addr,
        4,
        Duration::from_millis(5),
        vec![
            LoadReq::get("pub", "/pub/x", &[], &[200]),
            LoadReq::get("stable", "/api/x", &[("x-api-key", stable)], &[200]),
            LoadReq::get("k1", "/api/x", &[("x-api-key", k1)], &[200, 401]),
            LoadReq::get("k2", "/api/x", &[("x-api-key", k2)], &[200, 401]),
            LoadReq::get("new", "/new/x", &[], &[200, 404]),
        ],
    );

    let probe = |path: &str, key: Option<&str>| match key {
        Some(k) => get_with(gw.addr, path, &[("x-api-key", k)]).status,
        None => gw.get(path).status,
    };
    let started = Instant::now();
    let (mut ok, mut rejected) = (0u64, 0u64);
    let mut latencies = Vec::new();
    let mut serving_v2 = false;
    let mut generation = 1u64;
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(20) {
        let tick = Instant::now();
        // Every fifth write is an invalid config (it must be rejected, traffic unaffected).
        let bad = i % 5 == 4;
        let want_v2 = !serving_v2;
        write_atomically(
            &gw.config,
            if bad {
                &invalid
            } else if want_v2 {
                &v2
            } else {
                &v1
            },
        );
        let before = ok + rejected;
        let sent = Instant::now();
        gw.proc.signal("HUP");
        let s = wait_attempt(&gw, before);
        if bad {
            rejected += 1;
            assert_eq!(s["last_reload"]["result"], "rejected", "{s}");
            assert_eq!(s["generation"], generation);
        } else {
            ok += 1;
            latencies.push(sent.elapsed());
            generation += 1;
            assert_eq!(s["generation"], generation, "{s}");
            serving_v2 = want_v2;
        }
        // The route and key changes answer right after the reload that made them.
        let (new, k1_status, k2_status) = if serving_v2 {
            (200, 401, 200)
        } else {
            (404, 200, 401)
        };
        assert_eq!(
            probe("/new/x", None),
            new,
            "after reload {i} (v2: {serving_v2})"
        );
        assert_eq!(probe("/api/x", Some(k1)), k1_status, "k1 after reload {i}");
        assert_eq!(probe("/api/x", Some(k2)), k2_status, "k2 after reload {i}");
        assert_eq!(probe("/api/x", Some(stable)), 200);
        i += 1;
        if let Some(rest) = Duration::from_millis(500).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let stats = load.stop();
    latencies.sort();
    eprintln!(
        "reload proof: {} reloads ({ok} ok, {rejected} rejected) in {:.1}s; SIGHUP->new generation p50 {:?} max {:?}; load: {} responses, {} errors, {} stale keep-alive retries, statuses {:?}",
        ok + rejected,
        started.elapsed().as_secs_f64(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        stats.responses,
        stats.errors,
        stats.stale_retries,
        stats.statuses
    );
    assert!(ok >= 25 && rejected >= 6, "{ok} ok, {rejected} rejected");
    assert_eq!(stats.errors, 0, "{:?}", stats.error_samples);
    // A reload never closes a client connection.
    assert_eq!(stats.stale_retries, 0);
    assert!(stats.responses > 1000, "{}", stats.responses);
    for kind in ["pub", "stable"] {
        assert!(stats.statuses.contains_key(&(kind.to_string(), 200)));
    }
    let m = gw.metrics();
    assert_eq!(
        metric_value(&m, "portcullis_config_reloads_total{result=\"ok\"}"),
        ok as f64
    );
    assert_eq!(
        metric_value(&m, "portcullis_config_reloads_total{result=\"rejected\"}"),
        rejected as f64
    );
}

#[test]
fn reload_time_of_a_1000_route_config() {
    let e = Echo::start("e");
    let mut body = format!(
        "authenticators:\n  keys:\n    api_key:\n      keys:\n        - {{ id: a, sha256: \"{}\", consumer: c }}\nupstreams:\n  e: {{ targets: [\"{}\"] }}\nroutes:\n",
        sha("key-1000-routes"),
        e.addr
    );
    for i in 0..1000 {
        if i % 2 == 0 {
            body.push_str(&format!(
                "  - {{ id: r{i}, match: {{ path_prefix: /r{i}/, methods: [GET, POST] }}, upstream: e, authn: [keys] }}\n"
            ));
        } else {
            body.push_str(&format!(
                "  - {{ id: r{i}, match: {{ hosts: [h{i}.example], path_prefix: /r{i}/ }}, upstream: e, public: true }}\n"
            ));
        }
    }
    let gw = Gateway::start("", &body);
    let mut wall = Vec::new();
    let mut compile = Vec::new();
    for round in 0..5u64 {
        let sent = Instant::now();
        gw.proc.signal("HUP");
        let s = wait_attempt(&gw, round);
        assert_eq!(s["last_reload"]["result"], "ok", "{s}");
        wall.push(sent.elapsed());
        compile.push(s["last_reload"]["duration_ms"].as_f64().unwrap());
    }
    assert_eq!(
        get_with(gw.addr, "/r998/x", &[("x-api-key", "key-1000-routes")]).status,
        200
    );
    wall.sort();
    compile.sort_by(f64::total_cmp);
    eprintln!(
        "1000-route reload: SIGHUP->new generation median {:?} (min {:?}, max {:?}); compile+swap median {:.1} ms",
        wall[2], wall[0], wall[4], compile[2]
    );
}

/// Kills (SIGKILL) a process that is not our child, on drop.
struct PidGuard(i32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("kill -9 {} 2>/dev/null", self.0)])
            .status();
    }
}

/// Send a signal to a process that is not our child (the shell's builtin kill).
fn kill(sig: &str, pid: impl std::fmt::Display) {
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// The pid the gateway's pid file names now.
fn pid_in_file(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("portcullis.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        == Some(false)
}

fn slow_request(addr: std::net::SocketAddr) -> std::thread::JoinHandle<Result<Response, String>> {
    slow_request_ms(addr, 2000)
}

fn slow_request_ms(
    addr: std::net::SocketAddr,
    ms: u64,
) -> std::thread::JoinHandle<Result<Response, String>> {
    std::thread::spawn(move || {
        try_request(
            addr,
            format!("GET /api/slow HTTP/1.1\r\nHost: a\r\nx-echo-delay-ms: {ms}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    })
}

#[test]
fn binary_upgrade_under_load_loses_no_request_and_no_audit_record() {
    let e = Echo::start("e");
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    let body = format!(
        "{}audit:\n  file: \"{}\"\n  chain: true\n",
        simple_body(&e),
        audit.display()
    );
    // Grace long enough for the 2-second requests the old process still serves.
    let mut gw = Gateway::start_edited("", "", &body, |t| {
        t.replace("grace_period: 1s", "grace_period: 4s")
    });
    let cfg = gw.config.to_string_lossy().into_owned();
    let old_pid = gw.proc.pid();

    let load = Load::start(
        gw.addr,
        4,
        Duration::from_millis(5),
        vec![LoadReq::get("api", "/api/x", &[], &[200])],
    );
    std::thread::sleep(Duration::from_millis(500));
    let slow_before: Vec<_> = (0..4).map(|_| slow_request(gw.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));

    // The documented script: check with the new binary, then `portcullis upgrade`.
    let started = Instant::now();
    let script = repo_root().join("scripts/upgrade.sh");
    let upgrade = std::process::Command::new("bash")
        .arg(&script)
        .args(["-c", &cfg, "--binary", bin()])
        .output()
        .expect("run scripts/upgrade.sh");
    let upgrade_took = started.elapsed();
    let out = String::from_utf8_lossy(&upgrade.stdout).into_owned();
    let err = String::from_utf8_lossy(&upgrade.stderr).into_owned();
    let new_pid = pid_in_file(gw.dir.path());
    let _guard = PidGuard(new_pid);
    assert!(
        upgrade.status.success(),
        "{out}{err}\n{}",
        gw.proc.log_text()
    );
    assert!(
        out.contains(&format!("upgraded: pid {old_pid} -> {new_pid}")),
        "{out}"
    );
    assert_ne!(new_pid, old_pid);
    // The old process drained and exited cleanly.
    let status = gw.proc.child.wait().unwrap();
    assert!(status.success(), "old process: {status}");
    let log = gw.proc.log_text();
    assert!(log.contains("binary upgrade: pid"), "{log}");

    // Requests started while the new process serves, then a little more load.
    let slow_after: Vec<_> = (0..2).map(|_| slow_request(gw.addr)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    let mut slow = Vec::new();
    for h in slow_before.into_iter().chain(slow_after) {
        let r = h.join().unwrap().expect("slow request failed");
        assert_eq!(r.status, 200);
        slow.push(r.echoed_header("x-request-id").unwrap());
    }
    assert_eq!(config_status(&gw)["pid"], new_pid);

    // SIGTERM with a slow request in flight: it completes, then the audit queue is flushed.
    let last = slow_request(gw.addr);
    std::thread::sleep(Duration::from_millis(300));
    kill("TERM", new_pid);
    let r = last.join().unwrap().expect("request in flight at SIGTERM");
    assert_eq!(r.status, 200);
    slow.push(r.echoed_header("x-request-id").unwrap());
    assert!(
        eventually(Duration::from_secs(15), || !alive(new_pid)),
        "new process did not exit after SIGTERM"
    );
    gw.proc.kill();

    eprintln!(
        "upgrade proof: script took {:.1}s; load {} responses, {} errors, {} stale keep-alive retries; {} slow requests ok",
        upgrade_took.as_secs_f64(),
        stats.responses,
        stats.errors,
        stats.stale_retries,
        slow.len()
    );
    assert_eq!(stats.errors, 0, "{:?}", stats.error_samples);
    assert!(stats.responses > 500, "{}", stats.responses);

    // Exactly one audit record per answered request, across both processes.
    let text = std::fs::read_to_string(&audit).unwrap();
    let mut by_id: std::collections::HashMap<String, u32> = Default::default();
    let mut instances = std::collections::HashSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "request" {
            *by_id
                .entry(v["request_id"].as_str().unwrap().to_string())
                .or_default() += 1;
            instances.insert(v["instance"].as_str().unwrap().to_string());
        }
    }
    let mut expected: Vec<String> = stats.request_ids.clone();
    expected.extend(slow);
    assert_eq!(expected.len() as u64, stats.responses + 7);
    for id in &expected {
        assert_eq!(
            by_id.get(id),
            Some(&1),
            "request {id} has no single audit record"
        );
    }
    // Nothing else but the readiness probes of the harness went through the proxy port.
    assert_eq!(
        by_id.len(),
        expected.len(),
        "records without a matching answer"
    );
    assert_eq!(instances.len(), 2, "both processes wrote");
    let (code, out, err) = run_cli(&["audit", "verify", &audit.to_string_lossy()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn systemd_readiness_and_main_pid_follow_an_upgrade() {
    use std::os::unix::net::UnixDatagram;
    let e = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.path().join("portcullis.yaml");
    std::fs::write(
        &cfg,
        Gateway::config_text(port, admin, dir.path(), "", "", &simple_body(&e)),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("gw.log")).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let first_pid = child.id() as i32;
    let recv = || {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("no systemd notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), format!("READY=1\nMAINPID={first_pid}\n"));
    // SIGUSR2 directly (what `systemctl kill -s USR2` does).
    kill("USR2", first_pid);
    let msg = recv();
    let new_pid: i32 = msg
        .strip_prefix("READY=1\nMAINPID=")
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("{msg:?}"));
    let _guard = PidGuard(new_pid);
    assert_ne!(new_pid, first_pid);
    assert_eq!(pid_in_file(dir.path()), new_pid);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(addr, "/api/x").status, 200);
    // The old process exits by itself after handing over and draining.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "old process still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    assert_eq!(get(admin_addr, "/config").json()["pid"], new_pid);
    assert_eq!(get(addr, "/api/x").status, 200);

    // SIGINT drains like SIGTERM: the request in flight completes (within the 1 s grace).
    let in_flight = slow_request_ms(addr, 700);
    std::thread::sleep(Duration::from_millis(300));
    kill("INT", new_pid);
    let r = in_flight
        .join()
        .unwrap()
        .expect("request in flight at SIGINT");
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(15), || !alive(new_pid)),
        "still running after SIGINT"
    );
}

#[test]
fn an_upgrade_to_a_config_that_does_not_compile_is_aborted() {
    let e = Echo::start("e");
    let gw = Gateway::start("", &simple_body(&e));
    let cfg = gw.config.to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&gw.config).unwrap();
    // `portcullis upgrade` itself refuses an invalid file without signalling...
    std::fs::write(&gw.config, text.replace("upstream: e,", "upstream: zz,")).unwrap();
    let (code, _, err) = run_cli(&["upgrade", "-c", &cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown upstream \"zz\""), "{err}");
    // ...and a SIGUSR2 sent anyway is refused by the running process, which keeps serving.
    gw.proc.signal("USR2");
    assert!(eventually(Duration::from_secs(10), || config_status(&gw)
        ["upgrade"]["failures"]
        == 1));
    let s = config_status(&gw);
    assert!(
        s["upgrade"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown upstream \"zz\""),
        "{s}"
    );
    assert_eq!(s["pid"], gw.proc.pid());
    assert_eq!(gw.get("/api/x").status, 200);
    // A config the running process accepts but the new process cannot serve (an address it
    // cannot bind): the new process fails before taking anything over, the old one stays.
    std::fs::write(
        &gw.config,
        text.replace("  admin:", "    - addr: \"192.0.2.1:8080\"\n  admin:"),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["upgrade", "-c", &cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("upgrade aborted"), "{err}");
    assert!(err.contains("before taking the sockets over"), "{err}");
    assert_eq!(config_status(&gw)["pid"], gw.proc.pid());
    assert_eq!(gw.get("/api/x").status, 200);
    // A new address some other process holds: "in use" is fine only for the addresses the
    // old process hands over, so the new one refuses to start and the old one stays.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    std::fs::write(
        &gw.config,
        text.replace("  admin:", &format!("    - addr: \"{taken}\"\n  admin:")),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["upgrade", "-c", &cfg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("before taking the sockets over"), "{err}");
    assert_eq!(config_status(&gw)["pid"], gw.proc.pid());
    assert_eq!(gw.get("/api/x").status, 200);
    drop(squatter);
    // Fixed: the upgrade goes through.
    std::fs::write(&gw.config, &text).unwrap();
    let (code, out, err) = run_cli(&["upgrade", "-c", &cfg]);
    let new_pid = pid_in_file(gw.dir.path());
    let _guard = PidGuard(new_pid);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("-> {new_pid}")), "{out}");
    assert_eq!(gw.get("/api/x").status, 200);
}

/// The subject of the certificate a TLS listener serves (curl's handshake report).
fn served_subject(port: u16) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sv",
            "-o",
            "/dev/null",
            "--cacert",
            &fixture("tls/ca.pem"),
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
            &format!("https://localhost:{port}/api/x"),
        ])
        .output()
        .expect("curl");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err.lines()
        .find_map(|l| l.trim_start_matches(['*', ' ']).strip_prefix("subject: "))
        .unwrap_or_else(|| panic!("no subject in {err}"))
        .trim()
        .to_string()
}

#[test]
fn tls_certificates_rotate_on_reload_without_new_sockets() {
    let e = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |name: &str| {
        std::fs::copy(fixture(&format!("tls/{name}.pem")), &cert).unwrap();
        std::fs::copy(fixture(&format!("tls/{name}.key")), &key).unwrap();
    };
    install("server");
    let port = free_port();
    let listener = format!(
        "    - addr: \"127.0.0.1:{port}\"\n      tls: {{ cert: \"{}\", key: \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let gw = Gateway::start_with(&listener, "", &simple_body(&e));
    assert_eq!(served_subject(port), "CN=localhost");
    let expiry = format!(
        "portcullis_tls_certificate_expiry_timestamp_seconds{{listener=\"127.0.0.1:{port}\"}}"
    );
    assert!(gw.metric(&expiry) > 4.0e9);
    let first = config_status(&gw)["tls"][0]["sha256"].clone();

    // A key that does not belong to the certificate: rejected, the old pair keeps serving.
    std::fs::copy(fixture("tls/server2.key"), &key).unwrap();
    gw.proc.signal("HUP");
    let s = wait_attempt(&gw, 0);
    assert_eq!(s["last_reload"]["result"], "rejected");
    let errors = s["last_reload"]["errors"].to_string();
    assert!(
        errors.contains("server.listen[1].tls:")
            && errors.contains("does not belong to the certificate"),
        "{errors}"
    );
    assert_eq!(served_subject(port), "CN=localhost");

    // The new pair: served by the next handshake, same socket, nothing waits for a restart.
    install("server2");
    gw.proc.signal("HUP");
    let s = wait_attempt(&gw, 1);
    assert_eq!(s["last_reload"]["result"], "ok", "{s}");
    assert_eq!(s["restart_needed"].as_array().unwrap().len(), 0, "{s}");
    assert_ne!(s["tls"][0]["sha256"], first);
    assert_eq!(served_subject(port), "CN=rotated.localhost");
    assert!(gw
        .proc
        .log_text()
        .contains(&format!("TLS 127.0.0.1:{port}: serving a new certificate")));
}

#[test]
fn local_rate_limits_continue_across_a_binary_upgrade() {
    let e = Echo::start("e");
    let body = format!(
        "rate_limits:\n  hourly: {{ key: client_ip, rate: 10/h }}\n  per-key: {{ key: \"header:x-tenant\", rate: 4/h }}\n  during: {{ key: client_ip, rate: 20/h }}\nupstreams:\n  e: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ id: lim, match: {{ path_prefix: /lim }}, upstream: e, public: true, rate_limits: [hourly] }}\n  - {{ id: tenant, match: {{ path_prefix: /tenant }}, upstream: e, public: true, rate_limits: [per-key] }}\n  - {{ id: during, match: {{ path_prefix: /during }}, upstream: e, public: true, rate_limits: [during] }}\n",
        e.addr
    );
    let gw = Gateway::start("", &body);
    let cfg = gw.config.to_string_lossy().into_owned();
    for _ in 0..7 {
        assert_eq!(gw.get("/lim/x").status, 200);
    }
    for _ in 0..4 {
        assert_eq!(
            get_with(gw.addr, "/tenant/x", &[("x-tenant", "acme")]).status,
            200
        );
    }
    assert_eq!(
        get_with(gw.addr, "/tenant/x", &[("x-tenant", "acme")]).status,
        429
    );

    // A client that keeps sending through the upgrade, on fresh connections that land on
    // either process. While both accept (≈ 5 s) each can hand out what was left at the export
    // once; when the old one stops, it sends what it counted, so afterwards the new process
    // knows everything both admitted.
    for _ in 0..3 {
        assert_eq!(gw.get("/during/x").status, 200);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = gw.addr;
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ok = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let raw = b"GET /during/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
                if try_request(addr, raw).is_ok_and(|r| r.status == 200) {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ok
        })
    };
    let (code, out, err) = run_cli(&["upgrade", "-c", &cfg]);
    let new_pid = pid_in_file(gw.dir.path());
    let _guard = PidGuard(new_pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = sender.join().unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", gw.proc.log_text());
    // The old process sent its last counts when it stopped accepting; reading 3 × 16 MiB
    // sketches takes a moment in a debug build.
    assert!(
        eventually(Duration::from_secs(20), || gw.proc.log_text().contains(
            "added the previous process's last counts to 3 local rate-limit polic(ies)"
        )),
        "{}",
        gw.proc.log_text()
    );
    let rest = (0..30)
        .filter(|_| gw.get("/during/x").status == 200)
        .count();
    eprintln!("limit 20/h: 3 before, {during} during the upgrade, {rest} after");
    assert!(during >= 17, "{during}: the budget left was not available");
    assert!(
        during <= 2 * 17,
        "{during}: more than each process's share of what was left"
    );
    assert_eq!(
        rest, 0,
        "after the upgrade the new process must know what the old one admitted"
    );
    // `upgrade` returned after the old process exited: everything below meets the new one.
    assert_eq!(config_status(&gw)["pid"], new_pid);
    let log = gw.proc.log_text();
    assert!(
        log.contains("continuing 3 local rate-limit polic(ies) from the previous process"),
        "{log}"
    );
    assert!(
        log.contains("added the previous process's last counts to 3 local rate-limit polic(ies)"),
        "{log}"
    );
    let after: Vec<u16> = (0..5).map(|_| gw.get("/lim/x").status).collect();
    assert_eq!(
        after,
        [200, 200, 200, 429, 429],
        "the upgrade refilled the bucket"
    );
    assert_eq!(
        get_with(gw.addr, "/tenant/x", &[("x-tenant", "acme")]).status,
        429
    );
    assert_eq!(
        get_with(gw.addr, "/tenant/x", &[("x-tenant", "other")]).status,
        200
    );
    assert!(
        !gw.dir.path().join("upgrade.limits").exists(),
        "the hand-over file was left behind"
    );
}

#[test]
fn a_successor_that_dies_after_taking_the_sockets_makes_the_old_process_exit_1() {
    let e = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    // The gateway runs from a path we can replace, as an installed binary would.
    let exe = dir.path().join("portcullis");
    std::fs::copy(bin(), &exe).unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.path().join("portcullis.yaml");
    std::fs::write(
        &cfg,
        Gateway::config_text(port, admin, dir.path(), "", "", &simple_body(&e)),
    )
    .unwrap();
    let log_path = dir.path().join("gw.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut old = std::process::Command::new(&exe)
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    assert!(eventually(Duration::from_secs(15), || try_request(
        admin_addr,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .is_ok_and(|r| r.status == 200)));
    // The "new version": takes the sockets over, then dies.
    let stub = format!(
        "#!/bin/sh\n\"{}\" \"$@\" &\nchild=$!\nsleep 3\nkill -9 $child\nexit 1\n",
        bin()
    );
    let tmp = dir.path().join("portcullis.new");
    std::fs::write(&tmp, stub).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    kill("USR2", old.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = old.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "old process still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("while this one drains; nothing will be listening"),
        "{text}"
    );
}
