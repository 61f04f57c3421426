//! The precompiled-artifact cache: `<dir>/<key>.cwasm`, where the key hashes the component's
//! bytes together with the engine's compatibility (wasmtime version, target, settings), so
//! a second start deserializes instead of compiling, and a changed engine never loads a
//! stale artifact.
//!
//! Main type: [`ArtifactCache`].

use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where the compiled form of a component came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactSource {
    /// Deserialized from the cache.
    Cached,
    /// Compiled now (and written to the cache when it is writable).
    Compiled,
}

/// A folder of precompiled components.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact path for `bytes` under `engine`.
    pub fn path_for(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        let mut compat = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut compat);
        let mut digest = Sha256::new();
        digest.update(bytes);
        digest.update(compat.finish().to_le_bytes());
        self.dir
            .join(format!("{}.cwasm", hex::encode(&digest.finalize()[..16])))
    }

    /// Whether an artifact for `bytes` exists.
    pub fn contains(&self, engine: &Engine, bytes: &[u8]) -> bool {
        self.path_for(engine, bytes).is_file()
    }

    /// Loads the component from the cache, or compiles it and stores the artifact.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, ArtifactSource)> {
        let path = self.path_for(engine, bytes);
        if path.is_file() {
            // SAFETY: the artifact was written by `store` for these exact bytes under a
            // compatible engine (the key says so), and the cache folder belongs to the host.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, ArtifactSource::Cached)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring an unreadable cached artifact");
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        self.store(&path, &component);
        Ok((component, ArtifactSource::Compiled))
    }

    /// Compiles `bytes` for `engine` (which may target another machine) into the cache.
    pub fn precompile(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<PathBuf> {
        let path = self.path_for(engine, bytes);
        let artifact = engine.precompile_component(bytes)?;
        write_atomically(&path, &artifact).map_err(wasmtime::Error::new)?;
        Ok(path)
    }

    fn store(&self, path: &Path, component: &Component) {
        // A read-only handlers folder (a Lambda task root) is normal: compile every time.
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|artifact| write_atomically(path, &artifact));
        if let Err(error) = result {
            tracing::debug!(path = %path.display(), %error, "not caching the compiled artifact");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile_in(dir)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    Ok(dir.join(format!(".tmp-{}", uuid::Uuid::now_v7())))
}
