//! Panics (a trap from the host's point of view).
use jobhost_guest::{Handler, Job, JobError, export_handler};

struct Panics;

impl Handler for Panics {
    type Payload = serde_json::Value;
    type Output = ();
    const NAMES: &'static [&'static str] = &["panics"];

    fn handle(_job: Job<serde_json::Value>) -> Result<(), JobError> {
        panic!("the handler has a bug");
    }
}

export_handler!(Panics);

fn main() {}
