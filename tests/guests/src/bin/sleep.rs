//! Waits `ms` milliseconds (default 1000) on the monotonic clock, doing nothing, then
//! returns how long it waited: many of these hold many instances at once.
use std::time::{Duration, Instant};

use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    #[serde(default = "second")]
    ms: u64,
}

fn second() -> u64 {
    1000
}

struct Sleep;

impl Handler for Sleep {
    type Payload = Payload;
    type Output = u64;
    const NAMES: &'static [&'static str] = &["sleep"];

    fn handle(job: Job<Payload>) -> Result<u64, JobError> {
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(job.payload.ms));
        Ok(started.elapsed().as_millis() as u64)
    }
}

export_handler!(Sleep);

fn main() {}
