//! The data of one job's `Store`: its WASI context (deny-by-default), its limiter and its
//! capture. A new one is built for every job, so nothing leaks between jobs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::sandbox::{HttpGrant, HttpPolicy};

use crate::sandbox::Capture;
use crate::sandbox::{Limits, Live, MemoryLimiter};

/// Per-job store data.
pub struct JobState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_policy: HttpPolicy,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) capture: Capture,
    /// When a wait on the monotonic clock ends at the latest (the job's deadline).
    pub(crate) until: Option<std::time::Instant>,
}

/// A handler's grants, resolved when it loads: environment values read, directories
/// checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedGrants {
    /// `(name, value)` pairs the handler sees.
    pub env: Vec<(String, String)>,
    /// `(host dir, guest path, writable)`.
    pub dirs: Vec<(PathBuf, String, bool)>,
    /// Outbound HTTP.
    pub http: Option<HttpGrant>,
}

impl JobState {
    /// State for one job. WASI grants nothing but what `grants` lists: no other
    /// directories, no other environment, no network, an empty stdin; stdout and stderr
    /// go to the job's log. Fails when a granted directory cannot be opened any more.
    pub fn new(
        limits: &Limits,
        capture: Capture,
        grants: &ResolvedGrants,
        wall_clock: Option<SystemTime>,
        live: Option<Arc<Live>>,
    ) -> Result<Self, String> {
        let mut builder = WasiCtx::builder();
        if let Some(at) = wall_clock {
            builder.wall_clock(FixedClock(
                at.duration_since(UNIX_EPOCH).unwrap_or_default(),
            ));
        }
        builder.stdout(capture.stream(0)).stderr(capture.stream(1));
        // wasi:sockets is never granted: say so rather than rely on the defaults.
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (name, value) in &grants.env {
            builder.env(name, value);
        }
        for (host, guest, writable) in &grants.dirs {
            let perms = if *writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder.preopened_dir(host, guest, perms).map_err(|e| {
                format!("cannot open the granted directory {}: {e}", host.display())
            })?;
        }
        Ok(Self {
            wasi: builder.build(),
            http: WasiHttpCtx::new(),
            http_policy: HttpPolicy::new(grants.http.clone(), live),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits),
            capture,
            until: None,
        })
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

impl WasiHttpView for JobState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

/// A wall clock stopped at one instant (for tests of time-dependent handlers).
struct FixedClock(Duration);

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        self.0
    }
}
