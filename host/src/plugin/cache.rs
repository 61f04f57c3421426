//! The precompiled-artifact cache: `<dir>/<key>.cwasm`, where the key hashes the component's
//! bytes together with the engine's compatibility (wasmtime version, target, settings), so
//! a second start deserializes instead of compiling, and a changed engine never loads a
//! stale artifact.
//!
//! Next to an artifact, `<key>.describe.json` keeps what the handler's `describe()`
//! returned and the limits it ran under, so a warm start instantiates nothing: a load then
//! maps the artifact and touches only the pages it needs (a Python handler is 40 MB
//! compiled), and the component file is hashed in small reads, never held whole.
//!
//! Main type: [`ArtifactCache`].

use std::hash::{Hash as _, Hasher as _};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::bindings::HandlerInfo;
use crate::engine::EngineOptions;
use crate::sandbox::Limits;

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
        let key = key_of(engine, bytes).expect("reading a slice cannot fail");
        self.artifact(&key)
    }

    fn artifact(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    fn description(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.describe.json"))
    }

    /// Whether an artifact for `bytes` exists.
    pub fn contains(&self, engine: &Engine, bytes: &[u8]) -> bool {
        self.path_for(engine, bytes).is_file()
    }

    /// Loads the component in `file` from the cache, or reads and compiles it and stores
    /// the artifact. Also returns the cache key, for [`Self::described`].
    pub fn load_file(
        &self,
        engine: &Engine,
        file: &Path,
    ) -> Result<(Component, ArtifactSource, String), String> {
        let read = |e: std::io::Error| format!("cannot read: {e}");
        let key = self.key_of_file(engine, file).map_err(read)?;
        let path = self.artifact(&key);
        if path.is_file() {
            // SAFETY: the artifact was written by `store` or `precompile` for these exact
            // bytes under a compatible engine (the key says so), and the cache folder
            // belongs to the host.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, ArtifactSource::Cached, key)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring an unreadable cached artifact");
                }
            }
        }
        let bytes = std::fs::read(file).map_err(read)?;
        let component = Component::new(engine, &bytes)
            .map_err(|e| format!("not a valid component: {}", crate::sandbox::error_chain(&e)))?;
        self.store(&path, &component);
        Ok((component, ArtifactSource::Compiled, key))
    }

    /// The key of the component in `file`. Hashing an 18 MB component is most of a warm
    /// load, so the key is kept in `<digest of the path>.source` with the file's size,
    /// times, inode and device, and used again while they all match, as git trusts its
    /// index. A file changed within [`RACY`] of being hashed is hashed again next time.
    fn key_of_file(&self, engine: &Engine, file: &Path) -> std::io::Result<String> {
        let stamp = Stamp::of(&std::fs::metadata(file)?);
        let mut named = Sha256::new();
        named.update(file.canonicalize()?.as_os_str().as_encoded_bytes());
        named.update(compatibility(engine).to_le_bytes());
        let index = self
            .dir
            .join(format!("{}.source", hex::encode(&named.finalize()[..16])));
        if let Ok(text) = std::fs::read(&index)
            && let Ok(kept) = serde_json::from_slice::<Source>(&text)
            && kept.stamp == stamp
        {
            return Ok(kept.key);
        }
        let key = key_of(engine, std::fs::File::open(file)?)?;
        let settled = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|now| now.as_nanos() > stamp.changed_ns.saturating_add(RACY.as_nanos()));
        if settled && stamp == Stamp::of(&std::fs::metadata(file)?) {
            let kept = serde_json::to_vec(&Source {
                stamp,
                key: key.clone(),
            })?;
            if let Err(error) = write_atomically(&index, &kept) {
                tracing::debug!(path = %index.display(), %error, "not keeping the component's key");
            }
        }
        Ok(key)
    }

    /// What `describe()` returned for the artifact `key` under `limits` and `engine`, if a
    /// load kept it.
    pub fn described(
        &self,
        key: &str,
        limits: &Limits,
        engine: &EngineOptions,
    ) -> Option<HandlerInfo> {
        let text = std::fs::read(self.description(key)).ok()?;
        let kept: Described = serde_json::from_slice(&text).ok()?;
        let same = kept.limits == *limits && kept.engine == fit(engine);
        same.then_some(HandlerInfo {
            names: kept.names,
            schema: kept.schema,
            version: kept.version,
        })
    }

    /// Keeps what `describe()` returned, best effort (a read-only folder keeps nothing).
    pub fn keep_described(
        &self,
        key: &str,
        limits: &Limits,
        engine: &EngineOptions,
        info: &HandlerInfo,
    ) {
        let kept = Described {
            limits: limits.clone(),
            engine: fit(engine),
            names: info.names.clone(),
            schema: info.schema.clone(),
            version: info.version.clone(),
        };
        let path = self.description(key);
        let result = serde_json::to_vec(&kept)
            .map_err(std::io::Error::other)
            .and_then(|text| write_atomically(&path, &text));
        if let Err(error) = result {
            tracing::debug!(path = %path.display(), %error, "not keeping describe()");
        }
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

/// What a handler's `describe()` returned, and the limits and engine (pool) settings it
/// ran under: a handler that could not start under tighter ones is described again, and
/// refused then.
#[derive(serde::Serialize, serde::Deserialize)]
struct Described {
    limits: Limits,
    engine: String,
    names: Vec<String>,
    schema: Option<String>,
    version: String,
}

/// How long after its last change a file's stamp is trusted: file times come from a
/// coarse clock, so a change within the same tick can keep the same times.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    len: u64,
    modified_ns: u128,
    changed_ns: u128,
    inode: u64,
    device: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let ns = |secs: i64, nanos: i64| {
            u128::try_from(secs).unwrap_or(0) * 1_000_000_000 + u128::try_from(nanos).unwrap_or(0)
        };
        Self {
            len: meta.len(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
        }
    }
}

/// A component file's stamp and key (`<digest of its path>.source`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Source {
    stamp: Stamp,
    key: String,
}

/// The cache key: a digest of the component's bytes and the engine's compatibility,
/// read 64 KiB at a time.
fn key_of(engine: &Engine, mut bytes: impl Read) -> std::io::Result<String> {
    let mut digest = Sha256::new();
    let mut buffer = vec![0; 64 << 10];
    loop {
        match bytes.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => digest.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    digest.update(compatibility(engine).to_le_bytes());
    Ok(hex::encode(&digest.finalize()[..16]))
}

/// The engine settings that decide whether a handler can start at all (not those that only
/// change how fast, such as the pool's size or what it keeps resident).
fn fit(engine: &EngineOptions) -> String {
    format!(
        "pooling={} fuel={} stack={} memory={}",
        engine.pooling, engine.fuel, engine.max_wasm_stack_bytes, engine.max_memory_bytes
    )
}

/// What an artifact must have been compiled with to run on `engine`, as a number.
fn compatibility(engine: &Engine) -> u64 {
    let mut compat = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    compat.finish()
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
