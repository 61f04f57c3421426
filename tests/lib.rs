//! Shared helpers for jobhost's integration tests and benchmarks: the fixture guests, and
//! a temporary plugins folder built from them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use jobhost::{Delivery, Dispatcher, EngineOptions, HostConfig, Report};
use serde_json::Value;

/// Paths of the fixture components, built by `build.rs`.
pub mod fixtures {
    include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));
}

/// A temporary plugins folder.
pub struct Handlers {
    dir: tempfile::TempDir,
}

impl Handlers {
    /// An empty folder.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies a fixture into the folder as `NAME.wasm`.
    pub fn add(&self, fixture: &str, name: &str) -> anyhow::Result<&Self> {
        std::fs::copy(fixture, self.file(name, "wasm"))
            .with_context(|| format!("copying {fixture}"))?;
        Ok(self)
    }

    /// Writes a sidecar `NAME.EXT` next to the handler.
    pub fn sidecar(&self, name: &str, ext: &str, text: &str) -> anyhow::Result<&Self> {
        std::fs::write(self.file(name, ext), text)?;
        Ok(self)
    }

    /// The path of `NAME.EXT` in the folder.
    pub fn file(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.{ext}"))
    }

    /// Host configuration for this folder, with a small pool and a cache shared by the
    /// tests (keyed by content, so sharing is safe).
    pub fn config(&self) -> HostConfig {
        let mut config = HostConfig::new(self.path());
        config.cache_dir = Some(shared_cache_dir());
        config.engine = EngineOptions {
            pool_instances: 16,
            ..EngineOptions::default()
        };
        config
    }

    /// Starts a dispatcher over the folder.
    pub fn dispatcher(&self) -> anyhow::Result<Dispatcher> {
        Ok(self.config().start()?)
    }
}

/// The `jobhost` binary next to the running test executable (built by `cargo xtask test`),
/// with the shared artifact cache and quiet logs.
pub fn jobhost_command() -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from);
    let bin = dir.map(|d| d.join("jobhost")).filter(|p| p.is_file());
    let bin = bin.ok_or_else(|| {
        anyhow::anyhow!("the jobhost binary is not built: run `cargo xtask test`")
    })?;
    let mut command = std::process::Command::new(bin);
    command
        .env("JOBHOST_CACHE_DIR", shared_cache_dir())
        .env("JOBHOST_LOG", "warn");
    Ok(command)
}

/// The artifact cache the tests share.
pub fn shared_cache_dir() -> PathBuf {
    let target = option_env!("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("test-artifact-cache")
}

/// Dispatches `{"job": name, "payload": payload}` as attempt `attempt`.
pub fn run_job(dispatcher: &Dispatcher, name: &str, payload: Value, attempt: u32) -> Report {
    let body = serde_json::json!({"job": name, "payload": payload}).to_string();
    let delivery = Delivery {
        attempt: Some(attempt),
        ..Delivery::default()
    };
    dispatcher.dispatch(body.as_bytes(), &delivery)
}
