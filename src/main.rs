//! The `portcullis` command: `run`, `check`, `reload`, `upgrade`, `keygen`, `audit verify`, `echo`. Thin by design: parse the CLI, load the
//! config, hand over to `server::run`.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// mimalloc: glibc malloc/free showed up at ~9% of CPU samples in the proxy path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "conf/portcullis.yaml";

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "API gateway security layer on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take over the listening sockets of a running instance (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a configuration file and print every problem with its YAML path.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Reload the running instance: check the file, send SIGHUP to the pid in
    /// `server.pid_file`, and wait for the instance to report the result (exit 1 if rejected).
    Reload {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// How long to wait for the instance's answer.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Upgrade the running instance to the binary now installed at the path it was started
    /// from: check the config, send SIGUSR2 to the pid in `server.pid_file`, and wait until the
    /// new process holds the sockets and the old one has drained and exited.
    Upgrade {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// How long to wait for the new process to take over.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Print a new random API key and the config line that stores only its SHA-256.
    Keygen {
        /// Key id for the config line.
        #[arg(long, default_value = "new-key")]
        id: String,
        /// Consumer the key belongs to.
        #[arg(long, default_value = "new-consumer")]
        consumer: String,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the demo/test echo upstream.
    Echo {
        /// Address to listen on (repeatable).
        #[arg(short, long, required = true)]
        listen: Vec<String>,
        /// Name reported in every answer (to tell targets apart).
        #[arg(short, long, default_value = "echo")]
        name: String,
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<String>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<String>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Answer every request with a fixed "ok" body (for benchmarks).
        #[arg(long)]
        fixed: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check sequence numbers, hash chains and gap records of audit files (in order, as one
    /// stream: rotated files can be given oldest first). Exit code 1 at the first bad line.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Environment variable holding the chain's HMAC key.
        #[arg(long, conflicts_with = "hmac_key_file")]
        hmac_key_env: Option<String>,
        /// File holding the chain's HMAC key.
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// Every process must appear from its first record (nothing cut off the front).
        #[arg(long)]
        strict: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match portcullis::config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes)",
                    config.display(),
                    c.process.listeners.len(),
                    c.snapshot.pools.len(),
                    c.snapshot.router.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                let lines = e.lines();
                for l in &lines {
                    eprintln!("error: {l}");
                }
                eprintln!(
                    "{}: {} error(s), configuration rejected",
                    config.display(),
                    lines.len()
                );
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            // Written by the process being upgraded (SIGUSR2): continue its local rate-limit
            // counters. Must come before the config compiles them.
            let handed_over = if upgrade {
                std::env::var_os(portcullis::ratelimit::local::HANDOVER_ENV).and_then(|path| {
                    portcullis::ratelimit::local::import(std::path::Path::new(&path))
                        .map_err(|e| {
                            log::warn!("local rate limits start from zero: hand-over file {e}")
                        })
                        .ok()
                })
            } else {
                None
            };
            let loaded = match portcullis::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    for l in e.lines() {
                        eprintln!("error: {l}");
                    }
                    eprintln!("{}: configuration rejected, not starting", config.display());
                    return ExitCode::FAILURE;
                }
            };
            for w in &loaded.warnings {
                log::warn!("config: {w}");
            }
            if let Some(n) = handed_over {
                let changed = portcullis::ratelimit::local::drop_unclaimed_imports();
                log::info!(
                    "continuing {} local rate-limit polic(ies) from the previous process ({changed} changed with the upgrade and start from zero)",
                    n - changed
                );
            }
            let opts = portcullis::server::RunOptions {
                config_path: config,
                upgrade,
                daemon,
            };
            match portcullis::server::run(loaded, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    hmac_key_env,
                    hmac_key_file,
                    strict,
                },
        } => audit_verify(&files, hmac_key_env, hmac_key_file, strict),
        Command::Reload {
            config,
            timeout_secs,
        } => print_outcome(portcullis::reload::signal_running(
            &config,
            std::time::Duration::from_secs(timeout_secs),
        )),
        Command::Upgrade {
            config,
            timeout_secs,
        } => print_outcome(portcullis::upgrade::upgrade_running(
            &config,
            std::time::Duration::from_secs(timeout_secs),
        )),
        Command::Keygen { id, consumer } => {
            let (key, sha) = portcullis::auth::api_key::generate();
            println!("key: {key}");
            println!("# give the key to the consumer; put only this line under api_key.keys:");
            println!("- {{ id: {id}, sha256: \"{sha}\", consumer: {consumer}, scopes: [] }}");
            ExitCode::SUCCESS
        }
        Command::Echo {
            listen,
            name,
            tls_cert,
            tls_key,
            threads,
            fixed,
        } => {
            let tls = tls_cert.zip(tls_key);
            match portcullis::echo::run(&listen, &name, tls, threads, fixed) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn print_outcome(outcome: Result<String, Vec<String>>) -> ExitCode {
    match outcome {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(lines) => {
            for l in &lines {
                eprintln!("error: {l}");
            }
            ExitCode::FAILURE
        }
    }
}

fn audit_verify(
    files: &[PathBuf],
    env: Option<String>,
    file: Option<PathBuf>,
    strict: bool,
) -> ExitCode {
    use portcullis::audit::chain;
    let key = match (env, file) {
        (Some(var), _) => match std::env::var(&var) {
            Ok(v) => Some(v.into_bytes()),
            Err(_) => {
                eprintln!("error: environment variable {var} is not set");
                return ExitCode::from(2);
            }
        },
        (None, Some(p)) => match std::fs::read(&p) {
            Ok(mut b) => {
                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    b.pop();
                }
                Some(b)
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
    };
    let mut state = chain::VerifyState::new(key, strict);
    let mut report = chain::Report::default();
    for f in files {
        let name = f.display().to_string();
        // Lossy: a line torn by a failed write may end inside a UTF-8 sequence.
        let text = match std::fs::read(f) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) => {
                eprintln!("error: cannot read {name}: {e}");
                return ExitCode::from(2);
            }
        };
        chain::verify_lines(&name, text.lines(), &mut state, &mut report);
        if report.failure.is_some() {
            break;
        }
    }
    state.finish(&mut report);
    println!(
        "{} records ({} requests, {} chain starts, {} gap records reporting {} lost, {} torn lines) from {} process(es)",
        report.records,
        report.requests,
        report.chain_starts,
        report.gap_records,
        report.lost,
        report.torn_lines,
        report.instances
    );
    match report.failure {
        Some((file, line, problem)) => {
            println!("FAILED at {file}:{line}: {problem}");
            ExitCode::FAILURE
        }
        None if report.records == 0 => {
            println!("FAILED: no records");
            ExitCode::FAILURE
        }
        None if !state.chained() => {
            println!("ok (sequence numbers only: the file has no hash chain)");
            ExitCode::SUCCESS
        }
        None => {
            println!("ok");
            ExitCode::SUCCESS
        }
    }
}
