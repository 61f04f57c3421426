//! Logs `lines` lines of 1 KiB through `log` and as many through stdout.
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    lines: u32,
}

struct LogFlood;

impl Handler for LogFlood {
    type Payload = Payload;
    type Output = u32;
    const NAMES: &'static [&'static str] = &["log-flood"];

    fn handle(job: Job<Payload>) -> Result<u32, JobError> {
        let line = "y".repeat(1024);
        for i in 0..job.payload.lines {
            jobhost_guest::log::info(&format!("{i} {line}"));
            println!("{i} {line}");
        }
        Ok(job.payload.lines)
    }
}

export_handler!(LogFlood);

fn main() {}
