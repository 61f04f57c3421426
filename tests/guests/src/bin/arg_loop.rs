//! Loops while building a host call's argument: the string never ends, so the call is
//! never made; fuel or memory stops it first.
use jobhost_guest::{Handler, Job, JobError, export_handler};

struct ArgLoop;

impl Handler for ArgLoop {
    type Payload = serde_json::Value;
    type Output = ();
    const NAMES: &'static [&'static str] = &["arg-loop"];

    fn handle(_job: Job<serde_json::Value>) -> Result<(), JobError> {
        let mut argument = String::new();
        let mut i = 0u64;
        while i < u64::MAX {
            argument.push(char::from(b'a' + (i % 26) as u8));
            i += 1;
        }
        jobhost_guest::log::info(&argument);
        Ok(())
    }
}

export_handler!(ArgLoop);

fn main() {}
