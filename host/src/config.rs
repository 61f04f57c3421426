//! Host configuration, validated once and passed down; and the one start-up path that
//! turns it into a [`Dispatcher`].
//!
//! Main types: [`HostConfig`], [`StartupError`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::dispatch::{DispatchOptions, Dispatcher};
use crate::engine::{EngineError, EngineOptions, JobEngine};
use crate::plugin::ArtifactCache;
use crate::plugin::{FolderError, LoadError, Loader};

/// The name of the cache folder kept inside a plugins folder by default.
pub const DEFAULT_CACHE_DIR_NAME: &str = ".jobhost-cache";

/// The default number of jobs running at once: two per core (handlers are CPU-bound wasm,
/// but some wait on host calls).
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

/// Everything needed to start a host over a plugins folder.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The folder of `*.wasm` handlers.
    pub plugins_dir: PathBuf,
    /// Where precompiled artifacts are kept (default: `<plugins>/.jobhost-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Whether any handler that fails to load is fatal.
    pub strict: bool,
    /// Engine settings.
    pub engine: EngineOptions,
    /// Dispatch settings.
    pub dispatch: DispatchOptions,
}

impl HostConfig {
    /// A configuration with defaults for everything but the folder.
    pub fn new(plugins_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugins_dir: plugins_dir.into(),
            cache_dir: None,
            strict: false,
            engine: EngineOptions::default(),
            dispatch: DispatchOptions::default(),
        }
    }

    /// The artifact cache this configuration uses.
    pub fn cache(&self) -> ArtifactCache {
        ArtifactCache::new(
            self.cache_dir
                .clone()
                .unwrap_or_else(|| self.plugins_dir.join(DEFAULT_CACHE_DIR_NAME)),
        )
    }

    /// Builds the engine, loads the handlers and returns the dispatcher.
    pub fn start(&self) -> Result<Dispatcher, StartupError> {
        let engine = Arc::new(JobEngine::new(self.engine.clone())?);
        let loader = Loader::new(engine.clone(), Some(self.cache()))?;
        let plugins = loader.load_dir(&self.plugins_dir)?;
        if self.strict && !plugins.errors().is_empty() {
            return Err(StartupError::Strict(plugins.errors().to_vec()));
        }
        Ok(Dispatcher::new(engine, plugins, self.dispatch.clone()))
    }
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The plugins folder could not be read.
    #[error(transparent)]
    Folder(#[from] FolderError),
    /// `--strict` and some handlers failed to load.
    #[error("{} handler(s) failed to load (--strict): {}", .0.len(), join(.0))]
    Strict(Vec<LoadError>),
}

fn join(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
