//! Traces over OTLP, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set:
//! the `opentelemetry-otlp` exporter (HTTP, protobuf or JSON after
//! `OTEL_EXPORTER_OTLP_PROTOCOL`) behind a batch processor, fed by `tracing-opentelemetry`.
//!
//! Spans follow OpenTelemetry's messaging conventions: `send {job}` (producer) for each
//! enqueue and `process {job}` (consumer) for each delivery, with `messaging.system`,
//! `messaging.operation.type`, `messaging.message.id`, `messaging.destination.name` and,
//! when it failed, `error.type` = the reason. The guest's log lines are events on its
//! process span. W3C trace context travels with the job (`traceparent`): in the queue
//! file's row, in the SQS envelope and message attribute; a `POST /jobs` carrying a
//! `traceparent` header continues that trace, and follow-up jobs are children of the
//! process span that enqueued them.
//!
//! With no endpoint configured nothing here runs: no span is created ([`enabled`] is false).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The tracing target of every span and event meant for the exporter only (the log
/// output leaves it out).
pub const TARGET: &str = "jobhost::otel";

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the environment asks for OTLP traces.
pub fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Starts the exporter and returns the tracer for `tracing-opentelemetry`'s layer; none
/// when no endpoint is configured. Call it outside any async runtime.
pub fn start() -> Result<Option<opentelemetry_sdk::trace::Tracer>, String> {
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "jobhost".into());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer("jobhost");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(tracer))
}

/// Sends the spans still buffered (Lambda: before the environment is frozen).
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.force_flush()
    {
        tracing::warn!(%error, "cannot export spans");
    }
}

/// Sends the spans still buffered and stops the exporter (at exit).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// The `process {job}` span of one delivery, a child of `parent` (a `traceparent`).
pub fn process_span(
    job: &str,
    message_id: &str,
    system: &str,
    destination: &str,
    parent: Option<&str>,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %format!("process {job}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = %system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = %message_id,
        messaging.destination.name = %destination,
        jobhost.attempt = tracing::field::Empty,
        jobhost.outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    adopt(&span, parent);
    span
}

/// The `send {job}` span of one enqueue, a child of `parent` (a `traceparent`) or, without
/// one, of the current span.
pub fn send_span(job: &str, system: &str, destination: &str, parent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = %format!("send {job}"),
        otel.kind = "producer",
        messaging.system = %system,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = %destination,
    );
    adopt(&span, parent);
    span
}

fn adopt(span: &Span, parent: Option<&str>) {
    let Some(parent) = parent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), parent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

/// The W3C `traceparent` of `span`, to send along with a job.
pub fn traceparent(span: &Span) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Gives each job about to be enqueued its trace context: with export on, a `send {job}`
/// span (a child of `parent`, else of the current span) whose context the job carries;
/// without, `parent` as it came. Keep the returned spans until the enqueue returns.
pub fn sending(
    jobs: &mut [crate::queue::NewJob],
    system: &str,
    destination: &str,
    parent: Option<&str>,
) -> Vec<Span> {
    if !enabled() {
        for job in jobs.iter_mut() {
            if job.trace_parent.is_none() {
                job.trace_parent = parent.map(str::to_string);
            }
        }
        return Vec::new();
    }
    jobs.iter_mut()
        .map(|job| {
            // A job that names its own trace continues it.
            let own = job.trace_parent.take();
            let span = send_span(&job.name, system, destination, own.as_deref().or(parent));
            job.trace_parent = traceparent(&span);
            span
        })
        .collect()
}
