//! Per-job overhead of the host, and the cost of fuel metering.
//!
//! - `noop/guest`: route + schema check + fresh instance + call + drop, for a no-op Rust
//!   guest, through `Dispatcher::dispatch` exactly as a runner calls it.
//! - `noop/floor`: wasmtime's own instantiate + call + drop of the same component from an
//!   `InstancePre`, on an engine with the same pooling configuration: a store with an empty
//!   WASI context, fuel and an epoch deadline, and nothing else of the host.
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
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

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
    let floor = Floor::new(&handlers);
    group.bench_function("floor", |b| b.iter(|| floor.run()));
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

/// The floor: the same component, engine options and typed bindings, with none of the
/// host's own work (no envelope, schema, capture, limiter, grants or report).
struct Floor {
    engine: jobhost::engine::JobEngine,
    pre: jobhost::bindings::JobPluginPre<FloorState>,
    job: jobhost::bindings::Job,
}

struct FloorState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for FloorState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Floor {
    fn new(handlers: &Handlers) -> Self {
        let engine =
            jobhost::engine::JobEngine::new(EngineOptions::default()).expect("the engine builds");
        let component = Component::from_file(engine.engine(), handlers.file("noop", "wasm"))
            .expect("the no-op guest compiles");
        let mut linker = Linker::<FloorState>::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
        // The no-op guest imports WASI only, none of jobhost's own imports.
        let pre = linker.instantiate_pre(&component).expect("instantiate_pre");
        let pre = jobhost::bindings::JobPluginPre::new(pre).expect("the world's exports");
        let job = jobhost::bindings::Job {
            id: "1".into(),
            name: "noop".into(),
            payload: r#"{"user":42,"template":"welcome"}"#.into(),
            attempt: 1,
            max_attempts: 3,
            enqueued_at: 0,
            deadline: u64::MAX,
        };
        Self { engine, pre, job }
    }

    fn run(&self) {
        let state = FloorState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.set_fuel(u64::MAX).expect("fuel is on");
        store.set_epoch_deadline(1_000);
        let plugin = self.pre.instantiate(&mut store).expect("instantiates");
        let result = plugin
            .jobhost_plugin_handler()
            .call_handle(&mut store, black_box(&self.job))
            .expect("no trap");
        assert!(result.is_ok());
    }
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
