//! Hot config reload, outside every request phase: the "config reload" background service
//! waits for SIGHUP and, with `server.watch_config`, polls the config file. Each attempt
//! compiles on the blocking pool and either swaps the new [`Snapshot`] in atomically (requests
//! in flight finish on the one they pinned) or changes nothing. The outcome of every attempt is
//! recorded in [`ConfigStatus`] (served by the admin `/config`), in the log (every error with
//! its YAML path) and in metrics.
//!
//! State that survives a reload is not kept here: JWKS key sets, verified-token caches,
//! rate-limit counters and upstream pools are shared by the compiler through process-wide
//! registries keyed by their definition, so an unchanged part keeps its state and a changed
//! part starts fresh.
//!
//! Also the client side of `portcullis reload`: check the file, signal the instance named by
//! the pid file, and wait for its answer on `/config`.
//!
//! [`Snapshot`]: crate::config::Snapshot

use crate::config::{self, ProcessSettings};
use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the admin `/config` shows. Immutable; replaced as a whole after every attempt.
#[derive(Debug, Clone)]
pub struct ConfigStatus {
    pub path: PathBuf,
    pub generation: u64,
    /// When the snapshot being served was compiled (Unix seconds).
    pub loaded_at: f64,
    /// SHA-256 of the YAML text of the snapshot being served.
    pub sha256: String,
    pub started_at: f64,
    pub reloads_ok: u64,
    pub reloads_rejected: u64,
    pub last_attempt: Option<Attempt>,
    /// Sections of the file on disk that differ from the running process and wait for an
    /// upgrade or restart (empty when the file matches).
    pub restart_needed: Vec<&'static str>,
    /// Binary upgrades started with SIGUSR2 that did not take over, and the last reason.
    pub upgrade_failures: u64,
    pub upgrade_last_error: Option<String>,
    /// The pid taking over after a successful upgrade start (this process is draining).
    pub successor: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: f64,
    pub trigger: Trigger,
    /// Empty on success.
    pub errors: Vec<String>,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Watch,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Watch => "watch",
        }
    }
}

impl ConfigStatus {
    pub fn new(path: PathBuf, sha256: String) -> ConfigStatus {
        let now = unix_now();
        ConfigStatus {
            path,
            generation: 1,
            loaded_at: now,
            sha256,
            started_at: now,
            reloads_ok: 0,
            reloads_rejected: 0,
            last_attempt: None,
            restart_needed: Vec::new(),
            upgrade_failures: 0,
            upgrade_last_error: None,
            successor: None,
        }
    }

    pub fn attempts(&self) -> u64 {
        self.reloads_ok + self.reloads_rejected
    }

    pub fn to_json(&self) -> serde_json::Value {
        let last = self.last_attempt.as_ref().map(|a| {
            serde_json::json!({
                "at": a.at,
                "trigger": a.trigger.as_str(),
                "result": if a.errors.is_empty() { "ok" } else { "rejected" },
                "errors": a.errors,
                "duration_ms": a.duration.as_secs_f64() * 1000.0,
            })
        });
        serde_json::json!({
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "config_sha256": self.sha256,
            "path": self.path.display().to_string(),
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at,
            "reloads": { "attempts": self.attempts(), "ok": self.reloads_ok, "rejected": self.reloads_rejected },
            "last_reload": last,
            "restart_needed": self.restart_needed,
            "tls": crate::tls::all_stores().iter().map(|st| {
                let c = st.current();
                serde_json::json!({"listener": st.addr.to_string(), "sha256": c.fingerprint, "not_after": c.not_after})
            }).collect::<Vec<_>>(),
            "upgrade": {
                "failures": self.upgrade_failures,
                "last_error": self.upgrade_last_error,
                "successor_pid": self.successor,
            },
        })
    }
}

/// Parser errors quote the offending YAML value (`invalid type: string "…"`), which may be a
/// secret put in the wrong place. What the log and `/config` keep says where and what kind,
/// never the value. (`portcullis check` and `reload` print the full text to the operator.)
pub fn redact(line: &str) -> String {
    // Numbers are quoted in backticks (`invalid type: integer `1234`, expected ...`).
    let mut line = line.to_string();
    for kind in ["integer `", "floating point `"] {
        let mut from = 0;
        while let Some(i) = line[from..].find(kind) {
            let start = from + i + kind.len();
            let Some(len) = line[start..].find('`') else {
                break;
            };
            line.replace_range(start - 1..start + len + 1, "(value not shown)");
            from = start;
        }
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line.as_str();
    while let Some(i) = rest.find("string \"") {
        let start = i + "string \"".len();
        out.push_str(&rest[..i]);
        out.push_str("string (value not shown)");
        // Skip to the closing quote (serde escapes inner quotes).
        let tail = &rest[start..];
        let mut end = tail.len();
        let mut escaped = false;
        for (j, c) in tail.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = j + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Compile `path` and, if it is valid, publish it. Returns the new generation or every error.
pub async fn reload(
    state: &GatewayState,
    path: &Path,
    running: &ProcessSettings,
    trigger: Trigger,
) -> Result<u64, Vec<String>> {
    let started = Instant::now();
    let p = path.to_path_buf();
    // Compiling reads files and resolves names: keep it off the worker threads.
    let loaded = tokio::task::spawn_blocking(move || config::load(&p))
        .await
        .map_err(|e| vec![format!("reload task failed: {e}")])
        .and_then(|r| r.map_err(|e| e.lines().iter().map(|l| redact(l)).collect()))
        // New certificate files of running TLS listeners are part of the reload: loaded now,
        // swapped in with the snapshot, or the whole reload is rejected.
        .and_then(|cfg| crate::tls::prepare(&cfg.process.listeners).map(|r| (cfg, r)));
    let mut status = (**state.config_status.load()).clone();
    let running_generation = status.generation;
    let result = match loaded {
        Ok((cfg, certs)) => {
            for w in &cfg.warnings {
                log::warn!("config: {w}");
            }
            status.restart_needed = cfg.process.restart_needed(running);
            if !status.restart_needed.is_empty() {
                log::warn!(
                    "config reload: {} changed; applied only by a binary upgrade or restart",
                    status.restart_needed.join(", ")
                );
            }
            certs.apply();
            let g = state.publish(cfg.snapshot);
            status.generation = g;
            status.loaded_at = unix_now();
            status.sha256 = cfg.source_sha256;
            log::info!(
                "config reloaded from {} ({}): generation {g} in {:.1} ms",
                path.display(),
                trigger.as_str(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            Ok(g)
        }
        Err(errors) => {
            for line in &errors {
                log::error!("config reload rejected: {line}");
            }
            log::error!(
                "config reload rejected ({} error(s)); still serving generation {running_generation}",
                errors.len(),
            );
            Err(errors)
        }
    };
    status.last_attempt = Some(Attempt {
        at: unix_now(),
        trigger,
        errors: result.as_ref().err().cloned().unwrap_or_default(),
        duration: started.elapsed(),
    });
    crate::metrics::config_reload_attempt(result.is_ok());
    crate::metrics::config_reload(
        result.is_ok(),
        status.loaded_at,
        !status.restart_needed.is_empty(),
    );
    let attempt = status.last_attempt.clone();
    let restart_needed = status.restart_needed.clone();
    let ok = result.is_ok();
    // Only the reload service changes these fields; the upgrade service may change others.
    state.update_status(|s| {
        if ok {
            s.generation = status.generation;
            s.loaded_at = status.loaded_at;
            s.sha256 = status.sha256.clone();
            s.reloads_ok += 1;
        } else {
            s.reloads_rejected += 1;
        }
        s.restart_needed = restart_needed.clone();
        s.last_attempt = attempt.clone();
    });
    result
}

/// The "config reload" background service. Pingora does not handle SIGHUP (its default
/// action would kill the process), so this is installed before anyone is told to send it.
pub struct ReloadService {
    pub state: Arc<GatewayState>,
    pub path: PathBuf,
    /// The process settings this process was started with (listeners, threads, audit...).
    pub process: ProcessSettings,
}

/// How often `watch_config` looks at the file. A change is applied once two looks in a row
/// agree, so an editor that truncates and rewrites is not caught half-way.
const WATCH_POLL: Duration = Duration::from_millis(500);

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: a Kubernetes ConfigMap swaps the link target.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Debounces file changes for `watch_config`.
struct Watcher {
    applied: Option<Stamp>,
    pending: Option<Stamp>,
}

impl Watcher {
    /// True when the file changed and has looked the same twice in a row.
    fn changed(&mut self, now: Option<Stamp>) -> bool {
        if now == self.applied {
            self.pending = None;
            return false;
        }
        if self.pending == now {
            self.applied = now;
            self.pending = None;
            return true;
        }
        self.pending = now;
        false
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot install SIGHUP handler: {e}");
                return;
            }
        };
        crate::upgrade::handler_installed();
        // Ready for systemd only once every signal we answer has a handler. SIGUSR1 and
        // SIGUSR2 are registered here already (tokio keeps a handler installed once
        // registered), so that until their services subscribe they are ignored rather than
        // fatal; SIGTERM and friends keep their default action until Pingora's watch has them.
        for kind in [SignalKind::user_defined1(), SignalKind::user_defined2()] {
            if let Err(e) = signal(kind) {
                log::error!("cannot install a signal handler: {e}");
            }
        }
        tokio::spawn(crate::upgrade::notify_ready_when_handled());
        let mut watcher = Watcher {
            applied: stamp(&self.path),
            pending: None,
        };
        let mut tick = tokio::time::interval(WATCH_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    watcher.applied = stamp(&self.path);
                    let _ = reload(&self.state, &self.path, &self.process, Trigger::Signal).await;
                }
                _ = tick.tick(), if self.process.watch_config => {
                    let now = stamp(&self.path);
                    if now.is_some() && watcher.changed(now) {
                        // Content unchanged (touch, or rewritten with the same bytes): nothing to do.
                        let same = std::fs::read(&self.path).ok().and_then(|t| crate::auth::api_key::sha256(&t))
                            .map(|d| crate::auth::api_key::hex(&d))
                            == Some(self.state.config_status.load().sha256.clone());
                        if !same {
                            let _ = reload(&self.state, &self.path, &self.process, Trigger::Watch).await;
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// `portcullis reload`: check the config file here first (an invalid file is reported and
/// nothing is signalled), send SIGHUP to the instance named by `server.pid_file`, then wait
/// for its answer on the admin `/config`. Returns the line to print.
pub fn signal_running(path: &Path, timeout: Duration) -> Result<String, Vec<String>> {
    let one = |s: String| vec![s];
    let (cfg, pid, before) = running_instance(path)?;
    let admin = cfg.process.admin;
    let attempts = before["reloads"]["attempts"].as_u64().unwrap_or(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| one(format!("cannot signal pid {pid}: {e}")))?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let Ok(now) = admin_config(admin) else {
            continue;
        };
        if now["reloads"]["attempts"].as_u64().unwrap_or(0) <= attempts {
            continue;
        }
        let last = &now["last_reload"];
        if last["result"] == "ok" {
            let mut msg = format!(
                "reloaded: generation {} (pid {pid}, {:.1} ms)",
                now["generation"],
                last["duration_ms"].as_f64().unwrap_or(0.0)
            );
            if let Some(r) = now["restart_needed"].as_array().filter(|r| !r.is_empty()) {
                let names: Vec<&str> = r.iter().filter_map(|v| v.as_str()).collect();
                msg.push_str(&format!(
                    "; {} changed and need an upgrade or restart",
                    names.join(", ")
                ));
            }
            return Ok(msg);
        }
        let mut lines: Vec<String> = last["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        lines.push(format!(
            "the running instance rejected the config; still serving generation {}",
            now["generation"]
        ));
        return Err(lines);
    }
    Err(one(format!(
        "pid {pid} was signalled but did not report a reload within {timeout:?}"
    )))
}

/// For `portcullis reload` and `upgrade`: compile the file (an invalid one is reported and
/// nothing is signalled), read the pid file, and make sure the gateway answering on the admin
/// address is that pid. Returns the config, the pid and its `/config` answer.
pub(crate) fn running_instance(
    path: &Path,
) -> Result<(config::Config, i32, serde_json::Value), Vec<String>> {
    let cfg = config::load(path).map_err(|e| {
        let mut lines = e.lines();
        lines.push(format!(
            "{}: configuration rejected, the running instance was not signalled",
            path.display()
        ));
        lines
    })?;
    let one = |s: String| vec![s];
    let pid_file = &cfg.process.pid_file;
    let pid: i32 = std::fs::read_to_string(pid_file)
        .map_err(|e| one(format!("server.pid_file: cannot read {pid_file}: {e}")))?
        .trim()
        .parse()
        .map_err(|_| one(format!("server.pid_file: {pid_file} does not hold a pid")))?;
    let admin = cfg.process.admin;
    let before = admin_config(admin)
        .map_err(|e| one(format!("admin {admin}: {e} (is the gateway running?)")))?;
    // A stale or planted pid file could name an unrelated process: only signal a `portcullis
    // run` process owned by the pid file's owner that says, on this admin address, it is
    // that pid.
    check_is_gateway(pid, Path::new(pid_file)).map_err(one)?;
    if before["pid"].as_i64() != Some(i64::from(pid)) {
        return Err(one(format!(
            "{pid_file} names pid {pid} but the gateway on {admin} is pid {}; not signalling",
            before["pid"]
        )));
    }
    Ok((cfg, pid, before))
}

fn check_is_gateway(pid: i32, pid_file: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| format!("pid {pid} (from {}) is not running", pid_file.display()))?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let exe_ok = args
        .first()
        .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)))
        .and_then(|p| p.file_name())
        .is_some_and(|n| n.to_string_lossy().contains("portcullis"));
    if !exe_ok || args.get(1) != Some(&b"run".as_slice()) {
        return Err(format!(
            "pid {pid} (from {}) is not a `portcullis run` process; not signalling",
            pid_file.display()
        ));
    }
    let owner = std::fs::metadata(pid_file).map(|m| m.uid()).ok();
    let proc_uid = std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| m.uid())
        .ok();
    if owner.is_none() || owner != proc_uid {
        return Err(format!(
            "{} is owned by uid {owner:?} but pid {pid} runs as uid {proc_uid:?}; not signalling",
            pid_file.display()
        ));
    }
    Ok(())
}

/// GET the admin `/config` (plain HTTP/1.1 on loopback; the answer is small).
pub(crate) fn admin_config(admin: std::net::SocketAddr) -> Result<serde_json::Value, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /config HTTP/1.1\r\nHost: portcullis\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // Bounded: the answer is a few hundred bytes plus the last errors.
    s.take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let start = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP answer")?
        + 4;
    serde_json::from_slice(&buf[start..]).map_err(|e| format!("bad /config answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(len: u64) -> Option<Stamp> {
        Some(Stamp {
            modified: None,
            len,
            inode: 1,
        })
    }

    #[test]
    fn watcher_waits_for_two_equal_looks() {
        let mut w = Watcher {
            applied: st(1),
            pending: None,
        };
        assert!(!w.changed(st(1)));
        // Half-written: seen once, not applied.
        assert!(!w.changed(st(5)));
        // Still growing.
        assert!(!w.changed(st(9)));
        assert!(w.changed(st(9)));
        assert!(!w.changed(st(9)));
        // Back to an old version counts as a change too.
        assert!(!w.changed(st(1)));
        assert!(w.changed(st(1)));
    }

    #[test]
    fn parser_errors_lose_their_values() {
        assert_eq!(
            redact("authenticators.a.jwt.hmac_secret: invalid type: string \"s3cr\\\"et\", expected struct RawSecret at line 5 column 20"),
            "authenticators.a.jwt.hmac_secret: invalid type: string (value not shown), expected struct RawSecret at line 5 column 20"
        );
        assert_eq!(
            redact("a.b: invalid type: integer `12345678901234567890`, expected a string"),
            "a.b: invalid type: integer (value not shown), expected a string"
        );
        assert_eq!(
            redact("routes[0].upstream: unknown upstream \"nope\""),
            "routes[0].upstream: unknown upstream \"nope\""
        );
    }

    #[test]
    fn status_json_reports_the_last_error() {
        let mut s = ConfigStatus::new("/x.yaml".into(), "ab".into());
        s.reloads_rejected = 1;
        s.last_attempt = Some(Attempt {
            at: 1.0,
            trigger: Trigger::Signal,
            errors: vec!["routes[0].upstream: unknown upstream \"nope\"".into()],
            duration: Duration::from_millis(2),
        });
        let j = s.to_json();
        assert_eq!(j["generation"], 1);
        assert_eq!(j["reloads"]["attempts"], 1);
        assert_eq!(j["last_reload"]["result"], "rejected");
        assert_eq!(j["last_reload"]["trigger"], "sighup");
        assert_eq!(
            j["last_reload"]["errors"][0],
            "routes[0].upstream: unknown upstream \"nope\""
        );
    }
}
