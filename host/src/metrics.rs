//! What a host counts, for Prometheus (`GET /metrics`, OpenMetrics text through
//! `prometheus-client`) and, on Lambda, for CloudWatch as embedded-metric-format log lines.
//! Every metric is listed in the README's "Metrics" section.
//!
//! The `job_name` label (not `job`, which Prometheus gives every target) only ever holds
//! the job names of loaded handlers, plus `(unknown)` for anything else, so a flood of
//! made-up names cannot grow the metric set without bound.
//!
//! Main types: [`Metrics`], [`emf_line`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde_json::json;

use crate::clock::to_ms;
use crate::plugin::PluginSet;
use crate::queue::{Settlement, Stats};

/// The `job_name` label of a job whose name no loaded handler accepts.
pub const UNKNOWN_JOB: &str = "(unknown)";

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    job_name: String,
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    job_name: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: String,
    job_name: String,
    version: String,
}

/// The histograms of one job name, looked up once at start-up (no allocation per job).
#[derive(Clone)]
struct PerJob {
    run: Histogram,
    wait: Histogram,
    fuel: Histogram,
}

fn run_histogram() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn wait_histogram() -> Histogram {
    // 1 ms to about 35 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

fn fuel_histogram() -> Histogram {
    // 10 thousand to about 2.7 trillion units.
    Histogram::new(exponential_buckets(1e4, 4.0, 15))
}

/// A host's metrics.
pub struct Metrics {
    registry: Registry,
    finished: Family<FinishedLabels, Counter>,
    per_job: HashMap<String, PerJob>,
    in_flight: Gauge,
    jobs: Family<StateLabels, Gauge>,
    oldest_due: Gauge<f64, AtomicU64>,
    dead: Gauge,
    paused: Family<JobLabels, Gauge>,
    queue_read: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a host running `plugins`.
    pub fn new(plugins: &PluginSet) -> Self {
        let mut registry = Registry::with_prefix("jobhost");
        let finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Deliveries finished, by job name, outcome (done, retry, dead-letter, cancelled) and reason",
            finished.clone(),
        );
        let run =
            Family::<JobLabels, Histogram, fn() -> Histogram>::new_with_constructor(run_histogram);
        registry.register_with_unit(
            "job_run",
            "Time in the handler per delivery, instantiation included",
            Unit::Seconds,
            run.clone(),
        );
        let wait =
            Family::<JobLabels, Histogram, fn() -> Histogram>::new_with_constructor(wait_histogram);
        registry.register_with_unit(
            "job_wait",
            "Time from due to started per delivery (where the queue knows when it was due)",
            Unit::Seconds,
            wait.clone(),
        );
        let fuel =
            Family::<JobLabels, Histogram, fn() -> Histogram>::new_with_constructor(fuel_histogram);
        registry.register(
            "job_fuel",
            "Fuel (about one unit per wasm instruction) per delivery",
            fuel.clone(),
        );
        let in_flight: Gauge = Gauge::default();
        registry.register(
            "jobs_in_flight",
            "Jobs running in handlers now",
            in_flight.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the queue by job name and state (embedded queue; read at most every 5 s)",
            jobs.clone(),
        );
        let oldest_due = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "oldest_due_job_age",
            "How long the oldest due, unclaimed job has waited (embedded queue)",
            Unit::Seconds,
            oldest_due.clone(),
        );
        let dead: Gauge = Gauge::default();
        registry.register(
            "dead_letters",
            "Jobs in the dead-letter state (embedded queue)",
            dead.clone(),
        );
        let paused = Family::<JobLabels, Gauge>::default();
        registry.register(
            "job_paused",
            "1 for each paused job name (embedded queue)",
            paused.clone(),
        );
        let handlers = Family::<HandlerLabels, Gauge>::default();
        registry.register(
            "handler_info",
            "One per job name of each loaded handler, with the handler's file and version",
            handlers.clone(),
        );
        let refused: Gauge = Gauge::default();
        registry.register(
            "handlers_refused",
            "Handler files refused at load (the log says why)",
            refused.clone(),
        );
        refused.set(i64::try_from(plugins.errors().len()).unwrap_or(i64::MAX));
        let mut per_job = HashMap::new();
        for plugin in plugins.plugins() {
            let handler = plugin
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for name in &plugin.names {
                handlers
                    .get_or_create(&HandlerLabels {
                        handler: handler.clone(),
                        job_name: name.clone(),
                        version: plugin.version.clone(),
                    })
                    .set(1);
                let labels = JobLabels {
                    job_name: name.clone(),
                };
                per_job.insert(
                    name.clone(),
                    PerJob {
                        run: run.get_or_create_owned(&labels),
                        wait: wait.get_or_create_owned(&labels),
                        fuel: fuel.get_or_create_owned(&labels),
                    },
                );
            }
        }
        Self {
            registry,
            finished,
            per_job,
            in_flight,
            jobs,
            oldest_due,
            dead,
            paused,
            queue_read: Mutex::new(None),
        }
    }

    /// The `job_name` label of a job name: itself when a loaded handler accepts it.
    pub fn job_label<'a>(plugins: &PluginSet, name: Option<&'a str>) -> &'a str {
        name.filter(|name| plugins.get(name).is_some())
            .unwrap_or(UNKNOWN_JOB)
    }

    /// A job started running in a handler.
    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// A job finished, with what it cost.
    pub fn finished(&self, settlement: &Settlement) {
        self.in_flight.dec();
        let known = settlement
            .job
            .as_deref()
            .and_then(|name| self.per_job.get_key_value(name));
        let job = known.map_or(UNKNOWN_JOB, |(name, _)| name.as_str());
        let outcome = &settlement.outcome;
        self.finished
            .get_or_create(&FinishedLabels {
                job_name: job.to_string(),
                outcome: outcome.kind(),
                reason: outcome.reason().map_or("", |r| r.as_str()),
            })
            .inc();
        if let Some((_, per_job)) = known {
            let cost = &settlement.cost;
            per_job.run.observe(cost.run.as_secs_f64());
            per_job.fuel.observe(cost.fuel as f64);
            if let Some(wait) = cost.wait {
                per_job.wait.observe(wait.as_secs_f64());
            }
        }
    }

    /// Whether the queue gauges are older than `max_age` (or were never read); the caller
    /// then reads the queue's stats and hands them to [`Metrics::queue_stats`].
    pub fn queue_stale(&self, max_age: Duration) -> bool {
        let read = self.queue_read.lock().unwrap_or_else(|e| e.into_inner());
        read.is_none_or(|at| at.elapsed() >= max_age)
    }

    /// Sets the queue gauges from the queue's stats.
    pub fn queue_stats(&self, stats: &Stats) {
        self.jobs.clear();
        let mut dead = 0;
        for (name, state, count) in &stats.counts {
            let count = i64::try_from(*count).unwrap_or(i64::MAX);
            if state == "dead" {
                dead += count;
            }
            self.jobs
                .get_or_create(&StateLabels {
                    job_name: name.clone(),
                    state: state.clone(),
                })
                .set(count);
        }
        self.dead.set(dead);
        self.oldest_due
            .set(stats.oldest_queued_age_ms.unwrap_or(0).max(0) as f64 / 1000.0);
        self.paused.clear();
        for name in &stats.paused {
            self.paused
                .get_or_create(&JobLabels {
                    job_name: name.clone(),
                })
                .set(1);
        }
        *self.queue_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The metrics as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One finished delivery as a CloudWatch embedded-metric-format log line (one JSON object):
/// `JobsFinished` (Count), `RunTime` and `WaitTime` (Milliseconds) and `Fuel`, with the
/// dimensions `job` (its label, as [`Metrics::job_label`] gives it), `outcome` and `reason`
/// (`none` for done), in `namespace`.
pub fn emf_line(settlement: &Settlement, job: &str, namespace: &str, at: SystemTime) -> String {
    let cost = &settlement.cost;
    let mut metrics = vec![
        json!({"Name": "JobsFinished", "Unit": "Count"}),
        json!({"Name": "RunTime", "Unit": "Milliseconds"}),
        json!({"Name": "Fuel", "Unit": "None"}),
    ];
    let mut line = json!({
        "job": job,
        "outcome": settlement.outcome.kind(),
        "reason": settlement.outcome.reason().map_or("none", |r| r.as_str()),
        "jobId": settlement.delivered.id,
        "JobsFinished": 1,
        "RunTime": cost.run.as_secs_f64() * 1000.0,
        "Fuel": cost.fuel,
    });
    if let Some(wait) = cost.wait {
        metrics.push(json!({"Name": "WaitTime", "Unit": "Milliseconds"}));
        line["WaitTime"] = json!(wait.as_secs_f64() * 1000.0);
    }
    line["_aws"] = json!({
        "Timestamp": to_ms(at),
        "CloudWatchMetrics": [{
            "Namespace": namespace,
            "Dimensions": [["job", "outcome", "reason"]],
            "Metrics": metrics,
        }],
    });
    line.to_string()
}
