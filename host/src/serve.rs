//! `jobhost run`: the embedded queue, the poller, the periodic scheduler and the optional
//! HTTP API in one process, with graceful shutdown on SIGINT/SIGTERM (a second signal
//! exits at once; leases then expire and the jobs run again).
//!
//! Main types: [`ServeOptions`], [`serve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::clock::SystemClock;
use crate::config::HostConfig;
use crate::queue::sqlite::{Retention, SqliteQueue};
use crate::runner::{RunOptions, RunSummary, Runner, default_concurrency};
use crate::schedule::Scheduler;

/// Exit code after a second signal.
pub const EXIT_INTERRUPTED: i32 = 130;

/// What `jobhost run` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The queue file.
    pub db: PathBuf,
    /// Worker threads (default: [`default_concurrency`]).
    pub concurrency: Option<usize>,
    /// Exit once nothing is due or running.
    pub drain: bool,
    /// Serve the HTTP API here.
    pub http: Option<SocketAddr>,
    /// Lease length (default: the longest handler timeout plus a minute).
    pub lease: Option<Duration>,
    /// Grace period for running jobs on shutdown.
    pub grace: Duration,
    /// Retention of done jobs.
    pub retention: Retention,
}

/// What `jobhost run --queue sqs://…` was asked to do.
#[derive(Clone, Debug)]
pub struct SqsServeOptions {
    /// `sqs://NAME` or a queue URL.
    pub queue: String,
    /// The dead-letter queue URL (default: the queue's RedrivePolicy target).
    pub dlq_url: Option<String>,
    /// Long-polling wait.
    pub wait: Duration,
    /// The longest hop of a hidden message.
    pub max_hide: Duration,
    /// Worker threads (default: [`default_concurrency`]).
    pub concurrency: Option<usize>,
    /// Exit once the queue is empty and nothing runs.
    pub drain: bool,
    /// Grace period for running jobs on shutdown.
    pub grace: Duration,
}

/// Resolves `sqs://NAME` to its URL; a URL is returned as is.
pub async fn resolve_queue_url(
    client: &aws_sdk_sqs::Client,
    queue: &str,
) -> anyhow::Result<String> {
    match queue.strip_prefix("sqs://") {
        Some(name) if !name.contains('/') => {
            Ok(crate::queue::sqs::url_of_name(client, name).await?)
        }
        _ if queue.starts_with("http://") || queue.starts_with("https://") => Ok(queue.to_string()),
        _ => anyhow::bail!("`{queue}` is not a queue: use sqs://NAME, an SQS queue URL, or sqlite"),
    }
}

/// Connects to SQS (standard AWS configuration; `AWS_ENDPOINT_URL` honoured).
pub async fn connect_sqs(
    queue: &str,
    dlq_url: Option<String>,
    wait: Duration,
    max_hide: Duration,
    receive_loops: usize,
    consumer: bool,
) -> anyhow::Result<crate::queue::sqs::SqsQueue> {
    use crate::queue::sqs::{SqsOptions, SqsQueue, client_from_env};
    let client = client_from_env().await;
    let url = resolve_queue_url(&client, queue).await?;
    let mut sqs = SqsOptions::new(url);
    sqs.dlq_url = dlq_url;
    sqs.wait = wait;
    sqs.max_hide = max_hide;
    sqs.receive_loops = receive_loops;
    let clock = Arc::new(SystemClock);
    Ok(if consumer {
        SqsQueue::connect(client, sqs, clock).await?
    } else {
        SqsQueue::producer(client, sqs, clock).await?
    })
}

/// Runs the host over an SQS queue until drained or signalled.
pub fn serve_sqs(config: &HostConfig, options: SqsServeOptions) -> anyhow::Result<RunSummary> {
    let dispatcher = Arc::new(config.start()?);
    dispatcher.plugins().log_errors();
    let concurrency = options.concurrency.unwrap_or_else(default_concurrency);
    let runtime = io_runtime()?;
    let result = runtime.block_on(async move {
        // Messages received ahead are hidden from other consumers: keep that few.
        let prefetch = concurrency.max(10);
        let loops = (concurrency + prefetch).div_ceil(10).clamp(1, 8);
        let queue = connect_sqs(
            &options.queue,
            options.dlq_url.clone(),
            options.wait,
            options.max_hide,
            loops,
            true,
        )
        .await?;
        let mut run = RunOptions::new(concurrency, Duration::ZERO);
        run.prefetch = prefetch;
        run.lease = queue.visibility_timeout();
        run.drain = options.drain;
        run.grace = options.grace;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(watch_signals(stop.clone()));
        tracing::info!(
            queue = %options.queue,
            fifo = queue.is_fifo(),
            dead_letter_queue = %queue.dead_letter_queue(),
            visibility_s = run.lease.as_secs(),
            handlers = dispatcher.plugins().plugins().len(),
            concurrency,
            "jobhost running on SQS"
        );
        let runner = Runner::new(
            Arc::new(queue),
            dispatcher.clone(),
            Arc::new(SystemClock),
            run,
        );
        let summary = runner.run(stopped).await;
        let _ = stop.send(true);
        Ok(summary)
    });
    // A worker still running past the grace keeps a blocking task joining it: do not wait.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Runs the host until drained or signalled.
pub fn serve(config: &HostConfig, options: ServeOptions) -> anyhow::Result<RunSummary> {
    let dispatcher = Arc::new(config.start()?);
    dispatcher.plugins().log_errors();
    if dispatcher.plugins().plugins().is_empty() {
        tracing::warn!(plugins = %config.plugins_dir.display(), "no handlers loaded; every job will be dead-lettered as unknown-job");
    }
    let queue = SqliteQueue::open_with(
        &options.db,
        Arc::new(SystemClock),
        options.retention.clone(),
    )?;
    let max_timeout = dispatcher
        .plugins()
        .plugins()
        .iter()
        .map(|p| Duration::from_millis(p.manifest.limits.timeout_ms))
        .max()
        .unwrap_or(Duration::from_secs(30));
    let mut run = RunOptions::new(
        options.concurrency.unwrap_or_else(default_concurrency),
        max_timeout,
    );
    run.drain = options.drain;
    run.grace = options.grace;
    if let Some(lease) = options.lease {
        run.lease = lease;
    }
    let runtime = io_runtime()?;
    let result = runtime.block_on(async move {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(watch_signals(stop.clone()));
        let runner = Runner::new(Arc::new(queue.clone()), dispatcher.clone(), queue.clock().clone(), run.clone());
        if let Some(addr) = options.http {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the HTTP API has no authentication and listens beyond loopback");
            }
            let router = crate::http::router(queue.clone(), dispatcher.clone(), runner.waker(), runner.settled());
            tokio::spawn(crate::http::serve(listener, router, stopped.clone()));
            tracing::info!(%addr, "HTTP API listening");
        }
        let scheduler = Scheduler::new(dispatcher.plugins(), queue.clone());
        if !scheduler.is_empty() {
            tokio::spawn(scheduler.run(stopped.clone()));
        }
        tracing::info!(
            db = %options.db.display(),
            handlers = dispatcher.plugins().plugins().len(),
            concurrency = run.concurrency,
            lease_s = run.lease.as_secs(),
            "jobhost running"
        );
        let summary = runner.run(stopped).await;
        let _ = stop.send(true);
        Ok(summary)
    });
    // A worker still running past the grace keeps a blocking task joining it: do not wait.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// The runtime for queue I/O, signals and the HTTP API (jobs run on worker threads).
fn io_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("jobhost-io")
        .enable_all()
        .build()
}

async fn watch_signals(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    for count in 1.. {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        if count > 1 {
            tracing::warn!(
                "second signal: exiting now; leases will expire and the running jobs will run again"
            );
            std::process::exit(EXIT_INTERRUPTED);
        }
        tracing::warn!(
            "shutting down: no new jobs; running jobs may finish (signal again to exit now)"
        );
        let _ = stop.send(true);
    }
}
