//! The AWS SQS backend (standard and FIFO queues), and the SQS rules the Lambda runtime
//! shares with it.
//!
//! - Receive: long polling (up to 20 s, up to 10 messages a call); the runner keeps
//!   several calls in flight ([`Queue::receivers`]) and starts each call's jobs as soon as
//!   it returns; the lease is the message visibility, renewed by the runner
//!   through [`Queue::extend`] (`ChangeMessageVisibilityBatch`) while a job runs.
//! - Attempts: `ApproximateReceiveCount` (at least the real count), less the early receives
//!   of a delayed job (see below).
//! - Done: follow-up jobs are sent, then the message is deleted (`DeleteMessageBatch`).
//! - Retry: `ChangeMessageVisibility` to the backoff, at most [`MAX_HOP`] a hop and 12 h
//!   since the receive.
//! - Dead letter: the body is sent to the dead-letter queue with the reason as message
//!   attributes (`jobhost.reason`, `jobhost.error`, `jobhost.attempts`,
//!   `jobhost.source-message-id`), then deleted; it never burns the remaining receives.
//! - Delays: up to 15 minutes with `DelaySeconds` (standard queues); longer, or on FIFO
//!   queues, a `notBefore` in the envelope, and a receiver that gets it early hides it
//!   again (`ChangeMessageVisibility`, at most 12 h a hop) without running it.
//! - FIFO: `MessageGroupId` from the job's group (default: its name), deduplication id
//!   from its unique key (else its id); deliveries of one group run in order, one at a time.
//!
//! Every batch call's partial failures are handled per entry: a message that could not be
//! deleted or moved stays in the queue and comes back; nothing is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use serde_json::Value;

use super::{Delivered, Enqueued, Message, NewJob, Queue, QueueError, Settlement};
use crate::clock::Clock;
use crate::job::{Outcome, Reason};

/// SQS's longest visibility timeout (12 hours, counted from the receive).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// The longest one hop hides a message: 12 h less 20 minutes, since the 12 h count from a
/// receive that may be a Lambda timeout and a batching window ago.
pub const MAX_HOP: Duration = Duration::from_secs(12 * 3600 - 20 * 60);
/// SQS's longest `DelaySeconds` (15 minutes).
pub const MAX_DELAY_SECONDS: Duration = Duration::from_secs(15 * 60);
/// The most entries of one batch call.
const BATCH: usize = 10;
/// The longest error text kept in a dead-letter attribute (the attributes count toward
/// the message size).
const MAX_ERROR_ATTRIBUTE: usize = 1024;

/// How to reach and use a queue.
#[derive(Clone, Debug)]
pub struct SqsOptions {
    /// The queue URL.
    pub queue_url: String,
    /// The dead-letter queue URL (default: the queue's RedrivePolicy target).
    pub dlq_url: Option<String>,
    /// Long-polling wait of each receive call (at most 20 s).
    pub wait: Duration,
    /// The most receive calls in flight at once (each its own long poll).
    pub receive_loops: usize,
    /// The longest a message is hidden in one hop ([`MAX_HOP`]; shorter in tests).
    pub max_hide: Duration,
}

impl SqsOptions {
    /// Defaults for a queue URL: 20 s long polling, 4 receive loops, hops of [`MAX_HOP`].
    pub fn new(queue_url: impl Into<String>) -> Self {
        Self {
            queue_url: queue_url.into(),
            dlq_url: None,
            wait: Duration::from_secs(20),
            receive_loops: 4,
            max_hide: MAX_HOP,
        }
    }
}

impl SqsOptions {
    /// Refuses values SQS does not allow (nothing is clamped silently).
    pub fn check(&self) -> Result<(), QueueError> {
        if self.wait > Duration::from_secs(20) {
            return Err(QueueError(format!(
                "a long-polling wait of {:?} is over SQS's 20 s",
                self.wait
            )));
        }
        if self.max_hide < Duration::from_secs(1) || self.max_hide > MAX_HOP {
            return Err(QueueError(format!(
                "a hop of {:?} is outside 1 s to {:?}",
                self.max_hide, MAX_HOP
            )));
        }
        Ok(())
    }
}

/// A queue URL's facts, read once at start.
#[derive(Clone, Debug)]
struct QueueFacts {
    fifo: bool,
    visibility: Duration,
    dlq_url: Option<String>,
    dlq_fifo: bool,
}

/// The SQS queue.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    options: SqsOptions,
    facts: QueueFacts,
    clock: Arc<dyn Clock>,
    /// When each receipt was received (the 12 h visibility cap counts from there).
    received: Arc<Mutex<HashMap<String, Instant>>>,
}

fn sdk_error<E: std::error::Error>(what: &str, error: E) -> QueueError {
    // The SDK's Display is terse; its source chain says what went wrong.
    let mut text = format!("{what}: {error}");
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    QueueError(text)
}

/// A client from the standard AWS configuration chain (environment, profile, instance
/// role; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_SQS` honoured).
pub async fn client_from_env() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    Client::new(&config)
}

/// The URL of the queue an `arn:aws:sqs:REGION:ACCOUNT:NAME` names.
pub async fn url_of_arn(client: &Client, arn: &str) -> Result<String, QueueError> {
    let mut parts = arn.rsplitn(3, ':');
    let (Some(name), Some(account)) = (parts.next(), parts.next()) else {
        return Err(QueueError(format!("not an SQS queue ARN: {arn}")));
    };
    let out = client
        .get_queue_url()
        .queue_name(name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("GetQueueUrl {name}"), e))?;
    out.queue_url
        .ok_or_else(|| QueueError(format!("no URL for queue {name}")))
}

/// The URL of a queue by name (`sqs://NAME`).
pub async fn url_of_name(client: &Client, name: &str) -> Result<String, QueueError> {
    let out = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("GetQueueUrl {name}"), e))?;
    out.queue_url
        .ok_or_else(|| QueueError(format!("no URL for queue {name}")))
}

async fn attributes(client: &Client, url: &str) -> Result<HashMap<String, String>, QueueError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("GetQueueAttributes {url}"), e))?;
    Ok(out
        .attributes
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), v))
        .collect())
}

/// The dead-letter queue of `url`: `explicit`, or its RedrivePolicy's target.
pub async fn dead_letter_url(
    client: &Client,
    url: &str,
    explicit: Option<&str>,
) -> Result<String, QueueError> {
    if let Some(dlq) = explicit {
        return Ok(dlq.to_string());
    }
    let attrs = attributes(client, url).await?;
    let target = attrs
        .get("RedrivePolicy")
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
        .and_then(|p| p["deadLetterTargetArn"].as_str().map(str::to_string));
    match target {
        Some(arn) => url_of_arn(client, &arn).await,
        None => Err(QueueError(format!(
            "{url} has no dead-letter queue: pass --dlq-url or give the queue a RedrivePolicy \
             (jobs that fail for good must go somewhere)"
        ))),
    }
}

impl SqsQueue {
    /// Reads the queue's attributes (FIFO, visibility timeout, dead-letter queue) and
    /// checks that the dead-letter queue exists.
    pub async fn connect(
        client: Client,
        options: SqsOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        Self::open(client, options, clock, true).await
    }

    /// For enqueuing only: the dead-letter queue is not looked up.
    pub async fn producer(
        client: Client,
        options: SqsOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        Self::open(client, options, clock, false).await
    }

    async fn open(
        client: Client,
        options: SqsOptions,
        clock: Arc<dyn Clock>,
        consumer: bool,
    ) -> Result<Self, QueueError> {
        options.check()?;
        let attrs = attributes(&client, &options.queue_url).await?;
        let visibility = attrs
            .get("VisibilityTimeout")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(30), Duration::from_secs);
        let fifo = attrs.get("FifoQueue").is_some_and(|v| v == "true");
        let (dlq_url, dlq_fifo) = if consumer {
            let url =
                dead_letter_url(&client, &options.queue_url, options.dlq_url.as_deref()).await?;
            let fifo = attributes(&client, &url)
                .await?
                .get("FifoQueue")
                .is_some_and(|v| v == "true");
            (Some(url), fifo)
        } else {
            (None, false)
        };
        Ok(Self {
            client,
            options,
            facts: QueueFacts {
                fifo,
                visibility: visibility.max(Duration::from_secs(1)),
                dlq_url,
                dlq_fifo,
            },
            clock,
            received: Arc::default(),
        })
    }

    /// The queue's visibility timeout: the lease the runner renews.
    pub fn visibility_timeout(&self) -> Duration {
        self.facts.visibility
    }

    /// Whether it is a FIFO queue.
    pub fn is_fifo(&self) -> bool {
        self.facts.fifo
    }

    /// The dead-letter queue's URL (none for a producer).
    pub fn dead_letter_queue(&self) -> &str {
        self.facts.dlq_url.as_deref().unwrap_or("")
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.options.queue_url
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One `ReceiveMessage` long poll.
    async fn long_poll(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.options.queue_url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .wait_time_seconds(self.options.wait.as_secs() as i32)
            .visibility_timeout(secs(lease))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage", e))?;
        let received_at = Instant::now();
        let records = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let attrs = message.attributes.unwrap_or_default();
                let attr = |name: MessageSystemAttributeName| {
                    attrs.get(&name).and_then(|v| v.parse::<u64>().ok())
                };
                Some(SqsRecord {
                    id: message.message_id?,
                    receipt: message.receipt_handle?,
                    receives: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .unwrap_or(1),
                    first_receive_ms: attr(
                        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
                    ),
                    group: attrs
                        .get(&MessageSystemAttributeName::MessageGroupId)
                        .cloned(),
                    sent_ms: attr(MessageSystemAttributeName::SentTimestamp),
                    trace_parent: message
                        .message_attributes
                        .as_ref()
                        .and_then(|a| a.get("traceparent"))
                        .and_then(|v| v.string_value.clone()),
                    body: message.body.unwrap_or_default().into_bytes(),
                })
            })
            .collect();
        let sorted = sort_records(records, self.clock.now(), self.max_hide());
        {
            let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
            for delivered in &sorted.run {
                received.insert(delivered.receipt.clone(), received_at);
            }
        }
        if !sorted.early.is_empty() {
            tracing::debug!(
                count = sorted.early.len(),
                "hiding delayed jobs received before their time"
            );
            self.hide(sorted.early).await;
        }
        if !sorted.held.is_empty() {
            // Visible again at once; SQS holds them back while their group's head is hidden.
            self.hide(
                sorted
                    .held
                    .into_iter()
                    .map(|d| (d, Duration::ZERO))
                    .collect(),
            )
            .await;
        }
        Ok(sorted.run)
    }

    /// The longest one hop hides a message (checked to be at most [`MAX_HOP`]).
    fn max_hide(&self) -> Duration {
        self.options.max_hide
    }

    /// Hides each delivery for its duration (zero: visible again at once).
    pub async fn hide(&self, entries: Vec<(Delivered, Duration)>) {
        let entries = entries
            .into_iter()
            .map(|(d, wait)| (d.receipt, wait))
            .collect();
        self.change_visibility(&self.options.queue_url, entries)
            .await;
    }

    /// `ChangeMessageVisibilityBatch` for `(receipt, timeout)` pairs; entries that fail
    /// (a receipt no longer valid: the message was deleted or received again) are logged.
    async fn change_visibility(&self, url: &str, entries: Vec<(String, Duration)>) {
        for chunk in entries.chunks(BATCH) {
            let batch: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (receipt, timeout))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(secs(*timeout))
                        .build()
                        .ok()
                })
                .collect();
            let result = self
                .client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(batch))
                .send()
                .await
                .map(|out| out.failed)
                .map_err(|e| sdk_error("ChangeMessageVisibilityBatch", e));
            log_failures(
                result,
                "visibility not changed; the message comes back when its visibility ends",
            );
        }
    }

    /// `DeleteMessageBatch`; a message that could not be deleted comes back.
    async fn delete(&self, receipts: Vec<String>) {
        for chunk in receipts.chunks(BATCH) {
            let batch: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .ok()
                })
                .collect();
            let result = self
                .client
                .delete_message_batch()
                .queue_url(&self.options.queue_url)
                .set_entries(Some(batch))
                .send()
                .await
                .map(|out| out.failed)
                .map_err(|e| sdk_error("DeleteMessageBatch", e));
            log_failures(result, "not deleted; the message will be delivered again");
        }
    }

    /// Sends a body exactly as given (`jobhost enqueue --raw`: a dead letter's raw body
    /// replayed, a poison message reproduced); returns the message id. On a FIFO queue it
    /// goes to `group` (default `raw`) with a new deduplication id.
    pub async fn send_raw(
        &self,
        body: String,
        group: Option<String>,
    ) -> Result<String, QueueError> {
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.options.queue_url)
            .message_body(body);
        if self.facts.fifo {
            request = request
                .message_group_id(group.unwrap_or_else(|| "raw".into()))
                .message_deduplication_id(uuid::Uuid::now_v7().simple().to_string());
        }
        let out = request
            .send()
            .await
            .map_err(|e| sdk_error("SendMessage", e))?;
        Ok(out.message_id.unwrap_or_default())
    }

    /// Sends entries to `url` in batches; returns the indexes (into `entries`) that were
    /// sent.
    async fn send(
        &self,
        url: &str,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Result<Vec<usize>, QueueError> {
        let mut sent = Vec::with_capacity(entries.len());
        let mut last_error = None;
        for (chunk_index, chunk) in entries.chunks(BATCH).enumerate() {
            let base = chunk_index * BATCH;
            let batch: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let mut entry = entry.clone();
                    entry.id = (base + i).to_string();
                    entry
                })
                .collect();
            match self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(batch))
                .send()
                .await
            {
                Ok(out) => {
                    for ok in out.successful {
                        if let Ok(index) = ok.id.parse::<usize>() {
                            sent.push(index);
                        }
                    }
                    for entry in out.failed {
                        tracing::warn!(code = %entry.code, error = ?entry.message, "a message could not be sent");
                        last_error = Some(QueueError(format!(
                            "SendMessageBatch entry failed: {} {}",
                            entry.code,
                            entry.message.unwrap_or_default()
                        )));
                    }
                }
                Err(error) => last_error = Some(sdk_error("SendMessageBatch", error)),
            }
            // On a FIFO queue a later chunk must not overtake one that failed.
            if last_error.is_some() && self.facts.fifo && url == self.options.queue_url {
                break;
            }
        }
        if sent.is_empty()
            && let Some(error) = last_error
        {
            return Err(error);
        }
        sent.sort_unstable();
        Ok(sent)
    }

    fn entry_for(
        &self,
        job: &NewJob,
        now: SystemTime,
    ) -> Result<(String, SendMessageBatchRequestEntry), QueueError> {
        let id = job
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let delay = job
            .run_at
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or_default();
        let use_delay_seconds = !self.facts.fifo && !delay.is_zero() && delay <= MAX_DELAY_SECONDS;
        let mut envelope = serde_json::json!({"id": id, "job": job.name, "payload": job.payload,
            "enqueuedAt": millis(now)});
        if let Some(max) = job.max_attempts {
            envelope["maxAttempts"] = max.into();
        }
        if !delay.is_zero() && !use_delay_seconds {
            envelope["notBefore"] = millis(now + delay).into();
        }
        if let Some(trace_parent) = &job.trace_parent {
            envelope["traceparent"] = trace_parent.clone().into();
        }
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id("0")
            .message_body(envelope.to_string());
        if let Some(trace_parent) = &job.trace_parent {
            let attribute = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(trace_parent)
                .build()
                .map_err(|e| QueueError(e.to_string()))?;
            entry = entry.message_attributes("traceparent", attribute);
        }
        if use_delay_seconds {
            entry = entry.delay_seconds(secs(delay).max(1));
        }
        if self.facts.fifo {
            entry = entry
                .message_group_id(job.group.clone().unwrap_or_else(|| job.name.clone()))
                .message_deduplication_id(dedup_id(job.unique_key.as_deref().unwrap_or(&id)));
        }
        let entry = entry.build().map_err(|e| QueueError(e.to_string()))?;
        Ok((id, entry))
    }

    /// The 12 h visibility cap, counted from this receipt's receive.
    fn visibility_cap(&self, receipt: &str) -> Duration {
        let since = self
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(receipt)
            .map(Instant::elapsed)
            .unwrap_or_default();
        self.options
            .max_hide
            .min(MAX_VISIBILITY.saturating_sub(since + Duration::from_secs(60)))
    }

    /// Applies settlements: follow-up jobs of the whole batch are sent first (10 to a
    /// call), then retries are hidden for their backoff, dead letters moved to the
    /// dead-letter queue, and done deliveries acknowledged as `acknowledge` says. Returns
    /// the receipts still in the queue that were meant to leave it: done ones whose
    /// follow-up jobs were not sent, and dead letters that were not moved. They come back.
    pub async fn apply(&self, batch: Vec<Settlement>, acknowledge: Acknowledge) -> Vec<String> {
        let now = self.clock.now();
        let receipts: Vec<String> = batch.iter().map(|s| s.delivered.receipt.clone()).collect();
        let mut done = Vec::new();
        let mut retry = Vec::new();
        let mut dead = Vec::new();
        let mut children = Vec::new();
        for settlement in batch {
            let retry_at = settlement.retry_at();
            let Settlement {
                delivered,
                outcome,
                children: jobs,
                ..
            } = settlement;
            match outcome {
                Outcome::Done { .. } => {
                    children.extend(jobs.into_iter().map(|job| (delivered.receipt.clone(), job)));
                    done.push(delivered.receipt);
                }
                Outcome::Retry { .. } => {
                    let wait = retry_at
                        .and_then(|at| at.duration_since(now).ok())
                        .unwrap_or_default();
                    let cap = self.visibility_cap(&delivered.receipt);
                    retry.push((delivered.receipt, wait.min(cap)));
                }
                Outcome::DeadLetter { reason, message } => dead.push((delivered, reason, message)),
                // Acknowledged without its follow-up jobs (SQS has no way to cancel a
                // message, so this comes only from a host that stopped it).
                Outcome::Cancelled { .. } => done.push(delivered.receipt),
            }
        }
        let mut kept = Vec::new();
        // Follow-up jobs first: a parent whose children could not be sent is not
        // acknowledged, so it runs again rather than losing them.
        if !children.is_empty() {
            let entries: Vec<_> = children
                .iter()
                .filter_map(|(_, job)| self.entry_for(job, now).ok().map(|(_, entry)| entry))
                .collect();
            let sent = if entries.len() == children.len() {
                self.send(&self.options.queue_url, entries)
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            for (index, (parent, _)) in children.iter().enumerate() {
                if sent.binary_search(&index).is_err() && !kept.contains(parent) {
                    kept.push(parent.clone());
                }
            }
            if !kept.is_empty() {
                tracing::error!(
                    parents = kept.len(),
                    "follow-up jobs not sent; their parents are kept and will run again"
                );
                done.retain(|receipt| !kept.contains(receipt));
            }
        }
        let dead_receipts: Vec<String> = dead.iter().map(|(d, _, _)| d.receipt.clone()).collect();
        let moved = self.dead_letter(dead).await;
        kept.extend(dead_receipts.into_iter().filter(|r| !moved.contains(r)));
        if !retry.is_empty() {
            self.forget(retry.iter().map(|(receipt, _)| receipt));
            self.change_visibility(&self.options.queue_url, retry).await;
        }
        match acknowledge {
            Acknowledge::Delete => {
                done.extend(moved);
                self.delete(done).await;
            }
            // Lambda deletes every record the batch response does not list.
            Acknowledge::ByLambda => {}
        }
        self.forget(receipts.iter());
        kept
    }

    /// Forgets when these receipts were received.
    fn forget<'a>(&self, receipts: impl Iterator<Item = &'a String>) {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        for receipt in receipts {
            received.remove(receipt);
        }
    }

    /// Sends each delivery to the dead-letter queue; returns the receipts that were moved.
    async fn dead_letter(&self, items: Vec<(Delivered, Reason, String)>) -> Vec<String> {
        if items.is_empty() {
            return Vec::new();
        }
        let Some(dlq_url) = self.facts.dlq_url.clone() else {
            tracing::error!(
                count = items.len(),
                "no dead-letter queue; the jobs stay in the queue"
            );
            return Vec::new();
        };
        // (index into items, entry): an item without an entry is not moved, and stays.
        let (indexes, entries): (Vec<usize>, Vec<_>) = items
            .iter()
            .enumerate()
            .filter_map(|(i, (delivered, reason, message))| {
                dead_letter_entry(delivered, *reason, message, self.facts.dlq_fifo)
                    .map(|entry| (i, entry))
            })
            .unzip();
        match self.send(&dlq_url, entries).await {
            Ok(sent) => sent
                .into_iter()
                .filter_map(|i| indexes.get(i).and_then(|&item| items.get(item)))
                .map(|(d, _, _)| d.receipt.clone())
                .collect(),
            Err(error) => {
                tracing::error!(%error, count = items.len(), "could not move jobs to the dead-letter queue; they stay in the queue and come back");
                Vec::new()
            }
        }
    }
}

/// Logs the entries a batch call could not apply, or the whole call's failure; `what`
/// says what that means for each message.
fn log_failures(
    result: Result<Vec<aws_sdk_sqs::types::BatchResultErrorEntry>, QueueError>,
    what: &str,
) {
    match result {
        Ok(failed) => {
            for entry in failed {
                tracing::warn!(code = %entry.code, error = ?entry.message, call = what, "one entry of a batch call failed");
            }
        }
        Err(error) => tracing::error!(%error, "a batch call failed: {what}"),
    }
}

/// The dead-letter copy of a delivery: the same body, the reason in attributes.
pub fn dead_letter_entry(
    delivered: &Delivered,
    reason: Reason,
    message: &str,
    fifo: bool,
) -> Option<SendMessageBatchRequestEntry> {
    let body = match &delivered.message {
        Message::Raw(body) => String::from_utf8_lossy(body).into_owned(),
        Message::Envelope(envelope) => serde_json::to_string(envelope).ok()?,
    };
    let attribute = |kind: &str, value: String| {
        MessageAttributeValue::builder()
            .data_type(kind)
            .string_value(value)
            .build()
            .ok()
    };
    // SQS accepts only some characters in attribute values: replace the others.
    let mut error: String = message
        .chars()
        .map(|c| match c {
            '\t'
            | '\n'
            | '\r'
            | '\u{20}'..='\u{D7FF}'
            | '\u{E000}'..='\u{FFFD}'
            | '\u{10000}'.. => c,
            _ => '\u{FFFD}',
        })
        .collect();
    if error.len() > MAX_ERROR_ATTRIBUTE {
        let mut end = MAX_ERROR_ATTRIBUTE;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id("0")
        .message_body(if body.is_empty() { " ".into() } else { body })
        .message_attributes(
            "jobhost.reason",
            attribute("String", reason.as_str().into())?,
        )
        .message_attributes(
            "jobhost.attempts",
            attribute("Number", delivered.attempt.to_string())?,
        )
        .message_attributes(
            "jobhost.source-message-id",
            attribute("String", delivered.id.clone())?,
        );
    if !error.is_empty() {
        entry = entry.message_attributes("jobhost.error", attribute("String", error)?);
    }
    if fifo {
        entry = entry
            .message_group_id(
                delivered
                    .group
                    .clone()
                    .unwrap_or_else(|| "dead-letter".into()),
            )
            .message_deduplication_id(dedup_id(&delivered.id));
    }
    entry.build().ok()
}

/// A deduplication id SQS accepts (≤ 128 of its characters): long keys are hashed.
fn dedup_id(key: &str) -> String {
    let ok = key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".contains(c));
    if ok {
        key.to_string()
    } else {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whole seconds for SQS, rounded up: a retry asked for in 1.5 s waits 2 s, not 1 s.
fn secs(duration: Duration) -> i32 {
    let up = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    up.min(MAX_VISIBILITY.as_secs()) as i32
}

/// The envelope's `notBefore` (ms since the epoch), read only when the body mentions it.
pub fn not_before_of(body: &[u8]) -> Option<u64> {
    if !body.windows(9).any(|w| w == b"notBefore") {
        return None;
    }
    serde_json::from_slice::<Value>(body).ok()?["notBefore"].as_u64()
}

/// How many of a delayed job's receives were early hops (hidden, not run): one per
/// `max_hide` from its first receive to its `notBefore`, rounded up. Exact while a receiver
/// is running; when none was, fewer hops happened and the attempt can come out lower.
fn early_receives(not_before: Option<u64>, first_receive: Option<u64>, max_hide: Duration) -> u64 {
    match (not_before, first_receive) {
        (Some(due), Some(first)) if due > first => {
            let hop = max_hide.as_millis().max(1) as u64;
            (due - first).div_ceil(hop)
        }
        _ => 0,
    }
}

/// One message as SQS hands it over, from a `ReceiveMessage` call or in a Lambda SQS event.
#[derive(Clone, Debug)]
pub struct SqsRecord {
    /// The message id.
    pub id: String,
    /// The receipt handle.
    pub receipt: String,
    /// The body.
    pub body: Vec<u8>,
    /// `ApproximateReceiveCount` (1 when missing).
    pub receives: u64,
    /// `ApproximateFirstReceiveTimestamp`, in ms since the epoch.
    pub first_receive_ms: Option<u64>,
    /// `MessageGroupId` (FIFO queues).
    pub group: Option<String>,
    /// `SentTimestamp`, in ms since the epoch.
    pub sent_ms: Option<u64>,
    /// The `traceparent` message attribute.
    pub trace_parent: Option<String>,
}

/// Received records sorted by what to do with them now.
#[derive(Debug, Default)]
pub struct Sorted {
    /// Due: run them.
    pub run: Vec<Delivered>,
    /// Received before their `notBefore`: hide each this long without running it.
    pub early: Vec<(Delivered, Duration)>,
    /// Behind an early record of their FIFO group: give them back unstarted.
    pub held: Vec<Delivered>,
}

/// Sorts received records, at time `now`: a record before its `notBefore` is early (hidden
/// until then, at most `max_hide` a hop) and holds back the rest of its FIFO group; every
/// other record runs, as attempt = receives less the early hops.
pub fn sort_records(records: Vec<SqsRecord>, now: SystemTime, max_hide: Duration) -> Sorted {
    let now = millis(now);
    let mut sorted = Sorted::default();
    // FIFO groups with an early (hidden) message: the rest of the group waits for it.
    let mut blocked: Vec<String> = Vec::new();
    for record in records {
        let not_before = not_before_of(&record.body);
        let hops = early_receives(not_before, record.first_receive_ms, max_hide);
        let attempt = record.receives.saturating_sub(hops).max(1);
        let delivered = Delivered {
            id: record.id,
            receipt: record.receipt,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            message: Message::Raw(record.body),
            group: record.group,
            // Known for a first delivery only: a retry became due when its visibility
            // timeout (its backoff) ended, which SQS does not say.
            due: (record.receives == 1)
                .then(|| not_before.max(record.sent_ms))
                .flatten()
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            trace_parent: record.trace_parent,
        };
        if let Some(due) = not_before.filter(|due| *due > now) {
            blocked.extend(delivered.group.clone());
            let hide = Duration::from_millis(due - now).min(max_hide);
            sorted.early.push((delivered, hide));
        } else if delivered
            .group
            .as_ref()
            .is_some_and(|g| blocked.contains(g))
        {
            sorted.held.push(delivered);
        } else {
            sorted.run.push(delivered);
        }
    }
    sorted
}

/// How [`SqsQueue::apply`] acknowledges done deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acknowledge {
    /// Delete them (`DeleteMessageBatch`): the poller.
    Delete,
    /// Leave them: Lambda deletes every record its batch response does not list.
    ByLambda,
}

/// Periodic jobs on a FIFO queue: each tick is sent with a deduplication id made from its
/// key, so SQS keeps one of the copies that several hosts send within its 5-minute
/// deduplication window (hosts look back at most a minute for missed ticks). A standard
/// queue has no deduplication: the scheduler refuses it.
impl crate::queue::Ticks for SqsQueue {
    async fn enqueue_tick(
        &self,
        tick_key: &str,
        mut job: NewJob,
    ) -> Result<Option<Enqueued>, QueueError> {
        if !self.facts.fifo {
            return Err(QueueError(format!(
                "[[schedule]] needs a FIFO queue on SQS (its deduplication fires each tick \
                 once across hosts); {} is a standard queue",
                self.options.queue_url
            )));
        }
        use sha2::Digest as _;
        let digest = hex::encode(sha2::Sha256::digest(tick_key.as_bytes()));
        job.id = Some(format!("tick-{}", &digest[..32]));
        job.unique_key = Some(tick_key.to_string());
        Ok(self.enqueue(vec![job]).await?.into_iter().next())
    }
}

impl Queue for SqsQueue {
    /// One long poll for up to 10 messages; the runner keeps `receive_loops` of them in
    /// flight, so one call's messages never wait for another call's wait to end.
    async fn receive(&self, max: usize, lease: Duration) -> Result<Vec<Delivered>, QueueError> {
        self.long_poll(max, lease).await
    }

    async fn settle(&self, batch: Vec<Settlement>) -> Result<(), QueueError> {
        let kept = self.apply(batch, Acknowledge::Delete).await;
        if !kept.is_empty() {
            tracing::warn!(
                count = kept.len(),
                "some results were not recorded; those jobs will be delivered again"
            );
        }
        Ok(())
    }

    async fn release(&self, deliveries: Vec<Delivered>) -> Result<(), QueueError> {
        self.forget(deliveries.iter().map(|d| &d.receipt));
        self.hide(
            deliveries
                .into_iter()
                .map(|d| (d, Duration::ZERO))
                .collect(),
        )
        .await;
        Ok(())
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        let now = self.clock.now();
        let (ids, entries): (Vec<String>, Vec<_>) = jobs
            .iter()
            .map(|job| self.entry_for(job, now))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let sent = self.send(&self.options.queue_url, entries).await?;
        if sent.len() != ids.len() {
            let sent_ids: Vec<&str> = sent
                .iter()
                .filter_map(|&i| ids.get(i).map(String::as_str))
                .collect();
            return Err(QueueError(format!(
                "{} of {} jobs were not sent; sent: [{}]",
                ids.len() - sent.len(),
                ids.len(),
                sent_ids.join(", ")
            )));
        }
        Ok(ids.into_iter().map(Enqueued::Created).collect())
    }

    async fn extend(&self, deliveries: Vec<Delivered>, lease: Duration) -> Result<(), QueueError> {
        let entries = deliveries
            .into_iter()
            .filter_map(|d| {
                let cap = self.visibility_cap(&d.receipt);
                if cap < Duration::from_secs(1) {
                    // 12 h since the receive: SQS allows no more; it becomes visible when
                    // its current visibility ends.
                    tracing::warn!(job.id = %d.id, "running for 12 hours: its lease cannot be renewed");
                    return None;
                }
                Some((d.receipt, lease.min(cap)))
            })
            .collect();
        self.change_visibility(&self.options.queue_url, entries)
            .await;
        Ok(())
    }

    fn receivers(&self) -> usize {
        self.options.receive_loops.max(1)
    }

    async fn is_idle(&self) -> Result<bool, QueueError> {
        let attrs = attributes(&self.client, &self.options.queue_url).await?;
        let count = |name: &str| {
            attrs
                .get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(count("ApproximateNumberOfMessages")
            + count("ApproximateNumberOfMessagesNotVisible")
            + count("ApproximateNumberOfMessagesDelayed")
            == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_before_is_read_only_from_bodies_that_have_it() {
        assert_eq!(
            not_before_of(br#"{"job":"a","notBefore":1700000000000}"#),
            Some(1_700_000_000_000)
        );
        assert_eq!(not_before_of(br#"{"job":"a"}"#), None);
        assert_eq!(not_before_of(b"notBefore but not json"), None);
    }

    #[test]
    fn early_hops_are_one_per_cap_from_the_first_receive() {
        let hour = Duration::from_secs(3600);
        let h = 3_600_000;
        assert_eq!(early_receives(Some(30 * h), Some(0), 12 * hour), 3);
        assert_eq!(early_receives(Some(24 * h), Some(0), 12 * hour), 2);
        assert_eq!(early_receives(Some(0), Some(5), 12 * hour), 0);
        assert_eq!(early_receives(None, Some(0), 12 * hour), 0);
    }

    #[test]
    fn long_dedup_keys_are_hashed() {
        assert_eq!(dedup_id("order-7"), "order-7");
        assert_eq!(dedup_id(&"x".repeat(200)).len(), 64);
        assert_eq!(dedup_id("naïve").len(), 64);
    }
}
