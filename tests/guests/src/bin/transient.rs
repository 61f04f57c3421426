//! Fails transiently, with a retry-after hint, until `succeed_on` attempts.
use std::time::Duration;

use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    succeed_on: u32,
}

struct Transient;

impl Handler for Transient {
    type Payload = Payload;
    type Output = String;
    const NAMES: &'static [&'static str] = &["transient"];

    fn handle(job: Job<Payload>) -> Result<String, JobError> {
        if job.attempt < job.payload.succeed_on {
            return Err(JobError::transient("upstream returned 503").retry_after(Duration::from_millis(1_500)));
        }
        Ok(format!("succeeded on attempt {}", job.attempt))
    }
}

export_handler!(Transient);

fn main() {}
