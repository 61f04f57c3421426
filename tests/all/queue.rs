//! The queue backends with every feature, on real storage: the SQLite file and a
//! PostgreSQL server (started by `cargo xtask test`). One suite, two backends: every state
//! transition, leases and their fencing, backoff on an injected clock, unique keys,
//! children committed only with their parent, periodic ticks, the runner draining it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use jobhost::clock::{Clock, ManualClock};
use jobhost::dispatch::Delivery;
use jobhost::job::{Outcome, Reason};
use jobhost::queue::postgres::{PostgresOptions, PostgresQueue};
use jobhost::queue::sqlite::{Retention, SqliteQueue};
use jobhost::queue::{
    Administer, CancelResult, Inspect, JobFilter, JobRecord, Queue, QueueError, Redrive,
};
use jobhost::queue::{Delivered, Enqueued, NewJob, Settlement};
use jobhost::run::schedule::Scheduler;
use jobhost_tests::{Handlers, fixtures};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// Runs `test` on each backend, saying which one failed.
fn on_both(test: impl Fn(&Db) -> anyhow::Result<()>) -> anyhow::Result<()> {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let db = Db::new(kind)?;
        test(&db).map_err(|e| e.context(format!("on {kind:?}")))?;
    }
    Ok(())
}

/// One queue's storage: a file, or a schema of its own on the test server.
struct Db {
    kind: Kind,
    dir: tempfile::TempDir,
    schema: String,
    clock: Arc<ManualClock>,
    /// The PostgreSQL pools' connections live on this runtime.
    rt: Arc<tokio::runtime::Runtime>,
}

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

impl Db {
    fn new(kind: Kind) -> anyhow::Result<Self> {
        Ok(Self {
            kind,
            dir: tempfile::tempdir()?,
            schema: format!(
                "q{}_{}",
                std::process::id(),
                SCHEMAS.fetch_add(1, Ordering::SeqCst)
            ),
            clock: Arc::new(ManualClock::new(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            )),
            rt: Arc::new(jobhost_tests::sqs::threaded_runtime()?),
        })
    }

    /// A connection with its own lease owner: a worker process, as far as the queue knows.
    fn open(&self) -> anyhow::Result<Store> {
        self.open_on(self.clock.clone())
    }

    /// [`Db::open`] on another clock.
    fn open_on(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Store> {
        let queue = match self.kind {
            Kind::Sqlite => Backend::Sqlite(SqliteQueue::open_with(
                &self.dir.path().join("q.db"),
                clock.clone(),
                Retention::default(),
            )?),
            Kind::Postgres => {
                let options = PostgresOptions {
                    schema: self.schema.clone(),
                    pool_size: 4,
                    ..PostgresOptions::new(jobhost_tests::postgres_url()?)
                };
                let on = clock.clone();
                Backend::Postgres(
                    self.rt
                        .block_on(async { PostgresQueue::connect(options, on).await })?,
                )
            }
        };
        Ok(Store {
            queue,
            clock,
            rt: self.rt.clone(),
        })
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteQueue),
    Postgres(PostgresQueue),
}

/// A queue of either backend, called through the backend traits (blocking).
#[derive(Clone)]
struct Store {
    queue: Backend,
    clock: Arc<dyn Clock>,
    rt: Arc<tokio::runtime::Runtime>,
}

/// `$call` with `$q` bound to the store's queue, run to its end.
macro_rules! call {
    ($store:expr, $q:ident => $call:expr) => {{
        let store = $store;
        match &store.queue {
            Backend::Sqlite($q) => store.block(async { $call.await }),
            Backend::Postgres($q) => store.block(async { $call.await }),
        }
    }};
}

impl Store {
    fn block<T>(&self, call: impl Future<Output = Result<T, QueueError>>) -> anyhow::Result<T> {
        Ok(self.rt.block_on(call)?)
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    fn enqueue_now(&self, jobs: &[NewJob]) -> anyhow::Result<Vec<Enqueued>> {
        call!(self, q => Queue::enqueue(q, jobs.to_vec()))
    }

    fn claim(&self, max: usize, lease: Duration) -> anyhow::Result<Vec<Delivered>> {
        call!(self, q => Queue::receive(q, max, lease))
    }

    fn settle_now(&self, batch: &[Settlement]) -> anyhow::Result<()> {
        call!(self, q => Queue::settle(q, batch.to_vec()))
    }

    fn extend_now(&self, deliveries: &[Delivered], lease: Duration) -> anyhow::Result<()> {
        call!(self, q => Queue::extend(q, deliveries.to_vec(), lease))
    }

    fn idle_now(&self) -> anyhow::Result<bool> {
        call!(self, q => Queue::is_idle(q))
    }

    fn get(&self, id: &str) -> anyhow::Result<Option<JobRecord>> {
        call!(self, q => Inspect::job(q, id))
    }

    fn list(
        &self,
        state: Option<&str>,
        name: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<JobRecord>> {
        let filter = JobFilter {
            state: state.map(str::to_string),
            name: name.map(str::to_string),
            limit,
            ..JobFilter::default()
        };
        call!(self, q => Inspect::jobs(q, filter.clone()))
    }

    fn cancel(&self, id: &str) -> anyhow::Result<CancelResult> {
        call!(self, q => Administer::cancel(q, id))
    }

    fn redrive(&self, id: Option<&str>) -> anyhow::Result<u64> {
        let which = id.map_or(Redrive::All, |id| Redrive::One(id.to_string()));
        call!(self, q => Administer::redrive(q, which.clone()))
    }

    fn stats(&self) -> anyhow::Result<jobhost::queue::Stats> {
        call!(self, q => Inspect::stats(q))
    }

    fn purge_dead(&self) -> anyhow::Result<u64> {
        call!(self, q => Administer::purge_dead(q))
    }
}

fn settle(queue: &Store, delivered: &Delivered, outcome: Outcome) -> anyhow::Result<()> {
    settle_with(
        queue,
        Settlement::new(delivered.clone(), outcome, queue.clock().now()),
    )
}

fn settle_with(queue: &Store, settlement: Settlement) -> anyhow::Result<()> {
    queue.settle_now(&[settlement])
}

fn state(queue: &Store, id: &str) -> anyhow::Result<String> {
    Ok(queue.get(id)?.map(|r| r.state).unwrap_or_default())
}

#[test]
fn every_state_transition() -> anyhow::Result<()> {
    on_both(every_state_transition_on)
}

fn every_state_transition_on(db: &Db) -> anyhow::Result<()> {
    let queue = db.open()?;
    let ids: Vec<String> = queue
        .enqueue_now(&[
            NewJob::new("a", json!({"n": 1})),
            NewJob::new("b", json!({})),
            NewJob::new("c", json!({})),
        ])?
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    assert_eq!(state(&queue, &ids[0])?, "queued");
    let claimed = queue.claim(2, LEASE)?;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|d| d.attempt == 1));
    assert_eq!(state(&queue, &claimed[0].id)?, "running");
    // running -> done, with output and progress kept.
    let progress = jobhost::job::Progress {
        done: 3,
        total: 3,
        message: None,
    };
    let done = Settlement {
        progress: Some(progress),
        ..Settlement::new(
            claimed[0].clone(),
            Outcome::Done {
                output: Some("\"ok\"".into()),
            },
            queue.clock().now(),
        )
    };
    settle_with(&queue, done)?;
    let record = queue
        .get(&claimed[0].id)?
        .ok_or_else(|| anyhow::anyhow!("kept"))?;
    assert_eq!(
        (record.state.as_str(), record.output.as_deref()),
        ("done", Some("\"ok\""))
    );
    assert_eq!(
        record.progress,
        Some(json!({"done": 3, "total": 3, "message": null}))
    );
    // running -> dead, with the reason.
    let dead = Outcome::DeadLetter {
        reason: Reason::Permanent,
        message: "no such user".into(),
    };
    settle(&queue, &claimed[1], dead)?;
    let record = queue
        .get(&claimed[1].id)?
        .ok_or_else(|| anyhow::anyhow!("kept"))?;
    assert_eq!(
        (record.state.as_str(), record.reason.as_deref()),
        ("dead", Some("permanent"))
    );
    assert_eq!(record.last_error.as_deref(), Some("no such user"));
    // queued -> cancelled; a finished job cannot be cancelled.
    assert_eq!(queue.cancel(&ids[2])?, CancelResult::Cancelled);
    assert_eq!(
        queue.cancel(&claimed[0].id)?,
        CancelResult::NotQueued("done".into())
    );
    assert_eq!(queue.cancel("nope")?, CancelResult::NotFound);
    assert!(
        queue.claim(10, LEASE)?.is_empty(),
        "a cancelled job is never claimed"
    );
    // dead -> queued (redrive), attempts reset, and it runs again.
    assert_eq!(queue.redrive(Some(&claimed[1].id))?, 1);
    let again = queue.claim(10, LEASE)?;
    assert_eq!((again.len(), again[0].attempt), (1, 1));
    settle(
        &queue,
        &again[0],
        Outcome::DeadLetter {
            reason: Reason::Trap,
            message: "x".into(),
        },
    )?;
    assert_eq!(queue.purge_dead()?, 1);
    assert_eq!(queue.get(&claimed[1].id)?, None);
    assert!(queue.idle_now()?);
    Ok(())
}

#[test]
fn a_retry_waits_for_its_backoff_on_the_clock() -> anyhow::Result<()> {
    on_both(a_retry_waits_for_its_backoff_on_the_clock_on)
}

fn a_retry_waits_for_its_backoff_on_the_clock_on(db: &Db) -> anyhow::Result<()> {
    let queue = db.open()?;
    queue.enqueue_now(&[NewJob::new("a", json!({}))])?;
    let first = queue.claim(1, LEASE)?;
    settle(
        &queue,
        &first[0],
        Outcome::Retry {
            delay: Duration::from_secs(5),
            reason: Reason::Transient,
            message: "503".into(),
        },
    )?;
    let record = queue
        .get(&first[0].id)?
        .ok_or_else(|| anyhow::anyhow!("kept"))?;
    assert_eq!(
        (record.state.as_str(), record.reason.as_deref()),
        ("queued", Some("transient"))
    );
    db.clock.advance(Duration::from_millis(4_999));
    assert!(queue.claim(1, LEASE)?.is_empty(), "not before its time");
    assert!(
        queue.idle_now()?,
        "a job waiting for its backoff is not due"
    );
    db.clock.advance(Duration::from_millis(1));
    let second = queue.claim(1, LEASE)?;
    assert_eq!((second.len(), second[0].attempt), (1, 2));
    Ok(())
}

#[test]
fn priority_then_run_at_order() -> anyhow::Result<()> {
    on_both(priority_then_run_at_order_on)
}

fn priority_then_run_at_order_on(db: &Db) -> anyhow::Result<()> {
    let queue = db.open()?;
    let mut jobs = Vec::new();
    for (name, priority, delay_s) in [
        ("low", -1, 0),
        ("first", 0, 0),
        ("high", 5, 0),
        ("later", 9, 60),
        ("second", 0, 0),
    ] {
        let mut job = NewJob::new(name, json!({}));
        job.priority = priority;
        job.run_at = Some(db.clock.now() + Duration::from_secs(delay_s));
        jobs.push(job);
    }
    queue.enqueue_now(&jobs)?;
    let mut order = Vec::new();
    while let Some(delivered) = queue.claim(1, LEASE)?.pop() {
        order.push(
            queue
                .get(&delivered.id)?
                .map(|r| r.name)
                .unwrap_or_default(),
        );
    }
    // The high-priority job that is not due yet waits; the rest go by priority, then age.
    assert_eq!(order, ["high", "first", "second", "low"]);
    Ok(())
}

#[test]
fn an_expired_lease_is_claimed_again_and_the_old_result_is_dropped() -> anyhow::Result<()> {
    on_both(an_expired_lease_is_claimed_again_and_the_old_result_is_dropped_on)
}

fn an_expired_lease_is_claimed_again_and_the_old_result_is_dropped_on(
    db: &Db,
) -> anyhow::Result<()> {
    let died = db.open()?;
    let alive = db.open()?;
    died.enqueue_now(&[NewJob::new("a", json!({}))])?;
    let lost = died.claim(1, Duration::from_secs(10))?;
    assert!(
        alive.claim(1, LEASE)?.is_empty(),
        "leased to the other worker"
    );
    db.clock.advance(Duration::from_secs(11));
    let taken = alive.claim(1, LEASE)?;
    assert_eq!((taken.len(), taken[0].attempt), (1, 2));
    // The first worker comes back late: its result must not overwrite the new lease.
    let stale = Settlement {
        children: vec![NewJob::new("child", json!({}))],
        ..Settlement::new(
            lost[0].clone(),
            Outcome::Done {
                output: Some("\"stale\"".into()),
            },
            died.clock().now(),
        )
    };
    settle_with(&died, stale)?;
    assert_eq!(state(&alive, &taken[0].id)?, "running");
    assert!(
        alive.list(None, Some("child"), 10)?.is_empty(),
        "no children from a lost lease"
    );
    settle(
        &alive,
        &taken[0],
        Outcome::Done {
            output: Some("\"fresh\"".into()),
        },
    )?;
    assert_eq!(
        alive.get(&taken[0].id)?.and_then(|r| r.output).as_deref(),
        Some("\"fresh\"")
    );
    Ok(())
}

#[test]
fn an_extended_lease_is_not_taken() -> anyhow::Result<()> {
    on_both(an_extended_lease_is_not_taken_on)
}

fn an_extended_lease_is_not_taken_on(db: &Db) -> anyhow::Result<()> {
    let worker = db.open()?;
    let other = db.open()?;
    worker.enqueue_now(&[NewJob::new("a", json!({}))])?;
    let running = worker.claim(1, Duration::from_secs(10))?;
    db.clock.advance(Duration::from_secs(8));
    worker.extend_now(&running, Duration::from_secs(10))?;
    db.clock.advance(Duration::from_secs(8));
    assert!(
        other.claim(1, LEASE)?.is_empty(),
        "16 s in, the extended lease still holds"
    );
    db.clock.advance(Duration::from_secs(3));
    assert_eq!(
        other.claim(1, LEASE)?.len(),
        1,
        "once it lapses, another worker takes it"
    );
    Ok(())
}

#[test]
fn unique_keys_return_the_existing_job() -> anyhow::Result<()> {
    on_both(unique_keys_return_the_existing_job_on)
}

fn unique_keys_return_the_existing_job_on(db: &Db) -> anyhow::Result<()> {
    let queue = db.open()?;
    let mut job = NewJob::new("a", json!({}));
    job.unique_key = Some("invoice-7".into());
    let first = queue.enqueue_now(std::slice::from_ref(&job))?.remove(0);
    let Enqueued::Created(id) = first else {
        anyhow::bail!("first is new")
    };
    assert_eq!(
        queue.enqueue_now(std::slice::from_ref(&job))?,
        [Enqueued::Duplicate(id.clone())]
    );
    let claimed = queue.claim(1, LEASE)?;
    assert_eq!(
        queue.enqueue_now(std::slice::from_ref(&job))?,
        [Enqueued::Duplicate(id.clone())],
        "running counts too"
    );
    settle(&queue, &claimed[0], Outcome::Done { output: None })?;
    let after = queue.enqueue_now(std::slice::from_ref(&job))?.remove(0);
    assert!(
        matches!(after, Enqueued::Created(ref new) if *new != id),
        "{after:?}"
    );
    Ok(())
}

#[test]
fn children_are_committed_only_with_the_parents_success() -> anyhow::Result<()> {
    on_both(children_are_committed_only_with_the_parents_success_on)
}

fn children_are_committed_only_with_the_parents_success_on(db: &Db) -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let dispatcher = handlers.dispatcher()?;
    let queue = db.open()?;
    queue.enqueue_now(&[NewJob::new(
        "echo",
        json!({"message": "p", "children": 3, "fail": true}),
    )])?;
    let delivered = queue.claim(1, LEASE)?.remove(0);
    let run = |d: &Delivered| {
        let jobhost::queue::Message::Envelope(envelope) = &d.message else {
            unreachable!("sqlite stores envelopes")
        };
        let delivery = Delivery {
            attempt: Some(d.attempt),
            ..Delivery::default()
        };
        Settlement::of_report(
            d.clone(),
            dispatcher.dispatch_envelope(envelope.clone(), &delivery),
            db.clock.now(),
        )
    };
    let failed = run(&delivered);
    assert!(
        matches!(failed.outcome, Outcome::Retry { .. }),
        "{failed:?}"
    );
    settle_with(&queue, failed)?;
    assert!(
        queue.list(Some("queued"), None, 10)?.len() == 1,
        "the failed parent left no children"
    );

    let ok = db.open()?;
    ok.enqueue_now(&[NewJob::new("echo", json!({"message": "p", "children": 3}))])?;
    let parent = ok.claim(10, LEASE)?.into_iter().find(|d| matches!(&d.message, jobhost::queue::Message::Envelope(e) if e.payload["fail"].is_null())).ok_or_else(|| anyhow::anyhow!("claimed"))?;
    let done = run(&parent);
    settle_with(&ok, done)?;
    let children = ok.list(Some("queued"), Some("echo"), 10)?;
    let mine: Vec<_> = children
        .iter()
        .filter(|c| c.parent_id.as_deref() == Some(parent.id.as_str()))
        .collect();
    assert_eq!(mine.len(), 3);
    assert_eq!(
        mine.iter()
            .filter(|c| c.payload["message"] == "child 2")
            .count(),
        1
    );
    Ok(())
}

#[test]
fn periodic_ticks_are_not_doubled_across_a_restart() -> anyhow::Result<()> {
    on_both(periodic_ticks_are_not_doubled_across_a_restart_on)
}

/// A scheduler over the store's queue, on its clock: its `tick` as a closure.
fn scheduler(
    store: Store,
    plugins: &jobhost::plugin::PluginSet,
) -> Box<dyn FnMut() -> anyhow::Result<usize>> {
    let clock = store.clock();
    let rt = store.rt.clone();
    match store.queue {
        Backend::Sqlite(q) => {
            let mut scheduler = Scheduler::new(plugins, Arc::new(q), clock);
            Box::new(move || Ok(rt.block_on(scheduler.tick())?.len()))
        }
        Backend::Postgres(q) => {
            let mut scheduler = Scheduler::new(plugins, Arc::new(q), clock);
            Box::new(move || Ok(rt.block_on(scheduler.tick())?.len()))
        }
    }
}

fn periodic_ticks_are_not_doubled_across_a_restart_on(db: &Db) -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::NOOP, "noop")?;
    handlers.sidecar(
        "noop",
        "toml",
        "[[schedule]]\ncron = \"* * * * *\"\npayload = { from = \"cron\" }\n",
    )?;
    let dispatcher = handlers.dispatcher()?;
    // 1_800_000_000 s is 10:40:00 UTC; start half a minute later.
    db.clock.advance(Duration::from_secs(30));
    let mut first = scheduler(db.open()?, dispatcher.plugins());
    // Looking back one minute at start, the 10:40:00 tick is due once.
    assert_eq!(first()?, 1);
    assert_eq!(first()?, 0);
    db.clock.advance(Duration::from_secs(31));
    assert_eq!(first()?, 1, "the 10:41:00 tick");
    // A restart (and a second host) a few seconds later looks back over both ticks and
    // enqueues neither again.
    db.clock.advance(Duration::from_secs(5));
    let mut restarted = scheduler(db.open()?, dispatcher.plugins());
    let mut other_host = scheduler(db.open()?, dispatcher.plugins());
    assert_eq!(restarted()?, 0);
    assert_eq!(other_host()?, 0);
    let queue = db.open()?;
    let jobs = queue.list(None, Some("noop"), 10)?;
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.payload == json!({"from": "cron"})));
    Ok(())
}

#[test]
fn the_runner_drains_a_real_queue_file() -> anyhow::Result<()> {
    on_both(the_runner_drains_a_real_queue_on)
}

fn the_runner_drains_a_real_queue_on(db: &Db) -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    handlers.add(fixtures::TRANSIENT, "transient")?;
    handlers.sidecar("transient", "toml", "[retry]\nmax-attempts = 2\n")?;
    let dispatcher = Arc::new(handlers.dispatcher()?);
    // The runner's settlements are on the system clock: so is this queue.
    let queue = db.open_on(Arc::new(jobhost::clock::SystemClock))?;
    let mut jobs: Vec<NewJob> = (0..500)
        .map(|i| NewJob::new("echo", json!({"message": format!("m{i}")})))
        .collect();
    jobs.push(NewJob::new("permanent", json!({})));
    jobs.push(NewJob::new("echo", json!({"message": 3})));
    jobs.push(NewJob::new("nobody", json!({})));
    // Fails once with a 1.5 s hint, then succeeds on attempt 2 (capped to 0 ms here).
    let mut flaky = NewJob::new("transient", json!({"succeed_on": 2}));
    flaky.max_attempts = Some(2);
    jobs.push(flaky);
    queue.enqueue_now(&jobs)?;
    let summary = match &queue.queue {
        Backend::Sqlite(q) => jobhost_tests::drain_queue(Arc::new(q.clone()), dispatcher)?,
        Backend::Postgres(q) => jobhost_tests::drain_queue(Arc::new(q.clone()), dispatcher)?,
    };
    assert_eq!(
        summary.termination,
        jobhost::run::poller::Termination::Drained
    );
    assert_eq!(summary.dead, 3);
    let dead = queue.list(Some("dead"), None, 10)?;
    let mut reasons: Vec<String> = dead.iter().filter_map(|r| r.reason.clone()).collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid-payload", "permanent", "unknown-job"]);
    assert_eq!(queue.list(Some("done"), Some("echo"), 1000)?.len(), 500);
    // The flaky job waits for its retry: not due yet, so the drain left it queued.
    let waiting = queue.list(Some("queued"), Some("transient"), 10)?;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].attempts, 1);
    assert!(
        waiting[0].run_at > queue.clock().now_ms() + 1_000,
        "backoff honours the hint"
    );
    Ok(())
}

/// The first schema this project shipped (version 1), as a user's queue file has it.
const SCHEMA_V1: &str = "
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, payload TEXT NOT NULL,
    body TEXT, state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, run_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER, lease_owner TEXT, lease_until INTEGER,
    unique_key TEXT, last_error TEXT, reason TEXT, output TEXT, progress TEXT, parent_id TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, finished_at INTEGER
);
CREATE INDEX jobs_due ON jobs (priority DESC, run_at, seq) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_done ON jobs (finished_at) WHERE state = 'done';
CREATE INDEX jobs_state_name ON jobs (state, name);
CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
CREATE TABLE schedule_ticks (key TEXT PRIMARY KEY, job_id TEXT NOT NULL, created_at INTEGER NOT NULL);
INSERT INTO jobs (id, name, payload, state, run_at, created_at, updated_at)
    VALUES ('old-job', 'echo', '{\"message\": \"from v1\"}', 'queued', 0, 0, 0);
PRAGMA user_version = 1;
";

#[test]
fn a_version_1_queue_file_is_migrated_and_its_jobs_run() -> anyhow::Result<()> {
    let db = Db::new(Kind::Sqlite)?;
    let path = db.dir.path().join("q.db");
    rusqlite::Connection::open(&path)?.execute_batch(SCHEMA_V1)?;
    let queue = db.open()?;
    let claimed = queue.claim(10, LEASE)?;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "old-job");
    let mut done = Settlement::new(
        claimed[0].clone(),
        Outcome::Done { output: None },
        queue.clock().now(),
    );
    done.cost.fuel = 1234;
    done.cost.run = Duration::from_millis(7);
    settle_with(&queue, done)?;
    let record = queue.get("old-job")?.expect("kept");
    assert_eq!(record.state, "done");
    assert_eq!(record.cost.map(|c| (c.fuel, c.run_ms)), Some((1234, 7.0)));
    assert!(queue.stats()?.paused.is_empty());
    let version: i64 =
        rusqlite::Connection::open(&path)?
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
    assert_eq!(version, jobhost::queue::sqlite::SCHEMA_VERSION);
    Ok(())
}
