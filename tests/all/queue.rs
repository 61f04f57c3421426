//! The embedded queue on a real SQLite file: every state transition, leases, backoff on an
//! injected clock, unique keys, children committed only with their parent, periodic ticks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jobhost::clock::{Clock as _, ManualClock};
use jobhost::dispatch::Delivery;
use jobhost::job::{Outcome, Reason};
use jobhost::queue::CancelResult;
use jobhost::queue::sqlite::{Retention, SqliteQueue};
use jobhost::queue::{Delivered, Enqueued, NewJob, Settlement};
use jobhost::run::schedule::Scheduler;
use jobhost_tests::{Handlers, fixtures};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

struct Db {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
}

impl Db {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            clock: Arc::new(ManualClock::new(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            )),
        })
    }

    /// A connection with its own lease owner: a worker process, as far as the queue knows.
    fn open(&self) -> anyhow::Result<SqliteQueue> {
        Ok(SqliteQueue::open_with(
            &self.dir.path().join("q.db"),
            self.clock.clone(),
            Retention::default(),
        )?)
    }
}

fn settle(queue: &SqliteQueue, delivered: &Delivered, outcome: Outcome) -> anyhow::Result<()> {
    settle_with(
        queue,
        Settlement::new(delivered.clone(), outcome, queue.clock().now()),
    )
}

fn settle_with(queue: &SqliteQueue, settlement: Settlement) -> anyhow::Result<()> {
    Ok(queue.settle_now(&[settlement])?)
}

fn state(queue: &SqliteQueue, id: &str) -> anyhow::Result<String> {
    Ok(queue.get(id)?.map(|r| r.state).unwrap_or_default())
}

#[test]
fn every_state_transition() -> anyhow::Result<()> {
    let db = Db::new()?;
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
    let db = Db::new()?;
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
    let db = Db::new()?;
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
    let db = Db::new()?;
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
    let db = Db::new()?;
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
    let db = Db::new()?;
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
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let dispatcher = handlers.dispatcher()?;
    let db = Db::new()?;
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
    let handlers = Handlers::new()?;
    handlers.add(fixtures::NOOP, "noop")?;
    handlers.sidecar(
        "noop",
        "toml",
        "[[schedule]]\ncron = \"* * * * *\"\npayload = { from = \"cron\" }\n",
    )?;
    let dispatcher = handlers.dispatcher()?;
    let db = Db::new()?;
    // 1_800_000_000 s is 10:40:00 UTC; start half a minute later.
    db.clock.advance(Duration::from_secs(30));
    let rt = jobhost_tests::sqs::runtime()?;
    let scheduler = || -> anyhow::Result<_> {
        let queue = db.open()?;
        let clock = queue.clock().clone();
        Ok(Scheduler::new(
            dispatcher.plugins(),
            std::sync::Arc::new(queue),
            clock,
        ))
    };
    let mut first = scheduler()?;
    // Looking back one minute at start, the 10:40:00 tick is due once.
    assert_eq!(rt.block_on(first.tick())?.len(), 1);
    assert_eq!(rt.block_on(first.tick())?.len(), 0);
    db.clock.advance(Duration::from_secs(31));
    assert_eq!(rt.block_on(first.tick())?.len(), 1, "the 10:41:00 tick");
    // A restart a few seconds later looks back over both ticks and enqueues neither again.
    db.clock.advance(Duration::from_secs(5));
    let mut restarted = scheduler()?;
    assert_eq!(rt.block_on(restarted.tick())?.len(), 0);
    let queue = db.open()?;
    let jobs = queue.list(None, Some("noop"), 10)?;
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.payload == json!({"from": "cron"})));
    Ok(())
}

#[test]
fn the_runner_drains_a_real_queue_file() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    handlers.add(fixtures::TRANSIENT, "transient")?;
    handlers.sidecar("transient", "toml", "[retry]\nmax-attempts = 2\n")?;
    let dispatcher = Arc::new(handlers.dispatcher()?);
    let dir = tempfile::tempdir()?;
    let queue = SqliteQueue::open(&dir.path().join("q.db"))?;
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
    let summary = jobhost_tests::drain(&queue, dispatcher)?;
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
    let db = Db::new()?;
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
