//! What a job sends to the host: `log`, `progress`, `enqueue` and its stdout/stderr, all
//! captured per job under the job's caps. Every argument here is guest-controlled, so each
//! is bounded before it is kept.
//!
//! Main types: [`Capture`] (the per-job record) and [`LogStream`] (stdout/stderr sink).

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::bindings;
use crate::job::{EnqueuedJob, LogLevel, LogLine, Progress};
use crate::sandbox::{Limits, Live};

/// The longest single log line kept, in bytes; longer lines are cut.
pub const MAX_LOG_LINE_BYTES: usize = 8 * 1024;
/// Progress reports kept per job (the latest ones win).
pub const MAX_PROGRESS_ENTRIES: usize = 64;
/// The longest job name a guest may enqueue.
pub const MAX_JOB_NAME_BYTES: usize = 256;
/// The longest unique key a guest may pass.
pub const MAX_UNIQUE_KEY_BYTES: usize = 512;
/// What the host spends to keep one entry (a log line, a follow-up job) beside its text,
/// rounded up: counted against the caps, so a million empty lines cost as much as their
/// records do and not 0 bytes.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// The per-job record of logs, progress and follow-up jobs.
#[derive(Debug, Default)]
pub struct Captured {
    /// Log lines in order.
    pub logs: Vec<LogLine>,
    /// Bytes dropped over the cap.
    pub dropped_bytes: u64,
    /// Lines dropped over the cap (empty ones too, which drop no bytes).
    pub dropped_lines: u64,
    /// Progress reports (the last [`MAX_PROGRESS_ENTRIES`]).
    pub progress: Vec<Progress>,
    /// Follow-up jobs.
    pub enqueued: Vec<EnqueuedJob>,
    kept_bytes: u64,
    enqueued_bytes: u64,
    partial: [Vec<u8>; 2],
}

/// Shared handle to the record: the WASI stdio streams and the host imports both write to it.
#[derive(Clone, Debug)]
pub struct Capture {
    inner: Arc<Mutex<Captured>>,
    live: Option<Arc<Live>>,
    log_cap: u64,
    enqueue_cap: u32,
    enqueue_bytes_cap: u64,
    payload_cap: usize,
}

impl Capture {
    /// A fresh record for one job.
    pub fn new(limits: &Limits, payload_cap: usize) -> Self {
        Self {
            inner: Arc::default(),
            live: None,
            log_cap: limits.log_bytes,
            enqueue_cap: limits.enqueue_count,
            enqueue_bytes_cap: limits.enqueue_bytes,
            payload_cap,
        }
    }

    /// Also hands every progress report to `live` (the runner writes the latest through).
    pub fn with_live(mut self, live: Option<Arc<Live>>) -> Self {
        self.live = live;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A poisoned lock only means another thread panicked mid-write; the data is still
        // a valid record.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one log line, cut to [`MAX_LOG_LINE_BYTES`] and dropped past the job's cap.
    pub fn log(&self, level: LogLevel, source: &'static str, message: &str) {
        let mut captured = self.lock();
        push_line(
            &mut captured,
            self.log_cap,
            level,
            source,
            message.as_bytes(),
        );
    }

    /// Takes the record out once the job has ended, flushing partial stdout/stderr lines.
    pub fn finish(&self) -> Captured {
        let mut captured = self.lock();
        for (index, source) in [(0, "stdout"), (1, "stderr")] {
            let rest = std::mem::take(&mut captured.partial[index]);
            if !rest.is_empty() {
                push_line(
                    &mut captured,
                    self.log_cap,
                    stream_level(index),
                    source,
                    &rest,
                );
            }
        }
        std::mem::take(&mut *captured)
    }

    /// A stdout (`index` 0) or stderr (1) stream for the job's WASI context.
    pub fn stream(&self, index: usize) -> LogStream {
        LogStream {
            capture: self.clone(),
            index,
        }
    }

    fn write_stream(&self, index: usize, bytes: &[u8]) {
        let mut captured = self.lock();
        if captured.kept_bytes >= self.log_cap {
            // Past the cap nothing more is kept; count it so the report can say so.
            captured.dropped_bytes += bytes.len() as u64;
            captured.dropped_lines += bytes.iter().filter(|b| **b == b'\n').count() as u64;
            return;
        }
        let mut pending = std::mem::take(&mut captured.partial[index]);
        pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + offset];
            push_line(
                &mut captured,
                self.log_cap,
                stream_level(index),
                stream_name(index),
                line,
            );
            start += offset + 1;
        }
        let mut rest = pending.split_off(start);
        if rest.len() > MAX_LOG_LINE_BYTES {
            // A line without a newline is flushed in pieces so the buffer stays bounded.
            push_line(
                &mut captured,
                self.log_cap,
                stream_level(index),
                stream_name(index),
                &rest,
            );
            rest.clear();
        }
        captured.partial[index] = rest;
    }

    pub(super) fn progress(&self, done: u64, total: u64, message: Option<String>) {
        let mut captured = self.lock();
        if captured.progress.len() >= MAX_PROGRESS_ENTRIES {
            captured.progress.remove(0);
        }
        let message = message.map(|m| truncate_utf8(m.as_bytes(), MAX_LOG_LINE_BYTES));
        let progress = Progress {
            done,
            total,
            message,
        };
        if let Some(live) = &self.live {
            live.report(&progress);
        }
        captured.progress.push(progress);
    }

    pub(super) fn enqueue(
        &self,
        name: String,
        payload: String,
        options: bindings::EnqueueOptions,
    ) -> Result<String, String> {
        let mut captured = self.lock();
        if captured.enqueued.len() >= self.enqueue_cap as usize {
            return Err(format!(
                "enqueue limit reached: at most {} follow-up jobs per job",
                self.enqueue_cap
            ));
        }
        if name.is_empty() || name.len() > MAX_JOB_NAME_BYTES {
            return Err(format!("job name must be 1 to {MAX_JOB_NAME_BYTES} bytes"));
        }
        if payload.len() > self.payload_cap {
            return Err(format!(
                "payload is {} bytes, over the cap of {} bytes",
                payload.len(),
                self.payload_cap
            ));
        }
        if options
            .unique_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_UNIQUE_KEY_BYTES)
        {
            return Err(format!(
                "unique key must be at most {MAX_UNIQUE_KEY_BYTES} bytes"
            ));
        }
        let cost = (name.len()
            + payload.len()
            + options.unique_key.as_ref().map_or(0, String::len)
            + ENTRY_OVERHEAD_BYTES) as u64;
        if captured.enqueued_bytes + cost > self.enqueue_bytes_cap {
            return Err(format!(
                "enqueue limit reached: at most {} bytes of follow-up jobs per job",
                self.enqueue_bytes_cap
            ));
        }
        // Checked, then kept as the guest's text: a parsed tree would cost several times it.
        let payload = serde_json::value::RawValue::from_string(payload)
            .map_err(|e| format!("payload is not JSON: {e}"))?;
        captured.enqueued_bytes += cost;
        let id = uuid::Uuid::now_v7().to_string();
        captured.enqueued.push(EnqueuedJob {
            id: id.clone(),
            job: name,
            payload,
            delay_ms: options.delay_ms,
            unique_key: options.unique_key,
            priority: options.priority,
        });
        Ok(id)
    }
}

fn push_line(
    captured: &mut Captured,
    cap: u64,
    level: LogLevel,
    source: &'static str,
    bytes: &[u8],
) {
    let message = truncate_utf8(bytes, MAX_LOG_LINE_BYTES);
    let cost = (message.len() + ENTRY_OVERHEAD_BYTES) as u64;
    if captured.kept_bytes + cost > cap {
        captured.dropped_bytes += bytes.len() as u64;
        captured.dropped_lines += 1;
        captured.kept_bytes = cap;
        return;
    }
    captured.kept_bytes += cost;
    captured.logs.push(LogLine {
        level,
        source,
        message,
    });
}

fn truncate_utf8(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    String::from_utf8_lossy(cut).into_owned()
}

fn stream_level(index: usize) -> LogLevel {
    if index == 0 {
        LogLevel::Info
    } else {
        LogLevel::Warn
    }
}

fn stream_name(index: usize) -> &'static str {
    if index == 0 { "stdout" } else { "stderr" }
}

/// A WASI output stream that appends to the job's log and never fails, so a chatty guest
/// is truncated rather than trapped (Rust's `println!` panics on a failed write).
#[derive(Clone, Debug)]
pub struct LogStream {
    capture: Capture,
    index: usize,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write_stream(self.index, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.capture.write_stream(self.index, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
