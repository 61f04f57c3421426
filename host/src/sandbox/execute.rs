//! One call into a handler in a fresh instance: build the store with the job's limits,
//! instantiate from the `InstancePre`, call, and collect what the job consumed.
//!
//! Main types: [`Execution`], [`execute`], [`describe`].

use std::time::{Duration, Instant, SystemTime};

use std::sync::Arc;

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::{HandlerInfo, Job, JobError, JobPluginPre};
use crate::engine::{EPOCH_TICK_MS, JobEngine};
use crate::sandbox::Limits;
use crate::sandbox::{Cancelled, JobState, Live, ResolvedGrants, root_cause};
use crate::sandbox::{Capture, Captured};

/// What `handle` returned, or the trap that ended it.
pub type CallResult = Result<Result<Option<String>, JobError>, wasmtime::Error>;

/// The result of one call, with what it consumed.
pub struct Execution {
    /// The call's result.
    pub result: CallResult,
    /// Whether the memory limiter refused a growth (the trap, if any, is a memory limit).
    pub memory_limit_hit: bool,
    /// Fuel consumed.
    pub fuel: u64,
    /// Wall-clock time, including instantiation.
    pub duration: Duration,
    /// Peak linear memory, in bytes.
    pub peak_memory: u64,
    /// Logs, progress and follow-up jobs.
    pub captured: Captured,
}

/// Everything one call runs under.
#[derive(Clone, Copy)]
pub struct JobSettings<'a> {
    /// The limits.
    pub limits: &'a Limits,
    /// When the call is interrupted.
    pub timeout: Duration,
    /// The largest payload the guest may enqueue.
    pub payload_cap: usize,
    /// What the handler is granted.
    pub grants: &'a ResolvedGrants,
    /// A fixed wall clock for the guest, if any.
    pub wall_clock: Option<SystemTime>,
    /// Shared with the runner while the job runs: cancellation and live progress.
    pub live: Option<&'a Arc<Live>>,
}

fn new_store(
    engine: &JobEngine,
    settings: &JobSettings<'_>,
) -> wasmtime::Result<(Store<JobState>, Capture)> {
    let JobSettings {
        limits,
        timeout,
        payload_cap,
        grants,
        wall_clock,
        live,
    } = *settings;
    let capture = Capture::new(limits, payload_cap).with_live(live.cloned());
    let mut state = JobState::new(limits, capture.clone(), grants, wall_clock, live.cloned())
        .map_err(wasmtime::Error::msg)?;
    // Two ticks past the deadline, so that the epoch check after a clamped wait has seen
    // the deadline pass.
    state.until = Instant::now().checked_add(timeout + Duration::from_millis(2 * EPOCH_TICK_MS));
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|state| &mut state.limiter);
    if engine.meters_fuel() {
        // Only fails when fuel is not enabled, which `meters_fuel` rules out.
        let _ = store.set_fuel(limits.fuel);
    }
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    match live {
        // The current tick is partly over, so one more tick guarantees at least `timeout`.
        None => store.set_epoch_deadline(millis.div_ceil(EPOCH_TICK_MS) + 1),
        Some(live) => {
            // Look at every tick: a cancellation stops the job within one.
            let (live, deadline) = (live.clone(), Instant::now() + timeout);
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(move |_| {
                if live.is_cancelled() {
                    return Err(wasmtime::Error::new(Cancelled));
                }
                if Instant::now() >= deadline {
                    return Err(wasmtime::Error::new(Trap::Interrupt));
                }
                Ok(UpdateDeadline::Continue(1))
            });
        }
    }
    Ok((store, capture))
}

fn fuel_used(store: &Store<JobState>, limits: &Limits, engine: &JobEngine) -> u64 {
    if !engine.meters_fuel() {
        return 0;
    }
    limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
}

/// Runs `handle(job)` in a fresh instance under `limits`, interrupted after `timeout`.
pub fn execute(
    engine: &JobEngine,
    pre: &JobPluginPre<JobState>,
    job: &Job,
    settings: &JobSettings<'_>,
) -> Execution {
    let started = Instant::now();
    let limits = settings.limits;
    let (mut store, capture) = match new_store(engine, settings) {
        Ok(parts) => parts,
        Err(error) => {
            return Execution {
                result: Err(error),
                memory_limit_hit: false,
                fuel: 0,
                duration: started.elapsed(),
                peak_memory: 0,
                captured: Captured::default(),
            };
        }
    };
    let result = pre
        .instantiate(&mut store)
        .and_then(|plugin| plugin.jobhost_plugin_handler().call_handle(&mut store, job));
    let duration = started.elapsed();
    let fuel = fuel_used(&store, limits, engine);
    let state = store.data();
    let memory_limit_hit = state.limiter.hit_limit();
    let peak_memory = state.limiter.peak_bytes() as u64;
    drop(store);
    Execution {
        result,
        memory_limit_hit,
        fuel,
        duration,
        peak_memory,
        captured: capture.finish(),
    }
}

/// Calls `describe()` once, under the handler's limits, when the handler is loaded.
pub fn describe(
    engine: &JobEngine,
    pre: &JobPluginPre<JobState>,
    limits: &Limits,
) -> Result<HandlerInfo, String> {
    let timeout = Duration::from_millis(limits.timeout_ms);
    let (mut store, capture) = new_store(
        engine,
        &JobSettings {
            limits,
            timeout,
            payload_cap: 0,
            grants: &ResolvedGrants::default(),
            wall_clock: None,
            live: None,
        },
    )
    .map_err(|e| root_cause(&e))?;
    let info = pre
        .instantiate(&mut store)
        .and_then(|plugin| plugin.jobhost_plugin_handler().call_describe(&mut store));
    let captured = capture.finish();
    info.map_err(|error| {
        let last_log = captured
            .logs
            .last()
            .map(|l| format!(" (last log: {})", l.message))
            .unwrap_or_default();
        format!("describe() failed: {}{last_log}", root_cause(&error))
    })
}
