//! The `jobhost` binary.

mod admin;
mod cli;
mod lambda;
mod package;
mod scaffold;
mod template;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::{Cli, Command, CompileArgs, ExecArgs, InspectArgs, LogFormat, NewArgs, TestArgs};
use anyhow::Context as _;
use clap::Parser as _;
use jobhost::config::DEFAULT_CACHE_DIR_NAME;
use jobhost::dispatch::Delivery;
use jobhost::engine::{EngineOptions, JobEngine};
use jobhost::job::Envelope;
use jobhost::plugin::{ArtifactCache, Loader};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Exit code for a job that did not finish as done.
pub(crate) const EXIT_NOT_DONE: u8 = 1;
/// Exit code for usage and load errors.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code of a run ended by a second signal (128 + SIGINT, as shells report it).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    // As a Lambda custom runtime's `bootstrap`, the binary is started without arguments.
    let lambda =
        std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() && std::env::args().len() == 1;
    let cli = if lambda {
        Cli::parse_from(["jobhost", "lambda"])
    } else {
        Cli::parse()
    };
    let filter = cli.log.clone().unwrap_or_else(|| match cli.command {
        Command::Run(_) => "warn,jobhost=info".into(),
        _ => "warn".into(),
    });
    let (writer, flush) = match cli.command {
        // A Lambda environment is frozen between invocations: a line still queued when the
        // answer goes out would wait for the next invocation, so Lambda writes directly.
        Command::Lambda(_) => (BoxMakeWriter::new(std::io::stderr), None),
        _ => {
            let (writer, flush) = non_blocking_stderr();
            (BoxMakeWriter::new(writer), Some(flush))
        }
    };
    if let Err(error) = init_tracing(cli.log_format, &filter, writer) {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    let result = match cli.command {
        Command::Exec(args) => exec(args),
        Command::Inspect(args) => inspect(args),
        Command::Compile(args) => compile(args),
        Command::Run(args) => admin::run(args),
        Command::Enqueue(args) => admin::enqueue(args),
        Command::Jobs(command) => admin::jobs(command),
        Command::Dlq(command) => admin::dlq(command),
        Command::Stats(db) => admin::stats(db),
        Command::Pause(args) => admin::pause(args.db, &args.name, true),
        Command::Resume(args) => admin::pause(args.db, &args.name, false),
        Command::Test(args) => test_cases(args),
        Command::New(args) => new_project(args),
        Command::Lambda(args) => lambda::run(args),
        Command::Package(args) => package::run(args),
        Command::Template(args) => template::run(args),
        Command::Migrate(db) => admin::migrate(db),
    };
    jobhost::telemetry::shutdown();
    // The queued log lines first, then the final error.
    drop(flush);
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// Lines queued for stderr before new ones are dropped (and counted) rather than block.
const LOG_QUEUE_LINES: usize = 8 * 1024;

/// Stderr through a background thread: a worker never waits for a slow terminal or a full
/// pipe (past [`LOG_QUEUE_LINES`] queued lines, new lines are dropped). Dropping the guard
/// flushes what is queued.
fn non_blocking_stderr() -> (NonBlocking, WorkerGuard) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("jobhost-log")
        .finish(std::io::stderr())
}

/// Logs to `writer` through `filter`; with an OTLP endpoint in the environment, also spans
/// to it (see `jobhost::telemetry`), which the log output leaves out.
fn init_tracing(format: LogFormat, filter: &str, writer: BoxMakeWriter) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let filter = match format!("{}=off", jobhost::telemetry::TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Colour codes only for a terminal: CloudWatch and log files show them as garbage.
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    };
    // The level hint lets `log` records below it (Cranelift writes many) be skipped at the
    // call site: without one, each would go through the whole filter, which made compiling
    // a handler several times slower.
    let hint = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let echo = tracing_subscriber::filter::filter_fn(move |meta| {
        *meta.level() <= hint && !is_function_error_echo(meta)
    })
    .with_max_level_hint(hint);
    let spans = jobhost::telemetry::start()?.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    // Info, the level of every span and event it takes: a higher hint would
                    // let every `log` record of the dependencies through to the filters again.
                    .with_target(jobhost::telemetry::TARGET, tracing::Level::INFO),
            )
    });
    let registry = tracing_subscriber::registry().with(layer.with_filter(filter).with_filter(echo));
    // Not `.with(Option<layer>)`: a `None` layer declares interest in every call site, which
    // would send events the log filter rejects through the filters at each call.
    match spans {
        Some(spans) => registry.with(spans).init(),
        None => registry.init(),
    }
    Ok(())
}

/// The Lambda runtime logs every function error from its panic-catching layer, as the
/// error's `Debug` text alone; jobhost logs its function errors itself, with their type.
/// A real panic (its event has an `error` field) is still logged.
fn is_function_error_echo(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == "lambda_runtime::layers::panic" && meta.fields().field("error").is_none()
}

fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .with_context(|| format!("the payload is not JSON: {}", args.payload))?;
    let dispatcher = args.host.config().start()?;
    if dispatcher.plugins().get(&args.name).is_none()
        && let Some(error) = dispatcher.plugins().refused(&args.name)
    {
        anyhow::bail!("the handler for `{}` failed to load: {error}", args.name);
    }
    let envelope = Envelope {
        id: args.id.clone(),
        job: args.name.clone(),
        payload,
        attempt: Some(args.attempt),
        max_attempts: None,
        enqueued_at: None,
        not_before: None,
    };
    let report = dispatcher.dispatch(envelope.to_body().as_bytes(), &Delivery::default());
    println!("{}", report.to_json());
    Ok(if report.outcome.is_done() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_DONE)
    })
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let engine = Arc::new(JobEngine::new(EngineOptions::default())?);
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| {
        args.file
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(DEFAULT_CACHE_DIR_NAME)
    });
    let cache = ArtifactCache::new(cache_dir);
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let cached = cache.contains(engine.engine(), &bytes);
    let loader = Loader::new(engine, Some(cache))?;
    let plugin = loader.load_file(&args.file)?;
    let wasi: Vec<&String> = plugin
        .imports
        .iter()
        .filter(|i| i.starts_with("wasi:"))
        .collect();
    let schema: Option<serde_json::Value> = plugin
        .schema
        .as_ref()
        .and_then(|s| serde_json::from_str(s.text()).ok());
    let ungranted = ungranted_imports(&plugin);
    let report = serde_json::json!({
        "file": args.file,
        "grants": plugin.manifest.grants,
        "ungranted_imports": ungranted,
        "names": plugin.names,
        "version": plugin.version,
        "schema": schema,
        "schema_source": format!("{:?}", plugin.schema_source),
        "imports": plugin.imports,
        "wasi_imports": wasi,
        "manifest": plugin.manifest,
        "precompiled_cached": cached,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("file:      {}", args.file.display());
        println!("names:     {}", plugin.names.join(", "));
        println!("version:   {}", plugin.version);
        println!(
            "schema:    {}",
            schema.map_or("none".into(), |s| s.to_string())
        );
        println!("imports:   {}", plugin.imports.join(", "));
        println!(
            "grants:    {}",
            serde_json::to_string(&plugin.manifest.grants).unwrap_or_default()
        );
        for import in &ungranted {
            println!(
                "warning:   imports {import}, which its manifest does not grant: calls to it will be refused"
            );
        }
        println!(
            "precompiled artifact cached: {}",
            if cached { "yes" } else { "no" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn new_project(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let files = crate::scaffold::create(&dir, &args.name, args.lang)?;
    for file in &files {
        println!("created {}", file.display());
    }
    println!(
        "\nnext:\n  cd {}\n  ./build.sh\n  jobhost test .",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn test_cases(args: TestArgs) -> anyhow::Result<ExitCode> {
    let mut config = jobhost::config::HostConfig::new(&args.dir);
    config.cache_dir = args.cache_dir.clone();
    config.engine.pool_instances = 16;
    let dispatcher = config.start()?;
    let load_errors: Vec<String> = dispatcher
        .plugins()
        .errors()
        .iter()
        .map(ToString::to_string)
        .collect();
    let results = jobhost::testing::run_case_files(&dispatcher, &args.dir)?;
    let failed = results.iter().filter(|r| !r.passed).count() + load_errors.len();
    let passed = results.iter().filter(|r| r.passed).count();
    if args.json {
        let report = serde_json::json!({"passed": passed, "failed": failed, "load_errors": load_errors, "cases": results});
        println!("{report}");
    } else {
        for error in &load_errors {
            println!("FAIL  load: {error}");
        }
        for result in &results {
            let file = result
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stats = format!(
                "{} us, {} fuel",
                result.report["duration_us"], result.report["fuel"]
            );
            let mark = if result.passed { "ok  " } else { "FAIL" };
            println!("{mark}  {file} > {} ({stats})", result.name);
            for failure in &result.failures {
                println!("        {failure}");
            }
        }
        if results.is_empty() {
            println!("no case files (NAME.cases.json) in {}", args.dir.display());
        }
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 && !results.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_DONE)
    })
}

/// Imports whose calls fail because the manifest does not grant them: outbound HTTP and
/// sockets. An ungranted environment or filesystem is not among them: its calls succeed
/// with an empty environment and no preopened directories (every Rust std handler
/// imports both).
fn ungranted_imports(plugin: &jobhost::plugin::Plugin) -> Vec<String> {
    let grants = &plugin.manifest.grants;
    plugin
        .imports
        .iter()
        .filter(|import| {
            let refused_http =
                import.starts_with("wasi:http/outgoing-handler") && grants.http.is_none();
            refused_http || import.starts_with("wasi:sockets/")
        })
        .cloned()
        .collect()
}

fn compile(args: CompileArgs) -> anyhow::Result<ExitCode> {
    let options = EngineOptions {
        target: args.target.clone(),
        ..EngineOptions::default()
    };
    let engine = JobEngine::new(options)?;
    let cache = ArtifactCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(|| args.dir.join(DEFAULT_CACHE_DIR_NAME)),
    );
    let mut failed = 0;
    let files = jobhost::plugin::wasm_files(&args.dir)?;
    for file in files {
        let result = std::fs::read(&file)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                cache
                    .precompile(engine.engine(), &bytes)
                    .map_err(anyhow::Error::from)
            });
        match result {
            Ok(path) => println!("{} -> {}", file.display(), path.display()),
            Err(error) => {
                failed += 1;
                eprintln!("error: {}: {error:#}", file.display());
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_USAGE)
    })
}
