//! Returns an output of `bytes` bytes.
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    bytes: usize,
}

struct HugeOutput;

impl Handler for HugeOutput {
    type Payload = Payload;
    type Output = String;
    const NAMES: &'static [&'static str] = &["huge-output"];

    fn handle(job: Job<Payload>) -> Result<String, JobError> {
        Ok("x".repeat(job.payload.bytes))
    }
}

export_handler!(HugeOutput);

fn main() {}
