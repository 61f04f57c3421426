//! The HTTP API of `jobhost run --http ADDR` (axum):
//!
//! - `POST /jobs` `{"job", "payload", "delay"?, "at"?, "priority"?, "unique"?}` → 202
//!   `{"id", "duplicate"}`; 422 with the schema errors; 413 over the size cap; 404 for an
//!   unknown job name; 400 for a body that is not such a request.
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
use crate::queue::{Administer, CancelResult, Enqueued, Inspect, QueueError, Stats};
use crate::run::live::Running;

/// The longest `wait_ms` honoured.
const MAX_WAIT: Duration = Duration::from_secs(30);
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
}

#[derive(Debug, serde::Deserialize)]
struct ShowQuery {
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
        .route("/jobs", post(create_job::<Q>))
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
        })
        .merge(metrics_router(metrics, Some(stats_reader(queue))))
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

async fn create_job<Q: Inspect>(
    State(api): State<Api<Q>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let request: JobRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not a job request: {e}")}),
            );
        }
    };
    let job = match request.into_new_job(api.clock.now(), Some(&api.dispatcher)) {
        Ok(job) => job,
        Err(RequestError::Rejected(Rejection::UnknownJob(name))) => {
            return error(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no handler accepts the job name `{name}`")}),
            );
        }
        Err(RequestError::Rejected(Rejection::HandlerUnavailable(why))) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, json!({"error": why}));
        }
        Err(RequestError::Rejected(Rejection::InvalidPayload(errors))) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "payload fails the schema", "errors": errors}),
            );
        }
        Err(RequestError::Invalid(message)) => {
            return error(StatusCode::BAD_REQUEST, json!({"error": message}));
        }
    };
    let mut jobs = vec![job];
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let spans = crate::telemetry::sending(&mut jobs, "jobhost", &api.destination, parent);
    let enqueue = api.queue.enqueue(jobs);
    let enqueued = match spans.first() {
        Some(span) => {
            use tracing::Instrument as _;
            enqueue.instrument(span.clone()).await
        }
        None => enqueue.await,
    };
    match enqueued {
        Ok(mut enqueued) => {
            api.wake.notify_one();
            let (id, duplicate) = match enqueued.pop() {
                Some(Enqueued::Created(id)) => (id, false),
                Some(Enqueued::Duplicate(id)) => (id, true),
                None => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({"error": "nothing enqueued"}),
                    );
                }
            };
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"id": id, "duplicate": duplicate})),
            )
                .into_response()
        }
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
    let deadline = Instant::now() + wait;
    loop {
        // Listen before looking, so a result recorded in between is not missed.
        let settled = api.settled.notified();
        tokio::pin!(settled);
        settled.as_mut().enable();
        let record = match api.queue.job(&id).await {
            Ok(Some(record)) => record,
            Ok(None) => return error(StatusCode::NOT_FOUND, json!({"error": "no such job"})),
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": e.to_string()}),
                );
            }
        };
        let finished = matches!(record.state.as_str(), "done" | "dead" | "cancelled");
        let now = Instant::now();
        if finished || now >= deadline {
            return axum::Json(record).into_response();
        }
        let _ = tokio::time::timeout(deadline - now, settled).await;
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
