//! Takes events routed by triggers: returns its job name and payload, so a test sees what
//! each trigger made of an event.
use jobhost_guest::{Handler, Job, JobError, export_handler};

struct Events;

impl Handler for Events {
    type Payload = serde_json::Value;
    type Output = serde_json::Value;
    const NAMES: &'static [&'static str] = &["on-upload", "on-order", "on-event", "on-schedule"];

    fn handle(job: Job<serde_json::Value>) -> Result<serde_json::Value, JobError> {
        if job.payload.get("fail").is_some() {
            return Err(JobError::permanent("asked to fail"));
        }
        Ok(serde_json::json!({"job": job.name, "payload": job.payload, "id": job.id}))
    }
}

export_handler!(Events);

fn main() {}
