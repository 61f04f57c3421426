//! Allocates until something stops it.
use jobhost_guest::{Handler, Job, JobError, export_handler};

struct MemoryBomb;

impl Handler for MemoryBomb {
    type Payload = serde_json::Value;
    type Output = usize;
    const NAMES: &'static [&'static str] = &["memory-bomb"];

    fn handle(_job: Job<serde_json::Value>) -> Result<usize, JobError> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&blocks);
            if blocks.len() == usize::MAX {
                return Ok(blocks.len());
            }
        }
    }
}

export_handler!(MemoryBomb);

fn main() {}
