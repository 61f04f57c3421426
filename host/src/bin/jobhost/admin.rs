//! The queue commands of the binary: run, enqueue, jobs, dlq, stats.

use std::io::BufRead as _;
use std::process::ExitCode;
use std::time::Instant;

use crate::cli::{DbArgs, DlqCommand, EnqueueArgs, JobsCommand, RunArgs};
use anyhow::Context as _;
use jobhost::config::HostConfig;
use jobhost::job::{JobRequest, RequestError};
use jobhost::queue::postgres::{PostgresOptions, PostgresQueue};
use jobhost::queue::sqlite::SqliteQueue;
use jobhost::queue::{
    Administer, CancelResult, Inspect, JobFilter, JobRecord, QueueError, Redrive,
};
use jobhost::queue::{Enqueued, Queue};
use jobhost::run::poller::Termination;
use jobhost::run::serve::{ServeError, SqsRole, connect_sqs, serve};

use crate::{EXIT_INTERRUPTED, EXIT_NOT_DONE, EXIT_USAGE};

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let summary = match serve(&args.config()?) {
        Ok(summary) => summary,
        Err(ServeError::Interrupted) => {
            eprintln!("error: {}", ServeError::Interrupted);
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        Err(error) => return Err(error.into()),
    };
    print_summary(&summary, started);
    Ok(ExitCode::SUCCESS)
}

fn print_summary(summary: &jobhost::run::poller::RunSummary, started: Instant) {
    let (termination, released, unfinished) = match summary.termination {
        Termination::Drained => ("drained", 0, 0),
        Termination::Shutdown {
            released,
            unfinished,
        } => ("shutdown", released, unfinished),
    };
    println!(
        "{}",
        serde_json::json!({
            "termination": termination,
            "done": summary.done,
            "retried": summary.retried,
            "dead": summary.dead,
            "cancelled": summary.cancelled,
            "released": released,
            "unfinished": unfinished,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        })
    );
}

/// A queue the `jobs`, `dlq`, `stats`, `pause` and `migrate` commands reach through its
/// [`Inspect`] and [`Administer`] abilities: the embedded file, or PostgreSQL.
pub(crate) enum Store {
    /// The embedded queue.
    Sqlite(SqliteQueue),
    /// A PostgreSQL queue.
    Postgres(PostgresQueue),
}

/// Opens the queue `db` names: a PostgreSQL URL, or the SQLite file.
pub(crate) fn open(db: &DbArgs) -> anyhow::Result<Store> {
    match db.postgres() {
        Some(url) => {
            let options = PostgresOptions {
                schema: db.pg_schema.clone(),
                pool_size: 2,
                ..PostgresOptions::new(url)
            };
            let clock = std::sync::Arc::new(jobhost::clock::SystemClock);
            Ok(Store::Postgres(block_on(PostgresQueue::connect(
                options, clock,
            ))?))
        }
        None => Ok(Store::Sqlite(SqliteQueue::open(&db.db)?)),
    }
}

/// Runs `$body` with `$q` bound to the queue `$db` names, whichever backend it is.
macro_rules! with_store {
    ($db:expr, $q:ident => $body:expr) => {
        match open($db)? {
            Store::Sqlite($q) => $body,
            Store::Postgres($q) => $body,
        }
    };
}

/// The one runtime of a command: a PostgreSQL pool's connections live on it.
fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| built))
}

/// Runs one queue call to its end.
fn block_on<T>(call: impl Future<Output = Result<T, QueueError>>) -> anyhow::Result<T> {
    Ok(runtime()?.block_on(call)?)
}

/// `jobhost migrate`: applies the PostgreSQL queue's migrations and says what it did.
pub fn migrate(db: DbArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        db.postgres().is_some(),
        "migrate is for a PostgreSQL queue: give --db postgres://USER@HOST/DB (or \
         JOBHOST_QUEUE); the embedded queue's file migrates itself when opened"
    );
    // Connecting applies them; a second look says they are all there.
    let Store::Postgres(queue) = open(&db)? else {
        unreachable!("a PostgreSQL URL opens PostgreSQL");
    };
    let more = block_on(queue.migrate())?;
    println!(
        "the queue schema `{}` is up to date (version {}){}",
        queue.schema(),
        jobhost::queue::postgres::SCHEMA_VERSION,
        if more > 0 {
            " after a late migration"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn enqueue(mut args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    // `--queue postgres://...` names the store as `--db` would.
    if let Some(url) = args.queue.postgres() {
        args.db.db = url.into();
    }
    if let Some(path) = &args.raw {
        return enqueue_raw(&args, path);
    }
    let dispatcher = match &args.plugins {
        Some(dir) => Some(HostConfig::new(dir).start()?),
        None => None,
    };
    let requests = match &args.file {
        Some(path) => read_requests(path)?,
        None => vec![single_request(&args)?],
    };
    let now = std::time::SystemTime::now();
    let mut jobs = Vec::with_capacity(requests.len());
    let mut rejected = 0;
    for (line, request) in requests.into_iter().enumerate() {
        match request.into_new_job(now, dispatcher.as_ref()) {
            Ok(job) => jobs.push(job),
            Err(error) => {
                rejected += 1;
                report_rejection(&error, args.file.is_some().then_some(line + 1));
            }
        }
    }
    if rejected > 0 {
        eprintln!("nothing enqueued: {rejected} job(s) rejected");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    // A trace to continue, as the OpenTelemetry environment-carrier convention passes it.
    let parent = std::env::var("TRACEPARENT").ok();
    if let Some(queue) = args.queue.sqs() {
        for job in &mut jobs {
            job.group = args.group.clone();
        }
        let name = queue.rsplit('/').next().unwrap_or(&queue).to_string();
        let _spans = jobhost::telemetry::sending(&mut jobs, "aws_sqs", &name, parent.as_deref());
        return enqueue_sqs(&args, &queue, jobs);
    }
    let name = args.db.db.display().to_string();
    let _spans = jobhost::telemetry::sending(&mut jobs, "jobhost", &name, parent.as_deref());
    let enqueued = with_store!(&args.db, queue => block_on(Queue::enqueue(&queue, jobs)))?;
    for enqueued in enqueued {
        match enqueued {
            Enqueued::Created(id) => println!("{id}"),
            Enqueued::Duplicate(id) => {
                eprintln!("a job with this unique key is already queued or running");
                println!("{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `enqueue --raw FILE`: the file's bytes as one message, unchecked.
fn enqueue_raw(args: &EnqueueArgs, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let body = if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut body)?;
        body
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    if let Some(queue) = args.queue.sqs() {
        let body = String::from_utf8(body).context("an SQS message body must be UTF-8 text")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let id = runtime.block_on(async {
            let options = args.queue.sqs_options(queue.to_string());
            let queue = connect_sqs(options, SqsRole::Producer).await?;
            anyhow::Ok(queue.send_raw(body, args.group.clone()).await?)
        })?;
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let enqueued = match open(&args.db)? {
        Store::Sqlite(queue) => queue.enqueue_raw(&[body])?,
        Store::Postgres(queue) => block_on(queue.enqueue_raw(&[body]))?,
    };
    for enqueued in enqueued {
        println!("{}", enqueued.id());
    }
    Ok(ExitCode::SUCCESS)
}

fn enqueue_sqs(
    args: &EnqueueArgs,
    queue: &str,
    jobs: Vec<jobhost::queue::NewJob>,
) -> anyhow::Result<ExitCode> {
    use jobhost::queue::Queue as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ids = runtime.block_on(async {
        let options = args.queue.sqs_options(queue.to_string());
        let queue = connect_sqs(options, SqsRole::Producer).await?;
        anyhow::Ok(queue.enqueue(jobs).await?)
    })?;
    for id in ids {
        println!("{}", id.id());
    }
    Ok(ExitCode::SUCCESS)
}

fn report_rejection(error: &RequestError, line: Option<usize>) {
    let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();
    match error {
        RequestError::Rejected(jobhost::dispatch::Rejection::InvalidPayload(errors)) => {
            eprintln!("error: {at}payload fails the schema:");
            for e in errors {
                eprintln!("  {e}");
            }
        }
        other => eprintln!("error: {at}{other}"),
    }
}

fn single_request(args: &EnqueueArgs) -> anyhow::Result<JobRequest> {
    let name = args.name.clone().context("a job name is required")?;
    let payload = match &args.payload {
        Some(text) => serde_json::from_str(text)
            .with_context(|| format!("the payload is not JSON: {text}"))?,
        None => serde_json::json!({}),
    };
    Ok(JobRequest {
        job: name,
        payload,
        delay: args.delay.clone(),
        at: args.at.clone(),
        priority: args.priority,
        unique: args.unique.clone(),
        max_attempts: args.max_attempts,
        ..JobRequest::default()
    })
}

fn read_requests(path: &std::path::Path) -> anyhow::Result<Vec<JobRequest>> {
    let reader: Box<dyn std::io::BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ))
    };
    let mut requests = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request = serde_json::from_str(&line).with_context(|| {
            format!("{}: line {}: not a job request", path.display(), index + 1)
        })?;
        requests.push(request);
    }
    Ok(requests)
}

pub fn jobs(command: JobsCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobsCommand::List {
            db,
            state,
            name,
            limit,
            json,
        } => {
            let filter = JobFilter {
                state,
                name,
                limit,
                ..JobFilter::default()
            };
            let records = with_store!(&db, q => block_on(Inspect::jobs(&q, filter)))?;
            print_records(&records, json);
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { db, id, json } => {
            match with_store!(&db, q => block_on(Inspect::job(&q, &id)))? {
                Some(record) if json => {
                    println!("{}", serde_json::to_string(&show_view(&record, false))?);
                    Ok(ExitCode::SUCCESS)
                }
                Some(record) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&show_view(&record, true))?
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("error: no job {id}");
                    Ok(ExitCode::from(EXIT_NOT_DONE))
                }
            }
        }
        JobsCommand::Cancel { db, id } => {
            match with_store!(&db, q => block_on(Administer::cancel(&q, &id)))? {
                CancelResult::Cancelled => {
                    println!("cancelled {id}");
                    Ok(ExitCode::SUCCESS)
                }
                CancelResult::Requested => {
                    println!(
                        "cancelling {id}: it is running; the host running it stops it within {} ms",
                        jobhost::run::live::STEER_INTERVAL.as_millis()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                CancelResult::NotFound => {
                    eprintln!("error: no job {id}");
                    Ok(ExitCode::from(EXIT_NOT_DONE))
                }
                CancelResult::NotQueued(state) => {
                    eprintln!(
                        "error: job {id} is {state} already; only queued and running jobs can be cancelled"
                    );
                    Ok(ExitCode::from(EXIT_NOT_DONE))
                }
            }
        }
    }
}

pub fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { db, limit } => {
            let filter = JobFilter {
                state: Some("dead".into()),
                limit,
                ..JobFilter::default()
            };
            print_records(
                &with_store!(&db, q => block_on(Inspect::jobs(&q, filter)))?,
                false,
            );
        }
        DlqCommand::Redrive { db, id, all } => {
            let which = match id {
                Some(id) if !all => Redrive::One(id),
                _ => Redrive::All,
            };
            let one = matches!(which, Redrive::One(_));
            let count = with_store!(&db, q => block_on(Administer::redrive(&q, which)))?;
            println!("redriven: {count}");
            if count == 0 && one {
                return Ok(ExitCode::from(EXIT_NOT_DONE));
            }
        }
        DlqCommand::Purge { db } => {
            let purged = with_store!(&db, q => block_on(Administer::purge_dead(&q)))?;
            println!("purged: {purged}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `jobhost pause NAME` (`pause` true) and `jobhost resume NAME`.
pub fn pause(db: DbArgs, name: &str, pause: bool) -> anyhow::Result<ExitCode> {
    with_store!(&db, queue => pause_in(&queue, name, pause))
}

fn pause_in<Q: Inspect + Administer>(
    queue: &Q,
    name: &str,
    pause: bool,
) -> anyhow::Result<ExitCode> {
    let changed = if pause {
        block_on(Administer::pause(queue, name))?
    } else {
        block_on(Administer::resume(queue, name))?
    };
    let queued = block_on(Inspect::stats(queue))?
        .counts
        .iter()
        .filter(|(n, state, _)| n == name && state == "queued")
        .map(|(_, _, count)| count)
        .sum::<u64>();
    match (pause, changed) {
        (true, true) => println!("paused {name} ({queued} queued jobs wait)"),
        (true, false) => println!("{name} was paused already ({queued} queued jobs wait)"),
        (false, true) => println!("resumed {name} ({queued} queued jobs)"),
        (false, false) => println!("{name} was not paused"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stats(db: DbArgs) -> anyhow::Result<ExitCode> {
    with_store!(&db, queue => stats_of(&queue))
}

fn stats_of<Q: Inspect>(queue: &Q) -> anyhow::Result<ExitCode> {
    let stats = block_on(Inspect::stats(queue))?;
    for (name, state, count) in &stats.counts {
        println!("{name:<24} {state:<10} {count}");
    }
    match stats.oldest_queued_age_ms {
        Some(ms) => println!("oldest due job waiting: {:.1}s", ms as f64 / 1000.0),
        None => println!("no job is waiting"),
    }
    if !stats.paused.is_empty() {
        println!("paused: {}", stats.paused.join(", "));
    }
    let hour_ago = jobhost::clock::to_ms(std::time::SystemTime::now()) - 3_600_000;
    let timings = block_on(Inspect::timings(queue, hour_ago))?;
    if !timings.is_empty() {
        println!("done in the last hour:");
        println!(
            "  {:<22} {:>8} {:>12} {:>12} {:>14} {:>14}",
            "job", "jobs", "run p50 ms", "run p95 ms", "fuel p50", "fuel p95"
        );
        for t in &timings {
            println!(
                "  {:<22} {:>8} {:>12.2} {:>12.2} {:>14} {:>14}",
                t.name, t.jobs, t.run_ms_p50, t.run_ms_p95, t.fuel_p50, t.fuel_p95
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A record as `jobs show` prints it: the output as JSON (not JSON text inside JSON), and
/// with `rfc3339` the times as RFC 3339 rather than milliseconds since the epoch.
fn show_view(record: &JobRecord, rfc3339: bool) -> serde_json::Value {
    let mut view = serde_json::to_value(record).unwrap_or_default();
    if let Some(output) = &record.output {
        view["output"] = serde_json::from_str(output).unwrap_or_else(|_| output.clone().into());
    }
    if rfc3339 {
        for key in [
            "run_at",
            "lease_until",
            "created_at",
            "updated_at",
            "finished_at",
            "started_at",
        ] {
            if let Some(ms) = view[key].as_i64() {
                view[key] = rfc3339_of_ms(ms).into();
            }
        }
    }
    view
}

fn rfc3339_of_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

fn print_records(records: &[JobRecord], json: bool) {
    for record in records {
        if json {
            println!("{}", serde_json::to_string(record).unwrap_or_default());
            continue;
        }
        let why = record
            .reason
            .as_deref()
            .map(|r| format!(" {r}: {}", record.last_error.as_deref().unwrap_or("")))
            .unwrap_or_default();
        println!(
            "{}  {:<16} {:<9} attempts={}{why}",
            record.id, record.name, record.state, record.attempts
        );
    }
}
