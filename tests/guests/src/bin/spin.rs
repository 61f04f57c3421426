//! Loops forever: ends by fuel exhaustion or by the deadline.
use jobhost_guest::{Handler, Job, JobError, export_handler};

struct Spin;

impl Handler for Spin {
    type Payload = serde_json::Value;
    type Output = u64;
    const NAMES: &'static [&'static str] = &["spin"];

    fn handle(_job: Job<serde_json::Value>) -> Result<u64, JobError> {
        let mut counter = 0u64;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
            if counter == u64::MAX {
                return Ok(counter);
            }
        }
    }
}

export_handler!(Spin);

fn main() {}
