//! Passes huge strings to every host import and enqueues far too many jobs.
use jobhost_guest::{EnqueueOptions, Handler, Job, JobError, export_handler};
use serde::Serialize;

#[derive(Serialize)]
struct Tally {
    accepted: u32,
    refused: u32,
    first_refusal: Option<String>,
}

struct HostFlood;

impl Handler for HostFlood {
    type Payload = serde_json::Value;
    type Output = Tally;
    const NAMES: &'static [&'static str] = &["host-flood"];

    fn handle(_job: Job<serde_json::Value>) -> Result<Tally, JobError> {
        let huge = "z".repeat(16 << 20);
        jobhost_guest::log::error(&huge);
        jobhost_guest::progress(1, 2, Some(&huge));
        let mut tally = Tally { accepted: 0, refused: 0, first_refusal: None };
        let mut count = |result: Result<String, String>| match result {
            Ok(_) => tally.accepted += 1,
            Err(e) => {
                tally.refused += 1;
                tally.first_refusal.get_or_insert(e);
            }
        };
        count(jobhost_guest::enqueue(&huge, &1, EnqueueOptions::default()));
        count(jobhost_guest::enqueue("echo", &huge, EnqueueOptions::default()));
        let key = EnqueueOptions { unique_key: Some(huge.clone()), ..EnqueueOptions::default() };
        count(jobhost_guest::enqueue("echo", &1, key));
        for i in 0..10_000 {
            count(jobhost_guest::enqueue("echo", &serde_json::json!({"message": i}), EnqueueOptions::default()));
        }
        Ok(tally)
    }
}

export_handler!(HostFlood);

fn main() {}
