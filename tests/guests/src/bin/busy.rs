//! Works (spins) for `ms` milliseconds of wall-clock time, then returns `i * 2`.
use std::time::{Duration, Instant};

use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    i: u64,
    #[serde(default)]
    ms: u64,
}

struct Busy;

impl Handler for Busy {
    type Payload = Payload;
    type Output = u64;
    const NAMES: &'static [&'static str] = &["busy"];

    fn handle(job: Job<Payload>) -> Result<u64, JobError> {
        let until = Instant::now() + Duration::from_millis(job.payload.ms);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok(job.payload.i * 2)
    }
}

export_handler!(Busy);

fn main() {}
