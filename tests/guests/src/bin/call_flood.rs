//! Makes `calls` minimal host calls of one kind (`log`, `stdout`, `progress`, `enqueue`,
//! `enqueue-big`, `fields`, `headers`), each of which asks the host to keep a little
//! something, and returns how many the host accepted.
use jobhost_guest::{EnqueueOptions, Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    kind: String,
    calls: u64,
}

struct CallFlood;

impl Handler for CallFlood {
    type Payload = Payload;
    type Output = u64;
    const NAMES: &'static [&'static str] = &["call-flood"];

    fn handle(job: Job<Payload>) -> Result<u64, JobError> {
        let calls = job.payload.calls;
        let mut accepted = 0;
        match job.payload.kind.as_str() {
            "log" => {
                for _ in 0..calls {
                    jobhost_guest::log::info("");
                }
                accepted = calls;
            }
            "stdout" => {
                // Empty lines, 4096 to a write.
                let stdout = wasi::cli::stdout::get_stdout();
                let chunk = [b'\n'; 4096];
                for _ in 0..calls.div_ceil(4096) {
                    if stdout.blocking_write_and_flush(&chunk).is_ok() {
                        accepted += 4096;
                    }
                }
            }
            "progress" => {
                for i in 0..calls {
                    jobhost_guest::progress(i, calls, Some(""));
                }
                accepted = calls;
            }
            "enqueue" => {
                for _ in 0..calls {
                    if jobhost_guest::enqueue("e", &0, EnqueueOptions::default()).is_ok() {
                        accepted += 1;
                    }
                }
            }
            "enqueue-big" => {
                let big = "x".repeat(900 * 1024);
                for _ in 0..calls {
                    if jobhost_guest::enqueue("e", &big, EnqueueOptions::default()).is_ok() {
                        accepted += 1;
                    }
                }
            }
            "fields" => {
                // Header maps the guest never drops: each is a host resource.
                for _ in 0..calls {
                    std::mem::forget(wasi::http::types::Fields::new());
                    accepted += 1;
                }
            }
            "headers" => {
                let fields = wasi::http::types::Fields::new();
                for i in 0..calls {
                    if fields.append(&format!("x-{i}"), &b"v".to_vec()).is_ok() {
                        accepted += 1;
                    }
                }
            }
            other => return Err(JobError::permanent(format!("unknown kind {other}"))),
        }
        Ok(accepted)
    }
}

export_handler!(CallFlood);

fn main() {}
