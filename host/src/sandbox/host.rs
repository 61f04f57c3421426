//! The `jobhost:plugin/host` imports, implemented on [`JobHost`]: a short-lived view of one
//! job's [`Capture`], made for each call (the shape of wasmtime's `wasi-keyvalue`); and
//! [`add_to_linker`], the one place every import a handler may use is linked.

use std::time::Instant;

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::clocks::{WasiClocksCtxView, WasiClocksView as _};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;

use crate::bindings::{self, JobPlugin, host};
use crate::job::LogLevel;
use crate::sandbox::{Capture, JobState};

/// What a host import sees of its job.
pub struct JobHost<'a> {
    capture: &'a Capture,
}

struct HasJobHost;

impl HasData for HasJobHost {
    type Data<'a> = JobHost<'a>;
}

/// Links WASI (preview 2), `wasi:http` (every request checked against the handler's grant
/// by [`crate::sandbox::HttpPolicy`]) and the `jobhost:plugin/host` imports.
pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // The monotonic clock again, over WASI's own: a wait on it ends at the job's deadline.
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<_, HasJobClock>(linker, job_clock)?;
    linker.allow_shadowing(false);
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)?;
    JobPlugin::add_to_linker::<_, HasJobHost>(linker, |state| JobHost {
        capture: &state.capture,
    })
}

/// `wasi:clocks/monotonic-clock` as WASI has it, except that a subscription never outlasts
/// the job's deadline. A guest blocked in a host call (a sleep, a poll on a timer) is not
/// interrupted by the epoch; clamped, the wait returns at the deadline and the epoch check
/// that follows ends the job as a timeout, instead of the sleep holding its worker.
pub struct JobClock<'a> {
    clocks: WasiClocksCtxView<'a>,
    until: Option<Instant>,
}

struct HasJobClock;

impl HasData for HasJobClock {
    type Data<'a> = JobClock<'a>;
}

fn job_clock(state: &mut JobState) -> JobClock<'_> {
    let until = state.until;
    JobClock {
        clocks: state.clocks(),
        until,
    }
}

impl monotonic_clock::Host for JobClock<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        self.clocks.now()
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        self.clocks.resolution()
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.clocks.now()?;
        self.subscribe_duration(when.saturating_sub(now))
    }

    fn subscribe_duration(&mut self, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let left = self.until.map_or(u64::MAX, |until| {
            let left = until.saturating_duration_since(Instant::now()).as_nanos();
            u64::try_from(left).unwrap_or(u64::MAX)
        });
        self.clocks.subscribe_duration(nanos.min(left))
    }
}

impl bindings::types_iface::Host for JobHost<'_> {}

impl host::Host for JobHost<'_> {
    fn log(&mut self, level: bindings::LogLevel, message: String) {
        let level = match level {
            bindings::LogLevel::Trace => LogLevel::Trace,
            bindings::LogLevel::Debug => LogLevel::Debug,
            bindings::LogLevel::Info => LogLevel::Info,
            bindings::LogLevel::Warn => LogLevel::Warn,
            bindings::LogLevel::Error => LogLevel::Error,
        };
        self.capture.log(level, "log", &message);
    }

    fn progress(&mut self, done: u64, total: u64, message: Option<String>) {
        self.capture.progress(done, total, message);
    }

    fn enqueue(
        &mut self,
        name: String,
        payload: String,
        options: bindings::EnqueueOptions,
    ) -> Result<String, String> {
        self.capture.enqueue(name, payload, options)
    }
}
