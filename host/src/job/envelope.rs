//! The queue message envelope: `{"id", "job", "payload", "attempt"?, "enqueuedAt"?,
//! "notBefore"?, "maxAttempts"?}`. `type` and `jobName` are accepted as aliases of `job`;
//! other extra fields are accepted and ignored. A missing payload is `{}`, as when
//! enqueuing.
//!
//! Main types: [`Envelope`], [`EnvelopeError`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default cap on a message body, the same as SQS's: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// A parsed envelope. The payload is kept as parsed JSON.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The job's id; runners fill one in (the queue's message id) when it is absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The job name the message is routed by.
    #[serde(alias = "type", alias = "jobName")]
    pub job: String,
    /// The payload; `{}` when absent, as on the enqueue path ([`crate::job`]).
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// The delivery number, 1-based; the queue's own count wins where it has one.
    #[serde(default)]
    pub attempt: Option<u32>,
    /// Overrides the handler's max attempts for this job.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// When the job was enqueued, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub enqueued_at: Option<u64>,
    /// Do not run before this time, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub not_before: Option<u64>,
}

/// The payload of a job that was given none: `{}`, on every path.
pub fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Why a message body is not a usable envelope. Both kinds are dead-lettered at once.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is over the size cap.
    #[error("message body is {size} bytes, over the cap of {cap} bytes")]
    TooLarge {
        /// The body's size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The body is not a JSON object with a job name.
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

impl Envelope {
    /// Parses a raw message body, refusing bodies over `max_bytes` before reading them.
    pub fn parse(body: &[u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        if body.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: body.len(),
                cap: max_bytes,
            });
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| EnvelopeError::Malformed(format!("body is not UTF-8: {e}")))?;
        if text.trim().is_empty() {
            return Err(EnvelopeError::Malformed("body is empty".into()));
        }
        // serde_json bounds nesting depth (128), rejects numbers beyond f64 and duplicate
        // envelope fields, so none of those reach a handler.
        let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
            EnvelopeError::Malformed(format!(
                "not a job envelope ({e}); expected {{\"job\": NAME, \"payload\": ...}}"
            ))
        })?;
        if envelope.job.trim().is_empty() {
            return Err(EnvelopeError::Malformed("the job name is empty".into()));
        }
        Ok(envelope)
    }

    /// Serializes the envelope into a message body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Envelope, EnvelopeError> {
        Envelope::parse(body.as_bytes(), DEFAULT_MAX_BODY_BYTES)
    }

    #[test]
    fn aliases_route_like_job() -> Result<(), EnvelopeError> {
        for key in ["job", "type", "jobName"] {
            let envelope = parse(&format!(
                r#"{{"{key}": "email", "payload": {{"to": "a"}}}}"#
            ))?;
            assert_eq!(envelope.job, "email");
            assert_eq!(envelope.payload["to"], "a");
        }
        Ok(())
    }

    #[test]
    fn bad_bodies_are_malformed_or_too_large() {
        let nested = format!("{}{}", "[".repeat(500), "]".repeat(500));
        for body in [
            "",
            "   ",
            "not json",
            "[1,2]",
            "{}",
            r#"{"job": ""}"#,
            r#"{"job": 3}"#,
            &nested,
        ] {
            assert!(
                matches!(parse(body), Err(EnvelopeError::Malformed(_))),
                "{body:?}"
            );
        }
        let invalid_utf8 = Envelope::parse(b"{\"job\": \"\xff\"}", 100);
        assert!(matches!(invalid_utf8, Err(EnvelopeError::Malformed(_))));
        let big = Envelope::parse(&[b' '; 101], 100);
        assert_eq!(
            big,
            Err(EnvelopeError::TooLarge {
                size: 101,
                cap: 100
            })
        );
    }

    #[test]
    fn extra_fields_are_accepted() -> Result<(), EnvelopeError> {
        let envelope = parse(r#"{"job": "a", "trace": "x", "attempt": 3}"#)?;
        assert_eq!(envelope.attempt, Some(3));
        assert_eq!(envelope.payload, serde_json::json!({}));
        Ok(())
    }
}
