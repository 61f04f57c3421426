//! Write [jobhost](https://example.invalid/jobhost) job handlers in Rust.
//!
//! A handler is a payload type (serde + schemars), an implementation of [`Handler`], and one
//! [`export_handler!`] line. The payload's JSON Schema is derived from the type, so the host
//! rejects bad payloads before your code runs.
//!
//! ```no_run
//! use jobhost_guest::{Handler, Job, JobError, export_handler};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, schemars::JsonSchema)]
//! struct Greet {
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl Handler for Greeter {
//!     type Payload = Greet;
//!     type Output = String;
//!     const NAMES: &'static [&'static str] = &["greet"];
//!
//!     fn handle(job: Job<Greet>) -> Result<String, JobError> {
//!         if job.payload.name.is_empty() {
//!             return Err(JobError::permanent("name is empty"));
//!         }
//!         jobhost_guest::log::info(&format!("greeting {}", job.payload.name));
//!         Ok(format!("hello, {}", job.payload.name))
//!     }
//! }
//!
//! export_handler!(Greeter);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (as a `cdylib`, or a `bin`
//! with an empty `main`), and drop the `.wasm` into the host's plugins folder.

#![deny(missing_docs)]

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The generated bindings for the `jobhost:plugin/job-plugin` world.
#[doc(hidden)]
#[allow(missing_docs, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "job-plugin",
        pub_export_macro: true,
        default_bindings_module: "jobhost_guest::bindings",
    });
}

use bindings::jobhost::plugin::{host, types};

pub mod http;

/// One delivery of a job, with its payload already parsed into `P`.
#[derive(Debug, Clone)]
pub struct Job<P> {
    /// The job's id, stable across retries.
    pub id: String,
    /// The job name it was routed by.
    pub name: String,
    /// The parsed payload.
    pub payload: P,
    /// 1 on the first delivery.
    pub attempt: u32,
    /// Attempts before a retryable failure is dead-lettered.
    pub max_attempts: u32,
    /// When the job was enqueued (ms since the Unix epoch).
    pub enqueued_at_ms: u64,
    /// When the host interrupts the job (ms since the Unix epoch).
    pub deadline_ms: u64,
}

impl<P> Job<P> {
    /// Whether this is the last attempt the job gets.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// A failed job: permanent (dead-letter now) or transient (retry with backoff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The job can never succeed.
    Permanent(String),
    /// The job may succeed later.
    Transient {
        /// What went wrong.
        message: String,
        /// When to try again; `None` lets the host back off exponentially.
        retry_after: Option<Duration>,
    },
}

impl JobError {
    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        JobError::Permanent(message.to_string())
    }

    /// A failure that may pass; the host retries with backoff.
    pub fn transient(message: impl std::fmt::Display) -> Self {
        JobError::Transient {
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// Sets the retry-after hint of a transient error (no effect on a permanent one).
    pub fn retry_after(self, delay: Duration) -> Self {
        match self {
            JobError::Transient { message, .. } => JobError::Transient {
                message,
                retry_after: Some(delay),
            },
            permanent => permanent,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Permanent(m) => write!(f, "permanent: {m}"),
            JobError::Transient { message, .. } => write!(f, "transient: {message}"),
        }
    }
}

/// A job handler. Implement it and export it with [`export_handler!`].
pub trait Handler {
    /// The payload type; its JSON Schema is what the host checks payloads against.
    type Payload: DeserializeOwned + schemars::JsonSchema;
    /// The output type, serialized to JSON (`()` means no output).
    type Output: Serialize;
    /// The job names this handler accepts.
    const NAMES: &'static [&'static str];

    /// Handles one delivery.
    fn handle(job: Job<Self::Payload>) -> Result<Self::Output, JobError>;
}

/// Structured logging into the job's log (kept by the host, bounded per job).
pub mod log {
    use super::{host, types::LogLevel};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        host::log(LogLevel::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        host::log(LogLevel::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        host::log(LogLevel::Warn, message);
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        host::log(LogLevel::Error, message);
    }
}

/// Reports progress: `done` of `total` units, with an optional message.
pub fn progress(done: u64, total: u64, message: Option<&str>) {
    host::progress(done, total, message);
}

/// Options for [`enqueue`].
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Run no earlier than this long after the parent completes.
    pub delay: Option<Duration>,
    /// At most one queued or running job per key.
    pub unique_key: Option<String>,
    /// Higher runs first.
    pub priority: Option<i32>,
}

/// Enqueues a follow-up job, committed only if this job succeeds. Returns the new job's id.
pub fn enqueue<P: Serialize>(
    name: &str,
    payload: &P,
    options: EnqueueOptions,
) -> Result<String, String> {
    let payload = serde_json::to_string(payload).map_err(|e| e.to_string())?;
    let options = types::EnqueueOptions {
        delay_ms: options
            .delay
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        unique_key: options.unique_key,
        priority: options.priority,
    };
    host::enqueue(name, &payload, &options)
}

/// The JSON Schema of a payload type, as the host receives it from `describe()`.
pub fn schema_of<P: schemars::JsonSchema>() -> String {
    serde_json::to_string(&schemars::schema_for!(P)).unwrap_or_default()
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use bindings::exports::jobhost::plugin::handler::Guest;
    pub use types::{HandlerInfo, Job as RawJob, JobError as RawJobError};

    pub fn describe<H: Handler>(version: &str) -> HandlerInfo {
        HandlerInfo {
            names: H::NAMES.iter().map(|n| n.to_string()).collect(),
            schema: Some(schema_of::<H::Payload>()),
            version: version.to_string(),
        }
    }

    pub fn handle<H: Handler>(job: RawJob) -> Result<Option<String>, RawJobError> {
        let payload = serde_json::from_str::<H::Payload>(&job.payload).map_err(|e| {
            RawJobError::Permanent(format!("payload does not match the handler's type: {e}"))
        })?;
        let job = Job {
            id: job.id,
            name: job.name,
            payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            enqueued_at_ms: job.enqueued_at,
            deadline_ms: job.deadline,
        };
        match H::handle(job) {
            Ok(output) => output_text(&output),
            Err(JobError::Permanent(message)) => Err(RawJobError::Permanent(message)),
            Err(JobError::Transient {
                message,
                retry_after,
            }) => Err(RawJobError::Transient(types::TransientError {
                message,
                retry_after_ms: retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })),
        }
    }

    fn output_text<O: Serialize>(output: &O) -> Result<Option<String>, RawJobError> {
        match serde_json::to_value(output) {
            Ok(serde_json::Value::Null) => Ok(None),
            Ok(value) => Ok(Some(value.to_string())),
            Err(e) => Err(RawJobError::Permanent(format!(
                "output is not serializable: {e}"
            ))),
        }
    }
}

/// Exports a [`Handler`] as the component's `jobhost:plugin/handler` interface.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        struct __JobhostExport;

        impl $crate::__private::Guest for __JobhostExport {
            fn describe() -> $crate::__private::HandlerInfo {
                $crate::__private::describe::<$handler>(env!("CARGO_PKG_VERSION"))
            }

            fn handle(
                job: $crate::__private::RawJob,
            ) -> ::core::result::Result<::core::option::Option<::std::string::String>, $crate::__private::RawJobError> {
                $crate::__private::handle::<$handler>(job)
            }
        }

        $crate::bindings::export!(__JobhostExport with_types_in $crate::bindings);
    };
}
