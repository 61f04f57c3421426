//! Echoes its message, logs, reports progress and enqueues children when asked.
use jobhost_guest::{EnqueueOptions, Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    message: String,
    #[serde(default)]
    children: u32,
    /// Fail transiently after enqueueing the children (they must not be committed).
    #[serde(default)]
    fail: bool,
}

struct Echo;

impl Handler for Echo {
    type Payload = Payload;
    type Output = serde_json::Value;
    const NAMES: &'static [&'static str] = &["echo", "echo-alias"];

    fn handle(job: Job<Payload>) -> Result<serde_json::Value, JobError> {
        jobhost_guest::log::info(&format!("echoing {}", job.payload.message));
        println!("stdout says {}", job.payload.message);
        for child in 0..job.payload.children {
            jobhost_guest::progress(u64::from(child), u64::from(job.payload.children), Some("enqueueing"));
            let payload = serde_json::json!({"message": format!("child {child}")});
            jobhost_guest::enqueue("echo", &payload, EnqueueOptions::default()).map_err(JobError::permanent)?;
        }
        if job.payload.fail {
            return Err(JobError::transient("failing after the enqueues"));
        }
        Ok(serde_json::json!({"echo": job.payload.message, "attempt": job.attempt, "id": job.id}))
    }
}

export_handler!(Echo);

fn main() {}
