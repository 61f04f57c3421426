//! Recurses without end.
use jobhost_guest::{Handler, Job, JobError, export_handler};

/// Recursion whose frames live on the wasm stack (no locals in linear memory), so it
/// exhausts the host's `max_wasm_stack` rather than the guest's shadow stack.
#[inline(never)]
#[allow(unconditional_recursion, reason = "the point of this fixture")]
fn depth(n: u64) -> u64 {
    depth(n.wrapping_mul(6364136223846793005).wrapping_add(1)).rotate_left(7) ^ n
}

struct StackOverflow;

impl Handler for StackOverflow {
    type Payload = serde_json::Value;
    type Output = u64;
    const NAMES: &'static [&'static str] = &["stack-overflow"];

    fn handle(_job: Job<serde_json::Value>) -> Result<u64, JobError> {
        Ok(depth(std::env::args().count() as u64))
    }
}

export_handler!(StackOverflow);

fn main() {}
