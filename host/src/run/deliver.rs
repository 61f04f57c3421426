//! The delivery rules every way of running jobs shares (the poller and the Lambda runtime):
//!
//! - **Ordering units**: the deliveries of one ordering group (SQS FIFO) form one unit and
//!   run in the order received, one at a time; any other delivery is a unit of its own.
//! - **Hold after failure**: a delivery of a group that does not end done gives the rest
//!   of its unit back unstarted, so the group's order holds across the retry.
//! - **Gates**: a handler whose manifest sets `concurrency` runs at most that many jobs at
//!   once, whatever the number of workers.
//!
//! Main types: [`Executor`], [`Ran`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use crate::clock::Clock;
use crate::dispatch::{Delivery, Dispatcher};
use crate::metrics::{Metrics, emf_line};
use crate::queue::{Delivered, Message, Settlement};
use crate::run::live::Running;
use crate::telemetry;

/// What became of one delivery of a unit.
#[derive(Debug)]
pub enum Ran {
    /// It ran: what to do with it.
    Settled(Settlement),
    /// It was not started (an earlier delivery of its group failed, or the host is
    /// stopping): give it back.
    Unstarted(Delivered),
}

/// Splits a batch into units a worker runs in order: one per delivery, except that the
/// deliveries of one ordering group form one unit, in the order received.
pub fn units(batch: Vec<Delivered>) -> Vec<Vec<Delivered>> {
    let mut units: Vec<Vec<Delivered>> = Vec::with_capacity(batch.len());
    let mut by_group: HashMap<String, usize> = HashMap::new();
    for delivered in batch {
        match delivered.group.clone() {
            Some(group) => match by_group.get(&group) {
                Some(&index) => units[index].push(delivered),
                None => {
                    by_group.insert(group, units.len());
                    units.push(vec![delivered]);
                }
            },
            None => units.push(vec![delivered]),
        }
    }
    units
}

/// A per-handler limit on jobs running at once.
struct Gate {
    running: Mutex<u32>,
    freed: Condvar,
    limit: u32,
}

impl Gate {
    fn enter(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.limit {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
    }

    fn leave(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.freed.notify_one();
    }
}

/// Runs units of deliveries through the dispatcher under the rules above. Shared by every
/// worker thread of a host; blocking (call it from plain threads, not an async runtime's).
pub struct Executor {
    dispatcher: Arc<Dispatcher>,
    clock: Arc<dyn Clock>,
    gates: HashMap<String, Arc<Gate>>,
    observers: Observers,
}

/// Who watches and steers an executor's jobs, besides the queue: all off by default.
#[derive(Clone, Debug, Default)]
pub struct Observers {
    /// Counts every delivery.
    pub metrics: Option<Arc<Metrics>>,
    /// Prints a CloudWatch embedded-metric-format line on stdout for every delivery, in
    /// this namespace (Lambda).
    pub emf_namespace: Option<String>,
    /// Registers every job while it runs, so it can be steered (live progress,
    /// cancellation).
    pub running: Option<Arc<Running>>,
    /// The queue in the process spans: `messaging.system` (e.g. `aws_sqs`) and
    /// `messaging.destination.name` (default: `jobhost`, `jobhost`).
    pub destination: Option<(&'static str, String)>,
}

impl Executor {
    /// An executor with a gate for each handler whose manifest sets `concurrency`.
    pub fn new(dispatcher: Arc<Dispatcher>, clock: Arc<dyn Clock>) -> Self {
        let mut gates = HashMap::new();
        for plugin in dispatcher.plugins().plugins() {
            if let Some(limit) = plugin.manifest.concurrency {
                let gate = Arc::new(Gate {
                    running: Mutex::new(0),
                    freed: Condvar::new(),
                    limit,
                });
                for name in &plugin.names {
                    gates.insert(name.clone(), gate.clone());
                }
            }
        }
        Self {
            dispatcher,
            clock,
            gates,
            observers: Observers::default(),
        }
    }

    /// Reports to and is steered by `observers`.
    pub fn observed_by(mut self, observers: Observers) -> Self {
        self.observers = observers;
        self
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Runs one unit in order, handing each result to `out` as soon as it is known. Once
    /// `stopping` is set, the rest is handed back unstarted; so is the rest of a group
    /// after a delivery that did not end done. Each job must end by `deadline`, if any.
    pub fn run_unit(
        &self,
        unit: Vec<Delivered>,
        deadline: Option<SystemTime>,
        stopping: &AtomicBool,
        mut out: impl FnMut(Ran),
    ) {
        let mut unit = unit.into_iter();
        while let Some(delivered) = unit.next() {
            if stopping.load(Ordering::SeqCst) {
                out(Ran::Unstarted(delivered));
                continue;
            }
            let grouped = delivered.group.is_some();
            let settlement = self.process(delivered, deadline);
            let failed = !settlement.outcome.is_done();
            out(Ran::Settled(settlement));
            if failed && grouped {
                // Keep the group's order: the rest waits for this one's retry.
                for rest in unit.by_ref() {
                    out(Ran::Unstarted(rest));
                }
            }
        }
    }

    fn process(&self, delivered: Delivered, deadline: Option<SystemTime>) -> Settlement {
        let name = match &delivered.message {
            Message::Envelope(envelope) => Some(envelope.job.clone()),
            // Raw bodies (SQS) are parsed by dispatch; read just the name for the gate
            // and the span.
            Message::Raw(body) if !self.gates.is_empty() || telemetry::enabled() => {
                job_name(body).or_else(|| self.dispatcher.routes().single_job(body))
            }
            Message::Raw(_) => None,
        };
        let span = telemetry::enabled().then(|| {
            let (system, destination) = self
                .observers
                .destination
                .clone()
                .unwrap_or(("jobhost", "jobhost".into()));
            let job = Metrics::job_label(self.dispatcher.plugins(), name.as_deref());
            telemetry::process_span(
                job,
                &delivered.id,
                system,
                &destination,
                delivered.trace_parent.as_deref(),
            )
        });
        let _entered = span.as_ref().map(|s| s.enter());
        let live = self
            .observers
            .running
            .as_ref()
            .map(|r| r.start(&delivered.id));
        let delivery = Delivery {
            fallback_id: Some(delivered.id.clone()),
            attempt: Some(delivered.attempt),
            deadline,
            live,
            ..Delivery::default()
        };
        let gate = name.as_ref().and_then(|name| self.gates.get(name).cloned());
        if let Some(gate) = &gate {
            gate.enter();
        }
        let started = self.clock.now();
        if let Some(metrics) = &self.observers.metrics {
            metrics.started();
        }
        let report = match &delivered.message {
            Message::Envelope(envelope) => self
                .dispatcher
                .dispatch_envelope(envelope.clone(), &delivery),
            Message::Raw(body) => self.dispatcher.dispatch(body, &delivery),
        };
        if let Some(gate) = &gate {
            gate.leave();
        }
        if let Some(running) = &self.observers.running {
            running.finish(&delivered.id);
        }
        if let Some(span) = &span {
            trace_report(span, &report);
        }
        let wait = delivered
            .due
            .map(|due| started.duration_since(due).unwrap_or_default());
        let mut settlement = Settlement::of_report(delivered, report, self.clock.now());
        settlement.cost.wait = wait;
        if let Some(span) = &span {
            // Follow-up jobs are children of this delivery.
            let parent = telemetry::traceparent(span);
            for child in &mut settlement.children {
                child.trace_parent.clone_from(&parent);
            }
        }
        if let Some(metrics) = &self.observers.metrics {
            metrics.finished(&settlement);
        }
        if let Some(namespace) = &self.observers.emf_namespace {
            let job = Metrics::job_label(self.dispatcher.plugins(), settlement.job.as_deref());
            println!("{}", emf_line(&settlement, job, namespace, settlement.at));
        }
        settlement
    }
}

/// Puts what a delivery did on its process span: the outcome, the reason as `error.type`,
/// and the guest's log lines as events.
fn trace_report(span: &tracing::Span, report: &crate::job::Report) {
    span.record("jobhost.attempt", report.attempt);
    span.record("jobhost.outcome", report.outcome.kind());
    if let Some(reason) = report.outcome.reason() {
        span.record("error.type", reason.as_str());
        span.record("otel.status_code", "ERROR");
    }
    for line in &report.logs {
        tracing::info!(
            target: telemetry::TARGET,
            level = ?line.level,
            source = line.source,
            "{}",
            line.message
        );
    }
}

/// The job name of a raw envelope (`job`, or its aliases `type` and `jobName`).
fn job_name(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Name {
        #[serde(alias = "type", alias = "jobName")]
        job: String,
    }
    serde_json::from_slice::<Name>(body).ok().map(|n| n.job)
}
