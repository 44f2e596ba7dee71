//! Black-box test harness: starts the real `portcullis` binary (gateway and echo upstreams)
//! on random loopback ports, talks raw HTTP/1.1 to it, and tears everything down on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(p: &str) -> String {
    repo_root()
        .join("tests/fixtures")
        .join(p)
        .to_string_lossy()
        .into_owned()
}

/// A port that was free a moment ago. Good enough on loopback for tests.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn signal(&self, sig: &str) {
        // The shell's builtin kill: no dependency on procps being installed.
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.pid())])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn portcullis");
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

fn wait_for_port(addr: SocketAddr, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "process exited with {status} before listening on {addr}:\n{}",
                proc.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "nothing listening on {addr} after 15s:\n{}",
        proc.log_text()
    );
}

/// An echo upstream (`portcullis echo`).
pub struct Echo {
    pub addr: SocketAddr,
    pub name: String,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Echo {
    pub fn start(name: &str) -> Echo {
        Self::start_with(name, None)
    }

    pub fn start_tls(name: &str) -> Echo {
        Self::start_with(
            name,
            Some((fixture("tls/server.pem"), fixture("tls/server.key"))),
        )
    }

    fn start_with(name: &str, tls: Option<(String, String)>) -> Echo {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let listen = addr.to_string();
        let mut args = vec!["echo", "--listen", &listen, "--name", name];
        if let Some((c, k)) = &tls {
            args.extend(["--tls-cert", c, "--tls-key", k]);
        }
        let mut proc = spawn(&args, &dir.path().join("echo.log"));
        wait_for_port(addr, &mut proc);
        Echo {
            addr,
            name: name.to_string(),
            proc,
            _dir: dir,
        }
    }
}

/// A running gateway with its own config file, pid file and upgrade socket.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Gateway {
    /// `server_extra` is appended inside `server:` (indent by two spaces); `body` holds
    /// `upstreams:` and `routes:`.
    pub fn config_text(
        port: u16,
        admin: u16,
        dir: &Path,
        extra_listeners: &str,
        server_extra: &str,
        body: &str,
    ) -> String {
        format!(
            "server:\n  listen:\n    - addr: \"127.0.0.1:{port}\"\n{extra_listeners}  admin: \"127.0.0.1:{admin}\"\n  threads: 2\n  pid_file: {d}/portcullis.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n{server_extra}\n{body}\n",
            d = dir.display()
        )
    }

    pub fn start(server_extra: &str, body: &str) -> Gateway {
        Self::start_with("", server_extra, body)
    }

    /// Like [`Gateway::start`] with extra `- addr: ...` entries under `server.listen`.
    pub fn start_with(extra_listeners: &str, server_extra: &str, body: &str) -> Gateway {
        Self::start_edited(extra_listeners, server_extra, body, |t| t)
    }

    /// Like [`Gateway::start_with`], with the config text passed through `edit` first.
    pub fn start_edited(
        extra_listeners: &str,
        server_extra: &str,
        body: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let admin_port = free_port();
        let text = Self::config_text(
            port,
            admin_port,
            dir.path(),
            extra_listeners,
            server_extra,
            body,
        );
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(&config, edit(text)).expect("write config");
        let cfg = config.to_string_lossy().into_owned();
        let mut proc = spawn(&["run", "-c", &cfg], &dir.path().join("gateway.log"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        wait_for_port(admin, &mut proc);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = try_request(
                admin,
                b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            ) {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        wait_for_port(addr, &mut proc);
        Gateway {
            addr,
            admin,
            proc,
            dir,
            config,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    /// The admin `/metrics` text, once it has settled. Request metrics are recorded in the
    /// `logging` phase, which Pingora runs after the response is sent, so a scrape right after
    /// the last answer can race it; two equal scrapes 25 ms apart (at most ~1 s) end the race.
    pub fn metrics(&self) -> String {
        let scrape = || {
            let r = get(self.admin, "/metrics");
            assert_eq!(r.status, 200);
            r.text()
        };
        let mut last = scrape();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(25));
            let next = scrape();
            if next == last {
                break;
            }
            last = next;
        }
        last
    }

    /// Value of the metric line that starts with `prefix` (exact series), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
    /// The echo upstream's view of one request header (first value).
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_string)
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Send raw bytes, read the whole response (the request should say `Connection: close`).
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    try_request(addr, raw).unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
}

pub fn try_request(addr: SocketAddr, raw: &[u8]) -> Result<Response, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.write_all(raw).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // Read until EOF, or until one complete response has arrived.
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_response(&buf, raw.starts_with(b"HEAD ")) {
                    return Ok(r);
                }
            }
            Err(e) if buf.is_empty() => return Err(e.to_string()),
            Err(_) => break,
        }
    }
    if let Some(r) = parse_response(&buf, raw.starts_with(b"HEAD ")) {
        return Ok(r);
    }
    // A body delimited by connection close.
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete response: {:?}", String::from_utf8_lossy(&buf)))?;
    let mut r = parse_response(&[&buf[..end + 4], b"\r\n"].concat(), true)
        .ok_or_else(|| format!("bad response: {:?}", String::from_utf8_lossy(&buf)))?;
    r.body = buf[end + 4..].to_vec();
    Ok(r)
}

/// Parse one complete response from `buf`; `None` if more bytes are needed.
pub fn parse_response(buf: &[u8], head: bool) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(Response {
            status,
            headers,
            body: Vec::new(),
        });
    }
    if let Some(cl) = find("content-length") {
        let n: usize = cl.parse().ok()?;
        if rest.len() < n {
            return None;
        }
        return Some(Response {
            status,
            headers,
            body: rest[..n].to_vec(),
        });
    }
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut p = rest;
        loop {
            let le = p.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&p[..le]).trim(), 16).ok()?;
            p = &p[le + 2..];
            if size == 0 {
                return Some(Response {
                    status,
                    headers,
                    body,
                });
            }
            if p.len() < size + 2 {
                return None;
            }
            body.extend_from_slice(&p[..size]);
            p = &p[size + 2..];
        }
    }
    None
}

/// Run `portcullis` with args; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Hex SHA-256 of an API key, computed by coreutils (independently of the gateway's code).
pub fn sha(key: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("printf '%s' '{key}' | sha256sum")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

/// An HS256 JWT over `claims`, signed with `secret` (the test's own signer, not the gateway's).
pub fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A real `redis-server` on a free loopback port, without persistence; killed on drop.
/// (`scripts/test.sh` installs Redis through `scripts/deps.sh`.)
pub struct RedisServer {
    pub port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = dir.path().join("redis.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.path().to_string_lossy(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn redis-server (run scripts/deps.sh)");
        let mut proc = Proc { child, log };
        wait_for_port(format!("127.0.0.1:{port}").parse().unwrap(), &mut proc);
        RedisServer {
            port,
            proc,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

/// A GET with extra request headers.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    request(addr, raw.as_bytes())
}

/// One kind of request a [`Load`] sends, with the statuses it may get.
#[derive(Clone)]
pub struct LoadReq {
    pub kind: &'static str,
    pub raw: Vec<u8>,
    pub allowed: Vec<u16>,
}

impl LoadReq {
    /// A keep-alive GET with extra headers.
    pub fn get(
        kind: &'static str,
        path: &str,
        headers: &[(&str, &str)],
        allowed: &[u16],
    ) -> LoadReq {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        LoadReq {
            kind,
            raw: raw.into_bytes(),
            allowed: allowed.to_vec(),
        }
    }
}

/// What a [`Load`] saw.
#[derive(Default, Debug)]
pub struct LoadStats {
    /// Responses received.
    pub responses: u64,
    /// (kind, status) -> count.
    pub statuses: std::collections::BTreeMap<(String, u16), u64>,
    /// Connection failures and unexpected statuses, with details (first 20 kept).
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Requests re-sent on a fresh connection because a reused keep-alive connection was closed
    /// by the server before any byte of the answer (RFC 9112 §9.3.1; what every HTTP client does
    /// for idempotent requests). A second failure counts as an error.
    pub stale_retries: u64,
    /// `x-request-id` of every response (from the header, or the echo's view of it).
    pub request_ids: Vec<String>,
}

impl LoadStats {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 20 {
            self.error_samples.push(e);
        }
    }
    fn merge(&mut self, o: LoadStats) {
        self.responses += o.responses;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.errors += o.errors;
        for e in o.error_samples {
            if self.error_samples.len() < 20 {
                self.error_samples.push(e);
            }
        }
        self.stale_retries += o.stale_retries;
        self.request_ids.extend(o.request_ids);
    }
}

/// A steady load on keep-alive connections: `clients` threads, each sending the next request
/// kind every `interval`, until stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadStats>>,
}

/// Read one response from a keep-alive connection. `Ok(None)`: closed before any byte.
fn read_one(s: &mut TcpStream, head: bool) -> Result<Option<Response>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(format!("closed mid-response after {} bytes", buf.len())),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_response(&buf, head) {
                    return Ok(Some(r));
                }
            }
            Err(e)
                if buf.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(format!("read: {e} after {} bytes", buf.len())),
        }
    }
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, interval: Duration, reqs: Vec<LoadReq>) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let reqs = reqs.clone();
                std::thread::spawn(move || {
                    let mut st = LoadStats::default();
                    let mut conn: Option<TcpStream> = None;
                    let mut i = c;
                    // Bounded: at most 10 minutes whatever the caller does.
                    let hard_stop = Instant::now() + Duration::from_secs(600);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && Instant::now() < hard_stop
                    {
                        let req = &reqs[i % reqs.len()];
                        i += 1;
                        let mut attempt = 0;
                        let outcome = loop {
                            let reused = conn.is_some();
                            let mut s = match conn.take() {
                                Some(s) => s,
                                None => {
                                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                                    {
                                        Ok(s) => {
                                            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                                            s.set_nodelay(true).ok();
                                            s
                                        }
                                        Err(e) => break Err(format!("connect: {e}")),
                                    }
                                }
                            };
                            let sent = s.write_all(&req.raw);
                            let got = match sent {
                                Ok(()) => read_one(&mut s, false),
                                Err(e) if reused => {
                                    let _ = e;
                                    Ok(None)
                                }
                                Err(e) => Err(format!("write: {e}")),
                            };
                            match got {
                                Ok(Some(r)) => {
                                    let close = r
                                        .header("connection")
                                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                                    if !close {
                                        conn = Some(s);
                                    }
                                    break Ok(r);
                                }
                                Ok(None) if reused && attempt == 0 => {
                                    attempt += 1;
                                    st.stale_retries += 1;
                                    continue;
                                }
                                Ok(None) => break Err("connection closed before any answer".into()),
                                Err(e) => break Err(e),
                            }
                        };
                        match outcome {
                            Ok(r) => {
                                st.responses += 1;
                                *st.statuses
                                    .entry((req.kind.to_string(), r.status))
                                    .or_default() += 1;
                                if !req.allowed.contains(&r.status) {
                                    st.error(format!(
                                        "{}: unexpected {} {}",
                                        req.kind,
                                        r.status,
                                        r.text()
                                    ));
                                }
                                let id =
                                    r.header("x-request-id").map(str::to_string).or_else(|| {
                                        serde_json::from_slice::<serde_json::Value>(&r.body)
                                            .ok()
                                            .and_then(|j| {
                                                j["headers"]["x-request-id"][0]
                                                    .as_str()
                                                    .map(str::to_string)
                                            })
                                    });
                                if let Some(id) = id {
                                    st.request_ids.push(id);
                                }
                            }
                            Err(e) => st.error(format!("{}: {e}", req.kind)),
                        }
                        std::thread::sleep(interval);
                    }
                    st
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub fn stop(self) -> LoadStats {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = LoadStats::default();
        for t in self.threads {
            all.merge(t.join().expect("load thread"));
        }
        all
    }
}

/// A raw recording upstream (in-process): keeps every byte it receives and answers each
/// request header with a small 200 (after reading a `Content-Length` or chunked body). Lets a
/// test prove that *nothing* reached the upstream, which an echo's JSON cannot show.
pub struct Recorder {
    pub addr: SocketAddr,
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = listener.local_addr().expect("addr");
        let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = bytes.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let b = b.clone();
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
                    let mut pending = Vec::new();
                    let mut chunk = [0u8; 65536];
                    loop {
                        let n = match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        b.lock().unwrap().extend_from_slice(&chunk[..n]);
                        pending.extend_from_slice(&chunk[..n]);
                        while let Some(used) = complete_request(&pending) {
                            pending.drain(..used);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if conn.write_all(ok).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Recorder { addr, bytes }
    }

    /// Everything received so far, from every connection.
    pub fn received(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.bytes.lock().unwrap().clear();
    }
}

/// Length of the first complete request (header plus body) in `buf`.
fn complete_request(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let body = &buf[end..];
        let last = body.windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(end + last + 5);
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + len).then_some(end + len)
}

/// Send raw bytes and read until the peer closes (or `wait` passes). Returns what arrived
/// and whether the connection was closed by the peer.
pub fn exchange(addr: SocketAddr, raw: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    s.write_all(raw).expect("send");
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut chunk = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => {}
        }
    }
    (out, false)
}

/// The status codes of every response in `raw` (pipelined answers show up as several).
/// Assert the status codes of the responses in `raw`, showing the raw bytes when they differ.
#[track_caller]
pub fn assert_statuses(raw: &[u8], want: &[u16]) {
    assert_eq!(statuses(raw), want, "{}", String::from_utf8_lossy(raw));
}

pub fn statuses(raw: &[u8]) -> Vec<u16> {
    raw.windows(9)
        .enumerate()
        .filter(|(_, w)| w.starts_with(b"HTTP/1.1 "))
        .filter_map(|(i, _)| {
            std::str::from_utf8(raw.get(i + 9..i + 12)?)
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

/// Config body with one public catch-all route `all` to one upstream pool named `pool`.
pub fn public_route(pool: &str, upstream: SocketAddr) -> String {
    format!(
        "upstreams:\n  {pool}: {{ targets: [\"{upstream}\"] }}\nroutes:\n  - {{ id: all, match: {{ path_prefix: / }}, upstream: {pool}, public: true }}\n"
    )
}

/// An extra `server.listen` entry: TLS on `port` with the fixture server certificate.
pub fn tls_listener(port: u16) -> String {
    format!(
        "    - addr: \"127.0.0.1:{port}\"\n      tls: {{ cert: \"{}\", key: \"{}\" }}\n",
        fixture("tls/server.pem"),
        fixture("tls/server.key")
    )
}

/// Everything the peer sends until it closes (or `secs` of silence).
pub fn read_to_close(s: &mut TcpStream, secs: u64) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(secs))).ok();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}
