//! The command line: every flag can also be set from an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use jobhost::config::default_concurrency;
use jobhost::job::parse_delay;
use jobhost::queue::postgres::PostgresOptions;
use jobhost::queue::sqlite::Retention;
use jobhost::queue::sqs::{MAX_HOP, SqsOptions};
use jobhost::run::serve::{QueueConfig, ServeConfig};

use jobhost::config::HostConfig;
use jobhost::engine::{DEFAULT_KEEP_RESIDENT, EngineOptions};
use jobhost::job::DEFAULT_MAX_BODY_BYTES;

/// A background-job host whose handlers are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "jobhost", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "JOBHOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `jobhost=debug` (default:
    /// `warn,jobhost=info` for `run`, a start-up banner and one line per finished job;
    /// `warn` for the other commands).
    #[arg(long, global = true, env = "JOBHOST_LOG")]
    pub log: Option<String>,
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
    /// Run the host on the embedded queue: take jobs, run them, record the outcomes.
    Run(RunArgs),
    /// Enqueue a job (or many, with --file) into the embedded queue.
    Enqueue(EnqueueArgs),
    /// Look at or cancel jobs in the embedded queue.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// The dead-letter queue: list, redrive, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Counts by job name and state, the age of the oldest due job, paused names, and the
    /// last hour's p50/p95 run time and fuel per job name.
    Stats(DbArgs),
    /// Stop claiming jobs of a job name on the embedded queue (they stay queued; running
    /// ones finish). Every host sharing the queue file obeys.
    Pause(PauseArgs),
    /// Claim jobs of a paused job name again.
    Resume(PauseArgs),
    /// Run the `NAME.cases.json` case files of a handlers folder.
    Test(TestArgs),
    /// Create a handler project (WIT, build script, cases, README) in a new folder.
    New(NewArgs),
    /// Run as an AWS Lambda function (also when `AWS_LAMBDA_RUNTIME_API` is set): SQS
    /// batches and direct `{"job", "payload"}` invocations.
    Lambda(LambdaArgs),
    /// Write the Lambda layer and handlers zips (`dist/jobhost-layer-ARCH.zip`,
    /// `dist/handlers-ARCH.zip` with precompiled artifacts).
    Package(PackageArgs),
    /// Apply the PostgreSQL queue's schema migrations (`run` applies them too, at start).
    Migrate(DbArgs),
    /// Write a SAM template or a Stacktape config for a handlers folder: the host, an
    /// alarm on its dead-letter queue, and the schedules, S3 buckets and EventBridge rules
    /// its manifests declare.
    Template(TemplateArgs),
}

/// `jobhost template`.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// The handlers folder whose manifests declare the schedules and triggers.
    #[arg(long, env = "JOBHOST_PLUGINS", default_value = "./handlers")]
    pub plugins: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value_t = TemplateFormat::Sam)]
    pub format: TemplateFormat,
    /// Add an HTTP API (API Gateway) with `POST /jobs` and `POST /hooks/{name}`.
    #[arg(long)]
    pub api: bool,
    /// Subscribe this address to the dead-letter alarm.
    #[arg(long)]
    pub alert_email: Option<String>,
    /// The Lambda architecture.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The infrastructure-as-code format of `jobhost template`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateFormat {
    /// An AWS SAM template (CloudFormation).
    Sam,
    /// A Stacktape config.
    Stacktape,
}

/// `jobhost lambda`.
#[derive(Debug, Args)]
pub struct LambdaArgs {
    /// The handlers folder (default: `/var/task/handlers`, else `/opt/handlers`).
    #[arg(long, env = "JOBHOST_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// The dead-letter queue URL for jobs that fail for good (default: the source
    /// queue's RedrivePolicy target).
    #[arg(long, env = "JOBHOST_DLQ_URL")]
    pub dlq_url: Option<String>,
    /// The queue for follow-up jobs of direct invocations (an SQS batch's go to its own
    /// source queue).
    #[arg(long, env = "JOBHOST_SQS_URL")]
    pub sqs_url: Option<String>,
    /// Records run at once (default: two per core).
    #[arg(long, env = "JOBHOST_CONCURRENCY", value_parser = at_least_one())]
    pub concurrency: Option<usize>,
    /// Time kept back from each job's deadline before the invocation's own, for settling
    /// the batch (visibility changes, dead letters, follow-up jobs).
    #[arg(long, env = "JOBHOST_DEADLINE_MARGIN", default_value = "2s", value_parser = parse_delay)]
    pub margin: std::time::Duration,
    /// The CloudWatch namespace of the embedded-metric-format line printed on stdout for
    /// each job (an empty value prints none).
    #[arg(long, env = "JOBHOST_METRICS_NAMESPACE", default_value = "jobhost")]
    pub metrics_namespace: String,
}

/// Target architectures of `jobhost package`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    /// x86_64 (`x86_64-unknown-linux-gnu`).
    #[value(name = "x86_64")]
    X86_64,
    /// arm64 / Graviton (`aarch64-unknown-linux-gnu`).
    Arm64,
}

/// `jobhost package`.
#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The handlers folder to package.
    #[arg(long, env = "JOBHOST_PLUGINS", default_value = "./handlers")]
    pub plugins: PathBuf,
    /// Where to write the zips.
    #[arg(long, default_value = "dist")]
    pub out: PathBuf,
    /// The Lambda architecture.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// The `bootstrap` binary for that architecture (default: this binary, when it is
    /// built for it).
    #[arg(long)]
    pub bootstrap: Option<PathBuf>,
}

/// `jobhost new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The handler's job name (lowercase letters, digits and `-`), also the folder name.
    pub name: String,
    /// The language of the handler.
    #[arg(long, value_enum)]
    pub lang: crate::scaffold::Language,
    /// Where to create the project (default: `./NAME`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `jobhost test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The handlers folder (with its `NAME.cases.json` files).
    pub dir: PathBuf,
    /// Where precompiled artifacts are kept (default: `<dir>/.jobhost-cache`).
    #[arg(long, env = "JOBHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// The queue file.
#[derive(Clone, Debug, Args)]
pub struct DbArgs {
    /// The embedded queue's SQLite file, or a PostgreSQL queue's URL
    /// (`postgres://USER@HOST/DB`; `JOBHOST_QUEUE=postgres://...` selects it too).
    #[arg(long, env = "JOBHOST_DB", default_value = "./jobhost.db")]
    pub db: PathBuf,
    /// The PostgreSQL schema of the queue's tables.
    #[arg(long, env = "JOBHOST_PG_SCHEMA", default_value = "jobhost")]
    pub pg_schema: String,
}

/// Whether `text` is a PostgreSQL URL.
fn is_postgres(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

impl DbArgs {
    /// The PostgreSQL URL asked for (`--db URL`, else `JOBHOST_QUEUE`), if any.
    pub fn postgres(&self) -> Option<String> {
        let db = self.db.to_string_lossy();
        if is_postgres(&db) {
            return Some(db.into_owned());
        }
        std::env::var("JOBHOST_QUEUE")
            .ok()
            .filter(|q| is_postgres(q))
    }
}

/// `jobhost pause` and `jobhost resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The queue file.
    #[command(flatten)]
    pub db: DbArgs,
    /// The job name.
    pub name: String,
}

/// Which queue: the embedded SQLite file (default) or SQS.
#[derive(Clone, Debug, Args)]
pub struct QueueArgs {
    /// The queue: `sqs://NAME` (its URL is looked up), an SQS queue URL
    /// (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`), a PostgreSQL URL
    /// (`postgres://USER@HOST/DB`, the `PG*` variables filling in the rest), or `sqlite`
    /// (the `--db` file).
    #[arg(long, env = "JOBHOST_QUEUE", default_value = "sqlite")]
    pub queue: String,
    /// The SQS queue URL (the same as `--queue URL`).
    #[arg(long, env = "JOBHOST_SQS_URL")]
    pub sqs_url: Option<String>,
    /// The SQS dead-letter queue URL (default: the queue's RedrivePolicy target).
    #[arg(long, env = "JOBHOST_DLQ_URL")]
    pub dlq_url: Option<String>,
    /// SQS long-polling wait per receive call, 0s to 20s.
    #[arg(long, env = "JOBHOST_SQS_WAIT", default_value = "20s", value_parser = sqs_wait)]
    pub sqs_wait: Duration,
    /// The longest an SQS message is hidden in one step of a long delay or backoff, 1s to
    /// 11h 40m (SQS allows 12h from the receive; shorter values are for tests).
    #[arg(long, env = "JOBHOST_SQS_MAX_HIDE", default_value = "11h 40m", value_parser = sqs_max_hide)]
    pub sqs_max_hide: Duration,
}

impl QueueArgs {
    /// The SQS queue asked for: `Some(url or sqs://name)`, or `None` for the embedded queue
    /// or PostgreSQL.
    pub fn sqs(&self) -> Option<String> {
        if let Some(url) = &self.sqs_url {
            return Some(url.clone());
        }
        match self.queue.as_str() {
            "sqlite" | "" => None,
            other if is_postgres(other) => None,
            other => Some(other.to_string()),
        }
    }

    /// The PostgreSQL queue asked for by `--queue postgres://...`, if any.
    pub fn postgres(&self) -> Option<String> {
        is_postgres(&self.queue).then(|| self.queue.clone())
    }
}

/// `jobhost run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Host options.
    #[command(flatten)]
    pub host: HostArgs,
    /// The queue file.
    #[command(flatten)]
    pub db: DbArgs,
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Jobs running at once (default: two per core).
    #[arg(long, env = "JOBHOST_CONCURRENCY", value_parser = at_least_one())]
    pub concurrency: Option<usize>,
    /// Exit 0 once nothing is due or running.
    #[arg(long, env = "JOBHOST_DRAIN")]
    pub drain: bool,
    /// Serve the HTTP API (default address 127.0.0.1:8080).
    #[arg(long, env = "JOBHOST_HTTP", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    pub http: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` on a listener of their own (any
    /// queue; `--http` serves them too).
    #[arg(long, env = "JOBHOST_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// The token the HTTP API's changing calls (cancel, pause, resume) must carry as
    /// `Authorization: Bearer TOKEN`; without one they are allowed on loopback only.
    #[arg(long, env = "JOBHOST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The HTTP API refuses every changing call (cancel, pause, resume).
    #[arg(long, env = "JOBHOST_READ_ONLY")]
    pub read_only: bool,
    /// How long a claimed job is leased before another worker may take it, at least 1s
    /// (default: the longest handler timeout plus 1m).
    #[arg(long, env = "JOBHOST_LEASE", value_parser = lease)]
    pub lease: Option<std::time::Duration>,
    /// How long running jobs may finish after SIGINT/SIGTERM.
    #[arg(long, env = "JOBHOST_GRACE", default_value = "30s", value_parser = parse_delay)]
    pub grace: std::time::Duration,
    /// The most done jobs kept.
    #[arg(long, env = "JOBHOST_RETAIN_DONE", default_value_t = 100_000)]
    pub retain_done: u64,
    /// How long done jobs are kept.
    #[arg(long, env = "JOBHOST_RETAIN_DONE_FOR", default_value = "7d", value_parser = parse_delay)]
    pub retain_done_for: std::time::Duration,
}

impl QueueArgs {
    /// The SQS options these flags describe, for `queue` (`sqs://NAME` or a URL).
    pub fn sqs_options(&self, queue: String) -> SqsOptions {
        SqsOptions {
            dlq_url: self.dlq_url.clone(),
            wait: self.sqs_wait,
            max_hide: self.sqs_max_hide,
            ..SqsOptions::new(queue)
        }
    }
}

impl RunArgs {
    /// The one validated configuration of this run.
    pub fn config(&self) -> anyhow::Result<ServeConfig> {
        let queue = match self.queue.sqs() {
            Some(queue) => {
                anyhow::ensure!(
                    self.lease.is_none(),
                    "--lease is for the embedded queue; on SQS the lease is the queue's \
                     visibility timeout"
                );
                QueueConfig::Sqs(self.queue.sqs_options(queue))
            }
            None => {
                let retention = Retention {
                    max_done: self.retain_done,
                    max_age: self.retain_done_for,
                };
                match self.queue.postgres().or_else(|| self.db.postgres()) {
                    Some(url) => QueueConfig::Postgres {
                        options: PostgresOptions {
                            schema: self.db.pg_schema.clone(),
                            // Claims, settles, renewals, progress and the API at once.
                            pool_size: 8,
                            retention,
                            ..PostgresOptions::new(url)
                        },
                        lease: self.lease,
                    },
                    None => QueueConfig::Sqlite {
                        db: self.db.db.clone(),
                        lease: self.lease,
                        retention,
                    },
                }
            }
        };
        Ok(ServeConfig {
            host: self.host.config(),
            queue,
            concurrency: self.concurrency.unwrap_or_else(default_concurrency),
            drain: self.drain,
            grace: self.grace,
            http: self.http,
            metrics: self.metrics,
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            read_only: self.read_only,
        })
    }
}

/// `jobhost enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The queue file.
    #[command(flatten)]
    pub db: DbArgs,
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// The ordering group on an SQS FIFO queue (default: the job name).
    #[arg(long)]
    pub group: Option<String>,
    /// Check payloads against the handlers of this folder first.
    #[arg(long, env = "JOBHOST_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// The job name.
    #[arg(required_unless_present_any = ["file", "raw"])]
    pub name: Option<String>,
    /// The payload, as JSON.
    pub payload: Option<String>,
    /// Run after this delay, e.g. 10m.
    #[arg(long, conflicts_with = "at")]
    pub delay: Option<String>,
    /// Run at this time (RFC 3339).
    #[arg(long)]
    pub at: Option<String>,
    /// Higher runs first.
    #[arg(long)]
    pub priority: Option<i32>,
    /// At most one queued or running job with this key.
    #[arg(long)]
    pub unique: Option<String>,
    /// Overrides the handler's max attempts.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Enqueue every line of this NDJSON file (`{"job", "payload", ...}`), in one
    /// transaction; `-` reads standard input.
    #[arg(long, conflicts_with = "name")]
    pub file: Option<PathBuf>,
    /// Put this file's content on the queue exactly as it is, unchecked (`-` reads
    /// standard input): to replay a dead letter's raw body, or reproduce a poison
    /// message. The host routes it as it would any message: an envelope, an S3 or
    /// EventBridge event, or a dead letter.
    #[arg(long, conflicts_with_all = ["name", "file"])]
    pub raw: Option<PathBuf>,
}

/// `jobhost jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// The queue file.
        #[command(flatten)]
        db: DbArgs,
        /// Only this state (queued, running, done, dead, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this job name.
        #[arg(long)]
        name: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: state, attempts, progress, output, last error (times in RFC 3339).
    Show {
        /// The queue file.
        #[command(flatten)]
        db: DbArgs,
        /// The job id.
        id: String,
        /// One line of JSON, times in milliseconds since the Unix epoch.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued job, or stop a running one (outcome `cancelled`, not retried, its
    /// follow-up jobs dropped).
    Cancel {
        /// The queue file.
        #[command(flatten)]
        db: DbArgs,
        /// The job id.
        id: String,
    },
}

/// `jobhost dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered jobs with their reasons.
    List {
        /// The queue file.
        #[command(flatten)]
        db: DbArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put dead jobs back in the queue, attempts reset.
    Redrive {
        /// The queue file.
        #[command(flatten)]
        db: DbArgs,
        /// The job id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every dead job.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete every dead job.
    Purge {
        /// The queue file.
        #[command(flatten)]
        db: DbArgs,
    },
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
    /// The largest message body accepted, in bytes (at least 64).
    #[arg(long, env = "JOBHOST_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_parser = RangedU64ValueParser::<usize>::new().range(64..))]
    pub max_body_bytes: usize,
    /// KiB of each instance slot's memory kept resident between jobs: what a job dirtied,
    /// up to this, is zeroed in place for the next job; the rest goes back to the OS. Less
    /// holds less memory at rest, more suits handlers that touch much memory per job.
    #[arg(long, env = "JOBHOST_POOL_KEEP_RESIDENT_KIB", default_value_t = DEFAULT_KEEP_RESIDENT >> 10,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=(1 << 20)))]
    pub pool_keep_resident_kib: usize,
}

/// Jobs or records at once: at least 1.
fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

/// A duration within `[min, max]`; clap names the flag in its error.
fn duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = parse_delay(text)?;
    if value < min || value > max {
        return Err(format!(
            "{} is out of range: allowed {} to {}",
            humantime::format_duration(value),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(value)
}

fn sqs_wait(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::ZERO, Duration::from_secs(20))
}

fn sqs_max_hide(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(1), MAX_HOP)
}

fn lease(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(1), Duration::from_secs(12 * 3600))
}

impl HostArgs {
    /// The host configuration these flags describe (each flag is checked by its parser).
    pub fn config(&self) -> HostConfig {
        let mut config = HostConfig::new(&self.plugins);
        config.cache_dir = self.cache_dir.clone();
        config.strict = self.strict;
        config.engine = EngineOptions {
            pooling: !self.no_pooling,
            keep_resident_bytes: self.pool_keep_resident_kib << 10,
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
