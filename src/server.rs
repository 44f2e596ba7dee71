//! Builds and runs the Pingora server from a compiled [`Config`]: the proxy service on every
//! `server.listen` address, the admin service, and the background services (upstream health,
//! JWKS, Redis, audit writer, config reload).

use crate::admin::AdminApp;
use crate::config::Config;
use crate::proxy::Gateway;
use crate::state::GatewayState;
use crate::upstream::health::HealthService;
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;

pub struct RunOptions {
    pub config_path: PathBuf,
    pub upgrade: bool,
    pub daemon: bool,
}

/// Fail early with a clear message when an address cannot be bound (port in use, no such
/// local address, privileged port), instead of a panic deep inside Pingora.
pub fn check_bind(addr: &str) -> Result<(), String> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn addr_in_use(addr: &str) -> bool {
    matches!(std::net::TcpListener::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// The pid file, written aside before the sockets are taken over and renamed into place after.
/// `create_new` never follows or reuses a file (or symlink) planted at the temporary name, and
/// the rename replaces a symlink at the final name instead of writing through it.
struct PidFile {
    tmp: PathBuf,
    path: PathBuf,
}

impl PidFile {
    fn prepare(path: &str) -> Result<PidFile, String> {
        use std::io::Write;
        let path = PathBuf::from(path);
        let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(format!("{}\n", std::process::id()).as_bytes()));
        written.map_err(|e| format!("server.pid_file: cannot write {}: {e}", tmp.display()))?;
        Ok(PidFile { tmp, path })
    }

    fn commit(self) {
        if let Err(e) = std::fs::rename(&self.tmp, &self.path) {
            log::error!("server.pid_file: cannot write {}: {e}", self.path.display());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub fn run(config: Config, opts: RunOptions) -> Result<(), String> {
    let p = &config.process;
    for addr in p
        .listeners
        .iter()
        .map(|l| l.addr.to_string())
        .chain([p.admin.to_string()])
    {
        match check_bind(&addr) {
            Ok(()) => {}
            // On --upgrade the old process still holds its proxy and admin sockets and hands
            // them over (Pingora matches them by address); any other failure is ours to report.
            Err(_) if opts.upgrade && addr_in_use(&addr) && crate::upgrade::inherited(&addr) => {}
            Err(e) => return Err(e),
        }
    }
    // Everything that can fail happens before `bootstrap`: once an upgrading process holds the
    // sockets, the old one is about to stop accepting, and failing then would leave nobody
    // listening.
    let mut tls = Vec::new();
    for l in &p.listeners {
        tls.push(match &l.tls {
            None => None,
            Some(t) => Some(
                crate::tls::settings(l.addr, t)
                    .map_err(|e| format!("server.listen {}: TLS setup failed: {e}", l.addr))?,
            ),
        });
    }
    // Pingora writes the pid file only when it daemonizes; operators (and `portcullis reload`,
    // `kill -HUP "$(cat pid_file)"`) need it in the foreground too.
    let pid_file = if opts.daemon {
        None
    } else {
        Some(PidFile::prepare(&p.pid_file)?)
    };

    let conf = ServerConf {
        threads: p.threads,
        // One runtime per thread without work stealing: measurably cheaper per request
        // (see docs/performance.md) and the proxy never blocks a thread.
        work_stealing: false,
        pid_file: p.pid_file.clone(),
        upgrade_sock: p.upgrade_sock.clone(),
        grace_period_seconds: Some(p.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(p.graceful_shutdown_timeout.as_secs().max(1)),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // With --upgrade this waits for the old process to hand its sockets over (and exits 1 if
    // none arrive), so the pid file below changes only once this process holds them.
    server.bootstrap();
    if let Some(f) = pid_file {
        f.commit();
    }

    let audit = p
        .audit
        .clone()
        .map(|a| crate::audit::Audit::new(a, crate::audit::new_instance_id()));
    let relaunch = crate::upgrade::Relaunch::capture(
        &opts.config_path,
        p.listeners
            .iter()
            .map(|l| l.addr.to_string())
            .chain([p.admin.to_string()])
            .collect(),
    );
    let status = crate::reload::ConfigStatus::new(relaunch.config.clone(), config.source_sha256);
    let state = GatewayState::new(config.snapshot, audit, status);
    let process = config.process;
    let process_upgrade_sock = process.upgrade_sock.clone();

    let mut http = pingora::proxy::HttpProxy::new(
        Gateway {
            state: state.clone(),
        },
        server.configuration.clone(),
    );
    http.handle_init_modules();
    http.h2_options = Some(h2_options(&process.h2));
    let mut server_options = pingora::apps::HttpServerOptions::default();
    server_options.h2_idle_timeout = Some(process.h2.idle_timeout);
    http.server_options = Some(server_options);
    // Every connection passes the front door (header/keep-alive deadlines) first.
    let mut proxy = Service::new(
        "portcullis proxy".to_string(),
        crate::frontdoor::FrontDoor {
            proxy: Arc::new(http),
            state: state.clone(),
        },
    );
    for (l, settings) in process.listeners.iter().zip(tls) {
        let addr = l.addr.to_string();
        match settings {
            None => proxy.add_tcp(&addr),
            Some(settings) => proxy.add_tls_with_settings(&addr, None, settings),
        }
    }
    server.add_service(proxy);

    let mut admin = Service::new(
        "portcullis admin".to_string(),
        AdminApp {
            state: state.clone(),
        },
    );
    admin.threads = Some(1);
    admin.add_tcp(&process.admin.to_string());
    server.add_service(admin);

    server.add_service(background_service(
        "upstream health",
        HealthService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "jwks fetcher",
        crate::auth::jwks::JwksService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "redis connector",
        crate::ratelimit::redis::RedisConnector {
            state: state.clone(),
        },
    ));
    // Always installed: SIGUSR1's default action would kill a gateway without an audit file
    // that logrotate signals anyway.
    server.add_service(background_service(
        "audit writer",
        AuditService {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "config reload",
        crate::reload::ReloadService {
            state: state.clone(),
            path: opts.config_path,
            process,
        },
    ));
    server.add_service(background_service(
        "binary upgrade",
        crate::upgrade::UpgradeService {
            state: state.clone(),
            relaunch,
            upgrade_sock: PathBuf::from(&process_upgrade_sock),
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
            delta_from: opts
                .upgrade
                .then(|| std::env::var_os(crate::ratelimit::local::HANDOVER_ENV))
                .flatten()
                .map(|p| crate::ratelimit::local::delta_path(std::path::Path::new(&p))),
        },
    ));
    log::info!("portcullis {} starting", env!("CARGO_PKG_VERSION"));
    // `run` returns once every runtime has stopped (after the grace period): the logging phase
    // of every request that got an answer has run, so the audit queue can be drained now.
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(ShutdownSignals),
    });
    if let Some(a) = &state.audit {
        a.sink.close(std::time::Duration::from_secs(10));
    }
    if crate::upgrade::successor_failed() {
        // We handed the sockets to a process that then died: nobody is listening. Exit
        // non-zero so a supervisor (systemd `Restart=on-failure`) starts the gateway again.
        log::error!("portcullis stopped after a failed hand-over; exiting 1");
        std::process::exit(1)
    }
    log::info!("portcullis stopped");
    std::process::exit(0)
}

/// Pingora's signals, except that SIGINT drains like SIGTERM (Pingora's default exits at once,
/// cutting off requests in flight): SIGQUIT hands the sockets to a new process and drains,
/// SIGTERM and SIGINT stop accepting and drain for `grace_period`. SIGKILL is the hard stop.
struct ShutdownSignals;

#[async_trait]
impl pingora::server::ShutdownSignalWatch for ShutdownSignals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        async fn on(stream: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
            match stream {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    log::error!("cannot install the {name} handler: {e}");
                    std::future::pending::<()>().await
                }
            }
        }
        // Register all three before counting them as installed (see `upgrade::notify_ready`).
        let (quit, term, int) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        crate::upgrade::handler_installed();
        tokio::select! {
            _ = on(quit, "SIGQUIT") => ShutdownSignal::GracefulUpgrade,
            _ = on(term, "SIGTERM") => ShutdownSignal::GracefulTerminate,
            _ = on(int, "SIGINT") => {
                log::info!("SIGINT received: draining like SIGTERM");
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Starts the audit writer thread (here, not before `run`: Pingora may fork to daemonize and
/// threads do not survive a fork) and reopens the audit file on SIGUSR1 (logrotate).
struct AuditService {
    state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for AuditService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        if let Some(audit) = &self.state.audit {
            audit.sink.start();
        }
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot install SIGUSR1 handler (audit reopen): {e}");
                return;
            }
        };
        crate::upgrade::handler_installed();
        loop {
            tokio::select! {
                _ = usr1.recv() => match &self.state.audit {
                    Some(audit) => {
                        log::info!("audit: reopening the file (SIGUSR1)");
                        audit.sink.request_reopen();
                    }
                    None => log::info!("SIGUSR1: no audit file to reopen"),
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// HTTP/2 limits from `server.limits`: streams per connection and the decoded header list
/// (Pingora's defaults are 100 and 64 KiB; `max_header_bytes` is usually smaller). The h2
/// crate's own reset-flood guards (CVE-2023-44487: at most 20 streams reset before they are
/// accepted, 1,024 locally reset streams) stay at its defaults.
fn h2_options(h2: &crate::config::H2Settings) -> pingora::protocols::http::v2::server::H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(h2.max_concurrent_streams);
    o.max_header_list_size(h2.max_header_list_size);
    o
}
