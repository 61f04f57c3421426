//! Steering running jobs: the registry of what runs in this process ([`Running`]), and the
//! loop ([`steer`]) that writes their progress through to the queue and stops the ones
//! whose cancellation was asked for, from this process or any other sharing the queue.
//!
//! Every [`STEER_INTERVAL`] the loop takes each running job's latest progress (so a job's
//! progress is written at most that often) and asks the queue which of this worker's jobs
//! were cancelled. A cancellation from this process (`DELETE /jobs/{id}`) reaches the job
//! at once through [`Running::cancel`]; one from elsewhere within the interval. Either way
//! the job stops within one epoch tick of that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::queue::Steer;
use crate::sandbox::Live;

/// How often progress is written and cancellations are looked for.
pub const STEER_INTERVAL: Duration = Duration::from_millis(250);

/// The jobs running in this process, by id.
#[derive(Debug, Default)]
pub struct Running {
    jobs: Mutex<HashMap<String, Arc<Live>>>,
}

impl Running {
    /// Registers a job as it starts.
    pub fn start(&self, id: &str) -> Arc<Live> {
        let live = Arc::new(Live::default());
        self.lock().insert(id.to_string(), live.clone());
        live
    }

    /// Forgets a job that ended.
    pub fn finish(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Stops a job if it runs here; whether it did.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(live) => {
                live.cancel();
                true
            }
            None => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The progress reported since the last call, by job.
    fn progress(&self) -> Vec<(String, crate::job::Progress)> {
        self.lock()
            .iter()
            .filter_map(|(id, live)| live.take_progress().map(|p| (id.clone(), p)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes progress and applies cancellations every [`STEER_INTERVAL`] until `stopped`.
pub async fn steer<Q: Steer>(
    queue: Arc<Q>,
    running: Arc<Running>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(STEER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = *stopped.borrow();
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed(), if !stopping => {}
        }
        if *stopped.borrow() && running.is_empty() {
            return;
        }
        if running.is_empty() {
            continue;
        }
        let updates = running.progress();
        if !updates.is_empty()
            && let Err(error) = queue.write_progress(updates).await
        {
            tracing::warn!(%error, "cannot write running jobs' progress; trying again");
        }
        match queue.cancel_requests().await {
            Ok(ids) => {
                for id in ids {
                    if running.cancel(&id) {
                        tracing::info!(job.id = %id, "cancelling a running job on request");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot look for cancelled jobs; trying again"),
        }
    }
}
