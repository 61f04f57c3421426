//! Queue backends behind one core trait, [`Queue`], with optional abilities
//! ([`Inspect`], [`Administer`], [`Ticks`], [`ReleaseUncounted`]) each backend implements
//! only where it can. The runner (`crate::run::poller`) is written once over
//! [`Queue`] and turns each outcome into a [`Settlement`].
//!
//! Backends: [`sqlite::SqliteQueue`] (embedded, durable, the default),
//! [`sqs::SqsQueue`] (AWS SQS, standard or FIFO) and [`memory::MemoryQueue`] (unit tests
//! only). Main types: [`Queue`], [`NewJob`],
//! [`Delivered`], [`Settlement`].

mod ability;
pub mod memory;
pub mod postgres;
pub mod postgres_tls;
pub mod sqlite;
pub mod sqs;

pub use ability::*;

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::job::Envelope;
use crate::job::{EnqueuedJob, LogLine, Outcome, Progress, Report};

/// A job to enqueue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// The id to give it (default: a new UUIDv7).
    pub id: Option<String>,
    /// The job name.
    pub name: String,
    /// The payload.
    pub payload: Value,
    /// Do not run before this time (default: now).
    pub run_at: Option<SystemTime>,
    /// Higher runs first (default 0).
    pub priority: i32,
    /// At most one queued or running job per key.
    pub unique_key: Option<String>,
    /// Overrides the handler's max attempts.
    pub max_attempts: Option<u32>,
    /// The job that enqueued this one.
    pub parent_id: Option<String>,
    /// The ordering group (SQS FIFO `MessageGroupId`; default: the job name). Jobs of one
    /// group run one at a time, in order. Other queues ignore it.
    pub group: Option<String>,
    /// The W3C trace context it carries (`traceparent`).
    pub trace_parent: Option<String>,
}

impl NewJob {
    /// A job with defaults for everything but name and payload.
    pub fn new(name: impl Into<String>, payload: Value) -> Self {
        Self {
            id: None,
            name: name.into(),
            payload,
            run_at: None,
            priority: 0,
            unique_key: None,
            max_attempts: None,
            parent_id: None,
            group: None,
            trace_parent: None,
        }
    }

    /// A follow-up job a handler enqueued, to be committed when its parent `parent_id`
    /// completes at `at` (its delay counts from then).
    pub fn follow_up(child: EnqueuedJob, parent_id: &str, at: SystemTime) -> Self {
        Self {
            payload: child.payload_value(),
            id: Some(child.id),
            name: child.job,
            run_at: child.delay_ms.map(|ms| at + Duration::from_millis(ms)),
            priority: child.priority.unwrap_or(0),
            unique_key: child.unique_key,
            max_attempts: None,
            parent_id: Some(parent_id.to_string()),
            group: None,
            trace_parent: None,
        }
    }
}

/// What enqueuing one job did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job with this id.
    Created(String),
    /// A job with the same unique key is already queued or running; its id.
    Duplicate(String),
}

impl Enqueued {
    /// The job's id, new or existing.
    pub fn id(&self) -> &str {
        match self {
            Enqueued::Created(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// A message as it came off a queue.
#[derive(Clone, Debug)]
pub enum Message {
    /// Already structured (the SQLite queue stores name and payload separately).
    Envelope(Envelope),
    /// A raw body to parse (SQS, or anything enqueued as bytes).
    Raw(Vec<u8>),
}

/// One delivery, leased to this worker.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The job's id.
    pub id: String,
    /// What acknowledges this delivery (the job id and lease, or an SQS receipt handle).
    pub receipt: String,
    /// The delivery number, counted by the queue (at least 1).
    pub attempt: u32,
    /// The message.
    pub message: Message,
    /// Its ordering group (SQS FIFO): deliveries of one group run one at a time, in the
    /// order received, and a failure gives the rest of the group back unstarted.
    pub group: Option<String>,
    /// When it became due, when the queue knows (its wait time counts from here).
    pub due: Option<SystemTime>,
    /// The W3C trace context it carries (`traceparent`), if any.
    pub trace_parent: Option<String>,
}

/// What one run of a job cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Fuel consumed.
    pub fuel: u64,
    /// Time in the handler, including instantiation.
    pub run: Duration,
    /// From due to started, when the queue knows when it was due.
    pub wait: Option<Duration>,
    /// The most linear memory held at once, in bytes.
    pub peak_memory: u64,
}

/// A delivery and what to do with it: its [`Outcome`], and what a done job leaves behind.
#[derive(Clone, Debug)]
pub struct Settlement {
    /// The delivery.
    pub delivered: Delivered,
    /// What happens to it.
    pub outcome: Outcome,
    /// When the outcome was decided: a retry's delay and follow-up jobs' delays count from
    /// here.
    pub at: SystemTime,
    /// The last progress report, kept with a done job.
    pub progress: Option<Progress>,
    /// Follow-up jobs, committed only with a done job.
    pub children: Vec<NewJob>,
    /// The job name, when the message had one.
    pub job: Option<String>,
    /// What the run cost.
    pub cost: Cost,
    /// What the run logged (kept with the job where the queue can).
    pub logs: Vec<LogLine>,
}

/// A settlement's cost, progress and logs as the SQL backends store them (integers,
/// saturating; JSON text).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Stored {
    pub(crate) fuel: i64,
    pub(crate) run_us: i64,
    pub(crate) wait_ms: Option<i64>,
    pub(crate) peak_memory: i64,
    pub(crate) progress: Option<String>,
    pub(crate) logs: Option<String>,
}

impl Stored {
    pub(crate) fn of(settlement: &Settlement) -> Self {
        let int = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        let cost = &settlement.cost;
        Self {
            fuel: int(u128::from(cost.fuel)),
            run_us: int(cost.run.as_micros()),
            wait_ms: cost.wait.map(|w| int(w.as_millis())),
            peak_memory: int(u128::from(cost.peak_memory)),
            progress: (settlement.progress.as_ref())
                .map(|p| serde_json::to_string(p).unwrap_or_default()),
            logs: (!settlement.logs.is_empty())
                .then(|| serde_json::to_string(&settlement.logs).unwrap_or_default()),
        }
    }
}

impl Settlement {
    /// A settlement with no progress and no follow-up jobs.
    pub fn new(delivered: Delivered, outcome: Outcome, at: SystemTime) -> Self {
        Self {
            delivered,
            outcome,
            at,
            progress: None,
            children: Vec::new(),
            job: None,
            cost: Cost::default(),
            logs: Vec::new(),
        }
    }

    /// The settlement of a dispatch report, decided at `at`.
    pub fn of_report(delivered: Delivered, report: Report, at: SystemTime) -> Self {
        let children = match report.outcome {
            Outcome::Done { .. } => report
                .enqueued
                .into_iter()
                .map(|child| NewJob::follow_up(child, &report.job_id, at))
                .collect(),
            _ => Vec::new(),
        };
        let cost = Cost {
            fuel: report.fuel,
            run: report.duration,
            wait: None,
            peak_memory: report.peak_memory,
        };
        Self {
            delivered,
            outcome: report.outcome,
            at,
            progress: report.progress.last().cloned(),
            children,
            job: report.job_name,
            cost,
            logs: report.logs,
        }
    }

    /// When a retry becomes due (none for done and dead-letter).
    pub fn retry_at(&self) -> Option<SystemTime> {
        match &self.outcome {
            Outcome::Retry { delay, .. } => Some(self.at + *delay),
            _ => None,
        }
    }
}

/// A host-side queue fault (disk, network): nothing was acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("queue error: {0}")]
pub struct QueueError(pub String);

impl From<rusqlite::Error> for QueueError {
    fn from(error: rusqlite::Error) -> Self {
        QueueError(error.to_string())
    }
}

/// What every queue backend does.
pub trait Queue: Send + Sync + 'static {
    /// Claims up to `max` due jobs, leased for `lease`.
    fn receive(
        &self,
        max: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Delivered>, QueueError>> + Send;

    /// Applies a batch of actions, each at most once; deliveries whose lease was lost are
    /// skipped (another worker owns them now).
    fn settle(&self, batch: Vec<Settlement>)
    -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Gives received-but-unstarted deliveries back, visible at once. Whether the attempt
    /// counts depends on the backend: those that implement [`ReleaseUncounted`] do not
    /// count it.
    fn release(
        &self,
        deliveries: Vec<Delivered>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Enqueues jobs in one step.
    fn enqueue(
        &self,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, QueueError>> + Send;

    /// Extends the leases of running deliveries to `lease` from now (a job that runs
    /// longer than its lease keeps it). Deliveries whose lease was already lost are skipped.
    fn extend(
        &self,
        deliveries: Vec<Delivered>,
        lease: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Whether nothing is due now and nothing is running (`run --drain` exits then).
    fn is_idle(&self) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// How many receive calls the runner keeps in flight at once. A backend whose receive
    /// returns at once says 1; a long-polling one (SQS) says more, and each call's
    /// deliveries go to the workers as soon as that call returns.
    fn receivers(&self) -> usize {
        1
    }
}
