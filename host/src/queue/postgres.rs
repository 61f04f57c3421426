//! The PostgreSQL queue: many hosts on one database behave like one big embedded queue.
//! The same states, rules and abilities as [`super::sqlite::SqliteQueue`], on
//! `tokio-postgres` with a `deadpool-postgres` pool, in a schema of its own (`jobhost` by
//! default).
//!
//! - **Claims**: `FOR UPDATE SKIP LOCKED` in a CTE, in priority then due order, batched;
//!   hosts never wait on each other's claimed rows.
//! - **Leases with a fencing token**: each claim bumps the job's `lease_token`; the
//!   receipt carries it, and settle, renewal, release and progress only touch a job whose
//!   token still matches, so a late result of a lost lease is dropped.
//! - **Expiry rescue**: any host returns jobs whose lease ran out to the queue (at most
//!   every 500 ms).
//! - **Wake-ups**: every enqueue `NOTIFY`s the schema's channel in its transaction; idle
//!   hosts `LISTEN` and claim within milliseconds instead of polling hard.
//! - **Migrations**: versioned, applied at start under an advisory lock, so several hosts
//!   starting at once apply each once (`jobhost migrate` applies them alone).
//!
//! Times are the hosts' clocks in milliseconds since the Unix epoch, as in the file queue.
//! Main type: [`PostgresQueue`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sqlite::Retention;
use super::{
    Administer, CancelResult, CostRecord, Delivered, Enqueued, Inspect, JobFilter, JobRecord,
    Message, NewJob, Queue, QueueError, Redrive, ReleaseUncounted, Settlement, Stats, Steer, Ticks,
    Timing,
};
use crate::clock::{Clock, from_ms, to_ms};
use crate::job::{Envelope, Outcome, Progress};

/// How often expired leases are looked for, at most.
const RECLAIM_EVERY_MS: i64 = 500;
/// How often done jobs are pruned, at most.
const PRUNE_EVERY_MS: i64 = 5_000;
/// The advisory lock key migrations run under (any constant; "jobhost" in ASCII).
const MIGRATION_LOCK: i64 = 0x006a_6f62_686f_7374;

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The migrations, in order; `{s}` is the schema. Applied ones are recorded in
/// `{s}.migrations`; a database with a newer one than this build knows is refused.
const MIGRATIONS: &[&str] = &["
CREATE TABLE {s}.jobs (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    body         BYTEA,
    state        TEXT NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 0,
    run_at       BIGINT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    lease_owner  TEXT,
    lease_until  BIGINT,
    lease_token  BIGINT NOT NULL DEFAULT 0,
    unique_key   TEXT,
    last_error   TEXT,
    reason       TEXT,
    output       TEXT,
    progress     TEXT,
    parent_id    TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    started_at   BIGINT,
    fuel         BIGINT,
    run_us       BIGINT,
    wait_ms      BIGINT,
    peak_memory  BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    traceparent  TEXT,
    logs         TEXT
);
CREATE INDEX jobs_due ON {s}.jobs (priority DESC, run_at, seq) WHERE state = 'queued';
CREATE INDEX jobs_leased ON {s}.jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_done ON {s}.jobs (finished_at) WHERE state = 'done';
CREATE INDEX jobs_state_name ON {s}.jobs (state, name);
CREATE INDEX jobs_parent ON {s}.jobs (parent_id) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX jobs_unique ON {s}.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'running');
CREATE TABLE {s}.paused (
    name  TEXT PRIMARY KEY,
    since BIGINT NOT NULL
);
CREATE TABLE {s}.schedule_ticks (
    key        TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"];

/// Where the queue is and how it keeps done jobs.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://USER@HOST/DB` (the `PG*` variables fill in what it leaves out).
    pub url: String,
    /// The schema of the queue's tables.
    pub schema: String,
    /// The most connections the pool opens.
    pub pool_size: usize,
    /// Retention of done jobs.
    pub retention: Retention,
}

impl PostgresOptions {
    /// Defaults for `url`: schema `jobhost`, 16 connections.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "jobhost".into(),
            pool_size: 16,
            retention: Retention::default(),
        }
    }
}

/// The PostgreSQL queue.
#[derive(Clone)]
pub struct PostgresQueue {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    clock: Arc<dyn Clock>,
    owner: String,
    schema: String,
    retention: Retention,
    last_reclaim_ms: Arc<AtomicI64>,
    last_prune_ms: Arc<AtomicI64>,
}

impl std::fmt::Debug for PostgresQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresQueue")
            .field("schema", &self.schema)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn db_error(what: &str, error: impl std::fmt::Display) -> QueueError {
    QueueError(format!("{what}: {error}"))
}

impl From<tokio_postgres::Error> for QueueError {
    fn from(error: tokio_postgres::Error) -> Self {
        // The server's message (with its detail) says more than the client's summary.
        match error.as_db_error() {
            Some(db) => QueueError(format!("PostgreSQL: {}", db.message())),
            None => QueueError(format!("PostgreSQL: {}", with_causes(&error))),
        }
    }
}

impl From<deadpool_postgres::PoolError> for QueueError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        db_error("PostgreSQL connection", with_causes(&error))
    }
}

/// An error and its causes (a TLS failure says why only in its source), `a: b: c`.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The connection config of `url`, with the `PG*` variables filling in what it leaves out
/// (as libpq does): host, port, user, password, database, and TLS (see
/// [`super::postgres_tls`]).
fn config_of(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), QueueError> {
    let (rest, tls) = super::postgres_tls::split(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
        db_error(
            &format!(
                "`{}` is not a PostgreSQL URL",
                crate::run::serve::redact_url(url)
            ),
            e,
        )
    })?;
    config.ssl_mode(super::postgres_tls::ssl_mode(tls.mode));
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() {
        config.host(var("PGHOST").as_deref().unwrap_or("localhost"));
    }
    if config.get_ports().is_empty()
        && let Some(port) = var("PGPORT").and_then(|p| p.parse().ok())
    {
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = var("PGUSER")
            .or_else(|| var("USER"))
            .unwrap_or_else(|| "postgres".into());
        config.user(&user);
    }
    if config.get_password().is_none()
        && let Some(password) = var("PGPASSWORD")
    {
        config.password(password);
    }
    if config.get_dbname().is_none()
        && let Some(db) = var("PGDATABASE")
    {
        config.dbname(&db);
    }
    config.application_name("jobhost");
    Ok((config, super::postgres_tls::connector(&tls)?))
}

/// A schema name is written into the SQL: letters, digits and `_` only.
fn check_schema(schema: &str) -> Result<(), QueueError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(QueueError(format!(
            "`{schema}` is not a schema name jobhost uses (letters, digits and _)"
        )))
    }
}

impl PostgresQueue {
    /// Connects, applies the migrations this build has (under an advisory lock), and
    /// returns the queue.
    pub async fn connect(
        options: PostgresOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        check_schema(&options.schema)?;
        let (config, tls) = config_of(&options.url)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .build()
            .map_err(|e| db_error("PostgreSQL pool", e))?;
        let queue = Self {
            pool,
            config,
            tls,
            clock,
            owner: format!("{}:{}", std::process::id(), uuid::Uuid::now_v7()),
            schema: options.schema,
            retention: options.retention,
            last_reclaim_ms: Arc::new(AtomicI64::new(0)),
            last_prune_ms: Arc::new(AtomicI64::new(0)),
        };
        queue.migrate().await?;
        Ok(queue)
    }

    /// The schema's tables' names in SQL: `sql` with `{s}` replaced.
    fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &self.schema)
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The `LISTEN` channel enqueues notify.
    fn channel(&self) -> String {
        format!("jobhost_{}", self.schema)
    }

    /// Applies the migrations not applied yet; returns how many it applied. Safe with
    /// several hosts starting at once: one applies them, the others wait and find them
    /// applied.
    pub async fn migrate(&self) -> Result<usize, QueueError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(&self.sql(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );",
        ))
        .await?;
        let applied: i32 = tx
            .query_one(
                &self.sql("SELECT COALESCE(MAX(version), 0) FROM {s}.migrations"),
                &[],
            )
            .await?
            .get(0);
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if applied > known {
            return Err(QueueError(format!(
                "the queue schema `{}` is at version {applied}, newer than this jobhost knows \
                 ({known}): upgrade jobhost",
                self.schema
            )));
        }
        let mut count = 0;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            tx.batch_execute(&self.sql(migration)).await?;
            let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
            tx.execute(
                &self.sql("INSERT INTO {s}.migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await?;
            count += 1;
        }
        tx.commit().await?;
        if count > 0 {
            tracing::info!(schema = %self.schema, applied = count, version = known, "queue schema migrated");
        }
        Ok(count)
    }

    /// Listens for enqueues on a connection of its own and notifies `wake` for each; it
    /// reconnects after the database goes away, until `wake` is the only reference left.
    pub fn listen(&self, wake: Arc<Notify>) {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let channel = self.channel();
        tokio::spawn(async move {
            loop {
                match listen_once(&config, tls.clone(), &channel, &wake).await {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the LISTEN connection to PostgreSQL failed; reconnecting")
                    }
                }
                if Arc::strong_count(&wake) <= 1 {
                    return;
                }
                // Whatever was enqueued meanwhile is found by the next poll.
                wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    fn lease_until(&self, now: i64, lease: Duration) -> i64 {
        now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    }

    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        let now = self.clock.now_ms();
        let client = self.pool.get().await?;
        if now - self.last_reclaim_ms.load(Ordering::Relaxed) >= RECLAIM_EVERY_MS {
            self.last_reclaim_ms.store(now, Ordering::Relaxed);
            reclaim_expired(&client, &self.schema, now).await?;
        }
        let until = self.lease_until(now, lease);
        let statement = client
            .prepare_cached(&self.sql(
                "WITH picked AS (
                     SELECT seq FROM {s}.jobs
                     WHERE state = 'queued' AND run_at <= $3
                       AND name NOT IN (SELECT name FROM {s}.paused)
                     ORDER BY priority DESC, run_at, seq
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED)
                 UPDATE {s}.jobs j SET state = 'running', attempts = attempts + 1,
                     lease_owner = $1, lease_until = $2, lease_token = lease_token + 1,
                     updated_at = $3, started_at = $3
                 FROM picked WHERE j.seq = picked.seq
                 RETURNING j.id, j.name, j.payload, j.attempts, j.max_attempts, j.created_at,
                     j.body, j.run_at, j.traceparent, j.lease_token, j.priority, j.seq",
            ))
            .await?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let mut rows = client
            .query(&statement, &[&self.owner, &until, &now, &max])
            .await?;
        // RETURNING keeps no order: run them in the claim's.
        rows.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.get::<_, i32>(10)),
                r.get::<_, i64>(7),
                r.get::<_, i64>(11),
            )
        });
        Ok(rows.iter().map(to_delivered).collect())
    }

    async fn settle_now(&self, batch: &[Settlement]) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Done jobs without follow-up jobs (nearly all) in one statement; the rest one by one.
        let (plain, rest): (Vec<&Settlement>, Vec<&Settlement>) = batch
            .iter()
            .partition(|s| s.outcome.is_done() && s.children.is_empty());
        settle_done(&tx, &self.schema, &plain, now).await?;
        let mut children = false;
        for settlement in rest {
            children |= settle_one(&tx, &self.schema, settlement, now).await?;
        }
        if children {
            notify(&tx, &self.channel()).await?;
        }
        tx.commit().await?;
        drop(client);
        if now - self.last_prune_ms.load(Ordering::Relaxed) >= PRUNE_EVERY_MS {
            self.last_prune_ms.store(now, Ordering::Relaxed);
            self.prune().await?;
        }
        Ok(())
    }

    /// Deletes done jobs beyond the retention count or age.
    pub async fn prune(&self) -> Result<u64, QueueError> {
        let cutoff = self.clock.now_ms()
            - i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let keep = i64::try_from(self.retention.max_done).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let by_age = client
            .execute(
                &self.sql("DELETE FROM {s}.jobs WHERE state = 'done' AND finished_at < $1"),
                &[&cutoff],
            )
            .await?;
        let by_count = client
            .execute(
                &self.sql(
                    "DELETE FROM {s}.jobs WHERE seq IN (SELECT seq FROM {s}.jobs WHERE state = 'done'
                         ORDER BY finished_at DESC OFFSET $1)",
                ),
                &[&keep],
            )
            .await?;
        Ok(by_age + by_count)
    }

    async fn enqueue_now(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, QueueError> {
        let now = self.clock.now_ms();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let results = insert_jobs(&tx, &self.schema, jobs, now).await?;
        notify(&tx, &self.channel()).await?;
        tx.commit().await?;
        Ok(results)
    }

    /// Enqueues raw message bodies, parsed (and routed) only when they run.
    pub async fn enqueue_raw(&self, bodies: &[Vec<u8>]) -> Result<Vec<Enqueued>, QueueError> {
        let now = self.clock.now_ms();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(&self.sql(
                "INSERT INTO {s}.jobs (id, name, payload, body, state, priority, run_at, created_at, updated_at)
                 VALUES ($1, $2, 'null', $3, 'queued', 0, $4, $4, $4)",
            ))
            .await?;
        let mut ids = Vec::with_capacity(bodies.len());
        for body in bodies {
            let id = uuid::Uuid::now_v7().to_string();
            tx.execute(
                &statement,
                &[&id, &super::sqlite::name_hint(body), body, &now],
            )
            .await?;
            ids.push(Enqueued::Created(id));
        }
        notify(&tx, &self.channel()).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &self.sql(&format!(
                    "SELECT {RECORD_COLUMNS} FROM {{s}}.jobs WHERE id = $1"
                )),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(to_record))
    }
}

/// Marks done, in one statement, the jobs whose lease still holds.
async fn settle_done(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    batch: &[&Settlement],
    now: i64,
) -> Result<(), QueueError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(batch.len());
    let mut tokens = Vec::with_capacity(batch.len());
    let mut outputs: Vec<Option<String>> = Vec::with_capacity(batch.len());
    let mut progress: Vec<Option<String>> = Vec::with_capacity(batch.len());
    let mut fuel = Vec::with_capacity(batch.len());
    let mut run_us = Vec::with_capacity(batch.len());
    let mut wait_ms: Vec<Option<i64>> = Vec::with_capacity(batch.len());
    let mut peak = Vec::with_capacity(batch.len());
    let mut logs: Vec<Option<String>> = Vec::with_capacity(batch.len());
    for settlement in batch {
        let (id, token) = receipt_parts(&settlement.delivered.receipt);
        ids.push(id.to_string());
        tokens.push(token);
        outputs.push(match &settlement.outcome {
            Outcome::Done { output } => output.clone(),
            _ => None,
        });
        let stored = super::Stored::of(settlement);
        progress.push(stored.progress);
        fuel.push(stored.fuel);
        run_us.push(stored.run_us);
        wait_ms.push(stored.wait_ms);
        peak.push(stored.peak_memory);
        logs.push(stored.logs);
    }
    let statement = tx
        .prepare_cached(&schema_sql(
            schema,
            "UPDATE {s}.jobs j SET state = 'done', output = d.output, progress = d.progress,
                 finished_at = $1, updated_at = $1, lease_owner = NULL, lease_until = NULL,
                 reason = NULL, fuel = d.fuel, run_us = d.run_us, wait_ms = d.wait_ms,
                 peak_memory = d.peak, logs = d.logs
             FROM UNNEST($2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[],
                         $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[])
                  AS d(id, token, output, progress, fuel, run_us, wait_ms, peak, logs)
             WHERE j.id = d.id AND j.state = 'running' AND j.lease_token = d.token",
        ))
        .await?;
    let changed = tx
        .execute(
            &statement,
            &[
                &now, &ids, &tokens, &outputs, &progress, &fuel, &run_us, &wait_ms, &peak, &logs,
            ],
        )
        .await?;
    if changed < ids.len() as u64 {
        // Their leases expired and other workers took them: those results win.
        tracing::warn!(
            lost = ids.len() as u64 - changed,
            "leases lost before the results were recorded; dropping those results"
        );
    }
    Ok(())
}

/// Applies one settlement if its lease still holds; true when it committed children.
async fn settle_one(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    settlement: &Settlement,
    now: i64,
) -> Result<bool, QueueError> {
    let sql = |s: &str| schema_sql(schema, s);
    let (id, token) = receipt_parts(&settlement.delivered.receipt);
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
            let statement = tx
                .prepare_cached(&sql(
                    "UPDATE {s}.jobs SET state = 'done', output = $1, progress = $2, finished_at = $3,
                         updated_at = $3, lease_owner = NULL, lease_until = NULL, reason = NULL,
                         fuel = $6, run_us = $7, wait_ms = $8, peak_memory = $9, logs = $10
                     WHERE id = $4 AND state = 'running' AND lease_token = $5",
                ))
                .await?;
            tx.execute(
                &statement,
                &[
                    output, &progress, &now, &id, &token, &fuel, &run_us, &wait_ms, &peak, &logs,
                ],
            )
            .await?
        }
        Outcome::Retry {
            reason, message, ..
        } => {
            let statement = tx
                .prepare_cached(&sql(
                    "UPDATE {s}.jobs SET
                         state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
                         finished_at = CASE WHEN cancel_requested THEN $4::BIGINT ELSE NULL END,
                         run_at = $1, reason = $2, last_error = $3, updated_at = $4,
                         lease_owner = NULL, lease_until = NULL, attempts = GREATEST(attempts - $7, 0),
                         fuel = $8, run_us = $9, wait_ms = $10, peak_memory = $11, logs = $12
                     WHERE id = $5 AND state = 'running' AND lease_token = $6",
                ))
                .await?;
            let run_at = to_ms(settlement.retry_at().unwrap_or(settlement.at));
            let uncounted = i32::from(!reason.counts_attempt());
            tx.execute(
                &statement,
                &[
                    &run_at,
                    &reason.as_str(),
                    message,
                    &now,
                    &id,
                    &token,
                    &uncounted,
                    &fuel,
                    &run_us,
                    &wait_ms,
                    &peak,
                    &logs,
                ],
            )
            .await?
        }
        Outcome::DeadLetter { reason, message } => {
            let statement = tx
                .prepare_cached(&sql(
                    "UPDATE {s}.jobs SET state = 'dead', reason = $1, last_error = $2, finished_at = $3,
                         updated_at = $3, lease_owner = NULL, lease_until = NULL,
                         fuel = $6, run_us = $7, wait_ms = $8, peak_memory = $9, logs = $10
                     WHERE id = $4 AND state = 'running' AND lease_token = $5",
                ))
                .await?;
            tx.execute(
                &statement,
                &[
                    &reason.as_str(),
                    message,
                    &now,
                    &id,
                    &token,
                    &fuel,
                    &run_us,
                    &wait_ms,
                    &peak,
                    &logs,
                ],
            )
            .await?
        }
        Outcome::Cancelled { message } => {
            let statement = tx
                .prepare_cached(&sql(
                    "UPDATE {s}.jobs SET state = 'cancelled', last_error = $1, finished_at = $2,
                         updated_at = $2, lease_owner = NULL, lease_until = NULL,
                         fuel = $5, run_us = $6, wait_ms = $7, peak_memory = $8, logs = $9
                     WHERE id = $3 AND state = 'running' AND lease_token = $4",
                ))
                .await?;
            tx.execute(
                &statement,
                &[
                    message, &now, &id, &token, &fuel, &run_us, &wait_ms, &peak, &logs,
                ],
            )
            .await?
        }
    };
    if changed == 0 {
        // The lease expired and another worker took the job: its result wins.
        tracing::warn!(job.id = %id, "lease lost before the result was recorded; dropping this result");
        return Ok(false);
    }
    if settlement.outcome.is_done() && !settlement.children.is_empty() {
        insert_jobs(tx, schema, &settlement.children, now).await?;
        return Ok(true);
    }
    Ok(false)
}

/// A delivery's receipt: the job id and the lease's fencing token.
fn receipt(id: &str, token: i64) -> String {
    format!("{id}#{token}")
}

/// The job id and fencing token of a receipt (token 0, which no claim has, if it has none).
fn receipt_parts(receipt: &str) -> (&str, i64) {
    match receipt.rsplit_once('#') {
        Some((id, token)) => (id, token.parse().unwrap_or(0)),
        None => (receipt, 0),
    }
}

async fn notify(tx: &deadpool_postgres::Transaction<'_>, channel: &str) -> Result<(), QueueError> {
    // Delivered at commit, once per transaction and payload.
    tx.execute("SELECT pg_notify($1, '')", &[&channel]).await?;
    Ok(())
}

/// Inserts jobs: those without a unique key in one statement, the others one by one;
/// what became of each, in order.
async fn insert_jobs(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    jobs: &[NewJob],
    now: i64,
) -> Result<Vec<Enqueued>, QueueError> {
    let mut results: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut payloads = Vec::new();
    let mut priorities = Vec::new();
    let mut run_ats = Vec::new();
    let mut max_attempts: Vec<Option<i32>> = Vec::new();
    let mut parents: Vec<Option<String>> = Vec::new();
    let mut traces: Vec<Option<String>> = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        if job.unique_key.is_some() {
            results[index] = Some(insert_job(tx, schema, job, now).await?);
            continue;
        }
        let id = job
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        results[index] = Some(Enqueued::Created(id.clone()));
        ids.push(id);
        names.push(job.name.clone());
        payloads.push(job.payload.to_string());
        priorities.push(job.priority);
        run_ats.push(job.run_at.map_or(now, to_ms));
        max_attempts.push(
            job.max_attempts
                .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
        );
        parents.push(job.parent_id.clone());
        traces.push(job.trace_parent.clone());
    }
    if !ids.is_empty() {
        let statement = tx
            .prepare_cached(&schema_sql(
                schema,
                "INSERT INTO {s}.jobs (id, name, payload, state, priority, run_at, max_attempts,
                     parent_id, created_at, updated_at, traceparent)
                 SELECT id, name, payload, 'queued', priority, run_at, max_attempts, parent_id,
                     $1, $1, traceparent
                 FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::INT[], $6::BIGINT[],
                             $7::INT[], $8::TEXT[], $9::TEXT[])
                      AS t(id, name, payload, priority, run_at, max_attempts, parent_id, traceparent)",
            ))
            .await?;
        tx.execute(
            &statement,
            &[
                &now,
                &ids,
                &names,
                &payloads,
                &priorities,
                &run_ats,
                &max_attempts,
                &parents,
                &traces,
            ],
        )
        .await?;
    }
    Ok(results.into_iter().flatten().collect())
}

async fn insert_job(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    job: &NewJob,
    now: i64,
) -> Result<Enqueued, QueueError> {
    let sql = |s: &str| schema_sql(schema, s);
    let id = job
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let run_at = job.run_at.map_or(now, to_ms);
    let max_attempts = job
        .max_attempts
        .map(|m| i32::try_from(m).unwrap_or(i32::MAX));
    let statement = tx
        .prepare_cached(&sql(
            "INSERT INTO {s}.jobs (id, name, payload, state, priority, run_at, max_attempts, unique_key,
                 parent_id, created_at, updated_at, traceparent)
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $9, $10)
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
             DO NOTHING",
        ))
        .await?;
    let inserted = tx
        .execute(
            &statement,
            &[
                &id,
                &job.name,
                &job.payload.to_string(),
                &job.priority,
                &run_at,
                &max_attempts,
                &job.unique_key,
                &job.parent_id,
                &now,
                &job.trace_parent,
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Enqueued::Created(id));
    }
    let existing = tx
        .query_opt(
            &sql(
                "SELECT id FROM {s}.jobs WHERE unique_key = $1 AND state IN ('queued', 'running')",
            ),
            &[&job.unique_key],
        )
        .await?;
    match existing {
        Some(row) => Ok(Enqueued::Duplicate(row.get(0))),
        // Finished between the insert and the look: nothing holds the key now.
        None => Err(QueueError(format!(
            "the unique key {:?} was taken and released while enqueueing; enqueue again",
            job.unique_key
        ))),
    }
}

async fn reclaim_expired(
    client: &deadpool_postgres::Client,
    schema: &str,
    now: i64,
) -> Result<(), QueueError> {
    let reclaimed = client
        .execute(
            &schema_sql(
                schema,
                "UPDATE {s}.jobs SET
                     state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
                     finished_at = CASE WHEN cancel_requested THEN $1::BIGINT ELSE NULL END,
                     lease_owner = NULL, lease_until = NULL, updated_at = $1,
                     last_error = 'lease expired: the worker stopped before finishing'
                 WHERE state = 'running' AND lease_until <= $1",
            ),
            &[&now],
        )
        .await?;
    if reclaimed > 0 {
        tracing::warn!(
            reclaimed,
            "jobs whose worker died were returned to the queue"
        );
    }
    Ok(())
}

fn schema_sql(schema: &str, sql: &str) -> String {
    sql.replace("{s}", schema)
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: &str,
    wake: &Notify,
) -> Result<(), QueueError> {
    use futures_util::StreamExt as _;
    let (client, mut connection) = config.connect(tls).await?;
    let (send, mut receive) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    if send.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(QueueError::from(error)),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    while receive.recv().await.is_some() {
        wake.notify_one();
    }
    pump.await
        .map_err(|e| QueueError(format!("the LISTEN task failed: {e}")))?
}

fn to_delivered(row: &Row) -> Delivered {
    let id: String = row.get(0);
    let name: String = row.get(1);
    let payload: String = row.get(2);
    let attempts: i32 = row.get(3);
    let max_attempts: Option<i32> = row.get(4);
    let created_at: i64 = row.get(5);
    let body: Option<Vec<u8>> = row.get(6);
    let run_at: i64 = row.get(7);
    let trace_parent: Option<String> = row.get(8);
    let token: i64 = row.get(9);
    let attempt = u32::try_from(attempts.max(1)).unwrap_or(u32::MAX);
    let message = match (body, serde_json::from_str::<Value>(&payload)) {
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
        (None, Err(_)) => Message::Raw(payload.into_bytes()),
    };
    Delivered {
        receipt: receipt(&id, token),
        id,
        attempt,
        message,
        group: None,
        due: Some(from_ms(run_at)),
        trace_parent,
    }
}

const RECORD_COLUMNS: &str = "id, name, payload, body, state, priority, run_at, attempts, max_attempts, lease_owner,
    lease_until, unique_key, last_error, reason, output, progress, parent_id, created_at, updated_at, finished_at,
    started_at, fuel, run_us, wait_ms, peak_memory, cancel_requested, logs";

fn to_record(row: &Row) -> JobRecord {
    let payload: String = row.get(2);
    let progress: Option<String> = row.get(15);
    let cost = match (row.get::<_, Option<i64>>(21), row.get::<_, Option<i64>>(22)) {
        (Some(fuel), Some(run_us)) => Some(CostRecord {
            fuel: fuel.unsigned_abs(),
            run_ms: run_us as f64 / 1000.0,
            wait_ms: row.get(23),
            peak_memory_bytes: row.get::<_, Option<i64>>(24).unwrap_or(0).unsigned_abs(),
        }),
        _ => None,
    };
    JobRecord {
        id: row.get(0),
        name: row.get(1),
        payload: serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
        body: row
            .get::<_, Option<Vec<u8>>>(3)
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        state: row.get(4),
        priority: i64::from(row.get::<_, i32>(5)),
        run_at: row.get(6),
        attempts: i64::from(row.get::<_, i32>(7)),
        max_attempts: row.get::<_, Option<i32>>(8).map(i64::from),
        lease_owner: row.get(9),
        lease_until: row.get(10),
        unique_key: row.get(11),
        last_error: row.get(12),
        reason: row.get(13),
        output: row.get(14),
        progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
        parent_id: row.get(16),
        created_at: row.get(17),
        updated_at: row.get(18),
        finished_at: row.get(19),
        started_at: row.get(20),
        cost,
        cancel_requested: row.get(25),
        logs: row
            .get::<_, Option<String>>(26)
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
    }
}

impl Queue for PostgresQueue {
    async fn receive(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        self.claim(max, lease).await
    }

    async fn settle(&self, batch: Vec<Settlement>) -> Result<(), QueueError> {
        self.settle_now(&batch).await
    }

    async fn release(&self, deliveries: Vec<Delivered>) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&self.sql(
                "UPDATE {s}.jobs SET state = 'queued', attempts = GREATEST(attempts - 1, 0),
                     lease_owner = NULL, lease_until = NULL, updated_at = $1
                 WHERE id = $2 AND state = 'running' AND lease_token = $3",
            ))
            .await?;
        for delivery in &deliveries {
            let (id, token) = receipt_parts(&delivery.receipt);
            client.execute(&statement, &[&now, &id, &token]).await?;
        }
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        self.enqueue_now(&jobs).await
    }

    async fn extend(&self, deliveries: Vec<Delivered>, lease: Duration) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let until = self.lease_until(now, lease);
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&self.sql(
                "UPDATE {s}.jobs SET lease_until = $1, updated_at = $2
                 WHERE id = $3 AND state = 'running' AND lease_token = $4",
            ))
            .await?;
        for delivery in &deliveries {
            let (id, token) = receipt_parts(&delivery.receipt);
            client
                .execute(&statement, &[&until, &now, &id, &token])
                .await?;
        }
        Ok(())
    }

    async fn is_idle(&self) -> Result<bool, QueueError> {
        let now = self.clock.now_ms();
        let client = self.pool.get().await?;
        let busy: bool = client
            .query_one(
                &self.sql(
                    "SELECT EXISTS (SELECT 1 FROM {s}.jobs WHERE state = 'running')
                         OR EXISTS (SELECT 1 FROM {s}.jobs WHERE state = 'queued' AND run_at <= $1
                                        AND name NOT IN (SELECT name FROM {s}.paused))",
                ),
                &[&now],
            )
            .await?
            .get(0);
        Ok(!busy)
    }
}

impl ReleaseUncounted for PostgresQueue {}

impl Inspect for PostgresQueue {
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        self.get(id).await
    }

    async fn jobs(&self, filter: JobFilter) -> Result<Vec<JobRecord>, QueueError> {
        let client = self.pool.get().await?;
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let offset = i64::try_from(filter.offset).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &self.sql(&format!(
                    "SELECT {RECORD_COLUMNS} FROM {{s}}.jobs
                     WHERE ($1::TEXT IS NULL OR state = $1) AND ($2::TEXT IS NULL OR name = $2)
                       AND ($5::TEXT IS NULL OR parent_id = $5)
                     ORDER BY seq DESC LIMIT $3 OFFSET $4"
                )),
                &[&filter.state, &filter.name, &limit, &offset, &filter.parent],
            )
            .await?;
        Ok(rows.iter().map(to_record).collect())
    }

    async fn finished_per_minute(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, u64)>, QueueError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &self.sql(
                    "SELECT finished_at / 60000, state, COUNT(*) FROM {s}.jobs
                     WHERE state IN ('done', 'dead') AND finished_at >= $1 GROUP BY 1, 2",
                ),
                &[&since_ms],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).unsigned_abs()))
            .collect())
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let now = self.clock.now_ms();
        let client = self.pool.get().await?;
        let counts = client
            .query(
                &self.sql(
                    "SELECT name, state, COUNT(*) FROM {s}.jobs GROUP BY name, state ORDER BY name, state",
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).unsigned_abs()))
            .collect();
        let oldest: Option<i64> = client
            .query_one(
                &self.sql(
                    "SELECT MIN(run_at) FROM {s}.jobs WHERE state = 'queued' AND run_at <= $1",
                ),
                &[&now],
            )
            .await?
            .get(0);
        let paused = client
            .query(&self.sql("SELECT name FROM {s}.paused ORDER BY name"), &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(Stats {
            counts,
            oldest_queued_age_ms: oldest.map(|t| now - t),
            paused,
        })
    }

    async fn timings(&self, since_ms: i64) -> Result<Vec<Timing>, QueueError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &self.sql(
                    "SELECT name, run_us, fuel FROM {s}.jobs
                     WHERE state = 'done' AND finished_at >= $1 AND run_us IS NOT NULL",
                ),
                &[&since_ms],
            )
            .await?;
        let mut by_name: std::collections::BTreeMap<String, Vec<(i64, i64)>> =
            std::collections::BTreeMap::new();
        for row in rows {
            let fuel: Option<i64> = row.get(2);
            by_name
                .entry(row.get(0))
                .or_default()
                .push((row.get(1), fuel.unwrap_or(0)));
        }
        Ok(by_name
            .into_iter()
            .filter_map(|(name, samples)| Timing::of(name, samples))
            .collect())
    }
}

impl Administer for PostgresQueue {
    async fn cancel(&self, id: &str) -> Result<CancelResult, QueueError> {
        let now = self.clock.now_ms();
        let client = self.pool.get().await?;
        let changed = client
            .execute(
                &self.sql(
                    "UPDATE {s}.jobs SET state = 'cancelled', updated_at = $1, finished_at = $1
                     WHERE id = $2 AND state = 'queued'",
                ),
                &[&now, &id],
            )
            .await?;
        if changed == 1 {
            return Ok(CancelResult::Cancelled);
        }
        let asked = client
            .execute(
                &self.sql(
                    "UPDATE {s}.jobs SET cancel_requested = TRUE, updated_at = $1
                     WHERE id = $2 AND state = 'running'",
                ),
                &[&now, &id],
            )
            .await?;
        if asked == 1 {
            return Ok(CancelResult::Requested);
        }
        let state = client
            .query_opt(
                &self.sql("SELECT state FROM {s}.jobs WHERE id = $1"),
                &[&id],
            )
            .await?
            .map(|r| r.get(0));
        Ok(state.map_or(CancelResult::NotFound, CancelResult::NotQueued))
    }

    async fn redrive(&self, which: Redrive) -> Result<u64, QueueError> {
        let now = self.clock.now_ms();
        let id = match which {
            Redrive::One(id) => Some(id),
            Redrive::All => None,
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let changed = tx
            .execute(
                &self.sql(
                    "UPDATE {s}.jobs SET state = 'queued', run_at = $1, attempts = 0, updated_at = $1,
                         finished_at = NULL, lease_owner = NULL, lease_until = NULL
                     WHERE state = 'dead' AND ($2::TEXT IS NULL OR id = $2)",
                ),
                &[&now, &id],
            )
            .await?;
        notify(&tx, &self.channel()).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(&self.sql("DELETE FROM {s}.jobs WHERE state = 'dead'"), &[])
            .await?)
    }

    async fn delete_dead(&self, id: &str) -> Result<bool, QueueError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                &self.sql("DELETE FROM {s}.jobs WHERE id = $1 AND state = 'dead'"),
                &[&id],
            )
            .await?
            == 1)
    }

    async fn pause(&self, name: &str) -> Result<bool, QueueError> {
        let now = self.clock.now_ms();
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                &self.sql(
                    "INSERT INTO {s}.paused (name, since) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                ),
                &[&name, &now],
            )
            .await?
            == 1)
    }

    async fn resume(&self, name: &str) -> Result<bool, QueueError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let removed = tx
            .execute(
                &self.sql("DELETE FROM {s}.paused WHERE name = $1"),
                &[&name],
            )
            .await?;
        notify(&tx, &self.channel()).await?;
        tx.commit().await?;
        Ok(removed == 1)
    }
}

impl Steer for PostgresQueue {
    async fn write_progress(&self, updates: Vec<(String, Progress)>) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&self.sql(
                "UPDATE {s}.jobs SET progress = $1, updated_at = $2
                 WHERE id = $3 AND state = 'running' AND lease_owner = $4",
            ))
            .await?;
        for (id, progress) in &updates {
            let text = serde_json::to_string(progress).unwrap_or_default();
            client
                .execute(&statement, &[&text, &now, id, &self.owner])
                .await?;
        }
        Ok(())
    }

    async fn cancel_requests(&self) -> Result<Vec<String>, QueueError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &self.sql(
                    "SELECT id FROM {s}.jobs
                     WHERE state = 'running' AND lease_owner = $1 AND cancel_requested",
                ),
                &[&self.owner],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Ticks for PostgresQueue {
    async fn enqueue_tick(
        &self,
        tick_key: &str,
        job: NewJob,
    ) -> Result<Option<Enqueued>, QueueError> {
        let now = self.clock.now_ms();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The tick's row first: a second host's insert waits for this transaction, then
        // finds the key taken and enqueues nothing.
        let id = job
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let claimed = tx
            .execute(
                &self.sql(
                    "INSERT INTO {s}.schedule_ticks (key, job_id, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO NOTHING",
                ),
                &[&tick_key, &id, &now],
            )
            .await?;
        if claimed == 0 {
            return Ok(None);
        }
        let job = NewJob {
            id: Some(id),
            ..job
        };
        let enqueued = insert_job(&tx, &self.schema, &job, now).await?;
        notify(&tx, &self.channel()).await?;
        tx.commit().await?;
        Ok(Some(enqueued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_carry_the_fencing_token() {
        let r = receipt("0193-abc#x", 7);
        assert_eq!(receipt_parts(&r), ("0193-abc#x", 7));
        assert_eq!(receipt_parts("plain"), ("plain", 0));
    }

    #[test]
    fn schema_names_are_checked_before_they_reach_sql() {
        assert!(check_schema("jobhost").is_ok());
        assert!(check_schema("jobs_2").is_ok());
        for bad in ["", "a;drop", "2x", "a b", "ü"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
