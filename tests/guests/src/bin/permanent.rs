//! Always fails permanently.
use jobhost_guest::{Handler, Job, JobError, export_handler};

struct Permanent;

impl Handler for Permanent {
    type Payload = serde_json::Value;
    type Output = ();
    const NAMES: &'static [&'static str] = &["permanent"];

    fn handle(_job: Job<serde_json::Value>) -> Result<(), JobError> {
        Err(JobError::permanent("the recipient does not exist"))
    }
}

export_handler!(Permanent);

fn main() {}
