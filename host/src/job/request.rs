//! A request to enqueue a job, as the HTTP API, `jobhost enqueue --file` (one per line)
//! and the CLI take it: `{"job", "payload", "delay"?, "at"?, "priority"?, "unique"?,
//! "maxAttempts"?}`. `delay` is a duration like `"10m"` or `"1h 30m"`; `at` is RFC 3339.
//!
//! Main type: [`JobRequest`].

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use crate::dispatch::{Dispatcher, Rejection};
use crate::job::empty_object;
use crate::queue::NewJob;

/// A request to enqueue one job.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobRequest {
    /// The job name.
    #[serde(alias = "type", alias = "jobName")]
    pub job: String,
    /// The payload (default `{}`).
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Run after this delay, e.g. `"10m"`.
    #[serde(default)]
    pub delay: Option<String>,
    /// Run at this time (RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: Option<i32>,
    /// At most one queued or running job per key.
    #[serde(default)]
    pub unique: Option<String>,
    /// Overrides the handler's max attempts.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// Why a request cannot be enqueued.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// Bad fields (a delay that is not a duration, both `delay` and `at`, ...).
    #[error("{0}")]
    Invalid(String),
    /// The handler refuses it (unknown name or schema errors).
    #[error(transparent)]
    Rejected(Rejection),
}

/// Parses a delay such as `10m`, `90s` or `1h 30m`.
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid delay {text:?}: {e} (use e.g. 10m, 90s, 1h 30m)"))
}

/// Parses an RFC 3339 time.
pub fn parse_at(text: &str) -> Result<SystemTime, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .map_err(|e| {
            format!("invalid time {text:?}: {e} (use RFC 3339, e.g. 2026-12-01T09:00:00Z)")
        })
}

impl JobRequest {
    /// The job to enqueue, checked against its handler when `dispatcher` is given.
    pub fn into_new_job(
        self,
        now: SystemTime,
        dispatcher: Option<&Dispatcher>,
    ) -> Result<NewJob, RequestError> {
        if let Some(dispatcher) = dispatcher {
            dispatcher
                .check(&self.job, &self.payload)
                .map_err(RequestError::Rejected)?;
        }
        let run_at = match (&self.delay, &self.at) {
            (Some(_), Some(_)) => {
                return Err(RequestError::Invalid(
                    "give `delay` or `at`, not both".into(),
                ));
            }
            (Some(delay), None) => Some(now + parse_delay(delay).map_err(RequestError::Invalid)?),
            (None, Some(at)) => Some(parse_at(at).map_err(RequestError::Invalid)?),
            (None, None) => None,
        };
        if self.max_attempts == Some(0) {
            return Err(RequestError::Invalid(
                "maxAttempts must be at least 1".into(),
            ));
        }
        let mut job = NewJob::new(self.job, self.payload);
        job.run_at = run_at;
        job.priority = self.priority.unwrap_or(0);
        job.unique_key = self.unique;
        job.max_attempts = self.max_attempts;
        Ok(job)
    }
}
