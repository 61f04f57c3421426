//! What a running job shares with the host that runs it, while it runs: a cancellation
//! flag (checked at every epoch tick, and aborting any outbound HTTP call in flight) and its
//! latest progress report (taken by the runner, at most every 250 ms, and written to the
//! queue so `jobs show`, `GET /jobs/{id}` and the dashboard show it live).
//!
//! Main types: [`Live`], [`Cancelled`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::job::Progress;

/// The error a cancelled job's call ends with.
#[derive(Debug, thiserror::Error)]
#[error("cancelled while running")]
pub struct Cancelled;

/// One running job's shared state.
#[derive(Debug, Default)]
pub struct Live {
    cancelled: AtomicBool,
    wake: Notify,
    progress: Mutex<Option<Progress>>,
}

impl Live {
    /// Asks the job to stop: its call traps at the next epoch tick, and an outbound HTTP
    /// call in flight is aborted at once.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Whether a cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once a cancellation is asked for.
    pub async fn cancelled(&self) {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            woken.await;
        }
    }

    /// Keeps the job's latest progress report for the runner.
    pub(crate) fn report(&self, progress: &Progress) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
    }

    /// The progress reported since the last call, if any.
    pub fn take_progress(&self) -> Option<Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
