//! Returns what the guest's wall clock says, in milliseconds since the Unix epoch, and the
//! job's own timestamps.
use std::time::{SystemTime, UNIX_EPOCH};

use jobhost_guest::{Handler, Job, JobError, export_handler};

struct Clock;

impl Handler for Clock {
    type Payload = serde_json::Value;
    type Output = serde_json::Value;
    const NAMES: &'static [&'static str] = &["clock"];

    fn handle(job: Job<serde_json::Value>) -> Result<serde_json::Value, JobError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(JobError::permanent)?;
        Ok(serde_json::json!({"now_ms": now.as_millis() as u64, "enqueued_at_ms": job.enqueued_at_ms}))
    }
}

export_handler!(Clock);

fn main() {}
