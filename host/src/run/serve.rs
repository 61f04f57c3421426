//! `jobhost run`: a queue (the embedded one, PostgreSQL or SQS), the poller, and the
//! periodic scheduler and the optional HTTP API, in one process, with graceful
//! shutdown on SIGINT/SIGTERM (a second signal ends the run at once with
//! [`ServeError::Interrupted`]; leases then expire and the jobs run again).
//!
//! Main types: [`ServeConfig`], [`QueueConfig`], [`serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};

use crate::clock::{Clock, SystemClock};
use crate::config::{HostConfig, StartupError};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::queue::postgres::{PostgresOptions, PostgresQueue};
use crate::queue::sqlite::{Retention, SqliteQueue};
use crate::queue::sqs::{SqsOptions, SqsQueue, client_from_env, url_of_name};
use crate::queue::{Administer, Inspect, Queue, QueueError, Steer, Ticks};
use crate::run::deliver::Observers;
use crate::run::http::{Access, ApiParts};
use crate::run::live::Running;
use crate::run::poller::{RunOptions, RunSummary, Runner};
use crate::run::schedule::Scheduler;

/// Everything `jobhost run` was asked to do, validated.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The handlers and the engine.
    pub host: HostConfig,
    /// Where jobs come from.
    pub queue: QueueConfig,
    /// Jobs running at once (at least 1).
    pub concurrency: usize,
    /// Exit once nothing is due or running.
    pub drain: bool,
    /// Grace period for running jobs on shutdown.
    pub grace: Duration,
    /// Serve the HTTP API here: the whole API and the dashboard on the embedded queue, the
    /// enqueue API in front of SQS.
    pub http: Option<SocketAddr>,
    /// Serve `/metrics` on a listener of its own here.
    pub metrics: Option<SocketAddr>,
    /// The token the HTTP API's changing calls need (required for them beyond loopback).
    pub admin_token: Option<String>,
    /// The HTTP API refuses every changing call.
    pub read_only: bool,
}

/// Which queue `jobhost run` takes jobs from.
#[derive(Clone, Debug)]
pub enum QueueConfig {
    /// The embedded SQLite queue.
    Sqlite {
        /// The queue file.
        db: PathBuf,
        /// Lease length (default: the longest handler timeout plus a minute).
        lease: Option<Duration>,
        /// Retention of done jobs.
        retention: Retention,
    },
    /// An SQS queue; its `queue_url` may also be `sqs://NAME`.
    Sqs(SqsOptions),
    /// A PostgreSQL database shared by any number of hosts.
    Postgres {
        /// Where, and the schema and retention.
        options: PostgresOptions,
        /// Lease length (default: the longest handler timeout plus a minute).
        lease: Option<Duration>,
    },
}

/// Why `jobhost run` stopped other than by draining or a graceful shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The host could not start (engine, plugins folder, `--strict`).
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The queue could not be opened or reached.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The HTTP API could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(std::io::Error),
    /// A second signal: ended at once, running jobs abandoned (their leases expire and
    /// they run again).
    #[error("interrupted by a second signal; running jobs will run again")]
    Interrupted,
}

/// What an SQS queue is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqsRole {
    /// Receiving and settling: the dead-letter queue is looked up and checked.
    Consumer,
    /// Enqueuing only.
    Producer,
}

/// Opens the SQS queue `options` names (`sqs://NAME` is looked up), with the standard AWS
/// configuration (`AWS_ENDPOINT_URL` honoured).
pub async fn connect_sqs(options: SqsOptions, role: SqsRole) -> Result<SqsQueue, QueueError> {
    let client = client_from_env().await;
    let queue_url = match options.queue_url.strip_prefix("sqs://") {
        Some(name) if !name.contains('/') => url_of_name(&client, name).await?,
        _ if options.queue_url.starts_with("http://")
            || options.queue_url.starts_with("https://") =>
        {
            options.queue_url.clone()
        }
        _ => {
            return Err(QueueError(format!(
                "`{}` is not a queue: use sqs://NAME, an SQS queue URL, or sqlite",
                options.queue_url
            )));
        }
    };
    let options = SqsOptions {
        queue_url,
        ..options
    };
    let clock = Arc::new(SystemClock);
    match role {
        SqsRole::Consumer => SqsQueue::connect(client, options, clock).await,
        SqsRole::Producer => SqsQueue::producer(client, options, clock).await,
    }
}

/// Runs the host until drained or signalled.
pub fn serve(config: &ServeConfig) -> Result<RunSummary, ServeError> {
    let dispatcher = Arc::new(config.host.start()?);
    dispatcher.plugins().log_errors();
    if dispatcher.plugins().plugins().is_empty() {
        tracing::warn!(plugins = %config.host.plugins_dir.display(), "no handlers loaded; every job will be dead-lettered as unknown-job");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("jobhost-io")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = runtime.block_on(async {
        let (stop, stopped) = watch::channel(false);
        let (interrupt, interrupted) = oneshot::channel();
        tokio::spawn(watch_signals(stop.clone(), interrupt));
        let run = async {
            match &config.queue {
                QueueConfig::Sqlite { .. } => serve_sqlite(config, dispatcher, stopped).await,
                QueueConfig::Sqs(options) => {
                    serve_sqs(config, options.clone(), dispatcher, stopped).await
                }
                QueueConfig::Postgres { options, lease } => {
                    serve_postgres(config, options.clone(), *lease, dispatcher, stopped).await
                }
            }
        };
        let result = tokio::select! {
            result = run => result,
            Ok(()) = interrupted => Err(ServeError::Interrupted),
        };
        let _ = stop.send(true);
        result
    });
    // A worker still running past the grace keeps a blocking task joining it: do not wait.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve_sqs(
    config: &ServeConfig,
    options: SqsOptions,
    dispatcher: Arc<Dispatcher>,
    stopped: watch::Receiver<bool>,
) -> Result<RunSummary, ServeError> {
    let concurrency = config.concurrency;
    // Messages received ahead are hidden from other consumers: keep that few.
    let prefetch = concurrency.max(10);
    let options = SqsOptions {
        receive_loops: (concurrency + prefetch).div_ceil(10).clamp(1, 8),
        ..options
    };
    let queue = connect_sqs(options, SqsRole::Consumer).await?;
    let run = RunOptions {
        concurrency,
        prefetch,
        // Received messages are invisible to other consumers until they run: no more.
        max_prefetch: prefetch,
        lease: queue.visibility_timeout(),
        drain: config.drain,
        grace: config.grace,
    };
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        queue = %queue.url(),
        fifo = queue.is_fifo(),
        dead_letter_queue = %queue.dead_letter_queue(),
        visibility_s = run.lease.as_secs(),
        handlers = %handler_list(&dispatcher),
        refused = dispatcher.plugins().errors().len(),
        concurrency,
        http = %config.http.map_or_else(|| "off".to_string(), |addr| format!("http://{addr}")),
        metrics = %config.metrics.map_or_else(|| "off".to_string(), |addr| format!("http://{addr}/metrics")),
        "jobhost running on SQS"
    );
    let metrics = (config.metrics.is_some() || config.http.is_some())
        .then(|| Arc::new(Metrics::new(dispatcher.plugins())));
    if let (Some(addr), Some(metrics)) = (config.metrics, &metrics) {
        let router = crate::run::http::metrics_router(metrics.clone(), None);
        listen(addr, router, &stopped, "metrics").await?;
    }
    let name = queue
        .url()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let queue = Arc::new(queue);
    let scheduler = Scheduler::new(dispatcher.plugins(), queue.clone(), Arc::new(SystemClock));
    if !scheduler.is_empty() {
        if !queue.is_fifo() {
            return Err(ServeError::Queue(QueueError(format!(
                "the handlers declare [[schedule]] entries, which need a FIFO queue on SQS (its \
                 deduplication fires each tick once however many hosts run); {} is a standard \
                 queue. Use a .fifo queue, or EventBridge Scheduler (`jobhost package` writes \
                 the schedules into the templates)",
                queue.url()
            ))));
        }
        tokio::spawn(scheduler.run(stopped.clone()));
    }
    if let Some(addr) = config.http {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the HTTP API listens beyond loopback: anyone who reaches it may enqueue jobs (put it behind an authenticating proxy or API Gateway)");
        }
        let router = crate::run::http::send_router(crate::run::http::SendParts {
            queue: queue.clone(),
            clock: Arc::new(SystemClock),
            dispatcher: dispatcher.clone(),
            metrics: metrics.clone(),
            destination: name.clone(),
        });
        listen(addr, router, &stopped, "HTTP API").await?;
    }
    let runner =
        Runner::new(queue, dispatcher, Arc::new(SystemClock), run).observed_by(Observers {
            metrics,
            destination: Some(("aws_sqs", name)),
            ..Observers::default()
        });
    Ok(runner.run(stopped).await)
}

async fn serve_sqlite(
    config: &ServeConfig,
    dispatcher: Arc<Dispatcher>,
    stopped: watch::Receiver<bool>,
) -> Result<RunSummary, ServeError> {
    let QueueConfig::Sqlite {
        db,
        lease,
        retention,
    } = &config.queue
    else {
        unreachable!("called for the embedded queue only");
    };
    let queue = SqliteQueue::open_with(db, Arc::new(SystemClock), retention.clone())?;
    let _checkpoints = queue.checkpoint_in_background(db)?;
    let clock = queue.clock().clone();
    let full = Full {
        queue: Arc::new(queue),
        clock,
        lease: *lease,
        label: db.display().to_string(),
        system: "jobhost",
    };
    serve_full(config, full, dispatcher, stopped, |_| {}).await
}

async fn serve_postgres(
    config: &ServeConfig,
    options: PostgresOptions,
    lease: Option<Duration>,
    dispatcher: Arc<Dispatcher>,
    stopped: watch::Receiver<bool>,
) -> Result<RunSummary, ServeError> {
    let label = redact_url(&options.url);
    let queue = Arc::new(PostgresQueue::connect(options, Arc::new(SystemClock)).await?);
    let listener = queue.clone();
    let full = Full {
        queue,
        clock: Arc::new(SystemClock),
        lease,
        label,
        system: "postgresql",
    };
    // Idle hosts wake on every enqueue's NOTIFY.
    serve_full(config, full, dispatcher, stopped, move |wake| {
        listener.listen(wake);
    })
    .await
}

/// A URL without its password, for logs and traces.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, rest)), Some((_, host))) if rest.contains('@') => {
            let user = rest.split('@').next().unwrap_or_default();
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        _ => url.to_string(),
    }
}

/// A queue with every ability, and how to name it.
struct Full<Q> {
    queue: Arc<Q>,
    clock: Arc<dyn Clock>,
    /// Lease length (default: the longest handler timeout plus a minute).
    lease: Option<Duration>,
    /// The queue in the banner and traces: a file, or a database URL without password.
    label: String,
    /// `messaging.system` in traces.
    system: &'static str,
}

/// `jobhost run` on a queue that can do everything the embedded one does: the runner,
/// live steering, the HTTP API and dashboard, metrics, and the scheduler. `on_wake` gets
/// the runner's waker (a backend that hears of enqueues from elsewhere pokes it).
async fn serve_full<Q>(
    config: &ServeConfig,
    full: Full<Q>,
    dispatcher: Arc<Dispatcher>,
    stopped: watch::Receiver<bool>,
    on_wake: impl FnOnce(Arc<Notify>),
) -> Result<RunSummary, ServeError>
where
    Q: Queue + Inspect + Administer + Steer + Ticks,
{
    let Full {
        queue,
        clock,
        lease,
        label,
        system,
    } = full;
    let http = &config.http;
    let max_timeout = dispatcher
        .plugins()
        .plugins()
        .iter()
        .map(|p| Duration::from_millis(p.manifest.limits.timeout_ms))
        .max()
        .unwrap_or(Duration::from_secs(30));
    let defaults = RunOptions::new(config.concurrency, max_timeout);
    let run = RunOptions {
        lease: lease.unwrap_or(defaults.lease),
        drain: config.drain,
        grace: config.grace,
        ..defaults
    };
    let metrics = (http.is_some() || config.metrics.is_some())
        .then(|| Arc::new(Metrics::new(dispatcher.plugins())));
    let running = Arc::new(Running::default());
    let runner = Runner::new(
        queue.clone(),
        dispatcher.clone(),
        clock.clone(),
        run.clone(),
    )
    .observed_by(Observers {
        metrics: metrics.clone(),
        running: Some(running.clone()),
        destination: Some((system, label.clone())),
        ..Observers::default()
    });
    on_wake(runner.waker());
    tokio::spawn(crate::run::live::steer(
        queue.clone(),
        running.clone(),
        stopped.clone(),
    ));
    if let (Some(addr), Some(metrics)) = (*http, &metrics) {
        let loopback = addr.ip().is_loopback();
        if !loopback && config.admin_token.is_none() && !config.read_only {
            tracing::warn!(%addr, "the HTTP API listens beyond loopback without --admin-token: anyone who reaches it may enqueue jobs; cancel and pause are refused");
        }
        let router = crate::run::http::router(ApiParts {
            queue: queue.clone(),
            clock: clock.clone(),
            dispatcher: dispatcher.clone(),
            wake: runner.waker(),
            settled: runner.settled(),
            metrics: metrics.clone(),
            running: Some(running.clone()),
            access: Access {
                token: config.admin_token.clone(),
                read_only: config.read_only,
                loopback,
            },
            destination: label.clone(),
        });
        listen(addr, router, &stopped, "HTTP API").await?;
    }
    if let (Some(addr), Some(metrics)) = (config.metrics, &metrics) {
        let stats = crate::run::http::stats_reader(queue.clone());
        let router = crate::run::http::metrics_router(metrics.clone(), Some(stats));
        listen(addr, router, &stopped, "metrics").await?;
    }
    let scheduler = Scheduler::new(dispatcher.plugins(), queue.clone(), clock);
    if !scheduler.is_empty() {
        tokio::spawn(scheduler.run(stopped.clone()));
    }
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        queue = %label,
        http = %http.map_or_else(|| "off".to_string(), |addr| format!("http://{addr}")),
        metrics = %config.metrics.map_or_else(|| "off".to_string(), |addr| format!("http://{addr}/metrics")),
        handlers = %handler_list(&dispatcher),
        refused = dispatcher.plugins().errors().len(),
        concurrency = run.concurrency,
        lease_s = run.lease.as_secs(),
        "jobhost running"
    );
    Ok(runner.run(stopped).await)
}

/// Serves `router` on `addr` until `stopped`.
async fn listen(
    addr: SocketAddr,
    router: axum::Router,
    stopped: &watch::Receiver<bool>,
    what: &str,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    tracing::debug!(%addr, what, "listening");
    tokio::spawn(crate::run::http::serve(listener, router, stopped.clone()));
    Ok(())
}

/// The start-up banner's handler list: each handler's job names and version, e.g.
/// `echo|echo-alias@1.2.0, thumbnail@0.3.0` (a refused handler is logged on its own line,
/// with why, just before).
fn handler_list(dispatcher: &Dispatcher) -> String {
    let handlers: Vec<String> = dispatcher
        .plugins()
        .plugins()
        .iter()
        .map(|p| format!("{}@{}", p.names.join("|"), p.version))
        .collect();
    if handlers.is_empty() {
        "none".into()
    } else {
        handlers.join(", ")
    }
}

/// The first signal asks for a graceful stop; a second one fires `interrupt`.
async fn watch_signals(stop: watch::Sender<bool>, interrupt: oneshot::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupts), Ok(mut terminates)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for count in 1.. {
        tokio::select! {
            _ = interrupts.recv() => {}
            _ = terminates.recv() => {}
        }
        if count > 1 {
            tracing::warn!(
                "second signal: exiting now; leases will expire and the running jobs will run again"
            );
            let _ = interrupt.send(());
            return;
        }
        tracing::warn!(
            "shutting down: no new jobs; running jobs may finish (signal again to exit now)"
        );
        let _ = stop.send(true);
    }
}
