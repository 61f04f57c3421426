//! What a backend may do besides the core [`Queue`]: each ability is its own trait, and a
//! backend implements only those it truly can. The CLI, the HTTP API and the scheduler
//! reach the queue through these traits.
//!
//! | ability | embedded (SQLite) | PostgreSQL | SQS | in-memory |
//! |---|---|---|---|---|
//! | [`Inspect`]: list, show, counts | yes | yes | no: SQS shows no message without receiving it | no |
//! | [`Administer`]: cancel, pause, redrive, purge | yes | yes | no: use the SQS console or its redrive | no |
//! | [`Steer`]: live progress, cancellation across hosts | yes | yes | no: SQS has no place to keep either | no |
//! | [`Ticks`]: each schedule tick once | yes | yes | FIFO queues only (a deduplication id per tick) | no |
//! | [`ReleaseUncounted`] | yes | yes | no: every receive counts | yes |

use std::future::Future;

use serde::Serialize;
use serde_json::Value;

use super::{Enqueued, NewJob, Queue, QueueError};
use crate::job::Progress;

/// Reading jobs: `jobhost jobs list|show`, `jobhost stats`, the HTTP API's job view.
pub trait Inspect: Queue {
    /// One job.
    fn job(&self, id: &str) -> impl Future<Output = Result<Option<JobRecord>, QueueError>> + Send;

    /// Jobs, newest first.
    fn jobs(
        &self,
        filter: JobFilter,
    ) -> impl Future<Output = Result<Vec<JobRecord>, QueueError>> + Send;

    /// Counts by job name and state, and the age of the oldest due job.
    fn stats(&self) -> impl Future<Output = Result<Stats, QueueError>> + Send;

    /// Jobs done and dead per minute since `since_ms`: `(minute since the epoch, state,
    /// count)` rows.
    fn finished_per_minute(
        &self,
        since_ms: i64,
    ) -> impl Future<Output = Result<Vec<(i64, String, u64)>, QueueError>> + Send;

    /// Per job name, the run time and fuel of the jobs done since `since_ms` (ms since the
    /// Unix epoch).
    fn timings(
        &self,
        since_ms: i64,
    ) -> impl Future<Output = Result<Vec<Timing>, QueueError>> + Send;
}

/// Changing jobs from outside: `jobhost jobs cancel`, `jobhost pause|resume`,
/// `jobhost dlq redrive|purge`.
pub trait Administer: Queue {
    /// Cancels a queued job, or asks the host running it to stop it.
    fn cancel(&self, id: &str) -> impl Future<Output = Result<CancelResult, QueueError>> + Send;

    /// Stops claiming jobs of this name (they stay queued); false if it was paused already.
    fn pause(&self, name: &str) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Claims jobs of this name again; false if it was not paused.
    fn resume(&self, name: &str) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Puts dead jobs back in the queue with their attempts reset; returns how many.
    fn redrive(&self, which: Redrive) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Deletes every dead job; returns how many.
    fn purge_dead(&self) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Deletes one dead job; false if there is no dead job with this id.
    fn delete_dead(&self, id: &str) -> impl Future<Output = Result<bool, QueueError>> + Send;
}

/// Steering running jobs, for the runner: their progress written through while they run,
/// and cancellations asked for by any process sharing the queue.
pub trait Steer: Queue {
    /// Records the latest progress of running jobs this worker holds.
    fn write_progress(
        &self,
        updates: Vec<(String, Progress)>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Of the jobs this worker holds, those whose cancellation was asked for.
    fn cancel_requests(&self) -> impl Future<Output = Result<Vec<String>, QueueError>> + Send;
}

/// Periodic jobs: each tick of a schedule enqueued once, across restarts and hosts.
pub trait Ticks: Queue {
    /// Enqueues `job` unless a job was already enqueued for `tick_key`; `None` then.
    fn enqueue_tick(
        &self,
        tick_key: &str,
        job: NewJob,
    ) -> impl Future<Output = Result<Option<Enqueued>, QueueError>> + Send;
}

/// A promise about [`Queue::release`]: on this backend a delivery given back unstarted
/// does not count an attempt (on SQS every receive counts, so it does not promise this).
pub trait ReleaseUncounted: Queue {}

/// Which jobs [`Inspect::jobs`] lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this state (`queued`, `running`, `done`, `dead`, `cancelled`).
    pub state: Option<String>,
    /// Only this job name.
    pub name: Option<String>,
    /// At most this many.
    pub limit: usize,
    /// Skip this many first (paging).
    pub offset: usize,
    /// Only the follow-up jobs of this job.
    pub parent: Option<String>,
}

/// Which dead jobs [`Administer::redrive`] puts back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redrive {
    /// This one.
    One(String),
    /// Every dead job.
    All,
}

/// A job as stored, for `jobs show` and the HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRecord {
    /// Id.
    pub id: String,
    /// Job name.
    pub name: String,
    /// Payload.
    pub payload: Value,
    /// The raw body of a job enqueued as a message body (lossy UTF-8), kept when it is
    /// dead-lettered.
    pub body: Option<String>,
    /// `queued`, `running`, `done`, `dead` or `cancelled`.
    pub state: String,
    /// Priority.
    pub priority: i64,
    /// When it is (or was) due, ms since the Unix epoch.
    pub run_at: i64,
    /// Deliveries so far.
    pub attempts: i64,
    /// Max attempts override.
    pub max_attempts: Option<i64>,
    /// The worker holding the lease.
    pub lease_owner: Option<String>,
    /// Lease expiry.
    pub lease_until: Option<i64>,
    /// Unique key.
    pub unique_key: Option<String>,
    /// The last error message (kept on a job that later succeeded, to show why it was
    /// retried).
    pub last_error: Option<String>,
    /// The last failure's reason.
    pub reason: Option<String>,
    /// Output (JSON text by convention).
    pub output: Option<String>,
    /// The last progress report.
    pub progress: Option<Value>,
    /// The job that enqueued this one.
    pub parent_id: Option<String>,
    /// Created, ms since the Unix epoch.
    pub created_at: i64,
    /// Last changed.
    pub updated_at: i64,
    /// Done or dead at.
    pub finished_at: Option<i64>,
    /// When its latest attempt started.
    pub started_at: Option<i64>,
    /// What its latest attempt cost (none before it first ran).
    pub cost: Option<CostRecord>,
    /// A cancellation was asked for while it ran; the host running it stops it.
    pub cancel_requested: bool,
    /// The log lines of its latest attempt (`level`, `source`, `message`).
    pub logs: Vec<Value>,
}

impl JobRecord {
    /// Whether the job has finished: done, dead or cancelled.
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "dead" | "cancelled")
    }
}

/// What a job's latest attempt cost, as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostRecord {
    /// Fuel consumed (about one unit per wasm instruction).
    pub fuel: u64,
    /// Time in the handler, including instantiation, in milliseconds.
    pub run_ms: f64,
    /// From due to started, in milliseconds.
    pub wait_ms: Option<i64>,
    /// The most linear memory the job held at once, in bytes.
    pub peak_memory_bytes: u64,
}

/// Counts for `jobhost stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// `(name, state, count)` rows.
    pub counts: Vec<(String, String, u64)>,
    /// Age of the oldest due queued job, in milliseconds.
    pub oldest_queued_age_ms: Option<i64>,
    /// Paused job names.
    pub paused: Vec<String>,
}

/// The run time and fuel of one job name's done jobs over a period (nearest-rank
/// percentiles).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timing {
    /// The job name.
    pub name: String,
    /// Jobs done in the period.
    pub jobs: u64,
    /// Median run time, in milliseconds.
    pub run_ms_p50: f64,
    /// 95th percentile run time, in milliseconds.
    pub run_ms_p95: f64,
    /// Median fuel.
    pub fuel_p50: u64,
    /// 95th percentile fuel.
    pub fuel_p95: u64,
}

impl Timing {
    /// The timing of `name` from `(run_us, fuel)` samples (none when there are none).
    pub fn of(name: String, mut samples: Vec<(i64, i64)>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let rank = |p: f64, n: usize| ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        let n = samples.len();
        samples.sort_unstable_by_key(|s| s.0);
        let (run_50, run_95) = (samples[rank(0.5, n)].0, samples[rank(0.95, n)].0);
        samples.sort_unstable_by_key(|s| s.1);
        let (fuel_50, fuel_95) = (samples[rank(0.5, n)].1, samples[rank(0.95, n)].1);
        Some(Self {
            name,
            jobs: n as u64,
            run_ms_p50: run_50 as f64 / 1000.0,
            run_ms_p95: run_95 as f64 / 1000.0,
            fuel_p50: fuel_50.unsigned_abs(),
            fuel_p95: fuel_95.unsigned_abs(),
        })
    }
}

/// What `cancel` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelResult {
    /// Cancelled (it was queued).
    Cancelled,
    /// It is running: the host running it stops it (outcome `cancelled`).
    Requested,
    /// No such job.
    NotFound,
    /// The job has finished already; its state.
    NotQueued(String),
}
