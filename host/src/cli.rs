//! The command line: every flag can also be set from an environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::HostConfig;
use crate::engine::EngineOptions;
use crate::envelope::DEFAULT_MAX_BODY_BYTES;

/// A background-job host whose handlers are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "jobhost", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "JOBHOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `jobhost=debug`.
    #[arg(long, global = true, env = "JOBHOST_LOG", default_value = "warn")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one job now and print its report as one JSON object.
    Exec(ExecArgs),
    /// Show what a component is: job names, schema, version, imports, cache state.
    Inspect(InspectArgs),
    /// Precompile every handler of a folder into the artifact cache.
    Compile(CompileArgs),
}

/// Options shared by every command that loads a plugins folder.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// The folder of `*.wasm` handlers.
    #[arg(long, env = "JOBHOST_PLUGINS", default_value = "./handlers")]
    pub plugins: PathBuf,
    /// Where precompiled artifacts are kept (default: `<plugins>/.jobhost-cache`).
    #[arg(long, env = "JOBHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Fail when any handler cannot be loaded (default: skip it and report it).
    #[arg(long, env = "JOBHOST_STRICT")]
    pub strict: bool,
    /// Do not use the pooling allocator.
    #[arg(long, env = "JOBHOST_NO_POOLING")]
    pub no_pooling: bool,
    /// The largest message body accepted, in bytes.
    #[arg(long, env = "JOBHOST_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
}

impl HostArgs {
    /// The validated host configuration.
    pub fn config(&self) -> HostConfig {
        let mut config = HostConfig::new(&self.plugins);
        config.cache_dir = self.cache_dir.clone();
        config.strict = self.strict;
        config.engine = EngineOptions {
            pooling: !self.no_pooling,
            ..EngineOptions::default()
        };
        config.dispatch.max_body_bytes = self.max_body_bytes;
        config
    }
}

/// `jobhost exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Host options.
    #[command(flatten)]
    pub host: HostArgs,
    /// The job name.
    pub name: String,
    /// The payload, as JSON.
    #[arg(default_value = "{}")]
    pub payload: String,
    /// The attempt number the handler sees.
    #[arg(long, env = "JOBHOST_ATTEMPT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: u32,
    /// The job id (default: a new UUIDv7).
    #[arg(long)]
    pub id: Option<String>,
}

/// `jobhost inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The component file.
    pub file: PathBuf,
    /// Where precompiled artifacts are kept (default: `.jobhost-cache` beside the file).
    #[arg(long, env = "JOBHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `jobhost compile`.
#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The folder of `*.wasm` handlers.
    pub dir: PathBuf,
    /// Where precompiled artifacts are written (default: `<dir>/.jobhost-cache`).
    #[arg(long, env = "JOBHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile for another target triple, e.g. `aarch64-unknown-linux-gnu`.
    #[arg(long)]
    pub target: Option<String>,
}
