//! An in-memory queue for unit tests of the runner. Not durable; never used by the binary.
//!
//! Main type: [`MemoryQueue`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::{Delivered, Enqueued, Message, NewJob, Queue, QueueError, Settlement};
use crate::job::{Envelope, Outcome};

#[derive(Clone, Debug)]
struct Entry {
    job: NewJob,
    state: &'static str,
    run_at: SystemTime,
    attempts: u32,
    leased_until: Option<SystemTime>,
    outcome: Option<Outcome>,
}

/// A queue held in a `Mutex<HashMap>`.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    entries: Mutex<HashMap<String, Entry>>,
    order: Mutex<Vec<String>>,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state and last outcome of a job.
    pub fn state_of(&self, id: &str) -> Option<(&'static str, u32, Option<Outcome>)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(id)
            .map(|e| (e.state, e.attempts, e.outcome.clone()))
    }

    /// How many jobs are in `state`.
    pub fn count(&self, state: &str) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.values().filter(|e| e.state == state).count()
    }

    fn insert(&self, job: NewJob) -> Enqueued {
        let id = job
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let run_at = job.run_at.unwrap_or_else(SystemTime::now);
        let entry = Entry {
            job: NewJob {
                id: Some(id.clone()),
                ..job
            },
            state: "queued",
            run_at,
            attempts: 0,
            leased_until: None,
            outcome: None,
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), entry);
        self.order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.clone());
        Enqueued::Created(id)
    }
}

impl super::ReleaseUncounted for MemoryQueue {}

impl Queue for MemoryQueue {
    async fn receive(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        let now = SystemTime::now();
        let order = self.order.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for id in order {
            if out.len() >= max {
                break;
            }
            let Some(entry) = entries.get_mut(&id) else {
                continue;
            };
            let expired = entry.state == "running" && entry.leased_until.is_some_and(|t| t <= now);
            if (entry.state == "queued" && entry.run_at <= now) || expired {
                entry.state = "running";
                entry.attempts += 1;
                entry.leased_until = Some(now + lease);
                out.push(Delivered {
                    id: id.clone(),
                    receipt: id.clone(),
                    attempt: entry.attempts,
                    message: Message::Envelope(Envelope {
                        id: Some(id.clone()),
                        job: entry.job.name.clone(),
                        payload: entry.job.payload.clone(),
                        attempt: Some(entry.attempts),
                        max_attempts: entry.job.max_attempts,
                        enqueued_at: None,
                        not_before: None,
                    }),
                    group: None,
                    due: Some(entry.run_at),
                    trace_parent: None,
                });
            }
        }
        Ok(out)
    }

    async fn settle(&self, batch: Vec<Settlement>) -> Result<(), QueueError> {
        let mut children = Vec::new();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for settlement in batch {
                let retry_at = settlement.retry_at();
                let Some(entry) = entries.get_mut(&settlement.delivered.id) else {
                    continue;
                };
                entry.leased_until = None;
                match &settlement.outcome {
                    Outcome::Done { .. } => {
                        entry.state = "done";
                        children.extend(settlement.children);
                    }
                    Outcome::Retry { .. } => {
                        entry.state = "queued";
                        entry.run_at = retry_at.unwrap_or(settlement.at);
                    }
                    Outcome::DeadLetter { .. } => entry.state = "dead",
                    Outcome::Cancelled { .. } => entry.state = "cancelled",
                }
                entry.outcome = Some(settlement.outcome);
            }
        }
        for child in children {
            self.insert(child);
        }
        Ok(())
    }

    async fn release(&self, deliveries: Vec<Delivered>) -> Result<(), QueueError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for delivered in deliveries {
            if let Some(entry) = entries.get_mut(&delivered.id) {
                entry.state = "queued";
                entry.attempts = entry.attempts.saturating_sub(1);
                entry.leased_until = None;
            }
        }
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        Ok(jobs.into_iter().map(|job| self.insert(job)).collect())
    }

    async fn extend(&self, deliveries: Vec<Delivered>, lease: Duration) -> Result<(), QueueError> {
        let until = SystemTime::now() + lease;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for delivered in deliveries {
            if let Some(entry) = entries
                .get_mut(&delivered.id)
                .filter(|e| e.state == "running")
            {
                entry.leased_until = Some(until);
            }
        }
        Ok(())
    }

    async fn is_idle(&self) -> Result<bool, QueueError> {
        let now = SystemTime::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Ok(!entries
            .values()
            .any(|e| e.state == "running" || (e.state == "queued" && e.run_at <= now)))
    }
}
