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
use jobhost::plugin::{ArtifactCache, Loader, PayloadSchema};
use jobhost_tests::{Handlers, fixtures};
use std::path::Path;
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
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
    // The dispatcher's engine options (fuel on is the default).
    let floor = Floor::new(
        &EngineOptions::default(),
        &handlers.file("noop", "wasm"),
        "noop",
        r#"{"user":42,"template":"welcome"}"#,
    );
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
/// host's own work (no envelope, schema, capture, limiter, grants or report): an empty WASI
/// context, and `jobhost:plugin/host` imports that do nothing.
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

impl jobhost::bindings::host::Host for FloorState {
    fn log(&mut self, _: jobhost::bindings::LogLevel, message: String) {
        black_box(message);
    }

    fn progress(&mut self, _: u64, _: u64, message: Option<String>) {
        black_box(message);
    }

    fn enqueue(
        &mut self,
        _: String,
        _: String,
        _: jobhost::bindings::EnqueueOptions,
    ) -> Result<String, String> {
        Ok("child".into())
    }
}

impl Floor {
    /// The component in `file`, compiled (or taken from the cache) on an engine with
    /// `options`, with one job of `name` and `payload` to call it with.
    fn new(options: &EngineOptions, file: &Path, name: &str, payload: &str) -> Self {
        let engine = jobhost::engine::JobEngine::new(options.clone()).expect("the engine builds");
        let cache = ArtifactCache::new(jobhost_tests::shared_cache_dir());
        let (component, _, _) = cache.load_file(engine.engine(), file).expect("compiles");
        let mut linker = Linker::<FloorState>::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("WASI links");
        jobhost::bindings::host::add_to_linker::<_, HasSelf<FloorState>>(&mut linker, |s| s)
            .expect("jobhost's imports link");
        let pre = linker.instantiate_pre(&component).expect("instantiate_pre");
        let pre = jobhost::bindings::JobPluginPre::new(pre).expect("the world's exports");
        let job = jobhost::bindings::Job {
            id: "1".into(),
            name: name.into(),
            payload: payload.into(),
            attempt: 1,
            max_attempts: 3,
            enqueued_at: 0,
            deadline: u64::MAX,
        };
        Self { engine, pre, job }
    }

    fn store(&self) -> Store<FloorState> {
        let state = FloorState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.set_fuel(u64::MAX).expect("fuel is on");
        store.set_epoch_deadline(1_000);
        store
    }

    /// Instantiate and drop, no call.
    fn instantiate(&self) {
        let mut store = self.store();
        black_box(self.pre.instantiate(&mut store).expect("instantiates"));
    }

    /// Instantiate, call `handle`, drop.
    fn run(&self) {
        let mut store = self.store();
        let plugin = self.pre.instantiate(&mut store).expect("instantiates");
        let result = plugin
            .jobhost_plugin_handler()
            .call_handle(&mut store, black_box(&self.job))
            .expect("no trap");
        assert!(result.is_ok(), "{result:?}");
    }
}

/// The JavaScript and Python examples (componentize-js, componentize-py; 12 and 18 MB
/// components), built by `cargo xtask examples`:
/// - `load`: a handler loaded at a warm start (artifact mapped, `instantiate_pre`, what
///   `describe()` returned read back);
/// - `instantiate`: the floor's instantiate + drop, no call;
/// - `floor`: the floor's instantiate + call + drop;
/// - `dispatch`: the whole job through `Dispatcher::dispatch`.
fn guests(c: &mut Criterion) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/handlers");
    let cases = [
        (
            "js",
            "notify",
            r#"{"template": "Hi {{name}}, order {{order}} has shipped", "to": "ada@example.com", "vars": {"name": "Ada", "order": 7}}"#,
        ),
        (
            "py",
            "generate-report",
            r#"{"rows": [{"city": "Oslo", "sales": 120.5}, {"city": "Lima", "sales": 80}, {"city": "Oslo", "sales": 10}], "group_by": "city", "metric": "sales"}"#,
        ),
    ];
    let mut group = c.benchmark_group("guests");
    for (label, name, payload) in cases {
        let file = examples.join(format!("{name}.wasm"));
        if !file.is_file() {
            eprintln!(
                "skipping guests/{label}: no {} (run `cargo xtask examples`)",
                file.display()
            );
            continue;
        }
        let handlers = Handlers::new().expect("temp dir");
        std::fs::copy(&file, handlers.file(name, "wasm")).expect("copy");
        let config = handlers.config();
        let dispatcher = config.start().expect("the example loads");
        let engine =
            Arc::new(jobhost::engine::JobEngine::new(config.engine.clone()).expect("engine"));
        let loader = Loader::new(engine, Some(config.cache())).expect("loader");
        group.bench_function(format!("{label}/load"), |b| {
            b.iter(|| {
                black_box(
                    loader
                        .load_file(&handlers.file(name, "wasm"))
                        .expect("loads"),
                )
            })
        });
        let floor = Floor::new(&config.engine, &file, name, payload);
        group.bench_function(format!("{label}/instantiate"), |b| {
            b.iter(|| floor.instantiate())
        });
        group.bench_function(format!("{label}/floor"), |b| b.iter(|| floor.run()));
        let body = format!(r#"{{"job": "{name}", "payload": {payload}}}"#);
        let delivery = Delivery::default();
        group.bench_function(format!("{label}/dispatch"), |b| {
            b.iter(|| {
                let report = dispatcher.dispatch(black_box(body.as_bytes()), &delivery);
                assert!(report.outcome.is_done(), "{:?}", report.outcome);
            })
        });
    }
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

criterion_group!(benches, noop, cpu, guests);
criterion_main!(benches);
