//! A request to enqueue a job, as the HTTP API, `jobhost enqueue --file` (one per line)
//! and the CLI take it: `{"job", "payload", "delay"?, "at"?, "priority"?, "unique"?,
//! "maxAttempts"?}`. `delay` is a duration like `"10m"` or `"1h 30m"`; `at` is RFC 3339.
//!
//! Every field of a queue envelope is accepted too, so a message body can be replayed
//! as a request: `id` (the job's id), `notBefore` (milliseconds since the Unix epoch, like
//! `at`), `traceparent`, and `attempt`, `enqueuedAt` and the recipes' `createdAt`, which
//! are metadata and ignored. Any other field is refused by name.
//!
//! Main type: [`JobRequest`].

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use crate::dispatch::{Dispatcher, Rejection};
use crate::job::empty_object;
use crate::queue::NewJob;

/// A request to enqueue one job.
#[derive(Clone, Debug, Default, Deserialize)]
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
    /// The job's id (default: a new one).
    #[serde(default)]
    pub id: Option<String>,
    /// Run at this time, in milliseconds since the Unix epoch (the envelope's form of
    /// `at`).
    #[serde(default)]
    pub not_before: Option<u64>,
    /// The W3C trace context to continue.
    #[serde(default, rename = "traceparent")]
    pub trace_parent: Option<String>,
    /// Metadata of a replayed message, accepted and ignored: the delivery number.
    #[serde(default)]
    pub attempt: Option<Value>,
    /// Metadata, accepted and ignored: when the message was first enqueued.
    #[serde(default)]
    pub enqueued_at: Option<Value>,
    /// Metadata the common SQS recipes add, accepted and ignored.
    #[serde(default)]
    pub created_at: Option<Value>,
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
        let run_at = match (&self.delay, &self.at, self.not_before) {
            (Some(delay), None, None) => {
                Some(now + parse_delay(delay).map_err(RequestError::Invalid)?)
            }
            (None, Some(at), None) => Some(parse_at(at).map_err(RequestError::Invalid)?),
            (None, None, Some(ms)) => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
            (None, None, None) => None,
            _ => {
                return Err(RequestError::Invalid(
                    "give one of `delay`, `at` and `notBefore`".into(),
                ));
            }
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
        job.id = self.id;
        job.trace_parent = self.trace_parent;
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobRequest, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn envelope_fields_and_recipe_metadata_are_accepted() -> Result<(), String> {
        let request = parse(
            r#"{"type": "email", "payload": {"to": "a"}, "createdAt": "2026-12-01T09:00:00Z",
                "enqueuedAt": 1, "id": "j1", "attempt": 2, "notBefore": 5000,
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#,
        )?;
        let job = request
            .into_new_job(SystemTime::now(), None)
            .map_err(|e| e.to_string())?;
        assert_eq!(job.name, "email");
        assert_eq!(job.id.as_deref(), Some("j1"));
        assert_eq!(
            job.run_at,
            Some(std::time::UNIX_EPOCH + Duration::from_millis(5000))
        );
        assert!(job.trace_parent.is_some());
        Ok(())
    }

    #[test]
    fn a_typo_is_refused_by_name() {
        let error = parse(r#"{"job": "email", "dealy": "10m"}"#).expect_err("refused");
        assert!(error.contains("dealy"), "{error}");
        let both = parse(r#"{"job": "a", "delay": "1m", "notBefore": 1}"#)
            .map(|r| r.into_new_job(SystemTime::now(), None));
        assert!(matches!(both, Ok(Err(RequestError::Invalid(_)))));
    }
}
