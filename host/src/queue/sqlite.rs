//! The embedded durable queue: one SQLite file in WAL mode (`synchronous=NORMAL`: a commit
//! survives a process crash; the last commits before a power loss may not). One writer at a
//! time; claims, acknowledgements and enqueues are batched into single transactions.
//!
//! Jobs move `queued → running → done | dead`, back to `queued` on retry or when a lease
//! expires (the worker died), and `queued → cancelled` on request. Main type: [`SqliteQueue`].

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use serde_json::Value;

use super::{
    Administer, CancelResult, CostRecord, Delivered, Enqueued, Inspect, JobFilter, JobRecord,
    Message, NewJob, Queue, QueueError, Redrive, ReleaseUncounted, Settlement, Stats, Steer, Ticks,
    Timing,
};
use crate::clock::{Clock, SystemClock, from_ms, to_ms};
use crate::job::{Envelope, Outcome, Progress};

/// The schema version this build writes; older files are migrated, newer ones refused.
pub const SCHEMA_VERSION: i64 = 2;
/// How often expired leases are looked for, at most.
const RECLAIM_EVERY_MS: i64 = 500;
/// How often done jobs are pruned, at most.
const PRUNE_EVERY_MS: i64 = 5_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    body         TEXT,
    state        TEXT NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    run_at       INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    lease_owner  TEXT,
    lease_until  INTEGER,
    unique_key   TEXT,
    last_error   TEXT,
    reason       TEXT,
    output       TEXT,
    progress     TEXT,
    parent_id    TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    started_at   INTEGER,
    fuel         INTEGER,
    run_us       INTEGER,
    wait_ms      INTEGER,
    peak_memory  INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    traceparent  TEXT,
    logs         TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (priority DESC, run_at, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (finished_at) WHERE state = 'done';
CREATE INDEX IF NOT EXISTS jobs_state_name ON jobs (state, name);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS paused (
    name       TEXT PRIMARY KEY,
    since      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_ticks (
    key        TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// How many done jobs are kept, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The most done jobs kept (the newest win).
    pub max_done: u64,
    /// Done jobs older than this are deleted.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_done: 100_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How often [`SqliteQueue::checkpoint_in_background`] checkpoints.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Stops the background checkpoints when dropped.
pub struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The embedded queue.
#[derive(Clone, Debug)]
pub struct SqliteQueue {
    conn: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
    owner: String,
    retention: Retention,
    last_reclaim_ms: Arc<AtomicI64>,
    last_prune_ms: Arc<AtomicI64>,
}

impl SqliteQueue {
    /// Opens (creating or migrating) the queue file at `path`, on the system clock.
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        Self::open_with(path, Arc::new(SystemClock), Retention::default())
    }

    /// Opens the queue with a given clock and retention.
    pub fn open_with(
        path: &Path,
        clock: Arc<dyn Clock>,
        retention: Retention,
    ) -> Result<Self, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| QueueError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = open_checked(path).map_err(|e| {
            QueueError(format!("cannot use the queue file {}: {e}", path.display()))
        })?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            clock,
            owner: format!("{}:{}", std::process::id(), uuid::Uuid::now_v7()),
            retention,
            last_reclaim_ms: Arc::new(AtomicI64::new(0)),
            last_prune_ms: Arc::new(AtomicI64::new(0)),
        })
    }

    /// Moves WAL checkpoints off the writers: SQLite otherwise runs one inside the commit
    /// that fills 1,000 pages of WAL, and with it an fsync of the database file, so every
    /// 80th job or so waited milliseconds for it. A thread of its own checkpoints every
    /// [`CHECKPOINT_EVERY`], without blocking readers or writers (`PASSIVE`), so the WAL
    /// rarely reaches that size, until the returned guard is dropped. The commits' own
    /// checkpoint stays as a bound on the WAL (a WAL left to grow took the space a full
    /// disk needed to recover; the full-disk test showed it). Durability is unchanged: a
    /// commit is in the WAL when it returns, and the WAL is synced before each checkpoint.
    pub fn checkpoint_in_background(&self, path: &Path) -> Result<Checkpointer, QueueError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("jobhost-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    let checkpoint =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(error) = checkpoint {
                        tracing::debug!(%error, "WAL checkpoint failed; trying again");
                    }
                }
            })
            .map_err(|e| QueueError(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The lease owner this instance writes.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues jobs in one transaction.
    pub fn enqueue_now(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, QueueError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = self.clock.now_ms();
        let results = jobs
            .iter()
            .map(|job| insert_job(&tx, job, now))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(results)
    }

    /// Enqueues raw message bodies, as a queue would deliver them: each is parsed (and
    /// dead-lettered if it is not a valid envelope) only when it runs. The body is stored
    /// as bytes, so even invalid UTF-8 is kept as it came.
    pub fn enqueue_raw(&self, bodies: &[Vec<u8>]) -> Result<Vec<Enqueued>, QueueError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = self.clock.now_ms();
        let mut ids = Vec::with_capacity(bodies.len());
        {
            let mut statement = tx.prepare_cached(
                "INSERT INTO jobs (id, name, payload, body, state, priority, run_at, created_at, updated_at)
                 VALUES (?1, ?2, 'null', ?3, 'queued', 0, ?4, ?4, ?4)",
            )?;
            for body in bodies {
                let id = uuid::Uuid::now_v7().to_string();
                statement.execute(params![id, name_hint(body), body, now])?;
                ids.push(Enqueued::Created(id));
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Enqueues a job once per `tick_key`, across restarts: the key is recorded in the
    /// same transaction. Returns `None` when the tick was already enqueued.
    pub fn enqueue_tick(
        &self,
        tick_key: &str,
        job: &NewJob,
    ) -> Result<Option<Enqueued>, QueueError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = self.clock.now_ms();
        let seen: Option<String> = tx
            .query_row(
                "SELECT job_id FROM schedule_ticks WHERE key = ?1",
                [tick_key],
                |r| r.get(0),
            )
            .optional()?;
        if seen.is_some() {
            return Ok(None);
        }
        let enqueued = insert_job(&tx, job, now)?;
        tx.execute(
            "INSERT INTO schedule_ticks (key, job_id, created_at) VALUES (?1, ?2, ?3)",
            params![tick_key, enqueued.id(), now],
        )?;
        tx.commit()?;
        Ok(Some(enqueued))
    }

    /// Claims up to `max` due jobs for `lease`, first returning expired leases to the queue.
    pub fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        let now = self.clock.now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if now - self.last_reclaim_ms.load(Ordering::Relaxed) >= RECLAIM_EVERY_MS {
            reclaim_expired(&tx, now)?;
            self.last_reclaim_ms.store(now, Ordering::Relaxed);
        }
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let mut statement = tx.prepare_cached(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?1,
                 lease_until = ?2, updated_at = ?3, started_at = ?3
             WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_due WHERE state = 'queued' AND run_at <= ?3
                               AND name NOT IN (SELECT name FROM paused)
                           ORDER BY priority DESC, run_at, seq LIMIT ?4)
             RETURNING id, name, payload, attempts, max_attempts, created_at, body, run_at, traceparent",
        )?;
        let rows = statement.query_map(params![self.owner, until, now, max as i64], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<Vec<u8>>>(6)?,
                row.get::<_, i64>(7)?,
                row.get::<_, Option<String>>(8)?,
            ))
        })?;
        let mut delivered = Vec::new();
        for row in rows {
            let (id, name, payload, attempts, max_attempts, created_at, body, run_at, trace_parent) =
                row?;
            let mut one =
                to_delivered(id, name, &payload, attempts, max_attempts, created_at, body);
            one.due = Some(from_ms(run_at));
            one.trace_parent = trace_parent;
            delivered.push(one);
        }
        drop(statement);
        tx.commit()?;
        Ok(delivered)
    }

    /// Applies actions in one transaction. Children are inserted only with their parent's
    /// completion, so a failed or retried parent leaves none behind.
    pub fn settle_now(&self, batch: &[Settlement]) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for settlement in batch {
            settle_one(&tx, settlement, &self.owner, now)?;
        }
        tx.commit()?;
        drop(conn);
        if now - self.last_prune_ms.load(Ordering::Relaxed) >= PRUNE_EVERY_MS {
            self.last_prune_ms.store(now, Ordering::Relaxed);
            self.prune()?;
        }
        Ok(())
    }

    /// Returns unstarted deliveries to the queue, their attempt uncounted.
    pub fn release_now(&self, deliveries: &[Delivered]) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut statement = tx.prepare_cached(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), lease_owner = NULL,
                     lease_until = NULL, updated_at = ?1
                 WHERE id = ?2 AND state = 'running' AND lease_owner = ?3",
            )?;
            for delivery in deliveries {
                statement.execute(params![now, delivery.id, self.owner])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Extends the leases this worker holds on `deliveries` to `lease` from now.
    pub fn extend_now(&self, deliveries: &[Delivered], lease: Duration) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut statement = tx.prepare_cached(
                "UPDATE jobs SET lease_until = ?1, updated_at = ?2 WHERE id = ?3 AND state = 'running' AND lease_owner = ?4",
            )?;
            for delivery in deliveries {
                statement.execute(params![until, now, delivery.id, self.owner])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether nothing is due and nothing is running.
    pub fn idle_now(&self) -> Result<bool, QueueError> {
        let now = self.clock.now_ms();
        let conn = self.lock();
        let busy: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'running')
                 OR EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND run_at <= ?1
                                AND name NOT IN (SELECT name FROM paused))",
            [now],
            |r| r.get(0),
        )?;
        Ok(!busy)
    }

    /// Deletes done jobs beyond the retention count or age.
    pub fn prune(&self) -> Result<u64, QueueError> {
        let cutoff = self.clock.now_ms()
            - i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let conn = self.lock();
        let by_age = conn.execute(
            "DELETE FROM jobs WHERE state = 'done' AND finished_at < ?1",
            [cutoff],
        )?;
        let by_count = conn.execute(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state = 'done'
                 ORDER BY finished_at DESC LIMIT -1 OFFSET ?1)",
            [i64::try_from(self.retention.max_done).unwrap_or(i64::MAX)],
        )?;
        Ok((by_age + by_count) as u64)
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let conn = self.lock();
        let mut statement =
            conn.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1"))?;
        Ok(statement.query_row([id], to_record).optional()?)
    }

    /// Jobs, newest first, optionally filtered by state and name.
    pub fn list(
        &self,
        state: Option<&str>,
        name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, QueueError> {
        self.list_filtered(&JobFilter {
            state: state.map(str::to_string),
            name: name.map(str::to_string),
            limit,
            ..JobFilter::default()
        })
    }

    /// Jobs, newest first, as `filter` says.
    pub fn list_filtered(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, QueueError> {
        let conn = self.lock();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR name = ?2)
                 AND (?5 IS NULL OR parent_id = ?5)
             ORDER BY seq DESC LIMIT ?3 OFFSET ?4"
        ))?;
        let rows = statement.query_map(
            params![
                filter.state,
                filter.name,
                filter.limit as i64,
                filter.offset as i64,
                filter.parent
            ],
            to_record,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Jobs done and dead per minute since `since_ms`.
    pub fn finished_per_minute_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, QueueError> {
        let conn = self.lock();
        let mut statement = conn.prepare_cached(
            "SELECT finished_at / 60000, 'done', COUNT(*) FROM jobs INDEXED BY jobs_done
                 WHERE state = 'done' AND finished_at >= ?1 GROUP BY 1
             UNION ALL
             SELECT finished_at / 60000, 'dead', COUNT(*) FROM jobs
                 WHERE state = 'dead' AND finished_at >= ?1 GROUP BY 1",
        )?;
        let rows = statement.query_map([since_ms], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.unsigned_abs()))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes one dead job.
    pub fn delete_dead(&self, id: &str) -> Result<bool, QueueError> {
        let conn = self.lock();
        Ok(conn.execute("DELETE FROM jobs WHERE id = ?1 AND state = 'dead'", [id])? == 1)
    }

    /// Cancels a queued job; for a running one, asks the host running it to stop it.
    pub fn cancel(&self, id: &str) -> Result<CancelResult, QueueError> {
        let now = self.clock.now_ms();
        let conn = self.lock();
        let changed = conn.execute(
            "UPDATE jobs SET state = 'cancelled', updated_at = ?1, finished_at = ?1 WHERE id = ?2 AND state = 'queued'",
            params![now, id],
        )?;
        if changed == 1 {
            return Ok(CancelResult::Cancelled);
        }
        let asked = conn.execute(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ?1 WHERE id = ?2 AND state = 'running'",
            params![now, id],
        )?;
        if asked == 1 {
            return Ok(CancelResult::Requested);
        }
        let state: Option<String> = conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(state.map_or(CancelResult::NotFound, CancelResult::NotQueued))
    }

    /// Pauses a job name: its queued jobs are not claimed until it is resumed. False if it
    /// was paused already.
    pub fn pause(&self, name: &str) -> Result<bool, QueueError> {
        let now = self.clock.now_ms();
        let conn = self.lock();
        let added = conn.execute(
            "INSERT INTO paused (name, since) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![name, now],
        )?;
        Ok(added == 1)
    }

    /// Resumes a paused job name. False if it was not paused.
    pub fn resume(&self, name: &str) -> Result<bool, QueueError> {
        let conn = self.lock();
        Ok(conn.execute("DELETE FROM paused WHERE name = ?1", [name])? == 1)
    }

    /// Records running jobs' latest progress (only while this worker holds them).
    pub fn write_progress_now(&self, updates: &[(String, Progress)]) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut statement = tx.prepare_cached(
                "UPDATE jobs SET progress = ?1, updated_at = ?2
                 WHERE id = ?3 AND state = 'running' AND lease_owner = ?4",
            )?;
            for (id, progress) in updates {
                let text = serde_json::to_string(progress).unwrap_or_default();
                statement.execute(params![text, now, id, self.owner])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The jobs this worker holds whose cancellation was asked for.
    pub fn cancel_requests_now(&self) -> Result<Vec<String>, QueueError> {
        let conn = self.lock();
        let mut statement = conn.prepare_cached(
            "SELECT id FROM jobs INDEXED BY jobs_leased
             WHERE state = 'running' AND lease_owner = ?1 AND cancel_requested = 1",
        )?;
        let ids = statement
            .query_map([&self.owner], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Puts dead jobs back in the queue with their attempts reset: one (`Some(id)`) or all.
    pub fn redrive(&self, id: Option<&str>) -> Result<u64, QueueError> {
        let now = self.clock.now_ms();
        let conn = self.lock();
        let changed = conn.execute(
            "UPDATE jobs SET state = 'queued', run_at = ?1, attempts = 0, updated_at = ?1, finished_at = NULL,
                 lease_owner = NULL, lease_until = NULL
             WHERE state = 'dead' AND (?2 IS NULL OR id = ?2)",
            params![now, id],
        )?;
        Ok(changed as u64)
    }

    /// Deletes every dead job.
    pub fn purge_dead(&self) -> Result<u64, QueueError> {
        let conn = self.lock();
        Ok(conn.execute("DELETE FROM jobs WHERE state = 'dead'", [])? as u64)
    }

    /// Counts by name and state, and the age of the oldest due job.
    pub fn stats(&self) -> Result<Stats, QueueError> {
        let now = self.clock.now_ms();
        let conn = self.lock();
        let mut statement = conn.prepare(
            "SELECT name, state, COUNT(*) FROM jobs GROUP BY name, state ORDER BY name, state",
        )?;
        let counts = statement
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.unsigned_abs()))
            })?
            .collect::<Result<_, _>>()?;
        let oldest: Option<i64> = conn.query_row(
            "SELECT MIN(run_at) FROM jobs WHERE state = 'queued' AND run_at <= ?1",
            [now],
            |r| r.get(0),
        )?;
        let paused = conn
            .prepare_cached("SELECT name FROM paused ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Stats {
            counts,
            oldest_queued_age_ms: oldest.map(|t| now - t),
            paused,
        })
    }
}

impl SqliteQueue {
    /// Per job name, the run time and fuel percentiles of the jobs done since `since_ms`.
    pub fn timings_since(&self, since_ms: i64) -> Result<Vec<Timing>, QueueError> {
        let conn = self.lock();
        let mut statement = conn.prepare_cached(
            "SELECT name, run_us, fuel FROM jobs INDEXED BY jobs_done
             WHERE state = 'done' AND finished_at >= ?1 AND run_us IS NOT NULL",
        )?;
        let mut by_name: std::collections::BTreeMap<String, Vec<(i64, i64)>> =
            std::collections::BTreeMap::new();
        let rows = statement.query_map([since_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        for row in rows {
            let (name, run_us, fuel) = row?;
            by_name
                .entry(name)
                .or_default()
                .push((run_us, fuel.unwrap_or(0)));
        }
        Ok(by_name
            .into_iter()
            .filter_map(|(name, samples)| Timing::of(name, samples))
            .collect())
    }
}

/// Opens the file and checks it before anything is written to it: a file that is not a
/// queue (truncated, corrupt, another program's, of a newer schema) or that cannot be
/// written is refused with the reason, and left as it was.
fn open_checked(path: &Path) -> Result<Connection, QueueError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // Reads the header and every page's structure (no writes): catches a truncated or
    // corrupt file now, rather than at the first claim that reaches the damage.
    let check: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| QueueError(format!("it is not a readable SQLite database ({e})")))?;
    if check != "ok" {
        return Err(QueueError(format!("it is damaged: {check}")));
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(QueueError(format!(
            "it has schema version {version}, newer than this jobhost's ({SCHEMA_VERSION}); \
             upgrade jobhost"
        )));
    }
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if version == 0 && tables > 0 {
        return Err(QueueError(
            "it is an SQLite database, but not a jobhost queue (no schema version)".into(),
        ));
    }
    if conn.is_readonly(rusqlite::MAIN_DB)? {
        return Err(QueueError(
            "it is read-only (the file, or the filesystem it is on)".into(),
        ));
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    migrate(&conn)?;
    Ok(conn)
}

/// The columns version 2 added to `jobs` (what each run cost, cancellation, trace context,
/// the latest attempt's log).
const V2_COLUMNS: &str = "
ALTER TABLE jobs ADD COLUMN started_at INTEGER;
ALTER TABLE jobs ADD COLUMN fuel INTEGER;
ALTER TABLE jobs ADD COLUMN run_us INTEGER;
ALTER TABLE jobs ADD COLUMN wait_ms INTEGER;
ALTER TABLE jobs ADD COLUMN peak_memory INTEGER;
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
ALTER TABLE jobs ADD COLUMN logs TEXT;
";

fn migrate(conn: &Connection) -> Result<(), QueueError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        // Nothing to write, so a host starts on a full disk.
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    if version == 1 {
        tx.execute_batch(V2_COLUMNS)?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn insert_job(tx: &Transaction<'_>, job: &NewJob, now: i64) -> Result<Enqueued, QueueError> {
    if let Some(key) = &job.unique_key {
        let existing: Option<String> = tx
            .prepare_cached(
                "SELECT id FROM jobs WHERE unique_key = ?1 AND state IN ('queued', 'running')",
            )?
            .query_row([key], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(Enqueued::Duplicate(id));
        }
    }
    let id = job
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let run_at = job.run_at.map_or(now, to_ms);
    tx.prepare_cached(
        "INSERT INTO jobs (id, name, payload, state, priority, run_at, max_attempts, unique_key, parent_id,
             created_at, updated_at, traceparent)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
    )?
    .execute(params![
        id,
        job.name,
        job.payload.to_string(),
        job.priority,
        run_at,
        job.max_attempts,
        job.unique_key,
        job.parent_id,
        now,
        job.trace_parent
    ])?;
    Ok(Enqueued::Created(id))
}

/// The job name of a raw body, for listings, when it has one; parsing proper happens at
/// dispatch.
pub(crate) fn name_hint(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(alias = "type", alias = "jobName")]
        job: String,
    }
    serde_json::from_slice::<Named>(body)
        .map(|n| n.job)
        .unwrap_or_default()
}

fn reclaim_expired(tx: &Transaction<'_>, now: i64) -> Result<(), QueueError> {
    let reclaimed = tx.prepare_cached(
        "UPDATE jobs SET state = CASE cancel_requested WHEN 0 THEN 'queued' ELSE 'cancelled' END,
             finished_at = CASE cancel_requested WHEN 0 THEN NULL ELSE ?1 END,
             lease_owner = NULL, lease_until = NULL, updated_at = ?1,
             last_error = 'lease expired: the worker stopped before finishing'
         WHERE state = 'running' AND lease_until <= ?1",
    )?
    .execute([now])?;
    if reclaimed > 0 {
        tracing::warn!(
            reclaimed,
            "jobs whose worker died were returned to the queue"
        );
    }
    Ok(())
}

fn settle_one(
    tx: &Transaction<'_>,
    settlement: &Settlement,
    owner: &str,
    now: i64,
) -> Result<(), QueueError> {
    let id = &settlement.delivered.id;
    let super::Stored {
        fuel,
        run_us,
        wait_ms,
        peak_memory: peak,
        progress,
        logs,
    } = super::Stored::of(settlement);
    let changed = match &settlement.outcome {
        Outcome::Done { output } => {
            tx.prepare_cached(
                "UPDATE jobs SET state = 'done', output = ?1, progress = ?2, finished_at = ?3, updated_at = ?3,
                     lease_owner = NULL, lease_until = NULL, reason = NULL,
                     fuel = ?6, run_us = ?7, wait_ms = ?8, peak_memory = ?9, logs = ?10
                 WHERE id = ?4 AND state = 'running' AND lease_owner = ?5",
            )?
            .execute(params![output, progress, now, id, owner, fuel, run_us, wait_ms, peak, logs])?
        }
        Outcome::Retry {
            reason, message, ..
        } => tx
            .prepare_cached(
                "UPDATE jobs SET state = CASE cancel_requested WHEN 0 THEN 'queued' ELSE 'cancelled' END,
                     finished_at = CASE cancel_requested WHEN 0 THEN NULL ELSE ?4 END,
                     run_at = ?1, reason = ?2, last_error = ?3, updated_at = ?4,
                     lease_owner = NULL, lease_until = NULL, attempts = MAX(attempts - ?7, 0),
                     fuel = ?8, run_us = ?9, wait_ms = ?10, peak_memory = ?11, logs = ?12
                 WHERE id = ?5 AND state = 'running' AND lease_owner = ?6",
            )?
            .execute(params![
                to_ms(settlement.retry_at().unwrap_or(settlement.at)),
                reason.as_str(),
                message,
                now,
                id,
                owner,
                i64::from(!reason.counts_attempt()),
                fuel,
                run_us,
                wait_ms,
                peak,
                logs
            ])?,
        Outcome::DeadLetter { reason, message } => tx
            .prepare_cached(
                "UPDATE jobs SET state = 'dead', reason = ?1, last_error = ?2, finished_at = ?3, updated_at = ?3,
                     lease_owner = NULL, lease_until = NULL,
                     fuel = ?6, run_us = ?7, wait_ms = ?8, peak_memory = ?9, logs = ?10
                 WHERE id = ?4 AND state = 'running' AND lease_owner = ?5",
            )?
            .execute(params![reason.as_str(), message, now, id, owner, fuel, run_us, wait_ms, peak, logs])?,
        Outcome::Cancelled { message } => tx
            .prepare_cached(
                "UPDATE jobs SET state = 'cancelled', last_error = ?1, finished_at = ?2, updated_at = ?2,
                     lease_owner = NULL, lease_until = NULL,
                     fuel = ?5, run_us = ?6, wait_ms = ?7, peak_memory = ?8, logs = ?9
                 WHERE id = ?3 AND state = 'running' AND lease_owner = ?4",
            )?
            .execute(params![message, now, id, owner, fuel, run_us, wait_ms, peak, logs])?,
    };
    if changed == 0 {
        // The lease expired and another worker took the job: its result wins.
        tracing::warn!(job.id = %id, "lease lost before the result was recorded; dropping this result");
        return Ok(());
    }
    if settlement.outcome.is_done() {
        for child in &settlement.children {
            insert_job(tx, child, now)?;
        }
    }
    Ok(())
}

fn to_delivered(
    id: String,
    name: String,
    payload: &str,
    attempts: i64,
    max_attempts: Option<i64>,
    created_at: i64,
    body: Option<Vec<u8>>,
) -> Delivered {
    let attempt = u32::try_from(attempts.max(1)).unwrap_or(u32::MAX);
    let message = match (body, serde_json::from_str::<Value>(payload)) {
        (Some(raw), _) => Message::Raw(raw),
        (None, Ok(payload)) => Message::Envelope(Envelope {
            id: Some(id.clone()),
            job: name,
            payload,
            attempt: Some(attempt),
            max_attempts: max_attempts.and_then(|m| u32::try_from(m).ok()),
            enqueued_at: u64::try_from(created_at).ok(),
            not_before: None,
        }),
        (None, Err(_)) => Message::Raw(payload.as_bytes().to_vec()),
    };
    Delivered {
        receipt: id.clone(),
        id,
        attempt,
        message,
        group: None,
        due: None,
        trace_parent: None,
    }
}

const RECORD_COLUMNS: &str = "id, name, payload, body, state, priority, run_at, attempts, max_attempts, lease_owner,
    lease_until, unique_key, last_error, reason, output, progress, parent_id, created_at, updated_at, finished_at,
    started_at, fuel, run_us, wait_ms, peak_memory, cancel_requested, logs";

fn to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let payload: String = row.get(2)?;
    let progress: Option<String> = row.get(15)?;
    Ok(JobRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
        body: row
            .get::<_, Option<Vec<u8>>>(3)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        state: row.get(4)?,
        priority: row.get(5)?,
        run_at: row.get(6)?,
        attempts: row.get(7)?,
        max_attempts: row.get(8)?,
        lease_owner: row.get(9)?,
        lease_until: row.get(10)?,
        unique_key: row.get(11)?,
        last_error: row.get(12)?,
        reason: row.get(13)?,
        output: row.get(14)?,
        progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
        parent_id: row.get(16)?,
        created_at: row.get(17)?,
        updated_at: row.get(18)?,
        finished_at: row.get(19)?,
        started_at: row.get(20)?,
        cost: match (
            row.get::<_, Option<i64>>(21)?,
            row.get::<_, Option<i64>>(22)?,
        ) {
            (Some(fuel), Some(run_us)) => Some(CostRecord {
                fuel: fuel.unsigned_abs(),
                run_ms: run_us as f64 / 1000.0,
                wait_ms: row.get(23)?,
                peak_memory_bytes: row.get::<_, Option<i64>>(24)?.unwrap_or(0).unsigned_abs(),
            }),
            _ => None,
        },
        cancel_requested: row.get(25)?,
        logs: row
            .get::<_, Option<String>>(26)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
    })
}

impl Queue for SqliteQueue {
    async fn receive(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        let queue = self.clone();
        blocking(move || queue.claim(max, lease)).await
    }

    async fn settle(&self, batch: Vec<Settlement>) -> Result<(), QueueError> {
        let queue = self.clone();
        blocking(move || queue.settle_now(&batch)).await
    }

    async fn release(&self, deliveries: Vec<Delivered>) -> Result<(), QueueError> {
        let queue = self.clone();
        blocking(move || queue.release_now(&deliveries)).await
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        let queue = self.clone();
        blocking(move || queue.enqueue_now(&jobs)).await
    }

    async fn extend(&self, deliveries: Vec<Delivered>, lease: Duration) -> Result<(), QueueError> {
        let queue = self.clone();
        blocking(move || queue.extend_now(&deliveries, lease)).await
    }

    async fn is_idle(&self) -> Result<bool, QueueError> {
        let queue = self.clone();
        blocking(move || queue.idle_now()).await
    }
}

impl ReleaseUncounted for SqliteQueue {}

impl Inspect for SqliteQueue {
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let (queue, id) = (self.clone(), id.to_string());
        blocking(move || queue.get(&id)).await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<Vec<JobRecord>, QueueError> {
        let queue = self.clone();
        blocking(move || queue.list_filtered(&filter)).await
    }

    async fn finished_per_minute(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, QueueError> {
        let queue = self.clone();
        blocking(move || queue.finished_per_minute_since(since_ms)).await
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let queue = self.clone();
        blocking(move || queue.stats()).await
    }

    async fn timings(&self, since_ms: i64) -> Result<Vec<Timing>, QueueError> {
        let queue = self.clone();
        blocking(move || queue.timings_since(since_ms)).await
    }
}

impl Administer for SqliteQueue {
    async fn cancel(&self, id: &str) -> Result<CancelResult, QueueError> {
        let (queue, id) = (self.clone(), id.to_string());
        blocking(move || queue.cancel(&id)).await
    }

    async fn redrive(&self, which: Redrive) -> Result<u64, QueueError> {
        let queue = self.clone();
        blocking(move || match which {
            Redrive::One(id) => queue.redrive(Some(&id)),
            Redrive::All => queue.redrive(None),
        })
        .await
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        let queue = self.clone();
        blocking(move || queue.purge_dead()).await
    }

    async fn delete_dead(&self, id: &str) -> Result<bool, QueueError> {
        let (queue, id) = (self.clone(), id.to_string());
        blocking(move || queue.delete_dead(&id)).await
    }

    async fn pause(&self, name: &str) -> Result<bool, QueueError> {
        let (queue, name) = (self.clone(), name.to_string());
        blocking(move || queue.pause(&name)).await
    }

    async fn resume(&self, name: &str) -> Result<bool, QueueError> {
        let (queue, name) = (self.clone(), name.to_string());
        blocking(move || queue.resume(&name)).await
    }
}

impl Steer for SqliteQueue {
    async fn write_progress(&self, updates: Vec<(String, Progress)>) -> Result<(), QueueError> {
        let queue = self.clone();
        blocking(move || queue.write_progress_now(&updates)).await
    }

    async fn cancel_requests(&self) -> Result<Vec<String>, QueueError> {
        let queue = self.clone();
        blocking(move || queue.cancel_requests_now()).await
    }
}

impl Ticks for SqliteQueue {
    async fn enqueue_tick(
        &self,
        tick_key: &str,
        job: NewJob,
    ) -> Result<Option<Enqueued>, QueueError> {
        let (queue, key) = (self.clone(), tick_key.to_string());
        blocking(move || queue.enqueue_tick(&key, &job)).await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    // On a multi-threaded runtime the call runs on this worker thread, whose other tasks
    // move to another: no hand-off to a blocking thread and back.
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(work);
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueueError(format!("queue task failed: {e}")))?
}
