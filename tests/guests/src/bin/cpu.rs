//! CPU-bound work: counts the primes below `below`, for the fuel-overhead benchmark.
use jobhost_guest::{Handler, Job, JobError, export_handler};
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct Payload {
    below: u32,
}

fn count_primes(below: u32) -> u32 {
    (2..below).filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0)).count() as u32
}

struct Cpu;

impl Handler for Cpu {
    type Payload = Payload;
    type Output = u32;
    const NAMES: &'static [&'static str] = &["cpu"];

    fn handle(job: Job<Payload>) -> Result<u32, JobError> {
        Ok(count_primes(job.payload.below))
    }
}

export_handler!(Cpu);

fn main() {}
