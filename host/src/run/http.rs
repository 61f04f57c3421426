//! The HTTP API of `jobhost run --http ADDR` (axum):
//!
//! - `POST /jobs` `{"job", "payload", "delay"?, "at"?, "priority"?, "unique"?}` → 202
//!   `{"id", "duplicate"}`; 422 with the schema errors; 413 over the size cap; 404 for an
//!   unknown job name; 400 for a body that is not such a request.
//!   An array of such requests is the batch form: all are checked first, then enqueued in
//!   one step (202 `{"jobs": [{"id", "duplicate"}, ...]}`), or none (the first refusal,
//!   with its `index`). With `?wait_ms=N` (one request, not a batch) it then waits up to N
//!   ms for the job to finish, as `GET /jobs/{id}?wait_ms=N` does, and answers the job
//!   with `"duplicate"` added: 200 once finished, 202 while it is not. Every field of a queue envelope is accepted too (`id`,
//!   `notBefore`, `traceparent`; `attempt`, `enqueuedAt`, `createdAt` ignored), any other
//!   is refused by name.
//! - `POST /hooks/{name}` → a webhook receiver: the body is the payload of a job `name`;
//!   the same checks and answers as `POST /jobs`.
//! - `GET /jobs/{id}` → the job (state, attempts, progress, output, last error), or 404.
//!   With `?wait_ms=N` it waits up to N ms (at most 30 s) for the job to finish first.
//! - `DELETE /jobs/{id}` → cancels a queued job, or stops a running one: 200
//!   `{"id", "cancelled": "queued"|"running"}`; 404; 409 for a finished job.
//! - `PUT /paused/{name}`, `DELETE /paused/{name}` → pause or resume a job name: 200
//!   `{"name", "paused", "changed"}`.
//! - `GET /stats` → counts by job name and state, the oldest due job's age, paused names,
//!   and per job name the p50/p95 run time and fuel of the last hour's done jobs.
//! - `GET /metrics` → Prometheus/OpenMetrics text (see the README's "Metrics").
//! - `GET /healthz` → 200.
//! - `/` and `/ui/...`: the dashboard ([`crate::run::dashboard`]).
//!
//! The changing calls (`DELETE /jobs/{id}`, the pause calls) answer 403 in `--read-only`
//! mode; with an admin token set they need it (`Authorization: Bearer TOKEN`, else 401);
//! without one they are allowed only on a loopback address (else 403).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::dispatch::{Dispatcher, Rejection};
use crate::job::{JobRequest, RequestError};
use crate::metrics::Metrics;
use crate::queue::{
    Administer, CancelResult, Enqueued, Inspect, JobRecord, Queue, QueueError, Stats,
};
use crate::run::live::Running;

/// The longest `wait_ms` honoured.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting `GET /jobs/{id}?wait_ms=` looks again at a job this host does not
/// run (on PostgreSQL another host may finish it).
const WAIT_RECHECK: Duration = Duration::from_millis(200);
/// The queue gauges of `/metrics` are read from the queue at most this often.
const QUEUE_GAUGES_MAX_AGE: Duration = Duration::from_secs(5);

/// Reads a queue's stats, for the queue gauges of `/metrics`.
pub type ReadStats = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, Result<Stats, QueueError>> + Send + Sync,
>;

/// The stats reader of a queue that can show its jobs.
pub fn stats_reader<Q: Inspect>(queue: Arc<Q>) -> ReadStats {
    Arc::new(move || {
        let queue = queue.clone();
        Box::pin(async move { queue.stats().await })
    })
}

/// `GET /metrics` alone (`--metrics ADDR`): the host's metrics, with the queue gauges when
/// `stats` can read them.
pub fn metrics_router(metrics: Arc<Metrics>, stats: Option<ReadStats>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let (metrics, stats) = (metrics.clone(), stats.clone());
            async move { render_metrics(&metrics, stats.as_ref()).await }
        }),
    )
}

async fn render_metrics(metrics: &Metrics, stats: Option<&ReadStats>) -> Response {
    if let Some(read) = stats
        && metrics.queue_stale(QUEUE_GAUGES_MAX_AGE)
    {
        match read().await {
            Ok(stats) => metrics.queue_stats(&stats),
            Err(error) => tracing::warn!(%error, "cannot read the queue gauges for /metrics"),
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        metrics.encode(),
    )
        .into_response()
}

/// Who may change things through the API.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The token every changing call must carry.
    pub token: Option<String>,
    /// Refuse every changing call.
    pub read_only: bool,
    /// The API listens on a loopback address only.
    pub loopback: bool,
}

impl Access {
    /// Whether a changing call with these headers may go ahead; the status and reason
    /// to refuse it with if not.
    pub fn check(&self, headers: &axum::http::HeaderMap) -> Result<(), (StatusCode, &'static str)> {
        if self.read_only {
            return Err((
                StatusCode::FORBIDDEN,
                "this host is read-only (--read-only)",
            ));
        }
        match &self.token {
            Some(token) => {
                let sent = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if sent.is_some_and(|sent| constant_time_eq(sent.as_bytes(), token.as_bytes())) {
                    Ok(())
                } else {
                    Err((
                        StatusCode::UNAUTHORIZED,
                        "this call needs the admin token (Authorization: Bearer TOKEN)",
                    ))
                }
            }
            None if self.loopback => Ok(()),
            None => Err((
                StatusCode::FORBIDDEN,
                "changes from beyond loopback need --admin-token",
            )),
        }
    }

    /// The response refusing a changing call, if [`Access::check`] refuses it.
    fn refusal(&self, headers: &axum::http::HeaderMap) -> Option<Response> {
        self.check(headers)
            .err()
            .map(|(status, why)| error(status, json!({"error": why})))
    }
}

/// Compares without stopping at the first difference, so the time taken says nothing
/// about how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything the API serves from.
pub struct ApiParts<Q> {
    /// The queue.
    pub queue: Arc<Q>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The dispatcher (payload checks).
    pub dispatcher: Arc<Dispatcher>,
    /// Notified after each enqueue.
    pub wake: Arc<Notify>,
    /// Notified by the runner after each batch of results.
    pub settled: Arc<Notify>,
    /// The host's metrics.
    pub metrics: Arc<Metrics>,
    /// The jobs running in this process (a cancellation reaches them at once).
    pub running: Option<Arc<Running>>,
    /// Who may change things.
    pub access: Access,
    /// The queue's name in traces (`messaging.destination.name`).
    pub destination: String,
}

/// What the API's and the dashboard's handlers share.
pub(crate) struct Api<Q> {
    pub(crate) queue: Arc<Q>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) wake: Arc<Notify>,
    settled: Arc<Notify>,
    pub(crate) running: Option<Arc<Running>>,
    pub(crate) access: Arc<Access>,
    destination: Arc<str>,
    /// The queue's kind in traces (`messaging.system`).
    system: &'static str,
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ShowQuery {
    wait_ms: Option<u64>,
}

impl<Q> Clone for Api<Q> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            clock: self.clock.clone(),
            dispatcher: self.dispatcher.clone(),
            wake: self.wake.clone(),
            settled: self.settled.clone(),
            running: self.running.clone(),
            access: self.access.clone(),
            destination: self.destination.clone(),
            system: self.system,
        }
    }
}

/// The API's routes over any queue that can show and change its jobs.
pub fn router<Q: Inspect + Administer>(parts: ApiParts<Q>) -> Router {
    let ApiParts {
        queue,
        clock,
        dispatcher,
        wake,
        settled,
        metrics,
        running,
        access,
        destination,
    } = parts;
    let limit = dispatcher.options().max_body_bytes;
    Router::new()
        .route("/jobs", post(create_job_and_wait::<Q>))
        .route("/hooks/{name}", post(create_hook::<Q>))
        .route("/jobs/{id}", get(show_job::<Q>).delete(cancel_job::<Q>))
        .route(
            "/paused/{name}",
            axum::routing::put(pause_name::<Q>).delete(resume_name::<Q>),
        )
        .route("/stats", get(show_stats::<Q>))
        .merge(crate::run::dashboard::routes::<Q>())
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Api {
            queue: queue.clone(),
            clock,
            dispatcher,
            wake,
            settled,
            running,
            access: Arc::new(access),
            destination: destination.into(),
            system: "jobhost",
        })
        .merge(metrics_router(metrics, Some(stats_reader(queue))))
}

/// What the API in front of a queue that only sends (SQS) serves from.
pub struct SendParts<Q> {
    /// The queue.
    pub queue: Arc<Q>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The dispatcher (payload checks).
    pub dispatcher: Arc<Dispatcher>,
    /// The host's metrics, served at `/metrics` when given.
    pub metrics: Option<Arc<Metrics>>,
    /// The queue's name in traces (`messaging.destination.name`).
    pub destination: String,
}

/// The API in front of SQS (`run --queue sqs://... --http`, and API Gateway requests on
/// Lambda): `POST /jobs` checks each job against its handler and sends it (202 with the
/// message id); `GET /jobs/{id}` answers 501, since SQS keeps nothing to look a message
/// up by; `/healthz`; `/metrics` when there are metrics.
pub fn send_router<Q: Queue>(parts: SendParts<Q>) -> Router {
    let SendParts {
        queue,
        clock,
        dispatcher,
        metrics,
        destination,
    } = parts;
    let limit = dispatcher.options().max_body_bytes;
    let router = Router::new()
        .route("/jobs", post(create_job::<Q>))
        .route("/hooks/{name}", post(create_hook::<Q>))
        .route("/jobs/{id}", get(not_kept))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Api {
            queue,
            clock,
            dispatcher,
            wake: Arc::new(Notify::new()),
            settled: Arc::new(Notify::new()),
            running: None,
            access: Arc::new(Access::default()),
            destination: destination.into(),
            system: "aws_sqs",
        });
    match metrics {
        Some(metrics) => router.merge(metrics_router(metrics, None)),
        None => router,
    }
}

/// `GET /jobs/{id}` in front of SQS.
async fn not_kept(Path(id): Path<String>) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        json!({
            "id": id,
            "error": "this host sends jobs to SQS, which keeps nothing to look a message up by \
                      once it is sent: a job's state, progress and result are not known here. \
                      Watch the handler's log lines, the metrics or traces, or the dead-letter \
                      queue; or run the embedded queue for `GET /jobs/{id}`",
        }),
    )
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "the HTTP API stopped");
    }
}

fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Why a request was refused, as the API answers it.
fn refusal(why: RequestError) -> Response {
    match why {
        RequestError::Rejected(Rejection::UnknownJob(name)) => error(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no handler accepts the job name `{name}`")}),
        ),
        RequestError::Rejected(Rejection::HandlerUnavailable(why)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, json!({"error": why}))
        }
        RequestError::Rejected(Rejection::InvalidPayload(errors)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "payload fails the schema", "errors": errors}),
        ),
        RequestError::Invalid(message) => error(StatusCode::BAD_REQUEST, json!({"error": message})),
    }
}

/// `POST /jobs`: one request object, or an array of them (the batch form: every one is
/// checked before any is enqueued, and all are enqueued in one step).
pub(crate) async fn create_job<Q: Queue>(
    State(api): State<Api<Q>>,
    Query(query): Query<ShowQuery>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if query.wait_ms.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "this queue does not keep its jobs: wait_ms cannot wait for one"}),
        );
    }
    match parse_requests(&body) {
        Ok((requests, batch)) => enqueue_requests(api, &headers, requests, batch).await,
        Err(answer) => *answer,
    }
}

/// `POST /jobs` on a queue that keeps its jobs: with `?wait_ms=N`, enqueue one job and
/// answer it once it has finished (200) or N ms have passed (202).
async fn create_job_and_wait<Q: Inspect>(
    State(api): State<Api<Q>>,
    Query(query): Query<ShowQuery>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let (requests, batch) = match parse_requests(&body) {
        Ok(parsed) => parsed,
        Err(answer) => return *answer,
    };
    let Some(wait_ms) = query.wait_ms else {
        return enqueue_requests(api, &headers, requests, batch).await;
    };
    if batch {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "wait_ms waits for one job: send the batch without it"}),
        );
    }
    let answer = enqueue_requests(api.clone(), &headers, requests, false).await;
    if answer.status() != StatusCode::ACCEPTED {
        return answer;
    }
    let Some(answer) = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "enqueued, but its id was lost"}),
        );
    };
    let id = answer["id"].as_str().unwrap_or_default().to_string();
    let wait = Duration::from_millis(wait_ms).min(MAX_WAIT);
    match wait_for(&api, &id, wait).await {
        Ok(record) => {
            let status = if record.is_finished() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let mut body = serde_json::to_value(&record).unwrap_or_default();
            body["duplicate"] = answer["duplicate"].clone();
            (status, axum::Json(body)).into_response()
        }
        Err(answer) => answer,
    }
}

/// The requests of a `POST /jobs` body, and whether it is the batch form; or a 400.
fn parse_requests(body: &[u8]) -> Result<(Vec<JobRequest>, bool), Box<Response>> {
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed = if batch {
        serde_json::from_slice::<Vec<JobRequest>>(body)
    } else {
        serde_json::from_slice::<JobRequest>(body).map(|r| vec![r])
    };
    let message = match parsed {
        Ok(requests) if !requests.is_empty() => return Ok((requests, batch)),
        Ok(_) => "an empty batch: nothing to enqueue".to_string(),
        Err(e) => format!("not a job request: {e}"),
    };
    Err(Box::new(error(
        StatusCode::BAD_REQUEST,
        json!({"error": message}),
    )))
}

/// `POST /hooks/{name}`: a webhook receiver. The whole body (JSON) is the payload of a job
/// named `name`, checked against its schema like any other; 202 with the job's id as soon
/// as it is enqueued.
pub(crate) async fn create_hook<Q: Queue>(
    State(api): State<Api<Q>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let payload = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("the body is not JSON: {e}")}),
            );
        }
    };
    let request = JobRequest {
        job: name,
        payload,
        ..JobRequest::default()
    };
    enqueue_requests(api, &headers, vec![request], false).await
}

async fn enqueue_requests<Q: Queue>(
    api: Api<Q>,
    headers: &axum::http::HeaderMap,
    requests: Vec<JobRequest>,
    batch: bool,
) -> Response {
    let now = api.clock.now();
    let mut jobs = Vec::with_capacity(requests.len());
    for (index, request) in requests.into_iter().enumerate() {
        match request.into_new_job(now, Some(&api.dispatcher)) {
            Ok(job) => jobs.push(job),
            Err(why) if batch => {
                let refused = refusal(why);
                let status = refused.status();
                let mut body = axum::body::to_bytes(refused.into_body(), 1 << 20)
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .unwrap_or_default();
                body["index"] = json!(index);
                body["error"] = json!(format!(
                    "job {index} of the batch: {}; nothing enqueued",
                    body["error"].as_str().unwrap_or("refused")
                ));
                return error(status, body);
            }
            Err(why) => return refusal(why),
        }
    }
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let spans = crate::telemetry::sending(&mut jobs, api.system, &api.destination, parent);
    let enqueue = api.queue.enqueue(jobs);
    let enqueued = match spans.first() {
        Some(span) => {
            use tracing::Instrument as _;
            enqueue.instrument(span.clone()).await
        }
        None => enqueue.await,
    };
    match enqueued {
        Ok(enqueued) if !enqueued.is_empty() => {
            api.wake.notify_one();
            let answers: Vec<_> = enqueued
                .iter()
                .map(|e| json!({"id": e.id(), "duplicate": matches!(e, Enqueued::Duplicate(_))}))
                .collect();
            let body = match batch {
                true => json!({ "jobs": answers }),
                false => answers.into_iter().next().unwrap_or_default(),
            };
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Ok(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "nothing enqueued"}),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

async fn cancel_job<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(refused) = api.access.refusal(&headers) {
        return refused;
    }
    match api.queue.cancel(&id).await {
        Ok(CancelResult::Cancelled) => {
            axum::Json(json!({"id": id, "cancelled": "queued"})).into_response()
        }
        Ok(CancelResult::Requested) => {
            // Running here: stop it now rather than at the next look at the queue.
            if let Some(running) = &api.running {
                running.cancel(&id);
            }
            axum::Json(json!({"id": id, "cancelled": "running"})).into_response()
        }
        Ok(CancelResult::NotFound) => error(StatusCode::NOT_FOUND, json!({"error": "no such job"})),
        Ok(CancelResult::NotQueued(state)) => error(
            StatusCode::CONFLICT,
            json!({"error": format!("the job is {state} already"), "state": state}),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

async fn pause_name<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    set_paused(api, name, headers, true).await
}

async fn resume_name<Q: Inspect + Administer>(
    State(api): State<Api<Q>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    set_paused(api, name, headers, false).await
}

async fn set_paused<Q: Inspect + Administer>(
    api: Api<Q>,
    name: String,
    headers: axum::http::HeaderMap,
    pause: bool,
) -> Response {
    if let Some(refused) = api.access.refusal(&headers) {
        return refused;
    }
    let changed = if pause {
        api.queue.pause(&name).await
    } else {
        api.queue.resume(&name).await
    };
    match changed {
        Ok(changed) => {
            if !pause {
                api.wake.notify_one();
            }
            axum::Json(json!({"name": name, "paused": pause, "changed": changed})).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

async fn show_stats<Q: Inspect>(State(api): State<Api<Q>>) -> Response {
    let hour_ago = crate::clock::to_ms(api.clock.now()) - 3_600_000;
    let stats = async {
        let stats = api.queue.stats().await?;
        let timings = api.queue.timings(hour_ago).await?;
        Ok::<_, QueueError>((stats, timings))
    };
    match stats.await {
        Ok((stats, timings)) => {
            let mut body = serde_json::to_value(stats).unwrap_or_default();
            body["last_hour"] = serde_json::to_value(timings).unwrap_or_default();
            axum::Json(body).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
    }
}

async fn show_job<Q: Inspect>(
    State(api): State<Api<Q>>,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
) -> Response {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    match wait_for(&api, &id, wait).await {
        Ok(record) => axum::Json(record).into_response(),
        Err(answer) => answer,
    }
}

/// The job, once it has finished or `wait` has passed (404 or 503 as an answer).
async fn wait_for<Q: Inspect>(
    api: &Api<Q>,
    id: &str,
    wait: Duration,
) -> Result<JobRecord, Response> {
    let deadline = Instant::now() + wait;
    loop {
        // Listen before looking, so a result recorded in between is not missed.
        let settled = api.settled.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        let record = match api.queue.job(id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    json!({"error": "no such job"}),
                ));
            }
            Err(e) => {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": e.to_string()}),
                ));
            }
        };
        let now = Instant::now();
        if record.is_finished() || now >= deadline {
            return Ok(record);
        }
        // This host's settles wake the wait at once; a job another host (or process)
        // finishes is seen at the next look.
        let _ = tokio::time::timeout((deadline - now).min(WAIT_RECHECK), settled).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        let value = format!("Bearer {token}");
        headers.insert(
            axum::http::header::AUTHORIZATION,
            value.parse().expect("a valid header"),
        );
        headers
    }

    fn status(result: Result<(), (StatusCode, &'static str)>) -> u16 {
        result.map_or_else(|(status, _)| status.as_u16(), |()| 200)
    }

    #[test]
    fn beyond_loopback_changes_need_a_token() {
        let none = axum::http::HeaderMap::new();
        let open = Access {
            token: None,
            read_only: false,
            loopback: false,
        };
        assert_eq!(status(open.check(&none)), 403);
        let guarded = Access {
            token: Some("t0ken".into()),
            ..open.clone()
        };
        assert_eq!(status(guarded.check(&none)), 401);
        assert_eq!(status(guarded.check(&bearer("t0kem"))), 401);
        assert_eq!(status(guarded.check(&bearer("t0ken"))), 200);
        let local = Access {
            loopback: true,
            ..open.clone()
        };
        assert_eq!(status(local.check(&none)), 200);
        let read_only = Access {
            read_only: true,
            ..guarded
        };
        assert_eq!(status(read_only.check(&bearer("t0ken"))), 403);
    }
}
