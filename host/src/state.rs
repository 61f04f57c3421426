//! The data of one job's `Store`: its WASI context (deny-by-default), its limiter and its
//! capture. A new one is built for every job, so nothing leaks between jobs.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capture::Capture;
use crate::limits::{Limits, MemoryLimiter};

/// Per-job store data.
pub struct JobState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) capture: Capture,
}

impl JobState {
    /// State for one job. WASI grants nothing: no preopened directories, no environment,
    /// no network, an empty stdin; stdout and stderr go to the job's log.
    pub fn new(limits: &Limits, capture: Capture) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(capture.stream(0))
            .stderr(capture.stream(1))
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits),
            capture,
        }
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
