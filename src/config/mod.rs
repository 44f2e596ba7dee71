//! Configuration: raw YAML structs → compile/validate → immutable [`Snapshot`].
//!
//! `load` is the one entry point, used by `portcullis check`, `portcullis run` and (later)
//! reloads. It never panics: every problem becomes a [`ConfigError`] whose lines are
//! `yaml.path: message`, like `routes[3].upstream: unknown upstream "ordrs"`.

pub mod compile;
pub mod raw;
pub mod units;

use crate::clientip::CidrSet;
use crate::route::Router;
use crate::upstream::Pool;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// One validation problem, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// YAML syntax, unknown field, wrong type or bad value: serde stops at the first one.
    #[error("{0}")]
    Syntax(String),
    /// Semantic problems: all of them, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Issue>),
}

impl ConfigError {
    /// Every problem as its own line, for `check` output and logs.
    pub fn lines(&self) -> Vec<String> {
        self.to_string().lines().map(str::to_string).collect()
    }
}

/// A TLS listener's files, already checked to be readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client CA bundle and mode, when the listener does mTLS.
    pub client_auth: Option<(PathBuf, raw::ClientAuth)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<ListenerTls>,
}

/// Settings that need new sockets or a new process to change; read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSettings {
    pub listeners: Vec<Listener>,
    pub admin: SocketAddr,
    pub threads: usize,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    /// The audit trail (read at start like the listeners: its file and writer are per process).
    pub audit: Option<AuditSettings>,
    /// Poll the config file and reload when it changes.
    pub watch_config: bool,
    pub h2: H2Settings,
}

impl ProcessSettings {
    /// The YAML sections that differ from `other`: these are fixed for the life of a process
    /// (sockets, threads, the audit writer) and take effect only after an upgrade or restart.
    pub fn restart_needed(&self, other: &ProcessSettings) -> Vec<&'static str> {
        let mut out = Vec::new();
        // Certificate and key files are reloaded in place (`tls::prepare`); everything else
        // about a listener is its socket or its TLS context.
        let sockets = |s: &ProcessSettings| {
            s.listeners
                .iter()
                .map(|l| (l.addr, l.tls.as_ref().map(|t| t.client_auth.clone())))
                .collect::<Vec<_>>()
        };
        if sockets(self) != sockets(other) {
            out.push("server.listen");
        }
        if self.admin != other.admin {
            out.push("server.admin");
        }
        if self.threads != other.threads {
            out.push("server.threads");
        }
        if self.pid_file != other.pid_file {
            out.push("server.pid_file");
        }
        if self.upgrade_sock != other.upgrade_sock {
            out.push("server.upgrade_sock");
        }
        if self.grace_period != other.grace_period {
            out.push("server.grace_period");
        }
        if self.graceful_shutdown_timeout != other.graceful_shutdown_timeout {
            out.push("server.graceful_shutdown_timeout");
        }
        if self.watch_config != other.watch_config {
            out.push("server.watch_config");
        }
        if self.audit != other.audit {
            out.push("audit");
        }
        if self.h2 != other.h2 {
            out.push("server.limits (HTTP/2 settings)");
        }
        out
    }
}

/// Bytes that must never be printed (`Debug` shows only their length).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub file: Option<PathBuf>,
    pub stdout: bool,
    pub queue: usize,
    pub on_overflow: raw::OnOverflow,
    pub fsync: raw::FsyncMode,
    pub fsync_interval: Duration,
    pub chain: bool,
    pub hmac_key: Option<SecretBytes>,
    pub capture_headers: Vec<http::header::HeaderName>,
    pub token_fingerprint: bool,
    pub query: raw::AuditQuery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_timeout: Duration,
}

/// HTTP/2 settings, sent in the connection preface (fixed per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    pub max_concurrent_streams: u32,
    /// Decoded header list size (`SETTINGS_MAX_HEADER_LIST_SIZE`): `max_header_bytes` at start.
    pub max_header_list_size: u32,
    /// An h2 connection without open streams is closed after this (`keepalive_timeout`).
    pub idle_timeout: Duration,
}

/// The immutable runtime model. A request pins one `Arc<Snapshot>` for its whole life.
#[derive(Debug)]
pub struct Snapshot {
    /// Set when the snapshot is published; 0 for a snapshot that was only checked.
    pub generation: u64,
    pub router: Router,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub authenticators: BTreeMap<String, Arc<crate::auth::Authenticator>>,
    pub trusted_proxies: CidrSet,
    /// Header a trusted proxy uses for the client address.
    pub client_ip_header: raw::ClientIpHeader,
    pub limits: Limits,
    /// The Redis server of `backend: redis` rate limits (connected by a background service).
    pub redis: Option<Arc<crate::ratelimit::redis::RedisBackend>>,
}

#[derive(Debug)]
pub struct Config {
    /// Accepted but risky settings, printed by `check` and logged at load.
    pub warnings: Vec<Issue>,
    pub process: ProcessSettings,
    pub snapshot: Snapshot,
    /// Hex SHA-256 of the YAML text this was compiled from (shown by the admin `/config`).
    pub source_sha256: String,
}

/// The parser quotes names and values from the YAML in its messages; a control character
/// there (a newline in a key) would split one error into several log lines or forge some.
pub(crate) fn escape_controls(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Largest file the config reads: itself, key, secret, JWKS and certificate files.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Read a file the config names: a regular file of at most [`MAX_FILE_BYTES`]. A device
/// (`/dev/zero`), FIFO or directory is refused before it is opened, so `check` and a reload
/// can neither hang nor fill memory on a mistyped path.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "Is a directory",
        ));
    }
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(out)
}

/// Read, parse and compile a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    let bytes = read_file(path).map_err(read)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8",
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base)
}

/// Parse and compile YAML text; relative file paths in it are resolved against `base`.
pub fn load_str(text: &str, base: &Path) -> Result<Config, ConfigError> {
    let raw = parse(text)?;
    let mut config = compile::compile(&raw, base).map_err(ConfigError::Invalid)?;
    config.source_sha256 = crate::auth::api_key::sha256(text.as_bytes())
        .map(|d| crate::auth::api_key::hex(&d))
        .unwrap_or_default();
    Ok(config)
}

/// Parse YAML into the raw structs. serde_yaml_ng reports the YAML path of the failing node
/// (`server.listen[0]: unknown field ...`) plus line and column.
pub fn parse(text: &str) -> Result<raw::RawConfig, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(escape_controls(&e.to_string())))
}
