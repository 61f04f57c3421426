//! The HTTP API of `jobhost run --http ADDR` (axum):
//!
//! - `POST /jobs` `{"job", "payload", "delay"?, "at"?, "priority"?, "unique"?}` → 202
//!   `{"id", "duplicate"}`; 422 with the schema errors; 413 over the size cap; 404 for an
//!   unknown job name; 400 for a body that is not such a request.
//! - `GET /jobs/{id}` → the job (state, attempts, progress, output, last error), or 404.
//!   With `?wait_ms=N` it waits up to N ms (at most 30 s) for the job to finish first.
//! - `GET /healthz` → 200.

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
use crate::queue::{Enqueued, Inspect};

/// The longest `wait_ms` honoured.
const MAX_WAIT: Duration = Duration::from_secs(30);

struct Api<Q> {
    queue: Arc<Q>,
    clock: Arc<dyn Clock>,
    dispatcher: Arc<Dispatcher>,
    wake: Arc<Notify>,
    settled: Arc<Notify>,
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
        }
    }
}

/// The API's routes over any queue that can show its jobs. `wake` is notified after each
/// enqueue; `settled` is notified by the runner after each batch of results.
pub fn router<Q: Inspect>(
    queue: Arc<Q>,
    clock: Arc<dyn Clock>,
    dispatcher: Arc<Dispatcher>,
    wake: Arc<Notify>,
    settled: Arc<Notify>,
) -> Router {
    let limit = dispatcher.options().max_body_bytes;
    Router::new()
        .route("/jobs", post(create_job::<Q>))
        .route("/jobs/{id}", get(show_job::<Q>))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Api {
            queue,
            clock,
            dispatcher,
            wake,
            settled,
        })
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

async fn create_job<Q: Inspect>(State(api): State<Api<Q>>, body: Bytes) -> Response {
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
    match api.queue.enqueue(vec![job]).await {
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
