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

use crate::dispatch::{Dispatcher, Rejection};
use crate::queue::Enqueued;
use crate::queue::sqlite::SqliteQueue;
use crate::request::{JobRequest, RequestError};

/// The longest `wait_ms` honoured.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Api {
    queue: SqliteQueue,
    dispatcher: Arc<Dispatcher>,
    wake: Arc<Notify>,
    settled: Arc<Notify>,
}

#[derive(Debug, serde::Deserialize)]
struct ShowQuery {
    wait_ms: Option<u64>,
}

/// The API's routes. `wake` is notified after each enqueue; `settled` is notified by the
/// runner after each batch of results.
pub fn router(
    queue: SqliteQueue,
    dispatcher: Arc<Dispatcher>,
    wake: Arc<Notify>,
    settled: Arc<Notify>,
) -> Router {
    let limit = dispatcher.options().max_body_bytes;
    Router::new()
        .route("/jobs", post(create_job))
        .route("/jobs/{id}", get(show_job))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Api {
            queue,
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

async fn create_job(State(api): State<Api>, body: Bytes) -> Response {
    let request: JobRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not a job request: {e}")}),
            );
        }
    };
    let job = match request.into_new_job(api.queue.clock().now(), Some(&api.dispatcher)) {
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
    let queue = api.queue.clone();
    let result = tokio::task::spawn_blocking(move || queue.enqueue_now(&[job])).await;
    match result {
        Ok(Ok(mut enqueued)) => {
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
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}),
        ),
    }
}

async fn show_job(
    State(api): State<Api>,
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
        let queue = api.queue.clone();
        let lookup = id.clone();
        let record = match tokio::task::spawn_blocking(move || queue.get(&lookup)).await {
            Ok(Ok(Some(record))) => record,
            Ok(Ok(None)) => return error(StatusCode::NOT_FOUND, json!({"error": "no such job"})),
            Ok(Err(e)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": e.to_string()}),
                );
            }
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
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
