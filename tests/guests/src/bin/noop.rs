//! Does nothing: the per-job overhead baseline.
use jobhost_guest::{Handler, Job, JobError, export_handler};

struct Noop;

impl Handler for Noop {
    type Payload = serde_json::Value;
    type Output = ();
    const NAMES: &'static [&'static str] = &["noop"];

    fn handle(_job: Job<serde_json::Value>) -> Result<(), JobError> {
        Ok(())
    }
}

export_handler!(Noop);

fn main() {}
