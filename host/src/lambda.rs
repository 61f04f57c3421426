//! The AWS Lambda runtime: the same binary is the `bootstrap` of a custom runtime
//! (`provided.al2023`). Engine and handlers are built once, before the first invocation.
//!
//! - An SQS event: records run concurrently (bounded; the records of one FIFO group in
//!   order, and after a failure the rest of that group is not run); the answer is an
//!   `SqsBatchResponse` whose `batchItemFailures` lists every record to be delivered again
//!   (retried, hidden until its `notBefore`, or not settled), and none that are done or
//!   dead-lettered. A retry changes the record's visibility to its backoff first; a dead
//!   letter is sent to the dead-letter queue (`JOBHOST_DLQ_URL`, else the source queue's
//!   RedrivePolicy target) with its reason, and then counts as handled. The function needs
//!   `FunctionResponseTypes: [ReportBatchItemFailures]`, or Lambda deletes failed records.
//! - A direct invocation `{"job": NAME, "payload": {...}}` (an EventBridge schedule, say)
//!   runs once: its report is the answer when done, a function error otherwise.
//!
//! Each job's deadline is the invocation's deadline less a margin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;

use crate::dispatch::{Delivery, Dispatcher};
use crate::outcome::{Outcome, Report};
use crate::queue::sqs::{MAX_HOP, SqsOptions, SqsQueue, early_receives, not_before_of};
use crate::queue::{Action, Delivered, Message, QueueError};

/// The engine settings the Lambda host and `jobhost package` share, so the packaged
/// artifacts are found in the cache: an explicit target triple (no host CPU detection).
pub fn lambda_engine_options(target: &str) -> crate::EngineOptions {
    crate::EngineOptions {
        target: Some(target.to_string()),
        pool_instances: 64,
        ..crate::EngineOptions::default()
    }
}

/// This binary's own target triple.
pub fn native_triple() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64-unknown-linux-gnu"
    } else {
        "x86_64-unknown-linux-gnu"
    }
}

/// A direct invocation's function error: its `errorType` says which kind.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The job did not end done; the message is the job's report, as JSON.
    #[error("{0}")]
    JobNotDone(String),
    /// The event has a shape jobhost does not know.
    #[error("{0}")]
    UnknownEvent(String),
}

impl InvocationError {
    /// The `errorType` Lambda shows.
    pub fn error_type(&self) -> &'static str {
        match self {
            InvocationError::JobNotDone(_) => "JobNotDone",
            InvocationError::UnknownEvent(_) => "UnknownEvent",
        }
    }
}

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(error: InvocationError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: error.error_type().into(),
            error_message: error.to_string(),
        }
    }
}

/// The folders searched for handlers when `JOBHOST_PLUGINS` is not set.
pub const DEFAULT_PLUGIN_DIRS: [&str; 2] = ["/var/task/handlers", "/opt/handlers"];

/// The Lambda side of the host.
pub struct LambdaHost {
    dispatcher: Arc<Dispatcher>,
    client: aws_sdk_sqs::Client,
    dlq_url: Option<String>,
    /// Where a direct invocation's follow-up jobs go.
    children_url: Option<String>,
    concurrency: usize,
    margin: Duration,
    /// The source queues seen so far, by ARN.
    queues: tokio::sync::Mutex<HashMap<String, Arc<SqsQueue>>>,
}

/// One record, read.
struct Record {
    delivered: Delivered,
    arn: String,
}

/// What became of one record.
enum Fate {
    /// Ran: its report.
    Ran(Box<Report>),
    /// Not run: received before its `notBefore`; hide it this long.
    Early(Duration),
    /// Not run: an earlier record of its FIFO group failed.
    Held,
}

impl LambdaHost {
    /// A host over `dispatcher`; `concurrency` records run at once.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        client: aws_sdk_sqs::Client,
        dlq_url: Option<String>,
        concurrency: usize,
        margin: Duration,
    ) -> Self {
        Self {
            dispatcher,
            client,
            dlq_url,
            children_url: None,
            concurrency: concurrency.max(1),
            margin,
            queues: tokio::sync::Mutex::default(),
        }
    }

    /// Sends the follow-up jobs of direct invocations to this queue (without one, a direct
    /// invocation that enqueues jobs fails, rather than dropping them).
    pub fn with_children_queue(mut self, url: Option<String>) -> Self {
        self.children_url = url;
        self
    }

    /// Handles one invocation's event.
    pub async fn handle(
        &self,
        event: Value,
        deadline: SystemTime,
    ) -> Result<Value, InvocationError> {
        let is_sqs = event["Records"]
            .as_array()
            .and_then(|r| r.first())
            .is_some_and(|r| r["eventSource"] == "aws:sqs");
        if is_sqs {
            let event: SqsEvent = serde_json::from_value(event).map_err(|e| {
                InvocationError::UnknownEvent(format!(
                    "an SQS event whose records do not parse: {e}"
                ))
            })?;
            let response = self.handle_sqs(event, deadline).await;
            return serde_json::to_value(response)
                .map_err(|e| InvocationError::JobNotDone(e.to_string()));
        }
        if event.get("job").is_some() {
            return self
                .handle_direct(event, deadline)
                .await
                .map_err(InvocationError::JobNotDone);
        }
        Err(InvocationError::UnknownEvent(format!(
            "unknown event ({}): jobhost understands SQS events (Records with eventSource \
             aws:sqs) and direct invocations {{\"job\": NAME, \"payload\": {{...}}}}",
            describe_shape(&event)
        )))
    }

    async fn handle_direct(&self, event: Value, deadline: SystemTime) -> Result<Value, String> {
        let body = event.to_string();
        let delivery = Delivery {
            deadline: Some(deadline - self.margin),
            ..Delivery::default()
        };
        // Dispatch blocks on its own runtime: run it off this runtime's threads.
        let report = std::thread::scope(|scope| {
            scope
                .spawn(|| self.dispatcher.dispatch(body.as_bytes(), &delivery))
                .join()
        })
        .map_err(|_| "the job's thread panicked".to_string())?;
        if let (Outcome::Done { .. }, false) = (&report.outcome, report.enqueued.is_empty()) {
            let Some(url) = self.children_url.clone() else {
                return Err(format!(
                    "the job enqueued {} follow-up jobs, but a direct invocation has no queue for \
                     them: set JOBHOST_SQS_URL",
                    report.enqueued.len()
                ));
            };
            let Action::Done { children, .. } = Action::from_report(&report, SystemTime::now())
            else {
                return Err("unreachable: a done report".into());
            };
            let queue = SqsQueue::producer(
                self.client.clone(),
                SqsOptions::new(url),
                Arc::new(crate::clock::SystemClock),
            )
            .await
            .map_err(|e| e.to_string())?;
            crate::queue::Queue::enqueue(&queue, children)
                .await
                .map_err(|e| format!("follow-up jobs not sent: {e}"))?;
        }
        match report.outcome {
            Outcome::Done { .. } => Ok(report.to_json()),
            _ => Err(report.to_json().to_string()),
        }
    }

    /// Handles an SQS batch.
    pub async fn handle_sqs(&self, event: SqsEvent, deadline: SystemTime) -> SqsBatchResponse {
        let mut failures: Vec<String> = Vec::new();
        let mut records = Vec::with_capacity(event.records.len());
        for (index, message) in event.records.into_iter().enumerate() {
            match read_record(message) {
                Ok(record) => records.push(record),
                // Without an id the record cannot even be reported; without a receipt it
                // cannot be settled: report it to be delivered again.
                Err(Some(id)) => failures.push(id),
                Err(None) => {
                    // An empty identifier makes Lambda deliver the whole batch again.
                    tracing::error!(index, "an SQS record without a messageId");
                    failures.push(String::new());
                }
            }
        }
        let fates =
            tokio::task::block_in_place(|| self.run_records(&records, deadline - self.margin));
        let mut by_queue: HashMap<&str, Vec<(&Record, Fate)>> = HashMap::new();
        for (record, fate) in records.iter().zip(fates) {
            by_queue
                .entry(&record.arn)
                .or_default()
                .push((record, fate));
        }
        for (arn, items) in by_queue {
            // Records done without follow-up jobs need no SQS call: Lambda deletes them.
            let quiet = items.iter().all(|(_, fate)| match fate {
                Fate::Ran(report) => {
                    matches!(report.outcome, Outcome::Done { .. }) && report.enqueued.is_empty()
                }
                _ => false,
            });
            if quiet {
                continue;
            }
            match self.queue(arn).await {
                Ok(queue) => failures.extend(settle(&queue, items).await),
                Err(error) => {
                    tracing::error!(%error, arn, "cannot reach the source queue; the batch will be delivered again");
                    failures.extend(items.iter().map(|(r, _)| r.delivered.id.clone()));
                }
            }
        }
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures
            .into_iter()
            .map(|id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                failure
            })
            .collect();
        response
    }

    /// Runs the records (blocking; on up to `concurrency` threads), each with `deadline`.
    fn run_records(&self, records: &[Record], deadline: SystemTime) -> Vec<Fate> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut fates: Vec<Option<Fate>> = Vec::with_capacity(records.len());
        // Units run in order inside; a unit is one record, or one FIFO group's records.
        let mut units: Vec<Vec<usize>> = Vec::new();
        let mut by_group: HashMap<&str, usize> = HashMap::new();
        // FIFO groups with a record not yet due: the rest of the group waits for it.
        let mut blocked: Vec<&str> = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let body = match &record.delivered.message {
                Message::Raw(body) => body.as_slice(),
                Message::Envelope(_) => &[],
            };
            let group = record.delivered.group.as_deref();
            if group.is_some_and(|g| blocked.contains(&g)) {
                fates.push(Some(Fate::Held));
                continue;
            }
            match not_before_of(body).filter(|due| *due > now) {
                Some(due) => {
                    blocked.extend(group);
                    fates.push(Some(Fate::Early(
                        Duration::from_millis(due - now).min(MAX_HOP),
                    )))
                }
                None => {
                    fates.push(None);
                    match record.delivered.group.as_deref() {
                        Some(group) => match by_group.get(group) {
                            Some(&unit) => units[unit].push(i),
                            None => {
                                by_group.insert(group, units.len());
                                units.push(vec![i]);
                            }
                        },
                        None => units.push(vec![i]),
                    }
                }
            }
        }
        let run_unit = |unit: &[usize]| -> Vec<(usize, Fate)> {
            let mut out = Vec::with_capacity(unit.len());
            let mut held = false;
            for &i in unit {
                if held {
                    out.push((i, Fate::Held));
                    continue;
                }
                let report = self.run_one(&records[i].delivered, deadline);
                held = !matches!(report.outcome, Outcome::Done { .. }) && unit.len() > 1;
                out.push((i, Fate::Ran(Box::new(report))));
            }
            out
        };
        // Dispatch blocks on its own runtime: run it on plain threads, never on this
        // runtime's.
        let results: Vec<(usize, Fate)> = {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let threads = self.concurrency.min(units.len());
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut mine = Vec::new();
                            loop {
                                let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let Some(unit) = units.get(u) else { break };
                                mine.extend(run_unit(unit));
                            }
                            mine
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        for (i, fate) in results {
            fates[i] = Some(fate);
        }
        // Every index got a fate above; a missing one (a panicked thread) is held.
        fates.into_iter().map(|f| f.unwrap_or(Fate::Held)).collect()
    }

    fn run_one(&self, delivered: &Delivered, deadline: SystemTime) -> Report {
        let delivery = Delivery {
            fallback_id: Some(delivered.id.clone()),
            attempt: Some(delivered.attempt),
            deadline: Some(deadline),
            ..Delivery::default()
        };
        match &delivered.message {
            Message::Raw(body) => self.dispatcher.dispatch(body, &delivery),
            Message::Envelope(envelope) => self
                .dispatcher
                .dispatch_envelope(envelope.clone(), &delivery),
        }
    }

    async fn queue(&self, arn: &str) -> Result<Arc<SqsQueue>, QueueError> {
        let mut queues = self.queues.lock().await;
        if let Some(queue) = queues.get(arn) {
            return Ok(queue.clone());
        }
        let url = crate::queue::sqs::url_of_arn(&self.client, arn).await?;
        let mut options = SqsOptions::new(url);
        options.dlq_url = self.dlq_url.clone();
        let queue = Arc::new(
            SqsQueue::connect(
                self.client.clone(),
                options,
                Arc::new(crate::clock::SystemClock),
            )
            .await?,
        );
        queues.insert(arn.to_string(), queue.clone());
        Ok(queue)
    }

    /// The dispatcher (for benchmarks and tests).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }
}

/// Reads a record; `Err(Some(id))` when it cannot be run but can be reported.
fn read_record(message: SqsMessage) -> Result<Record, Option<String>> {
    let id = message.message_id.ok_or(None)?;
    let (Some(receipt), Some(arn)) = (message.receipt_handle, message.event_source_arn) else {
        return Err(Some(id));
    };
    let number = |name: &str| {
        message
            .attributes
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
    };
    let body = message.body.unwrap_or_default().into_bytes();
    let receives = number("ApproximateReceiveCount").unwrap_or(1);
    let hops = early_receives(
        not_before_of(&body),
        number("ApproximateFirstReceiveTimestamp"),
        MAX_HOP,
    );
    let attempt = u32::try_from(receives.saturating_sub(hops).max(1)).unwrap_or(u32::MAX);
    Ok(Record {
        delivered: Delivered {
            id,
            receipt,
            attempt,
            message: Message::Raw(body),
            group: message.attributes.get("MessageGroupId").cloned(),
        },
        arn,
    })
}

/// Applies the fates of one source queue's records; returns the ids to report as failures.
async fn settle(queue: &SqsQueue, items: Vec<(&Record, Fate)>) -> Vec<String> {
    let now = SystemTime::now();
    let mut failures = Vec::new();
    let mut hide = Vec::new();
    let mut dead = Vec::new();
    let mut children = Vec::new();
    for (record, fate) in items {
        let delivered = &record.delivered;
        match fate {
            Fate::Held => failures.push(delivered.id.clone()),
            Fate::Early(wait) => {
                hide.push((delivered.receipt.clone(), wait));
                failures.push(delivered.id.clone());
            }
            Fate::Ran(report) => match Action::from_report(&report, now) {
                Action::Done { children: jobs, .. } => {
                    if !jobs.is_empty() {
                        children.push((delivered.id.clone(), jobs));
                    }
                }
                Action::Retry { at, .. } => {
                    let wait = at.duration_since(now).unwrap_or_default();
                    hide.push((delivered.receipt.clone(), wait.min(MAX_HOP)));
                    failures.push(delivered.id.clone());
                }
                Action::DeadLetter { reason, message } => {
                    dead.push((delivered.clone(), reason, message));
                }
            },
        }
    }
    for (id, jobs) in children {
        // A parent whose follow-up jobs could not be sent runs again rather than losing them.
        if let Err(error) = crate::queue::Queue::enqueue(queue, jobs).await {
            tracing::error!(%error, job.id = %id, "follow-up jobs not sent; the job will run again");
            failures.push(id);
        }
    }
    let dead_ids: Vec<(String, String)> = dead
        .iter()
        .map(|(d, _, _)| (d.receipt.clone(), d.id.clone()))
        .collect();
    let moved = queue.dead_letter(dead).await;
    for (receipt, id) in dead_ids {
        if !moved.contains(&receipt) {
            failures.push(id);
        }
    }
    if !hide.is_empty() {
        let url = queue.url().to_string();
        queue.change_visibility(&url, hide).await;
    }
    failures
}

/// A short description of an event's shape for an error message: its top-level keys, or
/// its JSON type.
fn describe_shape(event: &Value) -> String {
    match event {
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().take(8).map(String::as_str).collect();
            format!("an object with keys {}", keys.join(", "))
        }
        Value::Array(_) => "an array".into(),
        Value::String(_) => "a string".into(),
        Value::Number(_) => "a number".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Null => "null".into(),
    }
}

/// The handlers folder: `JOBHOST_PLUGINS`, else the first of [`DEFAULT_PLUGIN_DIRS`] that
/// exists.
pub fn plugins_dir(explicit: Option<std::path::PathBuf>) -> std::path::PathBuf {
    explicit.unwrap_or_else(|| {
        DEFAULT_PLUGIN_DIRS
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(|| DEFAULT_PLUGIN_DIRS[0].into())
    })
}

/// Runs the Lambda runtime loop (never returns while the Runtime API answers).
pub async fn run(host: Arc<LambdaHost>) -> Result<(), lambda_runtime::Error> {
    let service = lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<Value>| {
        let host = host.clone();
        async move {
            let deadline = UNIX_EPOCH + Duration::from_millis(event.context.deadline);
            let result = host.handle(event.payload, deadline).await;
            if let Err(error) = &result {
                tracing::warn!(error_type = error.error_type(), error = %error, "the invocation answers a function error");
            }
            result
        }
    });
    lambda_runtime::run(service).await
}
