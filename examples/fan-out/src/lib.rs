//! `fan-out`: splits a list of payloads into one child job each (committed only when this
//! job succeeds) and returns the children's ids.

use jobhost_guest::{EnqueueOptions, Handler, Job, JobError, export_handler};
use serde::{Deserialize, Serialize};

/// The job's payload.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FanOut {
    /// The job name of every child.
    #[schemars(length(min = 1))]
    pub job: String,
    /// One child per entry, with the entry as its payload.
    #[schemars(length(min = 1, max = 100))]
    pub payloads: Vec<serde_json::Value>,
    /// Give each child a unique key `<parent id>-<index>`, so a retried parent never
    /// enqueues a child twice.
    #[serde(default)]
    pub unique: bool,
}

/// The job's output.
#[derive(Serialize)]
pub struct Output {
    /// The children's ids, in order.
    pub children: Vec<String>,
}

struct FanOutHandler;

impl Handler for FanOutHandler {
    type Payload = FanOut;
    type Output = Output;
    const NAMES: &'static [&'static str] = &["fan-out"];

    fn handle(job: Job<FanOut>) -> Result<Output, JobError> {
        let mut children = Vec::with_capacity(job.payload.payloads.len());
        for (index, payload) in job.payload.payloads.iter().enumerate() {
            let options = EnqueueOptions {
                unique_key: job.payload.unique.then(|| format!("{}-{index}", job.id)),
                ..EnqueueOptions::default()
            };
            let id = jobhost_guest::enqueue(&job.payload.job, payload, options)
                .map_err(|e| JobError::permanent(format!("child {index}: {e}")))?;
            children.push(id);
        }
        jobhost_guest::log::info(&format!("enqueued {} `{}` jobs", children.len(), job.payload.job));
        Ok(Output { children })
    }
}

export_handler!(FanOutHandler);
