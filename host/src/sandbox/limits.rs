//! Per-job resource limits and the store limiter that enforces the memory ones.
//!
//! Main types: [`Limits`] (what a handler's manifest may set) and [`MemoryLimiter`].

use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

/// The default fuel: 1.5 trillion units. The tightest loop measured on these 2-core
/// machines burns about 17 billion units a second (real handlers 2.7 to 10 billion), so
/// the default lasts about 90 s of the fastest code, three times the default 30 s timeout:
/// with default limits the deadline always stops a job first (a timeout, retried), and
/// fuel is there for a manifest that wants a tighter, deterministic budget.
pub const DEFAULT_FUEL: u64 = 1_500_000_000_000;

/// What one job may consume. Every field has a default; a manifest's `[limits]` table
/// overrides any of them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Limits {
    /// Instruction budget (wasmtime fuel units, about one per wasm instruction); by default
    /// more than the timeout lets any code burn ([`DEFAULT_FUEL`]).
    pub fuel: u64,
    /// The largest any one linear memory may grow, in MiB.
    pub memory_mib: u64,
    /// All linear memories of the job together, in MiB.
    pub total_memory_mib: u64,
    /// Elements any one table may hold.
    pub table_elements: u64,
    /// Wall-clock time before the job is interrupted, in milliseconds.
    pub timeout_ms: u64,
    /// Bytes of log (host `log` calls, stdout and stderr) kept per job, each line counted
    /// with a fixed overhead; the rest is dropped.
    pub log_bytes: u64,
    /// The largest output `handle` may return, in bytes.
    pub output_bytes: u64,
    /// Follow-up jobs one job may enqueue.
    pub enqueue_count: u32,
    /// Bytes of follow-up jobs (payload text, name, unique key, and a fixed overhead per
    /// job) one job may enqueue.
    pub enqueue_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            memory_mib: 128,
            total_memory_mib: 256,
            table_elements: 100_000,
            timeout_ms: 30_000,
            log_bytes: 64 * 1024,
            output_bytes: MIB,
            enqueue_count: 100,
            enqueue_bytes: 4 * MIB,
        }
    }
}

impl Limits {
    /// The per-memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib.saturating_mul(MIB)).unwrap_or(usize::MAX)
    }

    /// The total-memory cap in bytes.
    pub fn total_memory_bytes(&self) -> usize {
        usize::try_from(self.total_memory_mib.saturating_mul(MIB)).unwrap_or(usize::MAX)
    }
}

/// Returned (as a trap) when a guest asks for more memory than its limits allow, so the
/// dispatcher can tell a memory limit from any other trap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit: {what} would reach {desired} bytes, over the limit of {limit} bytes")]
pub struct MemoryLimitExceeded {
    what: &'static str,
    desired: usize,
    limit: usize,
}

/// Enforces [`Limits`] on memories and tables, and records the peak memory of the job.
#[derive(Debug)]
pub struct MemoryLimiter {
    per_memory: usize,
    total: usize,
    table_elements: usize,
    current_total: usize,
    peak_total: usize,
    hit: bool,
}

impl MemoryLimiter {
    /// A limiter for one job.
    pub fn new(limits: &Limits) -> Self {
        Self {
            per_memory: limits.memory_bytes(),
            total: limits.total_memory_bytes(),
            table_elements: usize::try_from(limits.table_elements).unwrap_or(usize::MAX),
            current_total: 0,
            peak_total: 0,
            hit: false,
        }
    }

    /// The most memory the job held at once, in bytes.
    pub fn peak_bytes(&self) -> usize {
        self.peak_total
    }

    /// Whether the job was stopped by a memory or table limit.
    pub fn hit_limit(&self) -> bool {
        self.hit
    }

    fn refuse(&mut self, what: &'static str, desired: usize, limit: usize) -> wasmtime::Error {
        self.hit = true;
        wasmtime::Error::new(MemoryLimitExceeded {
            what,
            desired,
            limit,
        })
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Refusing with an error (rather than `Ok(false)`) makes the growth trap, so the
        // job ends as `memory-limit` instead of the guest seeing a failed `memory.grow`.
        let limit = maximum.map_or(self.per_memory, |max| max.min(self.per_memory));
        if desired > limit {
            return Err(self.refuse("a linear memory", desired, limit));
        }
        let next_total = self.current_total.saturating_sub(current) + desired;
        if next_total > self.total {
            return Err(self.refuse("all linear memories", next_total, self.total));
        }
        self.current_total = next_total;
        self.peak_total = self.peak_total.max(next_total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = maximum.map_or(self.table_elements, |max| max.min(self.table_elements));
        if desired > limit {
            return Err(self.refuse("a table", desired, limit));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        256
    }

    fn tables(&self) -> usize {
        256
    }

    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter as _;

    #[test]
    fn growth_past_the_total_is_refused_and_recorded() {
        let limits = Limits {
            memory_mib: 2,
            total_memory_mib: 3,
            ..Limits::default()
        };
        let mut limiter = MemoryLimiter::new(&limits);
        assert!(limiter.memory_growing(0, 2 * MIB as usize, None).is_ok());
        assert!(limiter.memory_growing(0, 2 * MIB as usize, None).is_err());
        assert!(limiter.hit_limit());
        assert_eq!(limiter.peak_bytes(), 2 * MIB as usize);
    }
}
