//! The audit writer: a bounded queue filled by the `logging` phase and drained by one
//! dedicated thread, so request threads never touch the file.
//!
//! The writer assigns the per-process sequence number, adds the chain fields and writes each
//! batch with one `write` to a file opened with `O_APPEND`: lines from an old and a new
//! process during a binary upgrade may alternate, but never mix within a line. Records that
//! could not be queued (queue full) or written (disk full, read-only) are counted, and a `gap`
//! record with their number is written as soon as writing works again, so the file itself
//! shows the loss. SIGUSR1 (through [`AuditSink::request_reopen`]) reopens the file for
//! logrotate.

use super::chain;
use crate::config::raw::{FsyncMode, OnOverflow};
use crate::config::AuditSettings;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most records written by one `write`.
const BATCH: usize = 512;

pub struct AuditSink {
    settings: AuditSettings,
    instance: String,
    tx: SyncSender<String>,
    rx: Mutex<Option<Receiver<String>>>,
    /// Records in the queue (counted before they are sent, so it never wraps).
    depth: AtomicUsize,
    /// Queue slots promised to requests in flight (`reject` mode).
    reserved: AtomicUsize,
    /// Lost records not yet reported by a gap record.
    unreported: AtomicU64,
    /// The last write succeeded (reject mode refuses requests while it did not).
    healthy: AtomicBool,
    reopen: AtomicBool,
    closing: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Start,
    Gap,
    Request,
}

/// Where a line of the batch buffer ends, and the chain state after it.
struct Mark {
    end: usize,
    seq: u64,
    prev_after: String,
    kind: Kind,
}

struct Writer {
    sink: Arc<AuditSink>,
    marks: Vec<Mark>,
    /// The last write stopped inside a line.
    torn: bool,
    stdout_failed: bool,
    file: Option<File>,
    seq: u64,
    prev: String,
    started: bool,
    last_fsync: Instant,
    last_open_attempt: Option<Instant>,
    buf: Vec<u8>,
}

impl AuditSink {
    pub fn new(settings: AuditSettings, instance: String) -> Arc<AuditSink> {
        let (tx, rx) = sync_channel(settings.queue);
        Arc::new(AuditSink {
            settings,
            instance,
            tx,
            rx: Mutex::new(Some(rx)),
            depth: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            unreported: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            writer: Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &AuditSettings {
        &self.settings
    }

    /// Queue one record body (the JSON fields after `seq`/`instance`). Never blocks.
    /// `reserved`: the request holds a slot from [`admit`](Self::admit), released here.
    pub fn submit(&self, body: String, reserved: bool) {
        let d = self.depth.fetch_add(1, Ordering::AcqRel) + 1;
        if reserved {
            self.reserved.fetch_sub(1, Ordering::AcqRel);
        } else if self.settings.on_overflow == OnOverflow::Reject
            && d + self.reserved.load(Ordering::Acquire) > self.settings.queue
        {
            // The record of a refused (503) request must not take a slot promised to a
            // served one.
            self.depth.fetch_sub(1, Ordering::AcqRel);
            self.lost(1, "queue_full");
            return;
        }
        match self.tx.try_send(body) {
            Ok(()) => crate::metrics::audit_queue_depth(d),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::AcqRel);
                self.lost(1, "queue_full");
            }
        }
    }

    /// Admission of a new request: `(serve it, a slot was reserved)`. In `drop` mode always
    /// served. In `reject` mode served only while the last write succeeded and the queue has a
    /// slot for its record once every request already admitted has written its own, so a
    /// served request's record always fits.
    pub fn admit(&self) -> (bool, bool) {
        if self.settings.on_overflow == OnOverflow::Drop {
            return (true, false);
        }
        let r = self.reserved.fetch_add(1, Ordering::AcqRel) + 1;
        if self.healthy.load(Ordering::Acquire)
            && self.depth.load(Ordering::Acquire) + r <= self.settings.queue
        {
            return (true, true);
        }
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        (false, false)
    }

    fn lost(&self, n: u64, why: &str) {
        self.unreported.fetch_add(n, Ordering::AcqRel);
        crate::metrics::audit_dropped(why, n);
    }

    pub fn request_reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Start the writer thread (after Pingora daemonized: threads do not survive a fork).
    pub fn start(self: &Arc<Self>) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut w = Writer {
            sink: self.clone(),
            marks: Vec::new(),
            torn: false,
            stdout_failed: false,
            file: None,
            seq: 0,
            prev: chain::ZERO.to_string(),
            started: false,
            last_fsync: Instant::now(),
            last_open_attempt: None,
            buf: Vec::with_capacity(64 * 1024),
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx));
        match handle {
            Ok(h) => *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
            Err(e) => log::error!("audit: cannot start the writer thread: {e}"),
        }
    }

    /// Drain the queue and stop the writer (graceful shutdown and upgrade). Bounded: gives up
    /// after `timeout`, reporting what is left as lost in the log.
    pub fn close(&self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let deadline = Instant::now() + timeout;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                log::error!(
                    "audit: writer did not drain within {timeout:?}; {} records may be lost",
                    self.depth.load(Ordering::Acquire)
                );
            }
        }
    }
}

impl Writer {
    fn run(&mut self, rx: Receiver<String>) {
        let tick = match self.sink.settings.fsync {
            FsyncMode::Interval => self
                .sink
                .settings
                .fsync_interval
                .min(Duration::from_millis(200)),
            _ => Duration::from_millis(200),
        };
        let mut batch: Vec<String> = Vec::with_capacity(BATCH);
        loop {
            match rx.recv_timeout(tick) {
                Ok(first) => {
                    batch.push(first);
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let small = batch.len() < BATCH / 8;
            self.write_batch(&mut batch);
            let closing = self.sink.closing.load(Ordering::Acquire);
            if small && !closing {
                // Let records gather: one write per millisecond at most instead of one per
                // record (a write and a wake-up each cost several µs of CPU). Records wait
                // ≤ 1 ms longer; responses never wait for them.
                std::thread::sleep(Duration::from_millis(1));
            }
            if closing && self.sink.depth.load(Ordering::Acquire) == 0 {
                // Nothing queued: also report what was lost, then stop.
                self.write_batch(&mut batch);
                self.sync();
                return;
            }
        }
    }

    fn ensure_open(&mut self) -> bool {
        let Some(path) = self.sink.settings.file.clone() else {
            return true; // stdout only
        };
        let reopen = self.sink.reopen.swap(false, Ordering::AcqRel);
        if reopen {
            self.sync();
            self.file = None;
        }
        if self.file.is_some() {
            return true;
        }
        if !reopen
            && self
                .last_open_attempt
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        let mut opts = OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(&path) {
            Ok(f) => {
                self.last_open_attempt = None;
                self.file = Some(f);
                // A new file (or the first one) starts with a chain anchor.
                self.started = false;
                true
            }
            Err(e) => {
                self.last_open_attempt = Some(Instant::now());
                log::error!("audit: cannot open {}: {e}", path.display());
                crate::metrics::audit_write_error();
                false
            }
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<String>) {
        let n = batch.len();
        if n == 0
            && self.sink.unreported.load(Ordering::Acquire) == 0
            && !self.sink.reopen.load(Ordering::Acquire)
        {
            self.maybe_fsync();
            return;
        }
        if !self.ensure_open() {
            self.fail(batch);
            return;
        }
        self.buf.clear();
        self.marks.clear();
        let (seq0, prev0, started0) = (self.seq, self.prev.clone(), self.started);
        let torn = self.torn;
        if torn {
            // The last write stopped mid-line: end that fragment so it stays a line of its own.
            self.buf.push(b'\n');
        }
        if !self.started {
            let reason = if self.seq == 0 { "start" } else { "reopen" };
            let chain = if self.sink.settings.hmac_key.is_some() {
                "\"hmac-sha256\""
            } else if self.sink.settings.chain {
                "\"sha256\""
            } else {
                "null"
            };
            let body = format!(
                "\"type\":\"chain_start\",\"ts\":\"{}\",\"reason\":\"{reason}\",\"version\":\"{}\",\"chain\":{chain}",
                super::rfc3339_now(),
                env!("CARGO_PKG_VERSION"),
            );
            self.line(&body, Kind::Start);
        }
        let unreported = self.sink.unreported.swap(0, Ordering::AcqRel);
        if unreported > 0 || torn {
            let body = format!(
                "\"type\":\"gap\",\"ts\":\"{}\",\"dropped\":{unreported}{}",
                super::rfc3339_now(),
                if torn { ",\"torn\":true" } else { "" }
            );
            self.line(&body, Kind::Gap);
        }
        for body in batch.iter() {
            self.line(body, Kind::Request);
        }
        self.emit_stdout();
        let (written, result) = self.emit_file();
        match result {
            Ok(()) => {
                self.torn = false;
                self.started = true;
                if !self.sink.healthy.swap(true, Ordering::AcqRel) {
                    log::warn!("audit: writing again");
                }
                self.dequeued(n);
                crate::metrics::audit_written(self.seq - seq0, crate::auth::time::now());
                batch.clear();
                if self.sink.settings.fsync == FsyncMode::Always {
                    self.sync();
                } else {
                    self.maybe_fsync();
                }
            }
            Err(e) => {
                // Logged once per outage, not once per batch.
                if self.sink.healthy.load(Ordering::Acquire) {
                    log::error!("audit: write failed: {e}; records are counted as dropped until writing works again");
                }
                crate::metrics::audit_write_error();
                // Keep what reached the file whole; everything after it is lost and counted.
                let done = self.marks.iter().take_while(|m| m.end <= written).count();
                let (mut seq, mut prev, mut started) = (seq0, prev0, started0);
                let mut restored_unreported = unreported;
                let mut requests_written = 0usize;
                for m in &self.marks[..done] {
                    seq = m.seq;
                    prev.clone_from(&m.prev_after);
                    match m.kind {
                        Kind::Start => started = true,
                        Kind::Gap => restored_unreported = 0,
                        Kind::Request => requests_written += 1,
                    }
                }
                let complete_end = if done == 0 {
                    usize::from(torn)
                } else {
                    self.marks[done - 1].end
                };
                self.torn = written > complete_end || (torn && written == 0);
                self.seq = seq;
                self.prev = prev;
                self.started = started;
                self.sink
                    .unreported
                    .fetch_add(restored_unreported, Ordering::AcqRel);
                crate::metrics::audit_written(seq - seq0, crate::auth::time::now());
                batch.drain(..requests_written);
                self.dequeued(requests_written);
                // Reopen on the next batch (the target may be back); only failed opens wait.
                self.file = None;
                self.last_open_attempt = None;
                self.fail(batch);
            }
        }
    }

    /// `n` records left the queue (written or lost).
    fn dequeued(&self, n: usize) {
        let d = self
            .sink
            .depth
            .fetch_sub(n, Ordering::AcqRel)
            .saturating_sub(n);
        crate::metrics::audit_queue_depth(d);
    }

    fn fail(&mut self, batch: &mut Vec<String>) {
        self.sink.healthy.store(false, Ordering::Release);
        let n = batch.len();
        if n > 0 {
            self.dequeued(n);
            self.sink.lost(n as u64, "write_failed");
            batch.clear();
        }
    }

    /// Append one complete line for `body` to the batch buffer.
    fn line(&mut self, body: &str, kind: Kind) {
        self.seq += 1;
        let start = self.buf.len();
        let _ = write!(
            self.buf,
            "{{\"v\":1,\"seq\":{},\"instance\":\"{}\",{body}",
            self.seq, self.sink.instance
        );
        if self.sink.settings.chain {
            let _ = write!(self.buf, ",\"prev\":\"{}\"", self.prev);
            let key = self.sink.settings.hmac_key.as_ref().map(|k| k.0.as_slice());
            let hash = chain::digest(key, &self.buf[start..]);
            let _ = write!(self.buf, ",\"hash\":\"{hash}\"");
            self.prev = hash;
        }
        self.buf.extend_from_slice(b"}\n");
        self.marks.push(Mark {
            end: self.buf.len(),
            seq: self.seq,
            prev_after: self.prev.clone(),
            kind,
        });
    }

    /// Write the batch to the file; returns how many bytes got there and the error, if any.
    fn emit_file(&mut self) -> (usize, std::io::Result<()>) {
        let Some(f) = &mut self.file else {
            return (self.buf.len(), Ok(()));
        };
        let mut written = 0;
        while written < self.buf.len() {
            match f.write(&self.buf[written..]) {
                Ok(0) => {
                    return (
                        written,
                        Err(std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            "short write",
                        )),
                    )
                }
                Ok(k) => written += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return (written, Err(e)),
            }
        }
        (written, Ok(()))
    }

    /// Standard output is a second, independent copy: its failure never costs the file.
    fn emit_stdout(&mut self) {
        if !self.sink.settings.stdout {
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(&self.buf).and_then(|()| out.flush()) {
            if !self.stdout_failed {
                log::error!("audit: writing to stdout failed: {e}");
            }
            self.stdout_failed = true;
            crate::metrics::audit_write_error();
        } else {
            self.stdout_failed = false;
        }
    }

    fn maybe_fsync(&mut self) {
        if self.sink.settings.fsync == FsyncMode::Interval
            && self.last_fsync.elapsed() >= self.sink.settings.fsync_interval
        {
            self.sync();
        }
    }

    fn sync(&mut self) {
        if let Some(f) = &self.file {
            if let Err(e) = f.sync_data() {
                log::error!("audit: fsync failed: {e}");
                crate::metrics::audit_write_error();
            }
        }
        self.last_fsync = Instant::now();
    }
}
