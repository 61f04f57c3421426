//! Per-job overhead of the host, and the cost of fuel metering.
//!
//! - `noop/guest`: route + schema check + fresh instance + call + drop, for a no-op Rust
//!   guest, through `Dispatcher::dispatch` exactly as a runner calls it.
//! - `noop/native`: the same envelope parsing and schema check around a native no-op
//!   function, the floor the guest is compared with.
//! - `cpu/fuel-on` vs `cpu/fuel-off`: a CPU-bound guest (primes below 20 000) with and
//!   without fuel metering.
//!
//! Run: `cargo bench -p jobhost-tests --bench dispatch`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jobhost::dispatch::{Delivery, Dispatcher};
use jobhost::engine::EngineOptions;
use jobhost::job::Envelope;
use jobhost::plugin::PayloadSchema;
use jobhost_tests::{Handlers, fixtures};

fn dispatcher(handlers: &Handlers, fuel: bool) -> Dispatcher {
    let mut config = handlers.config();
    config.engine = EngineOptions {
        fuel,
        ..EngineOptions::default()
    };
    config.start().expect("the fixtures load")
}

fn noop(c: &mut Criterion) {
    let handlers = Handlers::new().expect("temp dir");
    handlers.add(fixtures::NOOP, "noop").expect("fixture");
    let dispatcher = dispatcher(&handlers, true);
    let body = br#"{"id": "1", "job": "noop", "payload": {"user": 42, "template": "welcome"}}"#;
    let delivery = Delivery::default();
    let schema = PayloadSchema::compile(r#"{"type": "object"}"#).expect("schema");
    let mut group = c.benchmark_group("noop");
    group.bench_function("guest", |b| {
        b.iter(|| {
            let report = dispatcher.dispatch(black_box(body), &delivery);
            assert!(report.outcome.is_done());
        })
    });
    group.bench_function("native", |b| {
        b.iter(|| {
            let envelope = Envelope::parse(black_box(body), 1 << 20).expect("valid");
            assert!(dispatcher.plugins().get(&envelope.job).is_some());
            assert!(schema.check(&envelope.payload).is_empty());
            black_box(native_noop(&envelope.payload.to_string()))
        })
    });
    group.finish();
}

#[inline(never)]
fn native_noop(payload: &str) -> Option<String> {
    black_box(payload);
    None
}

fn cpu(c: &mut Criterion) {
    let handlers = Handlers::new().expect("temp dir");
    handlers.add(fixtures::CPU, "cpu").expect("fixture");
    let body = br#"{"job": "cpu", "payload": {"below": 20000}}"#;
    let delivery = Delivery::default();
    let mut group = c.benchmark_group("cpu");
    for (label, fuel) in [("fuel-on", true), ("fuel-off", false)] {
        let dispatcher = dispatcher(&handlers, fuel);
        group.bench_function(label, |b| {
            b.iter(|| {
                let report = dispatcher.dispatch(black_box(body), &delivery);
                assert!(report.outcome.is_done());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, noop, cpu);
criterion_main!(benches);
