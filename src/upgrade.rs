//! Zero-downtime binary upgrade, started from inside the running process (the nginx way), so
//! the new process inherits its cgroup, its stdout/stderr and its supervisor:
//!
//! 1. SIGUSR2 (sent by `portcullis upgrade` or `systemctl kill -s USR2`) reaches the "binary
//!    upgrade" background service, never a request phase.
//! 2. The config file is compiled first; an invalid one aborts the upgrade and changes nothing.
//! 3. Local rate-limit counters are written next to `server.upgrade_sock` (see
//!    `ratelimit::local::export`). The binary at the path this process was started from (where
//!    the new version has been installed) is spawned as `run -c CONFIG --upgrade`; it reads
//!    the counters before compiling its config, then waits on `server.upgrade_sock`.
//! 4. Once that socket exists, this process sends itself SIGQUIT: Pingora hands every
//!    listening socket (proxy and admin) over, keeps accepting for a few seconds, then drains
//!    in-flight requests for `grace_period` and exits. The audit queue is flushed after that.
//! 5. The new process writes the pid file once it holds the sockets, and tells systemd
//!    (`MAINPID=`, `READY=1`) once its SIGHUP handler is installed.
//!
//! If the new process exits before taking over (bad binary, bad config), this one keeps serving
//! and the failure is logged and shown on the admin `/config`.
//!
//! Also the client side, `portcullis upgrade`, and the systemd readiness notification.

use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set once this process has started handing its sockets to a successor (SIGQUIT, from
/// SIGUSR2 or sent directly). Pingora keeps accepting for a few seconds after that and only
/// then drops idle keep-alive connections; answering `Connection: close` from the start of the
/// hand-over moves busy keep-alive clients to a fresh connection (served by either process)
/// before that, so fewer of them meet a connection closed under a request just sent.
static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// Set when the process that took our sockets exits while we are still running: nobody is
/// listening any more, so this process must not exit 0 (see `server::run`).
static SUCCESSOR_FAILED: AtomicBool = AtomicBool::new(false);

pub fn successor_failed() -> bool {
    SUCCESSOR_FAILED.load(Ordering::Relaxed)
}

/// `early_request_filter`: no keep-alive once the hand-over has begun.
pub fn close_when_handing_over(session: &mut pingora::proxy::Session) {
    if HANDING_OVER.load(Ordering::Relaxed) {
        session.set_keepalive(None);
    }
}

/// How long the new process may take to start listening on the upgrade socket.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What this process was started as, captured at start (before any chdir or binary swap):
/// the executable path as invoked and the config path, both absolute.
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub exe: PathBuf,
    pub config: PathBuf,
    /// This process's listening addresses (proxy and admin), comma-separated, for the
    /// successor (see [`INHERITED_ENV`]).
    pub addresses: String,
}

/// Set on the successor: the addresses the old process holds and hands over. An address
/// already in use is expected for these and an error for any other.
pub const INHERITED_ENV: &str = "PORTCULLIS_INHERITED_ADDRS";

/// Whether an address found in use is one the old process will hand over. Without the list
/// (a manual `run --upgrade`) any address may be.
pub fn inherited(addr: &str) -> bool {
    match std::env::var(INHERITED_ENV) {
        Ok(list) => list.split(',').any(|a| a == addr),
        Err(_) => true,
    }
}

impl Relaunch {
    pub fn capture(config: &Path, addresses: Vec<String>) -> Relaunch {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        // argv[0], not /proc/self/exe: after the new version is installed over the old file,
        // /proc/self/exe names the deleted old inode.
        let argv0 = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("portcullis"));
        let exe = if argv0.components().count() > 1 && argv0.is_relative() {
            cwd.join(argv0)
        } else {
            argv0
        };
        Relaunch {
            exe,
            config: cwd.join(config),
            addresses: addresses.join(","),
        }
    }
}

pub struct UpgradeService {
    pub state: Arc<GatewayState>,
    pub relaunch: Relaunch,
    pub upgrade_sock: PathBuf,
    /// Pingora's execution phases (`Server::watch_execution_phase`), to see a hand-over begin
    /// however SIGQUIT was sent. Taken when the service starts.
    pub phases: Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    /// Set in a process started by an upgrade: where the old process writes its final
    /// rate-limit counts.
    pub delta_from: Option<PathBuf>,
}

#[async_trait]
impl BackgroundService for UpgradeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr2 = match signal(SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot install SIGUSR2 handler (binary upgrade): {e}");
                return;
            }
        };
        handler_installed();
        let mut phases = self.phases.lock().ok().and_then(|mut p| p.take());
        let mut handed_over: Option<(crate::ratelimit::local::Exported, PathBuf)> = None;
        if let Some(path) = self.delta_from.clone() {
            tokio::spawn(receive_delta(path));
        }
        loop {
            tokio::select! {
                phase = async { match phases.as_mut() { Some(p) => p.recv().await.ok(), None => std::future::pending().await } } => {
                    match phase {
                        Some(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                            HANDING_OVER.store(true, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        // Closed or lagged: stop listening, keep serving SIGUSR2.
                        None => phases = None,
                    }
                }
                _ = usr2.recv() => {
                    if HANDING_OVER.load(Ordering::Relaxed) {
                        log::warn!("SIGUSR2 ignored: this process is already handing over to a successor");
                        continue;
                    }
                    let relaunch = self.relaunch.clone();
                    let sock = self.upgrade_sock.clone();
                    // Spawning and waiting for the socket are blocking calls.
                    let outcome = tokio::task::spawn_blocking(move || start_successor(&relaunch, &sock))
                        .await
                        .unwrap_or_else(|e| Err(format!("upgrade task failed: {e}")));
                    match outcome {
                        Ok((mut child, exported)) => {
                            handed_over = exported;
                            let pid = child.id();
                            log::info!("binary upgrade: pid {pid} is taking the listening sockets over; this process drains and exits");
                            // From here the new process is the only one meant to listen. If it
                            // dies while we drain, say so and exit non-zero at the end.
                            // (A clean exit is a deliberate stop of the new process, not a failure.)
                            std::thread::spawn(move || match child.wait() {
                                Ok(status) if status.success() => {}
                                status => {
                                    SUCCESSOR_FAILED.store(true, Ordering::Relaxed);
                                    log::error!("binary upgrade: the new process {pid} failed ({status:?}) while this one drains; nothing will be listening, exiting 1 after the drain");
                                }
                            });
                            self.state.set_upgrade(Some(pid), None);
                            HANDING_OVER.store(true, Ordering::Relaxed);
                            if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGQUIT) {
                                log::error!("binary upgrade: cannot raise SIGQUIT: {e}");
                            }
                        }
                        Err(e) => {
                            let e = crate::reload::redact(&e);
                            log::error!("binary upgrade aborted, still serving: {e}");
                            self.state.set_upgrade(None, Some(e));
                        }
                    }
                }
                _ = shutdown.changed() => {
                    // We stop accepting now: what we counted since the export goes to the
                    // successor too, so the hand-over does not hand out the budget twice.
                    if let Some((base, path)) = handed_over.take() {
                        let written = tokio::task::spawn_blocking(move || {
                            crate::ratelimit::local::export_delta(&base, &path)
                        })
                        .await;
                        match written {
                            Ok(Ok(n)) => log::info!("binary upgrade: counts of {n} local rate-limit polic(ies) since the hand-over written for the new process"),
                            Ok(Err(e)) => log::error!("binary upgrade: cannot write the final rate-limit counts: {e}"),
                            Err(e) => log::error!("binary upgrade: final rate-limit counts: {e}"),
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// In a process started by an upgrade: wait (bounded) for the old process's final counts and
/// add them to the live counters.
async fn receive_delta(path: PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if path.exists() {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || crate::ratelimit::local::import_delta(&p))
                .await
            {
                Ok(Ok(n)) => log::info!(
                    "added the previous process's last counts to {n} local rate-limit polic(ies)"
                ),
                Ok(Err(e)) => log::warn!("previous process's last rate-limit counts not used: {e}"),
                Err(e) => log::warn!("previous process's last rate-limit counts: {e}"),
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Check the config, spawn the new binary with `--upgrade` and wait until it listens on the
/// upgrade socket. Returns the new process.
/// A started successor, and what was exported for it (to send the difference at the end).
type Started = (
    std::process::Child,
    Option<(crate::ratelimit::local::Exported, PathBuf)>,
);

fn start_successor(r: &Relaunch, sock: &Path) -> Result<Started, String> {
    crate::config::load(&r.config).map_err(|e| {
        format!(
            "{} is invalid: {}",
            r.config.display(),
            e.lines().join("; ")
        )
    })?;
    // A socket file left by an earlier upgrade would look like a ready successor.
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove stale {}: {e}", sock.display())),
    }
    // Local rate-limit counts go to the successor, so an upgrade refills no bucket.
    let handover = sock.with_extension("limits");
    let mut cmd = std::process::Command::new(&r.exe);
    cmd.arg("run")
        .arg("-c")
        .arg(&r.config)
        .arg("--upgrade")
        .stdin(std::process::Stdio::null());
    // The successor may find only these addresses taken (by us, until we hand them over).
    cmd.env(INHERITED_ENV, &r.addresses);
    let delta = crate::ratelimit::local::delta_path(&handover);
    let _ = std::fs::remove_file(&delta);
    let exported = match crate::ratelimit::local::export(&handover) {
        Ok(base) => {
            log::info!(
                "binary upgrade: {} local rate-limit polic(ies) written to {} for the new process",
                base.len(),
                handover.display()
            );
            cmd.env(crate::ratelimit::local::HANDOVER_ENV, &handover);
            Some((base, delta))
        }
        Err(e) => {
            log::error!(
                "binary upgrade: cannot write {} ({e}); the new process starts its local rate limits from zero",
                handover.display()
            );
            cmd.env_remove(crate::ratelimit::local::HANDOVER_ENV);
            None
        }
    };
    match spawn_and_wait(r, sock, cmd) {
        Ok(child) => Ok((child, exported)),
        Err(e) => {
            // The seeds and counts are not left lying around for nobody.
            let _ = std::fs::remove_file(&handover);
            Err(e)
        }
    }
}

fn spawn_and_wait(
    r: &Relaunch,
    sock: &Path,
    mut cmd: std::process::Command,
) -> Result<std::process::Child, String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", r.exe.display()))?;
    let deadline = Instant::now() + SPAWN_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{} exited with {status} before taking the sockets over",
                r.exe.display()
            ));
        }
        if let Ok(meta) = std::fs::symlink_metadata(sock) {
            // The sockets go to whoever listens there: only to a socket of our own user (a
            // socket another local user bound first would receive them otherwise).
            if let Err(e) = our_socket(&meta) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{}: {e}; not handing the sockets over",
                    sock.display()
                ));
            }
            // Bound; give it a moment to reach listen(). Pingora's sender retries anyway.
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited with {status} before taking the sockets over",
                    r.exe.display()
                ));
            }
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{} did not open {} within {SPAWN_TIMEOUT:?}",
                r.exe.display(),
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Unix socket owned by this process's user.
fn our_socket(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !meta.file_type().is_socket() {
        return Err("not a socket".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by this process (uid {me})",
            meta.uid()
        ));
    }
    Ok(())
}

/// Whether `pid` is a running process (a zombie waiting for its parent counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Signal handlers installed so far: shutdown (SIGQUIT/SIGTERM/SIGINT), reload (SIGHUP),
/// upgrade (SIGUSR2), audit reopen (SIGUSR1).
static HANDLERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const ALL_HANDLERS: usize = 4;

/// Called by each of the four once its signal streams exist.
pub fn handler_installed() {
    HANDLERS.fetch_add(1, Ordering::AcqRel);
}

/// True once every signal handler is installed: `/readyz` waits for it, so an operator (or a
/// test) who sees "ready" can send SIGHUP/SIGUSR1/SIGUSR2 without hitting a default action
/// that would kill the process.
pub fn signals_ready() -> bool {
    HANDLERS.load(Ordering::Acquire) >= ALL_HANDLERS
}

/// [`notify_ready`] once every signal handler is installed (at most 10 s of waiting): before
/// that, a `systemctl reload` or `kill -USR2` could find no handler.
pub async fn notify_ready_when_handled() {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !signals_ready() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    notify_ready();
}

/// Tell systemd (`Type=notify`, `NotifyAccess=all`) that this process is ready and is the
/// service's main process. Called once the listening sockets are held, so during an upgrade
/// systemd follows the new process. A no-op outside systemd.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::net::UnixDatagram;
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?;
        } else {
            sock.send_to(msg.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        log::warn!("cannot notify systemd at {path:?}: {e}");
    }
}

/// `portcullis upgrade`: check the config with this binary, send SIGUSR2 to the instance named
/// by the pid file, and wait until a new pid answers on the admin `/config` and the old process
/// has exited. Returns the line to print.
pub fn upgrade_running(path: &Path, timeout: Duration) -> Result<String, Vec<String>> {
    let one = |s: String| vec![s];
    let (cfg, pid, before) = crate::reload::running_instance(path)?;
    let old = nix::unistd::Pid::from_raw(pid);
    let failures_before = before["upgrade"]["failures"].as_u64().unwrap_or(0);
    nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGUSR2)
        .map_err(|e| one(format!("cannot signal pid {pid}: {e}")))?;
    let admin = cfg.process.admin;
    let started = Instant::now();
    let deadline = started + timeout;
    // Phase 1: a new process answers on the (handed-over) admin socket.
    let new_pid = loop {
        if Instant::now() > deadline {
            return Err(one(format!(
                "no new process took over within {timeout:?} (see the gateway log)"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
        let Ok(now) = crate::reload::admin_config(admin) else {
            continue;
        };
        match now["pid"].as_i64() {
            Some(p) if p != i64::from(pid) => break p,
            _ => {}
        }
        if now["upgrade"]["failures"].as_u64().unwrap_or(0) > failures_before {
            return Err(one(format!(
                "upgrade aborted, pid {pid} is still serving: {}",
                now["upgrade"]["last_error"]
                    .as_str()
                    .unwrap_or("unknown error")
            )));
        }
    };
    let took_over = started.elapsed();
    // Phase 2: the old process drains (grace period) and exits.
    let drain_limit = cfg.process.grace_period + cfg.process.graceful_shutdown_timeout;
    let drain_deadline = Instant::now() + drain_limit + Duration::from_secs(15);
    while alive(pid) {
        if Instant::now() > drain_deadline {
            return Err(one(format!(
                "pid {new_pid} took over, but the old pid {pid} is still running after {:?}",
                drain_limit + Duration::from_secs(15)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!(
        "upgraded: pid {pid} -> {new_pid} (took over in {:.1} s; old process drained and exited after {:.1} s)",
        took_over.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_socket_receives_the_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(our_socket(&std::fs::symlink_metadata(&path).unwrap()).is_ok());
        let plain = dir.path().join("f");
        std::fs::write(&plain, "x").unwrap();
        assert_eq!(
            our_socket(&std::fs::symlink_metadata(&plain).unwrap()).unwrap_err(),
            "not a socket"
        );
        // Another user's socket (only root can make one here).
        if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_ok() {
            let e = our_socket(&std::fs::symlink_metadata(&path).unwrap()).unwrap_err();
            assert!(e.starts_with("owned by uid 65534"), "{e}");
        }
    }
}
