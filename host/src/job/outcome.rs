//! What became of one delivery: the [`Outcome`] a runner turns into a queue action, and the
//! [`Report`] with everything the job produced and consumed.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Why a job was not done, from a fixed vocabulary (documented in the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The handler returned `permanent`.
    Permanent,
    /// The handler returned `transient`.
    Transient,
    /// The payload failed the handler's JSON Schema.
    InvalidPayload,
    /// No handler accepts the job name.
    UnknownJob,
    /// The handler for the job name was refused at load (a bad schema, a broken build):
    /// retried with a long backoff that does not count an attempt, until a fixed deploy.
    HandlerUnavailable,
    /// The body is not a job envelope.
    Malformed,
    /// The body is over the size cap.
    TooLarge,
    /// The job ran out of fuel.
    FuelExhausted,
    /// The job asked for more memory (or table space) than its limits allow.
    MemoryLimit,
    /// The job passed its deadline.
    Timeout,
    /// The job trapped (panic, unreachable, stack overflow, ...).
    Trap,
    /// The handler returned more output than its limit allows.
    OutputTooLarge,
    /// An event of a known source (S3, EventBridge) that no handler's trigger matches.
    Unrouted,
}

impl Reason {
    /// The reason's name as used in reports and queue records.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Permanent => "permanent",
            Reason::Transient => "transient",
            Reason::InvalidPayload => "invalid-payload",
            Reason::UnknownJob => "unknown-job",
            Reason::HandlerUnavailable => "handler-unavailable",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too-large",
            Reason::FuelExhausted => "fuel-exhausted",
            Reason::MemoryLimit => "memory-limit",
            Reason::Timeout => "timeout",
            Reason::Trap => "trap",
            Reason::OutputTooLarge => "output-too-large",
            Reason::Unrouted => "unrouted",
        }
    }
}

impl Reason {
    /// Whether a retry for this reason counts as an attempt (a handler that failed to
    /// load never ran the job, so its retries do not use up the job's attempts).
    pub fn counts_attempt(self) -> bool {
        self != Reason::HandlerUnavailable
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The queue action for one delivery.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Acknowledge: the job is complete, with its output (JSON text by convention).
    Done {
        /// What `handle` returned.
        output: Option<String>,
    },
    /// Make the job visible again after `delay`.
    Retry {
        /// Why it failed this time.
        reason: Reason,
        /// The failure's message.
        message: String,
        /// How long to wait before the next attempt.
        delay: Duration,
    },
    /// Move the job to the dead-letter queue, then acknowledge it.
    DeadLetter {
        /// Why it can never succeed (or ran out of attempts).
        reason: Reason,
        /// The failure's message.
        message: String,
    },
    /// Stopped on request while it ran: not retried, its follow-up jobs dropped.
    Cancelled {
        /// What stopped it.
        message: String,
    },
}

impl Outcome {
    /// `done`, `retry`, `dead-letter` or `cancelled`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "done",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter { .. } => "dead-letter",
            Outcome::Cancelled { .. } => "cancelled",
        }
    }

    /// The reason of a retry or a dead letter.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Outcome::Done { .. } | Outcome::Cancelled { .. } => None,
            Outcome::Retry { reason, .. } | Outcome::DeadLetter { reason, .. } => Some(*reason),
        }
    }

    /// The failure message, for anything but `done`.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Done { .. } => None,
            Outcome::Retry { message, .. }
            | Outcome::DeadLetter { message, .. }
            | Outcome::Cancelled { message } => Some(message),
        }
    }

    /// Whether the outcome is `done`.
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done { .. })
    }
}

/// Severity of a captured log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info (also the guest's stdout).
    Info,
    /// Warn (also the guest's stderr).
    Warn,
    /// Error.
    Error,
}

/// One captured log line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// Where it came from: `log`, `stdout` or `stderr`.
    pub source: &'static str,
    /// The text (truncated to the per-line cap).
    pub message: String,
}

/// A progress report from the guest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// An optional message.
    pub message: Option<String>,
}

/// A follow-up job the guest asked for; it is committed only with the parent's success.
#[derive(Clone, Debug, Serialize)]
pub struct EnqueuedJob {
    /// The id given to the guest.
    pub id: String,
    /// The job name.
    pub job: String,
    /// The payload, as the guest's JSON text (checked to be JSON).
    pub payload: Box<serde_json::value::RawValue>,
    /// Delay after the parent completes, in milliseconds.
    pub delay_ms: Option<u64>,
    /// Unique key.
    pub unique_key: Option<String>,
    /// Priority, higher first.
    pub priority: Option<i32>,
}

impl PartialEq for EnqueuedJob {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.id,
            &self.job,
            self.payload.get(),
            self.delay_ms,
            &self.unique_key,
            self.priority,
        ) == (
            &other.id,
            &other.job,
            other.payload.get(),
            other.delay_ms,
            &other.unique_key,
            other.priority,
        )
    }
}

impl EnqueuedJob {
    /// The payload, parsed.
    pub fn payload_value(&self) -> Value {
        serde_json::from_str(self.payload.get()).unwrap_or(Value::Null)
    }
}

/// Everything one delivery produced and consumed.
#[derive(Clone, Debug)]
pub struct Report {
    /// The job's id (from the envelope or the runner).
    pub job_id: String,
    /// The job name, when the envelope had one.
    pub job_name: Option<String>,
    /// The delivery number.
    pub attempt: u32,
    /// The queue action.
    pub outcome: Outcome,
    /// Captured log lines, in order.
    pub logs: Vec<LogLine>,
    /// Log bytes dropped over the cap.
    pub logs_dropped_bytes: u64,
    /// Log lines dropped over the cap.
    pub logs_dropped_lines: u64,
    /// Progress reports, in order (bounded).
    pub progress: Vec<Progress>,
    /// Follow-up jobs.
    pub enqueued: Vec<EnqueuedJob>,
    /// Fuel consumed (0 when the handler never ran or fuel is not metered).
    pub fuel: u64,
    /// Time spent in the handler, including instantiation.
    pub duration: Duration,
    /// The most linear memory the job held at once, in bytes.
    pub peak_memory: u64,
}

impl Report {
    /// A report for a delivery that never reached a handler.
    pub fn rejected(
        job_id: String,
        job_name: Option<String>,
        attempt: u32,
        outcome: Outcome,
    ) -> Self {
        Self {
            job_id,
            job_name,
            attempt,
            outcome,
            logs: Vec::new(),
            logs_dropped_bytes: 0,
            logs_dropped_lines: 0,
            progress: Vec::new(),
            enqueued: Vec::new(),
            fuel: 0,
            duration: Duration::ZERO,
            peak_memory: 0,
        }
    }

    /// The report as the JSON object `jobhost exec` prints.
    pub fn to_json(&self) -> Value {
        let output = match &self.outcome {
            Outcome::Done { output: Some(text) } => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            _ => Value::Null,
        };
        let retry_after_ms = match &self.outcome {
            Outcome::Retry { delay, .. } => {
                Value::from(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            }
            _ => Value::Null,
        };
        serde_json::json!({
            "id": self.job_id,
            "job": self.job_name,
            "attempt": self.attempt,
            "outcome": self.outcome.kind(),
            "reason": self.outcome.reason(),
            "message": self.outcome.message(),
            "retry_after_ms": retry_after_ms,
            "output": output,
            "logs": self.logs,
            "logs_dropped_bytes": self.logs_dropped_bytes,
            "logs_dropped_lines": self.logs_dropped_lines,
            "progress": self.progress,
            "enqueued": self.enqueued,
            "fuel": self.fuel,
            "duration_us": u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX),
            "peak_memory": self.peak_memory,
        })
    }
}
