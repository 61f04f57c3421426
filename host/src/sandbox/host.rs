//! The `jobhost:plugin/host` imports, implemented on [`JobHost`]: a short-lived view of one
//! job's [`Capture`], made for each call (the shape of wasmtime's `wasi-keyvalue`); and
//! [`add_to_linker`], the one place every import a handler may use is linked.

use wasmtime::component::{HasData, Linker};

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
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)?;
    JobPlugin::add_to_linker::<_, HasJobHost>(linker, |state| JobHost {
        capture: &state.capture,
    })
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
