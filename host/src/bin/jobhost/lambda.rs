//! `jobhost lambda`: the binary as a Lambda custom runtime (`bootstrap`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use jobhost::clock::{Clock, SystemClock};
use jobhost::config::{HostConfig, default_concurrency};
use jobhost::queue::sqs::{SqsOptions, SqsQueue, client_from_env};
use jobhost::run::lambda::{
    LambdaHost, LambdaOptions, lambda_engine_options, native_triple, plugins_dir,
};

use crate::cli::LambdaArgs;

/// What the Lambda service sets for a function (the runtime client needs them all).
const LAMBDA_ENV: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

/// Loads the handlers; a folder that cannot be read, or one from which no handler loaded,
/// fails the init.
fn start(config: &HostConfig) -> anyhow::Result<jobhost::dispatch::Dispatcher> {
    let dispatcher = config.start()?;
    if dispatcher.plugins().plugins().is_empty() {
        let errors: Vec<String> = (dispatcher.plugins().errors().iter())
            .map(ToString::to_string)
            .collect();
        anyhow::bail!(
            "no handler loaded from {}{}",
            config.plugins_dir.display(),
            if errors.is_empty() {
                ": it has no *.wasm file".to_string()
            } else {
                format!(": {}", errors.join("; "))
            }
        );
    }
    dispatcher.plugins().log_errors();
    Ok(dispatcher)
}

/// Posts an init failure to the Runtime API (`/runtime/init/error`).
fn report_init_error(message: &str) -> anyhow::Result<()> {
    use lambda_runtime_api_client::{Client, body::Body, build_request};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = Client::builder()
            .build()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = serde_json::json!({
            "errorType": INIT_ERROR_TYPE,
            "errorMessage": message,
        });
        let request = build_request()
            .method(http::Method::POST)
            .uri("/2018-06-01/runtime/init/error")
            .header("Lambda-Runtime-Function-Error-Type", INIT_ERROR_TYPE)
            .header("Content-Type", "application/json")
            .body(Body::from(body.to_string()))?;
        let response = client
            .call(request)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "the Runtime API answered {}",
            response.status()
        );
        Ok(())
    })
}

/// The `errorType` of a failed init.
const INIT_ERROR_TYPE: &str = "Runtime.InitError";

pub fn run(args: LambdaArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let missing: Vec<&str> = LAMBDA_ENV
        .into_iter()
        .filter(|name| std::env::var_os(name).is_none())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "not in a Lambda environment: {} not set (Lambda sets them; with an emulator such as \
         `cargo lambda watch --only-lambda-apis`, set them as it says)",
        missing.join(", ")
    );
    let mut config = HostConfig::new(plugins_dir(args.plugins.clone()));
    config.engine = lambda_engine_options(native_triple());
    let dispatcher = match start(&config) {
        Ok(dispatcher) => Arc::new(dispatcher),
        Err(error) => {
            // Lambda shows this as the reason the function could not start.
            let message = format!("{error:#}");
            if let Err(report) = report_init_error(&message) {
                tracing::error!(error = %report, "could not report the init error to the Runtime API");
            }
            return Err(error);
        }
    };
    let precompiled = dispatcher
        .plugins()
        .plugins()
        .iter()
        .filter(|p| p.artifact == jobhost::plugin::ArtifactSource::Cached)
        .count();
    let concurrency = args.concurrency.unwrap_or_else(default_concurrency);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let init = runtime.block_on(async {
        let client = client_from_env().await;
        // The queue for direct invocations' follow-up jobs is looked up once, here.
        let children = match &args.sqs_url {
            Some(url) => Some(Arc::new(
                SqsQueue::producer(client.clone(), SqsOptions::new(url), clock.clone()).await?,
            )),
            None => None,
        };
        Ok::<_, jobhost::queue::QueueError>((client, children))
    });
    let (client, children) = match init {
        Ok(init) => init,
        Err(error) => {
            let message = format!("the queue for follow-up jobs (JOBHOST_SQS_URL): {error}");
            if let Err(report) = report_init_error(&message) {
                tracing::error!(error = %report, "could not report the init error to the Runtime API");
            }
            anyhow::bail!(message);
        }
    };
    runtime.block_on(async move {
        let options = LambdaOptions {
            dlq_url: args.dlq_url.clone(),
            concurrency,
            margin: args.margin,
            metrics_namespace: (!args.metrics_namespace.is_empty())
                .then(|| args.metrics_namespace.clone()),
        };
        let host = Arc::new(
            LambdaHost::new(dispatcher.clone(), clock, client, options)
                .with_children_queue(children),
        );
        tracing::info!(
            plugins = %config.plugins_dir.display(),
            handlers = dispatcher.plugins().plugins().len(),
            precompiled,
            init_ms = started.elapsed().as_secs_f64() * 1000.0,
            "jobhost Lambda runtime ready"
        );
        jobhost::run::lambda::run(host)
            .await
            .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
    })?;
    Ok(ExitCode::SUCCESS)
}
