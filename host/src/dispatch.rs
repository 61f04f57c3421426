//! One job, start to finish: a raw message body in, an [`Outcome`] (inside a [`Report`])
//! out. Every row of the outcome table in the README is decided here, and nothing here
//! panics or returns an error: runners only turn the outcome into a queue action.
//!
//! Main types: [`Dispatcher`], [`Delivery`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use wasmtime::Trap;

use crate::bindings::{Job, JobError};
use crate::engine::JobEngine;
use crate::job::{DEFAULT_MAX_BODY_BYTES, Envelope, EnvelopeError};
use crate::job::{Outcome, Reason, Report};
use crate::job::{RetryPolicy, jitter_rng};
use crate::plugin::{Plugin, PluginSet};
use crate::sandbox::{Execution, JobSettings, execute, root_cause};
use crate::sandbox::{Limits, Live};
use crate::trigger::{Routed, Routes};

/// Host-wide dispatch settings.
#[derive(Clone, Debug)]
pub struct DispatchOptions {
    /// The largest message body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// What the runner knows about a delivery beyond its body.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    /// The id to use when the envelope has none (e.g. the queue's message id).
    pub fallback_id: Option<String>,
    /// The delivery number as counted by the queue; overrides the envelope's.
    pub attempt: Option<u32>,
    /// A deadline imposed from outside (a Lambda invocation's end); the job's own
    /// timeout is capped by it.
    pub deadline: Option<SystemTime>,
    /// Limits to use instead of the handler's (the test harness sets them per case).
    pub limits: Option<Limits>,
    /// Fixes the guest's wall clock (and the job's timestamps) at this time.
    pub wall_clock: Option<SystemTime>,
    /// Shared with the runner while the job runs: cancellation and live progress.
    pub live: Option<Arc<Live>>,
}

/// Why a payload was refused before any handler ran (for enqueue-time checks).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// No handler accepts the name.
    #[error("no handler accepts the job name `{0}`")]
    UnknownJob(String),
    /// The handler for the name was refused at load; why.
    #[error("{0}")]
    HandlerUnavailable(String),
    /// The payload fails the schema; one entry per error.
    #[error("payload fails the schema: {}", .0.join("; "))]
    InvalidPayload(Vec<String>),
}

/// Routes messages to handlers and runs them.
pub struct Dispatcher {
    engine: Arc<JobEngine>,
    plugins: PluginSet,
    routes: Routes,
    options: DispatchOptions,
}

impl Dispatcher {
    /// A dispatcher over loaded handlers.
    pub fn new(engine: Arc<JobEngine>, plugins: PluginSet, options: DispatchOptions) -> Self {
        Self {
            engine,
            routes: Routes::new(&plugins),
            plugins,
            options,
        }
    }

    /// The handlers' triggers.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The loaded handlers.
    pub fn plugins(&self) -> &PluginSet {
        &self.plugins
    }

    /// The dispatch settings.
    pub fn options(&self) -> &DispatchOptions {
        &self.options
    }

    /// Checks a payload against the handler for `name` without running anything.
    pub fn check(&self, name: &str, payload: &Value) -> Result<&Arc<Plugin>, Rejection> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| match self.plugins.refused(name) {
                Some(error) => Rejection::HandlerUnavailable(format!(
                    "the handler for `{name}` was refused at load: {error}"
                )),
                None => Rejection::UnknownJob(name.to_string()),
            })?;
        let mut errors = plugin
            .schema
            .as_ref()
            .map(|s| s.check(payload))
            .unwrap_or_default();
        if !errors.is_empty() && payload.as_object().is_some_and(|o| o.is_empty()) {
            errors.insert(
                0,
                "the job has no payload (a job without `payload` gets {})".to_string(),
            );
        }
        if errors.is_empty() {
            Ok(plugin)
        } else {
            Err(Rejection::InvalidPayload(errors))
        }
    }

    /// Runs one delivery of a raw message body to its outcome: a job envelope, or an
    /// event routed by the handlers' triggers ([`crate::trigger`]). An event that comes to
    /// one job runs it in place; one that comes to several is done at once, with the jobs
    /// as its follow-up jobs, so that each is retried on its own.
    pub fn dispatch(&self, body: &[u8], delivery: &Delivery) -> Report {
        let report = self.dispatch_body(body, delivery, true);
        log_report(&report);
        report
    }

    fn dispatch_body(&self, body: &[u8], delivery: &Delivery, unwrap: bool) -> Report {
        let error = match Envelope::parse(body, self.options.max_body_bytes) {
            Ok(envelope) => return self.route(envelope, delivery),
            Err(error) => error,
        };
        let id = delivery.fallback_id.clone().unwrap_or_else(new_id);
        let attempt = delivery.attempt.unwrap_or(1).max(1);
        let routed = match &error {
            EnvelopeError::Malformed(_) => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|event| self.routes.route(&event)),
            EnvelopeError::TooLarge { .. } => None,
        };
        let outcome = match routed {
            Some(Routed::Jobs(jobs)) if jobs.len() == 1 => {
                let job = jobs.into_iter().next().expect("one job");
                return self.route(job, delivery);
            }
            Some(Routed::Jobs(jobs)) => {
                let mut report =
                    Report::rejected(id.clone(), None, attempt, Outcome::Done { output: None });
                report.enqueued = jobs
                    .into_iter()
                    .enumerate()
                    .filter_map(|(n, job)| fanned_out(&id, n, job))
                    .collect();
                let ids: Vec<&str> = report.enqueued.iter().map(|j| j.id.as_str()).collect();
                report.outcome = Outcome::Done {
                    output: Some(serde_json::json!({ "routed": ids }).to_string()),
                };
                return report;
            }
            Some(Routed::Unwrapped(inner)) if unwrap => {
                return self.dispatch_body(inner.as_bytes(), delivery, false);
            }
            Some(Routed::Acknowledged(why)) => Outcome::Done { output: Some(why) },
            Some(Routed::Unrouted(what)) => dead_letter(Reason::Unrouted, what),
            Some(Routed::Unwrapped(_)) | None => {
                let reason = match error {
                    EnvelopeError::TooLarge { .. } => Reason::TooLarge,
                    EnvelopeError::Malformed(_) => Reason::Malformed,
                };
                dead_letter(reason, error.to_string())
            }
        };
        Report::rejected(id, None, attempt, outcome)
    }

    /// Runs one delivery of an already-parsed envelope (a queue that stores jobs
    /// structured skips the parse).
    pub fn dispatch_envelope(&self, envelope: Envelope, delivery: &Delivery) -> Report {
        let report = self.route(envelope, delivery);
        log_report(&report);
        report
    }

    fn route(&self, envelope: Envelope, delivery: &Delivery) -> Report {
        let job_id = envelope
            .id
            .clone()
            .or_else(|| delivery.fallback_id.clone())
            .unwrap_or_else(new_id);
        let attempt = delivery.attempt.or(envelope.attempt).unwrap_or(1).max(1);
        match self.check(&envelope.job, &envelope.payload) {
            Ok(plugin) => self.run(plugin, envelope, job_id, attempt, delivery),
            Err(Rejection::HandlerUnavailable(message)) => {
                let delay = unavailable_backoff(envelope.enqueued_at, SystemTime::now());
                let outcome = Outcome::Retry {
                    reason: Reason::HandlerUnavailable,
                    message,
                    delay,
                };
                Report::rejected(job_id, Some(envelope.job), attempt, outcome)
            }
            Err(rejection) => {
                let reason = match rejection {
                    Rejection::InvalidPayload(_) => Reason::InvalidPayload,
                    _ => Reason::UnknownJob,
                };
                let outcome = dead_letter(reason, rejection.to_string());
                Report::rejected(job_id, Some(envelope.job), attempt, outcome)
            }
        }
    }

    fn run(
        &self,
        plugin: &Plugin,
        envelope: Envelope,
        job_id: String,
        attempt: u32,
        delivery: &Delivery,
    ) -> Report {
        let limits = delivery.limits.as_ref().unwrap_or(&plugin.manifest.limits);
        let mut policy = plugin.manifest.retry.clone();
        if let Some(max) = envelope.max_attempts {
            policy.max_attempts = max.max(1);
        }
        let now = SystemTime::now();
        let mut timeout = Duration::from_millis(limits.timeout_ms);
        if let Some(cap) = delivery.deadline {
            timeout = timeout.min(cap.duration_since(now).unwrap_or(Duration::ZERO));
        }
        // With a fixed wall clock (tests), the job's timestamps follow it too.
        let seen_now = delivery.wall_clock.unwrap_or(now);
        let job = Job {
            id: job_id.clone(),
            name: envelope.job.clone(),
            payload: envelope.payload.to_string(),
            attempt,
            max_attempts: policy.max_attempts,
            enqueued_at: envelope
                .enqueued_at
                .unwrap_or_else(|| unix_millis(seen_now)),
            deadline: unix_millis(seen_now + timeout),
        };
        let settings = JobSettings {
            limits,
            timeout,
            payload_cap: self.options.max_body_bytes,
            grants: &plugin.grants,
            wall_clock: delivery.wall_clock,
            live: delivery.live.as_ref(),
        };
        let execution = execute(&self.engine, &plugin.pre, &job, &settings);
        let mut outcome = classify(&execution, &policy, attempt, limits.output_bytes);
        // However a cancelled job ended (the trap at the next epoch tick, or a result it
        // returned after its HTTP call was aborted), the cancellation wins: its result and
        // its follow-up jobs are dropped.
        if delivery.live.as_ref().is_some_and(|l| l.is_cancelled()) {
            outcome = Outcome::Cancelled {
                message: "cancelled while running".into(),
            };
        }
        let Execution {
            fuel,
            duration,
            peak_memory,
            captured,
            ..
        } = execution;
        let enqueued = if outcome.is_done() {
            captured.enqueued
        } else {
            Vec::new()
        };
        Report {
            job_id,
            job_name: Some(envelope.job),
            attempt,
            outcome,
            logs: captured.logs,
            logs_dropped_bytes: captured.dropped_bytes,
            logs_dropped_lines: captured.dropped_lines,
            progress: captured.progress,
            enqueued,
            fuel,
            duration,
            peak_memory,
        }
    }
}

/// The shortest and longest wait before a job whose handler was refused is tried again.
const UNAVAILABLE_RETRY_MIN: Duration = Duration::from_secs(30);
const UNAVAILABLE_RETRY_MAX: Duration = Duration::from_secs(3600);

/// Half the job's age, between 30 s and an hour: the wait grows by about half each time
/// without an attempt counter (these retries do not count one). Without an enqueue time,
/// five minutes.
fn unavailable_backoff(enqueued_at_ms: Option<u64>, now: SystemTime) -> Duration {
    let Some(enqueued) = enqueued_at_ms else {
        return Duration::from_secs(300);
    };
    let age = Duration::from_millis(unix_millis(now).saturating_sub(enqueued));
    (age / 2).clamp(UNAVAILABLE_RETRY_MIN, UNAVAILABLE_RETRY_MAX)
}

/// The `n`th job an event fanned out to, as a follow-up job of the event's message `id`
/// (its id derived from both, so a redelivered event makes the same ids).
fn fanned_out(id: &str, n: usize, job: Envelope) -> Option<crate::job::EnqueuedJob> {
    Some(crate::job::EnqueuedJob {
        id: format!("{id}-{n}"),
        job: job.job,
        payload: serde_json::value::to_raw_value(&job.payload).ok()?,
        delay_ms: None,
        unique_key: None,
        priority: None,
    })
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn dead_letter(reason: Reason, message: String) -> Outcome {
    Outcome::DeadLetter { reason, message }
}

/// Turns a call's result into the queue action, following the outcome table.
fn classify(execution: &Execution, policy: &RetryPolicy, attempt: u32, output_cap: u64) -> Outcome {
    let (reason, message, hint) = match &execution.result {
        Ok(Ok(output)) => {
            let size = output.as_ref().map_or(0, String::len) as u64;
            if size > output_cap {
                let message = format!("output is {size} bytes, over the cap of {output_cap} bytes");
                return dead_letter(Reason::OutputTooLarge, message);
            }
            return Outcome::Done {
                output: output.clone(),
            };
        }
        Ok(Err(JobError::Permanent(message))) => {
            return dead_letter(Reason::Permanent, message.clone());
        }
        Ok(Err(JobError::Transient(t))) => (
            Reason::Transient,
            t.message.clone(),
            t.retry_after_ms.map(Duration::from_millis),
        ),
        Err(error) => {
            let reason = classify_trap(error, execution.memory_limit_hit);
            let message = root_cause(error);
            let retryable = match reason {
                Reason::Timeout => true,
                Reason::Trap => policy.retry_traps,
                _ => false,
            };
            if !retryable {
                return dead_letter(reason, message);
            }
            (reason, message, None)
        }
    };
    if !policy.can_retry(attempt) {
        let message = format!("{message} (gave up after {attempt} attempts)");
        return dead_letter(reason, message);
    }
    let delay = policy.delay(attempt, hint, &mut jitter_rng());
    Outcome::Retry {
        reason,
        message,
        delay,
    }
}

fn classify_trap(error: &wasmtime::Error, memory_limit_hit: bool) -> Reason {
    if memory_limit_hit {
        return Reason::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Reason::FuelExhausted,
        Some(Trap::Interrupt) => Reason::Timeout,
        _ => Reason::Trap,
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn log_report(report: &Report) {
    let outcome = report.outcome.kind();
    let reason = report.outcome.reason().map(Reason::as_str);
    let duration_us = u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX);
    let name = report.job_name.as_deref().unwrap_or("");
    if report.outcome.is_done() {
        tracing::info!(job.id = %report.job_id, job.name = name, attempt = report.attempt, outcome, duration_us, fuel = report.fuel, "job done");
    } else {
        // `error`, not `message`: the event's own text is its `message` key.
        let error = report.outcome.message().unwrap_or("");
        tracing::info!(job.id = %report.job_id, job.name = name, attempt = report.attempt, outcome, reason, error, duration_us, fuel = report.fuel, "job failed");
    }
}
