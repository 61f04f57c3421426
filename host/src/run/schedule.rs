//! Periodic jobs from the handlers' `[[schedule]]` entries. Each tick is enqueued once,
//! even across restarts and with several hosts on one queue file: the tick's key is
//! recorded in the same transaction as the job. After a restart, ticks of the last
//! [`LOOKBACK`] that were missed are enqueued (once).
//!
//! Main type: [`Scheduler`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::clock::{Clock, to_ms};
use crate::plugin::PluginSet;
use crate::queue::{Enqueued, NewJob, QueueError, Ticks};

/// How far back a starting scheduler looks for missed ticks.
pub const LOOKBACK: Duration = Duration::from_secs(60);

struct Entry {
    job: String,
    cron: croner::Cron,
    payload: serde_json::Value,
    key: String,
    last: SystemTime,
}

/// Enqueues the ticks of every schedule, on any queue that can enqueue a tick once.
pub struct Scheduler<Q> {
    queue: Arc<Q>,
    clock: Arc<dyn Clock>,
    entries: Vec<Entry>,
}

impl<Q: Ticks> Scheduler<Q> {
    /// A scheduler for every `[[schedule]]` of the loaded handlers, on `clock`'s time.
    pub fn new(plugins: &PluginSet, queue: Arc<Q>, clock: Arc<dyn Clock>) -> Self {
        let start = clock.now() - LOOKBACK;
        let mut entries = Vec::new();
        for plugin in plugins.plugins() {
            for (index, schedule) in plugin.manifest.schedule.iter().enumerate() {
                // Validated when the manifest was loaded.
                let Ok(cron) = schedule.cron() else { continue };
                let job = schedule
                    .job
                    .clone()
                    .unwrap_or_else(|| plugin.names[0].clone());
                entries.push(Entry {
                    key: format!("{job}#{index}#{}", schedule.cron),
                    job,
                    cron,
                    payload: schedule.payload.clone(),
                    last: start,
                });
            }
        }
        Self {
            queue,
            clock,
            entries,
        }
    }

    /// Whether there is anything to schedule.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Enqueues every tick that is due by now and not enqueued before.
    pub async fn tick(&mut self) -> Result<Vec<Enqueued>, QueueError> {
        let now = self.clock.now();
        let mut enqueued = Vec::new();
        for entry in &mut self.entries {
            while let Some(next) = next_after(&entry.cron, entry.last).filter(|t| *t <= now) {
                let key = format!("{}@{}", entry.key, to_ms(next));
                let mut job = NewJob::new(entry.job.clone(), entry.payload.clone());
                job.run_at = Some(next);
                if let Some(done) = self.queue.enqueue_tick(&key, job).await? {
                    tracing::info!(job.name = %entry.job, tick = %DateTime::<Utc>::from(next), "periodic job enqueued");
                    enqueued.push(done);
                }
                entry.last = next;
            }
        }
        Ok(enqueued)
    }

    /// Ticks every second until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if let Err(error) = self.tick().await {
                tracing::error!(%error, "enqueueing periodic jobs failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// The first tick strictly after `after`, on a whole second: counting from a time with a
/// fraction of a second, croner keeps the fraction, and then two hosts (started at
/// different moments) would give one tick two keys, and enqueue it twice.
fn next_after(cron: &croner::Cron, after: SystemTime) -> Option<SystemTime> {
    let after: DateTime<Utc> = whole_second(after).into();
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(|next| whole_second(SystemTime::from(next)))
}

/// `time` with its fraction of a second dropped.
fn whole_second(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr as _;

    #[test]
    fn hosts_started_at_different_moments_name_each_tick_alike() -> Result<(), String> {
        let cron = croner::Cron::from_str("* * * * * *").map_err(|e| e.to_string())?;
        let base = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let one = next_after(&cron, base + Duration::from_millis(326)).ok_or("a tick")?;
        let other = next_after(&cron, base + Duration::from_millis(93)).ok_or("a tick")?;
        assert_eq!(one, other);
        assert_eq!(one, base + Duration::from_secs(1));
        Ok(())
    }
}
