//! The Lambda runtime's own costs, as in `README.md` (Benchmarks):
//!
//! - `lambda/init-10-handlers`: what a cold start does before the first invocation, in
//!   process: the engine, 10 handlers deserialized from precompiled artifacts (as
//!   `jobhost package` writes them), the SQS client from the environment.
//! - `lambda/batch-10-noop`: host time for an SQS event of 10 no-op jobs, from the parsed
//!   event to the `SqsBatchResponse` (no AWS call is needed when every record is done).
//! - `lambda/dispatch-10-noop`: the same 10 jobs through `Dispatcher::dispatch` one after
//!   another, the floor the batch is compared with.
//!
//! Run: `cargo bench -p jobhost-tests --bench lambda`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::SqsEvent;
use criterion::{Criterion, criterion_group, criterion_main};
use jobhost::clock::SystemClock;
use jobhost::config::HostConfig;
use jobhost::dispatch::Delivery;
use jobhost::engine::JobEngine;
use jobhost::plugin::ArtifactCache;
use jobhost::run::lambda::{LambdaHost, LambdaOptions, lambda_engine_options, native_triple};
use jobhost_tests::{Handlers, fixtures};
use serde_json::json;

const TEN: [(&str, &str); 10] = [
    (fixtures::NOOP, "noop"),
    (fixtures::ECHO, "echo"),
    (fixtures::PERMANENT, "permanent"),
    (fixtures::TRANSIENT, "transient"),
    (fixtures::BUSY, "busy"),
    (fixtures::CPU, "cpu"),
    (fixtures::CLOCK, "clock"),
    (fixtures::SPIN, "spin"),
    (fixtures::PANICS, "panics"),
    (fixtures::HUGE_OUTPUT, "huge_output"),
];

fn set_aws_env() {
    // Nothing here talks to AWS; the client is only built. Loopback, dummy credentials.
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ] {
        // SAFETY: set once, before any thread of this benchmark reads the environment.
        unsafe { std::env::set_var(key, value) };
    }
}

/// A handlers folder with 10 handlers precompiled for the Lambda engine settings.
fn packaged() -> Handlers {
    let handlers = Handlers::new().expect("temp dir");
    for (fixture, name) in TEN {
        handlers.add(fixture, name).expect("fixture");
    }
    let engine = JobEngine::new(lambda_engine_options(native_triple())).expect("engine");
    let cache = ArtifactCache::new(handlers.path().join(".jobhost-cache"));
    for (_, name) in TEN {
        let bytes = std::fs::read(handlers.file(name, "wasm")).expect("read");
        cache
            .precompile(engine.engine(), &bytes)
            .expect("precompile");
    }
    handlers
}

fn start(handlers: &Handlers, runtime: &tokio::runtime::Runtime) -> LambdaHost {
    let mut config = HostConfig::new(handlers.path());
    config.engine = lambda_engine_options(native_triple());
    let dispatcher = Arc::new(config.start().expect("handlers load"));
    let client = runtime.block_on(jobhost::queue::sqs::client_from_env());
    let options = LambdaOptions {
        dlq_url: None,
        concurrency: 2,
        margin: Duration::from_millis(500),
        metrics_namespace: None,
    };
    LambdaHost::new(dispatcher, Arc::new(SystemClock), client, options)
}

fn lambda(c: &mut Criterion) {
    set_aws_env();
    let handlers = packaged();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let host = start(&handlers, &runtime);
    let loaded = host
        .dispatcher()
        .plugins()
        .plugins()
        .iter()
        .filter(|p| p.artifact == jobhost::plugin::ArtifactSource::Cached)
        .count();
    assert_eq!(loaded, 10, "all ten deserialized, none compiled");

    let mut group = c.benchmark_group("lambda");
    group.bench_function("init-10-handlers", |b| {
        b.iter(|| black_box(start(&handlers, &runtime)))
    });
    let records: Vec<_> = (0..10)
        .map(|i| {
            json!({
                "messageId": format!("m{i}"), "receiptHandle": format!("r{i}"),
                "body": json!({"job": "noop", "payload": {"user": i}}).to_string(),
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                "md5OfBody": "", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench",
            })
        })
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({"Records": records})).expect("event");
    let deadline = SystemTime::now() + Duration::from_secs(3600);
    group.bench_function("batch-10-noop", |b| {
        b.iter(|| {
            let response = runtime.block_on(host.handle_sqs(black_box(event.clone()), deadline));
            assert!(response.batch_item_failures.is_empty());
        })
    });
    let bodies: Vec<String> = (0..10)
        .map(|i| json!({"job": "noop", "payload": {"user": i}}).to_string())
        .collect();
    let delivery = Delivery::default();
    group.bench_function("dispatch-10-noop", |b| {
        b.iter(|| {
            for body in &bodies {
                let report = host
                    .dispatcher()
                    .dispatch(black_box(body.as_bytes()), &delivery);
                assert!(report.outcome.is_done());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, lambda);
criterion_main!(benches);
