//! `flaky-api`: stands in for a call to an unreliable upstream API. It answers "503, try
//! again in `retry_after_ms`" until the job's attempt reaches `fail_until_attempt`, then
//! succeeds: the host retries it with the hinted delay, and dead-letters it when the
//! attempts run out first. (Real outbound HTTP needs a manifest grant; see `webhook`.)

use std::time::Duration;

use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};

/// The job's payload.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlakyCall {
    /// The URL the call stands for (kept in the output and the error).
    pub url: String,
    /// The first attempt that succeeds.
    #[schemars(range(min = 1))]
    pub fail_until_attempt: u32,
    /// The retry-after hint sent with each failure (default 2000).
    pub retry_after_ms: Option<u64>,
}

/// The job's output.
#[derive(Serialize)]
pub struct Output {
    /// The simulated status.
    pub status: u16,
    /// The URL.
    pub url: String,
    /// The attempt that succeeded.
    pub attempt: u32,
}

struct FlakyApi;

impl Handler for FlakyApi {
    type Payload = FlakyCall;
    type Output = Output;
    const NAMES: &'static [&'static str] = &["flaky-api"];

    fn handle(job: Job<FlakyCall>) -> Result<Output, JobError> {
        let call = job.payload;
        if job.attempt < call.fail_until_attempt {
            let hint = Duration::from_millis(call.retry_after_ms.unwrap_or(2_000));
            jobhost_guest::log::warn(&format!("attempt {}: {} answered 503", job.attempt, call.url));
            return Err(JobError::transient(format!("{} answered 503 Service Unavailable", call.url)).retry_after(hint));
        }
        Ok(Output {
            status: 200,
            url: call.url,
            attempt: job.attempt,
        })
    }
}

export_handler!(FlakyApi);
