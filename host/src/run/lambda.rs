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
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::Value;

use crate::clock::Clock;
use crate::dispatch::{Delivery, Dispatcher};
use crate::job::{Outcome, Reason};
use crate::queue::sqs::{
    Acknowledge, MAX_HOP, Sorted, SqsOptions, SqsQueue, SqsRecord, sort_records,
};
use crate::queue::{Delivered, NewJob, Queue as _, QueueError};
use crate::run::deliver::{Executor, Observers, Ran, units};

/// The engine settings the Lambda host and `jobhost package` share, so the packaged
/// artifacts are found in the cache: an explicit target triple (no host CPU detection).
pub fn lambda_engine_options(target: &str) -> crate::engine::EngineOptions {
    crate::engine::EngineOptions {
        target: Some(target.to_string()),
        pool_instances: 64,
        ..crate::engine::EngineOptions::default()
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
    /// An event of a known source (S3, EventBridge) that no handler's trigger matches.
    #[error("{0}")]
    Unrouted(String),
}

impl InvocationError {
    /// The `errorType` Lambda shows.
    pub fn error_type(&self) -> &'static str {
        match self {
            InvocationError::JobNotDone(_) => "JobNotDone",
            InvocationError::UnknownEvent(_) => "UnknownEvent",
            InvocationError::Unrouted(_) => "Unrouted",
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

/// How the Lambda host runs.
#[derive(Clone, Debug)]
pub struct LambdaOptions {
    /// The dead-letter queue for jobs that fail for good (default: the source queue's
    /// RedrivePolicy target).
    pub dlq_url: Option<String>,
    /// Records run at once.
    pub concurrency: usize,
    /// Time kept back from each job's deadline before the invocation's own.
    pub margin: Duration,
    /// The CloudWatch namespace of the embedded-metric-format line printed for each job;
    /// none prints no such lines.
    pub metrics_namespace: Option<String>,
}

/// The Lambda side of the host: an adapter from Lambda events to the delivery rules the
/// poller uses ([`Executor`]) and the SQS backend's settlement ([`SqsQueue::apply`]).
pub struct LambdaHost {
    executor: Arc<Executor>,
    client: aws_sdk_sqs::Client,
    options: LambdaOptions,
    /// Where a direct invocation's follow-up jobs go (built once, at init).
    children: Option<Arc<SqsQueue>>,
    /// The enqueue API served to API Gateway (HTTP API, payload v2) and function URL
    /// requests, sending to the children queue.
    api: Option<axum::Router>,
    /// The source queues seen so far, by ARN.
    queues: tokio::sync::Mutex<HashMap<String, Arc<SqsQueue>>>,
}

impl LambdaHost {
    /// A host over `dispatcher`, reading time from `clock`.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        clock: Arc<dyn Clock>,
        client: aws_sdk_sqs::Client,
        options: LambdaOptions,
    ) -> Self {
        Self {
            executor: Arc::new(Executor::new(dispatcher, clock).observed_by(Observers {
                emf_namespace: options.metrics_namespace.clone(),
                destination: Some((
                    "aws_sqs",
                    std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default(),
                )),
                ..Observers::default()
            })),
            client,
            options: LambdaOptions {
                concurrency: options.concurrency.max(1),
                ..options
            },
            children: None,
            api: None,
            queues: tokio::sync::Mutex::default(),
        }
    }

    /// Sends the follow-up jobs of direct invocations to this queue (without one, a direct
    /// invocation that enqueues jobs fails, rather than dropping them).
    pub fn with_children_queue(mut self, queue: Option<Arc<SqsQueue>>) -> Self {
        self.api = queue.as_ref().map(|queue| {
            crate::run::http::send_router(crate::run::http::SendParts {
                queue: queue.clone(),
                clock: self.executor.clock().clone(),
                dispatcher: self.executor.dispatcher().clone(),
                metrics: None,
                destination: queue
                    .url()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            })
        });
        self.children = queue;
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
        if event["requestContext"]["http"]["method"].is_string() {
            return Ok(self.handle_http(event).await);
        }
        let envelope = ["job", "type", "jobName"]
            .iter()
            .any(|k| event.get(k).is_some_and(Value::is_string));
        if envelope || self.dispatcher().routes().route(&event).is_some() {
            return self.handle_direct(event, deadline).await;
        }
        Err(InvocationError::UnknownEvent(format!(
            "unknown event ({}): jobhost understands SQS events (Records with eventSource \
             aws:sqs), S3 and EventBridge events, and direct invocations \
             {{\"job\": NAME, \"payload\": {{...}}}}",
            describe_shape(&event)
        )))
    }

    /// Answers an API Gateway HTTP API (payload v2) or function URL request with the
    /// enqueue API of `run --http` in front of SQS ([`crate::run::http::send_router`]).
    async fn handle_http(&self, event: Value) -> Value {
        use base64::Engine as _;
        use tower::ServiceExt as _;
        let Some(api) = self.api.clone() else {
            return http_answer(
                503,
                &serde_json::json!({"error": "this function has no queue to send jobs to: set JOBHOST_SQS_URL"}),
            );
        };
        let context = &event["requestContext"];
        let method = context["http"]["method"].as_str().unwrap_or("GET");
        let mut path = event["rawPath"]
            .as_str()
            .or(context["http"]["path"].as_str())
            .unwrap_or("/")
            .to_string();
        // A named stage's requests carry it first in the path.
        if let Some(stage) = context["stage"].as_str().filter(|s| *s != "$default")
            && let Some(rest) = path.strip_prefix(&format!("/{stage}"))
            && (rest.is_empty() || rest.starts_with('/'))
        {
            path = if rest.is_empty() {
                "/".into()
            } else {
                rest.to_string()
            };
        }
        if let Some(query) = event["rawQueryString"].as_str().filter(|q| !q.is_empty()) {
            path = format!("{path}?{query}");
        }
        let body = event["body"].as_str().unwrap_or_default();
        let body = if event["isBase64Encoded"].as_bool() == Some(true) {
            match base64::engine::general_purpose::STANDARD.decode(body) {
                Ok(bytes) => bytes,
                Err(e) => {
                    return http_answer(
                        400,
                        &serde_json::json!({"error": format!("the body is not base64: {e}")}),
                    );
                }
            }
        } else {
            body.as_bytes().to_vec()
        };
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path.as_str());
        if let Some(headers) = event["headers"].as_object() {
            for (name, value) in headers {
                if let Some(value) = value.as_str() {
                    request = request.header(name.as_str(), value);
                }
            }
        }
        let request = match request.body(axum::body::Body::from(body)) {
            Ok(request) => request,
            Err(e) => {
                return http_answer(
                    400,
                    &serde_json::json!({"error": format!("bad request: {e}")}),
                );
            }
        };
        let Ok(response) = api.oneshot(request).await;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        serde_json::json!({
            "statusCode": status,
            "headers": {"content-type": content_type},
            "body": String::from_utf8_lossy(&body),
            "isBase64Encoded": false,
        })
    }

    /// Runs a direct invocation: an envelope, or an event routed by the triggers (one job
    /// runs here; several are sent to `JOBHOST_SQS_URL`).
    async fn handle_direct(
        &self,
        event: Value,
        deadline: SystemTime,
    ) -> Result<Value, InvocationError> {
        let body = event.to_string();
        let delivery = Delivery {
            deadline: Some(deadline - self.options.margin),
            ..Delivery::default()
        };
        // Dispatch blocks on its own runtime: run it off this runtime's threads.
        let dispatcher = self.executor.dispatcher();
        let report = std::thread::scope(|scope| {
            scope
                .spawn(|| dispatcher.dispatch(body.as_bytes(), &delivery))
                .join()
        })
        .map_err(|_| InvocationError::JobNotDone("the job's thread panicked".to_string()))?;
        if let Outcome::DeadLetter {
            reason: Reason::Unrouted,
            message,
        } = &report.outcome
        {
            return Err(InvocationError::Unrouted(message.clone()));
        }
        if report.outcome.is_done() && !report.enqueued.is_empty() {
            let Some(queue) = &self.children else {
                return Err(InvocationError::JobNotDone(format!(
                    "the job enqueued {} follow-up jobs, but a direct invocation has no queue for \
                     them: set JOBHOST_SQS_URL",
                    report.enqueued.len()
                )));
            };
            let now = self.executor.clock().now();
            let children = report
                .enqueued
                .iter()
                .map(|child| NewJob::follow_up(child.clone(), &report.job_id, now))
                .collect();
            queue.enqueue(children).await.map_err(|e| {
                InvocationError::JobNotDone(format!("follow-up jobs not sent: {e}"))
            })?;
        }
        match report.outcome {
            Outcome::Done { .. } => Ok(report.to_json()),
            _ => Err(InvocationError::JobNotDone(report.to_json().to_string())),
        }
    }

    /// Handles an SQS batch: the records are sorted and run by the same rules as the
    /// poller's deliveries, and settled per source queue; the answer lists every record to
    /// be delivered again.
    pub async fn handle_sqs(&self, event: SqsEvent, deadline: SystemTime) -> SqsBatchResponse {
        let mut failures: Vec<String> = Vec::new();
        // Records by source queue, in the order received.
        let mut by_queue: Vec<(String, Vec<SqsRecord>)> = Vec::new();
        for (index, message) in event.records.into_iter().enumerate() {
            match read_record(message) {
                Ok((arn, record)) => match by_queue.iter_mut().find(|(a, _)| *a == arn) {
                    Some((_, records)) => records.push(record),
                    None => by_queue.push((arn, vec![record])),
                },
                // Without a receipt or a source it cannot be settled: deliver it again.
                Err(Some(id)) => failures.push(id),
                Err(None) => {
                    // An empty identifier makes Lambda deliver the whole batch again.
                    tracing::error!(index, "an SQS record without a messageId");
                    failures.push(String::new());
                }
            }
        }
        let now = self.executor.clock().now();
        let mut due: Vec<Delivered> = Vec::new();
        let mut sources: Vec<Source> = Vec::new();
        for (arn, records) in by_queue {
            let mut sorted = sort_records(records, now, MAX_HOP);
            let run = std::mem::take(&mut sorted.run);
            let ran = run
                .iter()
                .map(|d| (d.receipt.clone(), d.id.clone()))
                .collect();
            due.extend(run);
            sources.push(Source { arn, sorted, ran });
        }
        let deadline = deadline - self.options.margin;
        let executor = self.executor.clone();
        let concurrency = self.options.concurrency;
        let mut ran =
            tokio::task::block_in_place(|| run_units(&executor, due, deadline, concurrency));
        for source in sources {
            failures.extend(self.settle(source, &mut ran).await);
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

    /// Settles one source queue's records; returns the ids to deliver again.
    async fn settle(&self, source: Source, ran: &mut HashMap<String, Ran>) -> Vec<String> {
        let Source {
            arn,
            sorted,
            ran: ran_ids,
        } = source;
        let arn = arn.as_str();
        let mut failures: Vec<String> = sorted.held.iter().map(|d| d.id.clone()).collect();
        failures.extend(sorted.early.iter().map(|(d, _)| d.id.clone()));
        let mut settlements = Vec::new();
        for (receipt, id) in ran_ids {
            match ran.remove(&receipt) {
                Some(Ran::Settled(settlement)) => {
                    if matches!(settlement.outcome, Outcome::Retry { .. }) {
                        failures.push(id);
                    }
                    settlements.push(settlement);
                }
                // Held behind a failure of its group, or lost with a panicked thread.
                Some(Ran::Unstarted(_)) | None => failures.push(id),
            }
        }
        // Records done without follow-up jobs need no SQS call: Lambda deletes them.
        let quiet = sorted.early.is_empty()
            && settlements
                .iter()
                .all(|s| s.outcome.is_done() && s.children.is_empty());
        if quiet {
            return failures;
        }
        let queue = match self.queue(arn).await {
            Ok(queue) => queue,
            Err(error) => {
                tracing::error!(%error, arn, "cannot reach the source queue; its unsettled records will be delivered again");
                failures.extend(
                    settlements
                        .iter()
                        .filter(|s| !(s.outcome.is_done() && s.children.is_empty()))
                        .filter(|s| !matches!(s.outcome, Outcome::Retry { .. }))
                        .map(|s| s.delivered.id.clone()),
                );
                return failures;
            }
        };
        if !sorted.early.is_empty() {
            queue.hide(sorted.early).await;
        }
        let ids: HashMap<String, String> = settlements
            .iter()
            .map(|s| (s.delivered.receipt.clone(), s.delivered.id.clone()))
            .collect();
        let kept = queue.apply(settlements, Acknowledge::ByLambda).await;
        failures.extend(kept.iter().filter_map(|receipt| ids.get(receipt).cloned()));
        failures
    }

    async fn queue(&self, arn: &str) -> Result<Arc<SqsQueue>, QueueError> {
        let mut queues = self.queues.lock().await;
        if let Some(queue) = queues.get(arn) {
            return Ok(queue.clone());
        }
        let url = crate::queue::sqs::url_of_arn(&self.client, arn).await?;
        let mut options = SqsOptions::new(url);
        options.dlq_url = self.options.dlq_url.clone();
        let queue = Arc::new(
            SqsQueue::connect(self.client.clone(), options, self.executor.clock().clone()).await?,
        );
        queues.insert(arn.to_string(), queue.clone());
        Ok(queue)
    }

    /// The dispatcher (for benchmarks and tests).
    pub fn dispatcher(&self) -> &Dispatcher {
        self.executor.dispatcher()
    }
}

/// One source queue's records in a batch.
struct Source {
    /// The queue's ARN.
    arn: String,
    /// Its records not run: early and held ones.
    sorted: Sorted,
    /// `(receipt, id)` of its records that ran.
    ran: Vec<(String, String)>,
}

/// Runs due deliveries (blocking) on up to `concurrency` threads, each unit in order;
/// returns what became of each, by receipt.
fn run_units(
    executor: &Executor,
    due: Vec<Delivered>,
    deadline: SystemTime,
    concurrency: usize,
) -> HashMap<String, Ran> {
    let units = units(due);
    let threads = concurrency.min(units.len());
    let (send, receive) = crossbeam_channel::unbounded();
    for unit in units {
        let _ = send.send(unit);
    }
    drop(send);
    let never = AtomicBool::new(false);
    // Dispatch blocks on its own runtime: run it on plain threads, never on this runtime's.
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while let Ok(unit) = receive.recv() {
                        executor.run_unit(unit, Some(deadline), &never, |ran| mine.push(ran));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .map(|ran| {
                let receipt = match &ran {
                    Ran::Settled(s) => s.delivered.receipt.clone(),
                    Ran::Unstarted(d) => d.receipt.clone(),
                };
                (receipt, ran)
            })
            .collect()
    })
}

/// Reads a record and its source queue's ARN; `Err(Some(id))` when it cannot be settled
/// but can be reported.
fn read_record(message: SqsMessage) -> Result<(String, SqsRecord), Option<String>> {
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
    let record = SqsRecord {
        receives: number("ApproximateReceiveCount").unwrap_or(1),
        first_receive_ms: number("ApproximateFirstReceiveTimestamp"),
        group: message.attributes.get("MessageGroupId").cloned(),
        sent_ms: number("SentTimestamp"),
        trace_parent: message
            .message_attributes
            .get("traceparent")
            .and_then(|v| v.string_value.clone()),
        body: message.body.unwrap_or_default().into_bytes(),
        id,
        receipt,
    };
    Ok((arn, record))
}

/// An API Gateway answer with a JSON body.
fn http_answer(status: u16, body: &Value) -> Value {
    serde_json::json!({
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": body.to_string(),
        "isBase64Encoded": false,
    })
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
            if crate::telemetry::enabled() {
                // The environment is frozen once the answer is out: export the spans now.
                let _ = tokio::task::spawn_blocking(crate::telemetry::flush).await;
            }
            result
        }
    });
    lambda_runtime::run(service).await
}
