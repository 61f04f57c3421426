//! Works (spins) for `ms` milliseconds of wall-clock time, reporting its progress every
//! 50 ms, then returns `i * 2`. With `children`, enqueues that many `echo` jobs first.
use std::time::{Duration, Instant};

use jobhost_guest::{EnqueueOptions, Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    i: u64,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    children: u32,
}

struct Busy;

impl Handler for Busy {
    type Payload = Payload;
    type Output = u64;
    const NAMES: &'static [&'static str] = &["busy"];

    fn handle(job: Job<Payload>) -> Result<u64, JobError> {
        for child in 0..job.payload.children {
            let payload = serde_json::json!({"message": format!("child {child}")});
            jobhost_guest::enqueue("echo", &payload, EnqueueOptions::default()).map_err(JobError::permanent)?;
        }
        let started = Instant::now();
        let until = started + Duration::from_millis(job.payload.ms);
        let mut next_report = started + Duration::from_millis(50);
        while Instant::now() < until {
            if Instant::now() >= next_report {
                let done = started.elapsed().as_millis() as u64;
                jobhost_guest::progress(done, job.payload.ms, Some("spinning"));
                next_report += Duration::from_millis(50);
            }
            std::hint::spin_loop();
        }
        Ok(job.payload.i * 2)
    }
}

export_handler!(Busy);

fn main() {}
