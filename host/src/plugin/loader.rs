//! Loading handlers: every `*.wasm` in a folder, each with optional sidecars `NAME.toml`
//! (manifest) and `NAME.schema.json` (schema override). A handler that cannot be loaded is
//! reported with the file(s) at fault and skipped; the rest load.
//!
//! Main types: [`Loader`], [`Plugin`], [`PluginSet`], [`LoadError`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, Linker};

use crate::bindings::{HandlerInfo, JobPluginPre};
use crate::engine::{EngineError, JobEngine};
use crate::plugin::Manifest;
use crate::plugin::PayloadSchema;
use crate::plugin::{ArtifactCache, ArtifactSource};
use crate::sandbox::{JobState, Limits, ResolvedGrants};
use crate::sandbox::{describe, error_chain};

/// The longest job name a handler may claim.
const MAX_NAME_BYTES: usize = 256;

/// Where a handler's schema came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaSource {
    /// The handler has no schema: every JSON payload is accepted.
    None,
    /// From `describe()`.
    Describe,
    /// From the sidecar file.
    Sidecar(PathBuf),
}

/// A loaded handler, ready to be instantiated per job.
pub struct Plugin {
    /// The component file.
    pub path: PathBuf,
    /// The job names it accepts.
    pub names: Vec<String>,
    /// Its version, from `describe()`.
    pub version: String,
    /// The compiled payload schema.
    pub schema: Option<PayloadSchema>,
    /// Where the schema came from.
    pub schema_source: SchemaSource,
    /// The manifest (defaults when there is no sidecar).
    pub manifest: Manifest,
    /// The names of what the component imports.
    pub imports: Vec<String>,
    /// Whether the compiled form came from the cache.
    pub artifact: ArtifactSource,
    /// The manifest's grants, resolved at load.
    pub grants: ResolvedGrants,
    pub(crate) pre: JobPluginPre<JobState>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("names", &self.names)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A handler that could not be loaded, naming the file(s) at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", display_paths(files))]
pub struct LoadError {
    /// The files involved (the component, a sidecar, or two components claiming one name).
    pub files: Vec<PathBuf>,
    /// What is wrong.
    pub message: String,
    /// The job names the handler described, when it got that far (empty otherwise).
    pub names: Vec<String>,
}

fn display_paths(files: &[PathBuf]) -> String {
    let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    files.join(", ")
}

impl LoadError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            files: vec![file.to_path_buf()],
            message: message.into(),
            names: Vec::new(),
        }
    }
}

/// The handlers of one folder, indexed by job name.
#[derive(Debug, Default)]
pub struct PluginSet {
    plugins: Vec<Arc<Plugin>>,
    by_name: HashMap<String, Arc<Plugin>>,
    errors: Vec<LoadError>,
}

impl PluginSet {
    /// The handler for a job name.
    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.by_name.get(name)
    }

    /// Every loaded handler, in file-name order.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// What could not be loaded.
    pub fn errors(&self) -> &[LoadError] {
        &self.errors
    }

    /// Logs each load error once (for the commands that keep running without them).
    pub fn log_errors(&self) {
        for error in &self.errors {
            tracing::error!(error = %error, "handler not loaded");
        }
    }

    /// Why the handler that would serve `name` was refused at load: the refused handler
    /// described that name, or (when it never got as far as describing) its file is
    /// `name.wasm`.
    pub fn refused(&self, name: &str) -> Option<&LoadError> {
        let stem_is = |e: &&LoadError| {
            e.files
                .first()
                .and_then(|f| f.file_stem())
                .is_some_and(|stem| stem == name)
        };
        (self.errors.iter())
            .find(|e| e.names.iter().any(|n| n == name))
            .or_else(|| self.errors.iter().find(stem_is))
    }

    /// Every job name served, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// A set of already-loaded handlers (first claim of a name wins).
    pub fn from_plugins(plugins: Vec<Plugin>) -> Self {
        let mut set = Self::default();
        for plugin in plugins {
            set.insert(plugin);
        }
        set
    }

    fn insert(&mut self, plugin: Plugin) {
        // Two handlers claiming one name: the first (in file-name order) keeps it, the
        // later one is skipped whole, and the error names both files.
        if let Some((name, owner)) = plugin
            .names
            .iter()
            .find_map(|name| self.by_name.get(name).map(|owner| (name, owner)))
        {
            self.errors.push(LoadError {
                files: vec![plugin.path.clone(), owner.path.clone()],
                message: format!(
                    "job name `{name}` is already claimed by {}; skipping this handler",
                    owner.path.display()
                ),
                names: plugin.names.clone(),
            });
            return;
        }
        let plugin = Arc::new(plugin);
        for name in &plugin.names {
            self.by_name.insert(name.clone(), plugin.clone());
        }
        self.plugins.push(plugin);
    }
}

/// Loads components with one engine, one linker and one artifact cache.
pub struct Loader {
    engine: Arc<JobEngine>,
    linker: Linker<JobState>,
    cache: Option<ArtifactCache>,
}

impl Loader {
    /// A loader; `cache` is where precompiled artifacts are kept (none: always compile).
    pub fn new(engine: Arc<JobEngine>, cache: Option<ArtifactCache>) -> Result<Self, EngineError> {
        let mut linker = Linker::new(engine.engine());
        crate::sandbox::add_to_linker(&mut linker).map_err(EngineError::of)?;
        Ok(Self {
            engine,
            linker,
            cache,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<JobEngine> {
        &self.engine
    }

    /// Loads every `*.wasm` in `dir`. Fails only when the folder cannot be read; a bad
    /// handler is recorded in [`PluginSet::errors`] and skipped (not logged: each command
    /// reports them once, in its own way; see [`PluginSet::log_errors`]).
    pub fn load_dir(&self, dir: &Path) -> Result<PluginSet, FolderError> {
        let files = wasm_files(dir)?;
        let mut set = PluginSet::default();
        for file in files {
            match self.load_file(&file) {
                Ok(plugin) => set.insert(plugin),
                Err(error) => set.errors.push(error),
            }
        }
        Ok(set)
    }

    /// Loads one component with its sidecars.
    pub fn load_file(&self, path: &Path) -> Result<Plugin, LoadError> {
        check_is_component(&read_header(path).map_err(|e| LoadError::new(path, e))?)
            .map_err(|m| LoadError::new(path, m))?;
        let manifest_path = path.with_extension("toml");
        let manifest = Manifest::load_or_default(&manifest_path)
            .map_err(|e| LoadError::new(&manifest_path, e.to_string()))?;
        let (component, artifact, key) = self.compile(path).map_err(|e| LoadError::new(path, e))?;
        let imports = import_names(&component, &self.engine);
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(JobPluginPre::new)
            .map_err(|e| {
                LoadError::new(
                    path,
                    format!(
                        "does not fit the jobhost:plugin/job-plugin world: {}",
                        error_chain(&e)
                    ),
                )
            })?;
        let info = self
            .describe(&pre, &manifest.limits, key.as_deref())
            .map_err(|m| LoadError::new(path, m))?;
        let names = check_names(info.names).map_err(|m| LoadError::new(path, m))?;
        let named = |mut error: LoadError| {
            error.names = names.clone();
            error
        };
        let (schema, schema_source) = load_schema(path, info.schema.as_deref()).map_err(named)?;
        let grants = resolve_grants(&manifest, path)
            .map_err(|m| named(LoadError::new(&manifest_path, m)))?;
        tracing::debug!(path = %path.display(), names = ?names, cached = artifact == ArtifactSource::Cached, "handler loaded");
        Ok(Plugin {
            path: path.to_path_buf(),
            names,
            version: info.version,
            schema,
            schema_source,
            manifest,
            imports,
            artifact,
            grants,
            pre,
        })
    }

    fn compile(&self, path: &Path) -> Result<(Component, ArtifactSource, Option<String>), String> {
        let engine = self.engine.engine();
        if let Some(cache) = &self.cache {
            return cache
                .load_file(engine, path)
                .map(|(component, source, key)| (component, source, Some(key)));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        Component::new(engine, &bytes)
            .map(|c| (c, ArtifactSource::Compiled, None))
            .map_err(|e| format!("not a valid component: {}", error_chain(&e)))
    }

    /// `describe()`, or what it returned when this artifact was last loaded under the same
    /// limits.
    fn describe(
        &self,
        pre: &JobPluginPre<JobState>,
        limits: &Limits,
        key: Option<&str>,
    ) -> Result<HandlerInfo, String> {
        let cache = self.cache.as_ref().zip(key);
        if let Some(info) =
            cache.and_then(|(cache, key)| cache.described(key, limits, self.engine.options()))
        {
            return Ok(info);
        }
        let info = describe(&self.engine, pre, limits)?;
        if let Some((cache, key)) = cache {
            cache.keep_described(key, limits, self.engine.options(), &info);
        }
        Ok(info)
    }
}

/// Reads the granted environment variables and checks the granted directories. This is
/// the one place the host's environment reaches a handler, and only by name.
fn resolve_grants(manifest: &Manifest, component: &Path) -> Result<ResolvedGrants, String> {
    let base = component.parent().unwrap_or(Path::new("."));
    let secrets = match &manifest.grants.env_file {
        Some(file) => read_env_file(&base.join(file))?,
        None => Vec::new(),
    };
    let lookup = |name: &str| {
        secrets
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let env = manifest
        .grants
        .env
        .iter()
        .filter_map(|name| match lookup(name) {
            Some(value) => Some((name.clone(), value)),
            None => {
                tracing::warn!(variable = %name, handler = %component.display(), "granted environment variable is not set");
                None
            }
        })
        .collect();
    let mut dirs = Vec::new();
    for grant in &manifest.grants.dirs {
        let host = base.join(&grant.host);
        let host = host
            .canonicalize()
            .map_err(|e| format!("granted directory {} is not usable: {e}", host.display()))?;
        if !host.is_dir() {
            return Err(format!(
                "granted directory {} is not a directory",
                host.display()
            ));
        }
        dirs.push((host, grant.guest.clone(), grant.writable));
    }
    Ok(ResolvedGrants {
        env,
        dirs,
        http: manifest.grants.http.clone(),
    })
}

/// `KEY=VALUE` lines; blank lines and `#` comments are skipped.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the env file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect())
}

/// The `*.wasm` files of a folder, sorted by name.
pub fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let entries = std::fs::read_dir(dir).map_err(|source| FolderError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The plugins folder could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the plugins folder {}: {source}", path.display())]
pub struct FolderError {
    /// The folder.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The first 8 bytes of a file (fewer if it is shorter).
fn read_header(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut header = Vec::with_capacity(8);
    std::fs::File::open(path)
        .and_then(|file| file.take(8).read_to_end(&mut header))
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(header)
}

/// Tells a component from a core module (a common mistake) from anything else.
pub fn check_is_component(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 0x01, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(
            "is a core wasm module, not a component: build it for wasm32-wasip2, or wrap it with `wasm-tools component new`".into(),
        ),
        _ => Err("is not a WebAssembly component (bad magic number)".into()),
    }
}

fn check_names(names: Vec<String>) -> Result<Vec<String>, String> {
    if names.is_empty() {
        return Err("describe() returned no job names".into());
    }
    if let Some(bad) = names
        .iter()
        .find(|n| n.trim().is_empty() || n.len() > MAX_NAME_BYTES)
    {
        return Err(format!(
            "describe() returned an invalid job name {bad:?} (1 to {MAX_NAME_BYTES} bytes)"
        ));
    }
    Ok(names)
}

fn load_schema(
    path: &Path,
    described: Option<&str>,
) -> Result<(Option<PayloadSchema>, SchemaSource), LoadError> {
    let sidecar = path.with_extension("schema.json");
    if sidecar.is_file() {
        let text = std::fs::read_to_string(&sidecar)
            .map_err(|e| LoadError::new(&sidecar, format!("cannot read: {e}")))?;
        let schema =
            PayloadSchema::compile(&text).map_err(|m| LoadError::new(&sidecar, m.to_string()))?;
        return Ok((Some(schema), SchemaSource::Sidecar(sidecar)));
    }
    match described {
        Some(text) => {
            let schema = PayloadSchema::compile(text).map_err(|m| {
                LoadError::new(path, format!("the schema from describe() is unusable: {m}"))
            })?;
            Ok((Some(schema), SchemaSource::Describe))
        }
        None => Ok((None, SchemaSource::None)),
    }
}

/// The names of a component's imports (WASI interfaces, the host interface).
pub fn import_names(component: &Component, engine: &JobEngine) -> Vec<String> {
    component
        .component_type()
        .imports(engine.engine())
        .map(|(name, _)| name.to_string())
        .collect()
}
