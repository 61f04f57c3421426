//! Retry policy: how many attempts a job gets and how long to wait between them.
//!
//! Main type: [`RetryPolicy`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A handler's retry policy; a manifest's `[retry]` table overrides any field.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct RetryPolicy {
    /// Deliveries before a retryable failure is dead-lettered (1 means no retries).
    pub max_attempts: u32,
    /// The first backoff ceiling, in milliseconds.
    pub backoff_base_ms: u64,
    /// How much the ceiling grows per attempt.
    pub backoff_factor: f64,
    /// The largest backoff, in milliseconds; a guest's retry-after hint is capped by it too.
    pub backoff_cap_ms: u64,
    /// Whether a trap (panic, unreachable, stack overflow) is retried or dead-lettered.
    pub retry_traps: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base_ms: 1_000,
            backoff_factor: 2.0,
            backoff_cap_ms: 3_600_000,
            retry_traps: true,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after `attempt` (1-based): the guest's hint capped, or
    /// exponential backoff with full jitter (a uniform draw below the exponential ceiling).
    pub fn delay(
        &self,
        attempt: u32,
        hint: Option<Duration>,
        rng: &mut impl rand::Rng,
    ) -> Duration {
        let cap = Duration::from_millis(self.backoff_cap_ms);
        if let Some(hint) = hint {
            return hint.min(cap);
        }
        let ceiling = self.ceiling(attempt).min(cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// The exponential ceiling for `attempt`, before jitter and the cap.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let millis = self.backoff_base_ms as f64 * self.backoff_factor.max(1.0).powi(exponent);
        Duration::from_millis(if millis.is_finite() && millis < u64::MAX as f64 {
            millis as u64
        } else {
            u64::MAX
        })
    }

    /// Whether a failed `attempt` may be retried.
    pub fn can_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

/// The default random source for backoff jitter.
pub fn jitter_rng() -> impl rand::Rng {
    rand::rng()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let policy = RetryPolicy {
            backoff_base_ms: 100,
            backoff_cap_ms: 1_000,
            ..RetryPolicy::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(4), Duration::from_millis(800));
        for attempt in 1..40 {
            assert!(policy.delay(attempt, None, &mut rng) <= Duration::from_millis(1_000));
        }
        let hinted = policy.delay(1, Some(Duration::from_secs(60)), &mut rng);
        assert_eq!(hinted, Duration::from_millis(1_000));
    }
}
