//! The wasmtime engine shared by every job: the component model, fuel metering, a bounded
//! wasm stack, the pooling allocator (with a fallback), and the epoch ticker that enforces
//! wall-clock deadlines.
//!
//! Main type: [`JobEngine`].

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch ticker advances the engine's epoch. Deadlines are rounded up to it.
pub const EPOCH_TICK_MS: u64 = 10;

/// The default of [`EngineOptions::keep_resident_bytes`]: 1 MiB. Measured (`bench/memory.py`
/// and a drain of the Python example): no-op and Python jobs run as fast with 64 KiB, 1 MiB
/// or 8 MiB kept (0 costs about 40 % of the no-op rate and 35 % of the Python rate), and with
/// up to 16 warm slots, 1 MiB holds at most 16 MiB after a burst where 8 MiB held 128 MiB.
pub const DEFAULT_KEEP_RESIDENT: usize = 1 << 20;

/// Engine settings that apply to every handler; per-handler limits live in [`crate::sandbox::Limits`].
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Meter fuel, so a handler's instruction budget can be enforced.
    pub fuel: bool,
    /// Try the pooling allocator first (falls back to on-demand allocation if it cannot
    /// reserve its address space).
    pub pooling: bool,
    /// The deepest wasm stack a handler may use, in bytes.
    pub max_wasm_stack_bytes: usize,
    /// The largest linear memory any handler may be granted, in bytes (the pool's slot size).
    pub max_memory_bytes: usize,
    /// How many component instances the pool holds at once (bounds concurrency).
    pub pool_instances: u32,
    /// Bytes of each pool slot's linear memory (and of its tables) kept resident when a
    /// job ends: the pages a job dirtied up to this size are zeroed in place for the next
    /// job, the rest are returned to the OS. More is faster for handlers that touch more
    /// memory per job; less holds less memory at rest ([`DEFAULT_KEEP_RESIDENT`]).
    pub keep_resident_bytes: usize,
    /// Compile for another target triple (ahead-of-time packaging for another machine).
    pub target: Option<String>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            fuel: true,
            pooling: true,
            max_wasm_stack_bytes: 1 << 20,
            max_memory_bytes: 1 << 30,
            pool_instances: 256,
            keep_resident_bytes: DEFAULT_KEEP_RESIDENT,
            target: None,
        }
    }
}

/// The engine plus the ticker thread that drives its epoch. The ticker is joined on drop.
pub struct JobEngine {
    engine: Engine,
    options: EngineOptions,
    pooled: bool,
    _ticker: Option<EpochTicker>,
}

impl JobEngine {
    /// Builds the engine and starts the epoch ticker.
    pub fn new(options: EngineOptions) -> Result<Self, EngineError> {
        let (engine, pooled) = build_engine(&options)?;
        // A cross-compiling engine only produces artifacts; it never runs code here.
        let ticker = options
            .target
            .is_none()
            .then(|| EpochTicker::start(engine.clone()));
        Ok(Self {
            engine,
            options,
            pooled,
            _ticker: ticker,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Whether the pooling allocator is in use (false after a fallback).
    pub fn is_pooled(&self) -> bool {
        self.pooled
    }

    /// Whether fuel is metered.
    pub fn meters_fuel(&self) -> bool {
        self.options.fuel
    }
}

fn build_engine(options: &EngineOptions) -> Result<(Engine, bool), EngineError> {
    let mut config = base_config(options)?;
    if !options.pooling {
        return Ok((Engine::new(&config).map_err(EngineError::of)?, false));
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(options)));
    match Engine::new(&config) {
        Ok(engine) => Ok((engine, true)),
        Err(error) => {
            tracing::warn!(
                error = %error,
                "the pooling allocator could not reserve its memory; falling back to on-demand allocation"
            );
            let config = base_config(options)?;
            Ok((Engine::new(&config).map_err(EngineError::of)?, false))
        }
    }
}

fn base_config(options: &EngineOptions) -> Result<Config, EngineError> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(options.fuel)
        .epoch_interruption(true)
        .max_wasm_stack(options.max_wasm_stack_bytes)
        .parallel_compilation(true);
    if let Some(target) = &options.target {
        config.target(target).map_err(|e| {
            EngineError(format!(
                "unsupported target {target}: {}",
                crate::sandbox::error_chain(&e)
            ))
        })?;
    }
    Ok(config)
}

/// The engine (or the linker of its host imports) could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the engine: {0}")]
pub struct EngineError(pub String);

impl EngineError {
    /// From wasmtime's error, with its causes.
    pub fn of(error: wasmtime::Error) -> Self {
        Self(crate::sandbox::error_chain(&error))
    }
}

fn pooling_config(options: &EngineOptions) -> PoolingAllocationConfig {
    let instances = options.pool_instances;
    let mut pool = PoolingAllocationConfig::new();
    // Components from other languages (Python, JavaScript) hold several core instances,
    // memories and large tables, so the per-component figures are generous; the per-job
    // limiter in `limits.rs` enforces the real budget.
    pool.total_component_instances(instances)
        .total_core_instances(instances * 8)
        .total_memories(instances * 2)
        .total_tables(instances * 8)
        .total_stacks(instances)
        .max_memories_per_module(2)
        .max_tables_per_module(8)
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(64)
        .table_elements(100_000)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20)
        .max_memory_size(options.max_memory_bytes)
        .max_unused_warm_slots(16)
        // Resetting memory with madvise after every job costs a TLB shootdown on every
        // core; resetting the pages a job dirtied with memset (found with PAGEMAP_SCAN
        // where the kernel has it) keeps per-job cost flat as workers are added.
        .linear_memory_keep_resident(options.keep_resident_bytes)
        .table_keep_resident(options.keep_resident_bytes.min(1 << 20))
        .pagemap_scan(Enabled::Auto)
        .decommit_batch_size(32);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK_MS`] on its own thread.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let tick = Duration::from_millis(EPOCH_TICK_MS);
        let thread = std::thread::Builder::new()
            .name("jobhost-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel, which ends the loop at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
