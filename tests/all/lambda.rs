//! The Lambda runtime against cargo-lambda's Runtime API emulator (started by `cargo xtask
//! test`, its address in `JOBHOST_TEST_LAMBDA`) and moto for the queues: SQS batches with
//! their exact `batchItemFailures`, direct invocations, and packaged handlers.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobhost_tests::sqs::{self, QueuePair};
use jobhost_tests::{Handlers, fixtures, jobhost_command};
use serde_json::{Value, json};

/// One function at a time on the emulator: its invocations go to whichever runtime polls.
static EMULATOR: Mutex<()> = Mutex::new(());

fn emulator() -> anyhow::Result<String> {
    std::env::var("JOBHOST_TEST_LAMBDA").map_err(|_| {
        anyhow::anyhow!(
            "JOBHOST_TEST_LAMBDA is not set: run the tests with `cargo xtask test`, which \
             starts `cargo lambda watch --only-lambda-apis` on 127.0.0.1"
        )
    })
}

/// The host as a Lambda runtime (`bootstrap` with no arguments), killed when dropped.
struct Function {
    child: Child,
    log: tempfile::NamedTempFile,
    out: tempfile::NamedTempFile,
}

impl Function {
    fn start(plugins: &Path, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let log = tempfile::NamedTempFile::new()?;
        let out = tempfile::NamedTempFile::new()?;
        let mut command = jobhost_command()?;
        sqs::aws_env(&mut command)?;
        command
            .env("AWS_LAMBDA_RUNTIME_API", format!("{}/.rt", emulator()?))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("JOBHOST_PLUGINS", plugins)
            .env("JOBHOST_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdout(out.reopen()?)
            .stderr(log.reopen()?);
        Ok(Self {
            child: command.spawn()?,
            log,
            out,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The embedded-metric-format lines printed on stdout so far.
    fn metric_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }

    /// Invokes the function through the emulator; returns (status, body).
    fn invoke(&mut self, event: &Value) -> anyhow::Result<(u16, Value)> {
        anyhow::ensure!(
            self.child.try_wait()?.is_none(),
            "the function exited: {}",
            self.log()
        );
        let address = emulator()?;
        let hostport = address.trim_start_matches("http://");
        let mut stream = TcpStream::connect(hostport)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = event.to_string();
        write!(
            stream,
            "POST /2015-03-31/functions/_/invocations HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).unwrap_or("0").parse()?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        ))
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

fn handlers() -> anyhow::Result<Handlers> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    handlers.add(fixtures::TRANSIENT, "transient")?;
    Ok(handlers)
}

/// The SQS event Lambda would deliver for these received messages.
fn event_for(queue: &QueuePair, received: &[sqs::Received]) -> Value {
    let records: Vec<Value> = received
        .iter()
        .map(|m| {
            json!({
                "messageId": m.id, "receiptHandle": m.receipt, "body": m.body,
                "attributes": m.system, "messageAttributes": {}, "md5OfBody": "",
                "eventSource": "aws:sqs", "eventSourceARN": queue.arn, "awsRegion": "us-east-1",
            })
        })
        .collect();
    json!({"Records": records})
}

fn failures(response: &Value) -> Vec<String> {
    let mut ids: Vec<String> = response["batchItemFailures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn an_sqs_batch_reports_exactly_the_records_to_deliver_again() -> anyhow::Result<()> {
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "lambda", 30, false))?;
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        + 3_600_000;
    let bodies = vec![
        json!({"job": "echo", "payload": {"message": "one"}}).to_string(),
        json!({"job": "permanent", "payload": {}}).to_string(),
        json!({"job": "transient", "payload": {"succeed_on": 2}}).to_string(),
        "not json".to_string(),
        json!({"job": "echo", "payload": {"message": "later"}, "notBefore": far}).to_string(),
        json!({"job": "echo", "payload": {"message": "two"}}).to_string(),
    ];
    let ids = rt.block_on(sqs::send_raw(&client, &queue.url, &bodies))?;
    let received = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    assert_eq!(received.len(), bodies.len());
    let handlers = handlers()?;
    let receiver = jobhost_tests::OtlpReceiver::start()?;
    let endpoint = receiver.endpoint();
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ];
    let mut function = Function::start(handlers.path(), &otlp)?;
    let (status, response) = function.invoke(&event_for(&queue, &received))?;
    let answered = std::time::Instant::now();
    assert_eq!(status, 200, "{response}\n{}", function.log());
    // The spans are exported before the answer, not after the 5 s batch delay: a frozen
    // environment would never send them.
    while receiver.spans().len() < 5 && answered.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut processed: Vec<String> = receiver.spans().iter().map(|s| s.name.clone()).collect();
    processed.sort();
    assert_eq!(
        processed,
        [
            "process (unknown)",
            "process echo",
            "process echo",
            "process permanent",
            "process transient"
        ],
        "exported {:?} after the answer",
        answered.elapsed()
    );
    // The retried record and the one not yet due; not the done ones, not the dead letters.
    let mut expected = vec![ids[2].clone(), ids[4].clone()];
    expected.sort();
    assert_eq!(failures(&response), expected, "{response}");
    // One CloudWatch metric line per record run (not the one hidden until it is due).
    let mut metrics: Vec<String> = function
        .metric_lines()
        .iter()
        .map(|m| {
            let declared = &m["_aws"]["CloudWatchMetrics"][0];
            assert_eq!(declared["Namespace"], "jobhost", "{m}");
            assert_eq!(
                declared["Dimensions"],
                json!([["job", "outcome", "reason"]]),
                "{m}"
            );
            assert_eq!(m["JobsFinished"], 1, "{m}");
            assert!(
                m["RunTime"].as_f64().is_some() && m["WaitTime"].as_f64().is_some(),
                "{m}"
            );
            format!(
                "{} {} {}",
                m["job"].as_str().unwrap_or("?"),
                m["outcome"].as_str().unwrap_or("?"),
                m["reason"].as_str().unwrap_or("?")
            )
        })
        .collect();
    metrics.sort();
    assert_eq!(
        metrics,
        [
            "(unknown) dead-letter malformed",
            "echo done none",
            "echo done none",
            "permanent dead-letter permanent",
            "transient retry transient"
        ]
    );

    let dead = rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?;
    let mut reasons: Vec<&str> = dead
        .iter()
        .filter_map(|m| m.attributes.get("jobhost.reason").map(String::as_str))
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["malformed", "permanent"]);
    // The retried record is hidden for its backoff (1.5 s), then comes back as attempt 2.
    assert!(
        rt.block_on(sqs::receive_all(&client, &queue.url))?
            .is_empty()
    );
    std::thread::sleep(Duration::from_millis(2000));
    let back = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].id, ids[2]);
    assert_eq!(
        back[0]
            .system
            .get("ApproximateReceiveCount")
            .map(String::as_str),
        Some("2")
    );
    Ok(())
}

#[test]
fn the_aws_documentation_sample_event_is_handled() -> anyhow::Result<()> {
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "sample", 30, false))?;
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/sqs-event.json"
    ))?;
    let mut event: Value = serde_json::from_str(&sample)?;
    // The sample's shape, pointed at a queue that exists here; the first record becomes a
    // job, the second keeps its body ("Test message.", not a job: dead-lettered).
    for record in event["Records"].as_array_mut().into_iter().flatten() {
        record["eventSourceARN"] = queue.arn.clone().into();
    }
    event["Records"][0]["body"] = json!({"job": "echo", "payload": {"message": "sample"}})
        .to_string()
        .into();
    let handlers = handlers()?;
    let mut function = Function::start(handlers.path(), &[])?;
    let (status, response) = function.invoke(&event)?;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response, json!({"batchItemFailures": []}));
    let dead = rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "Test message.");
    assert_eq!(
        dead[0]
            .attributes
            .get("jobhost.source-message-id")
            .map(String::as_str),
        Some("2e1424d4-f796-459a-8184-9c92662be6da")
    );
    Ok(())
}

#[test]
fn a_direct_invocation_runs_the_job_once() -> anyhow::Result<()> {
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let handlers = handlers()?;
    let mut function = Function::start(handlers.path(), &[])?;
    let (status, report) =
        function.invoke(&json!({"job": "echo", "payload": {"message": "tick"}}))?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["outcome"], "done");
    assert_eq!(report["output"]["echo"], "tick");
    // Not done: a function error whose message is the report.
    let (_, error) = function.invoke(&json!({"job": "permanent", "payload": {}}))?;
    assert_eq!(error["errorType"], "JobNotDone", "{error}");
    let inner: Value = serde_json::from_str(error["errorMessage"].as_str().unwrap_or("{}"))?;
    assert_eq!(
        (inner["outcome"].as_str(), inner["reason"].as_str()),
        (Some("dead-letter"), Some("permanent"))
    );
    let (_, unknown) = function.invoke(&json!({"hello": "world"}))?;
    assert_eq!(unknown["errorType"], "UnknownEvent", "{unknown}");
    assert!(
        unknown["errorMessage"]
            .as_str()
            .unwrap_or("")
            .contains("unknown event"),
        "{unknown}"
    );
    // Follow-up jobs with no queue for them: a failure, not a silent drop.
    let (_, orphan) =
        function.invoke(&json!({"job": "echo", "payload": {"message": "p", "children": 2}}))?;
    assert!(
        orphan["errorMessage"]
            .as_str()
            .unwrap_or("")
            .contains("JOBHOST_SQS_URL"),
        "{orphan}"
    );
    drop(function);
    // With JOBHOST_SQS_URL, they are sent there.
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "direct", 30, false))?;
    let mut function = Function::start(handlers.path(), &[("JOBHOST_SQS_URL", &queue.url)])?;
    let (status, report) =
        function.invoke(&json!({"job": "echo", "payload": {"message": "p", "children": 2}}))?;
    assert_eq!(
        (status, report["outcome"].as_str()),
        (200, Some("done")),
        "{report}"
    );
    let sent = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    assert_eq!(sent.len(), 2, "{sent:?}");
    Ok(())
}

fn unzip(zip: &Path, into: &Path) -> anyhow::Result<Vec<(String, u32)>> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(zip)?)?;
    let mut names = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let name = entry.name()?.to_string();
        names.push((name.clone(), entry.unix_mode().unwrap_or(0)));
        let path = into.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        std::fs::write(path, bytes)?;
    }
    Ok(names)
}

#[test]
fn packaged_handlers_start_precompiled_from_a_read_only_folder() -> anyhow::Result<()> {
    let handlers = handlers()?;
    let dist = tempfile::tempdir()?;
    let stub = dist.path().join("bootstrap-stub");
    std::fs::write(&stub, "#!/bin/sh\n")?;
    for arch in ["x86_64", "arm64"] {
        let out = jobhost_command()?
            .env_remove("JOBHOST_CACHE_DIR")
            .args(["package", "--arch", arch, "--bootstrap"])
            .arg(&stub)
            .arg("--plugins")
            .arg(handlers.path())
            .arg("--out")
            .arg(dist.path())
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let layer = unzip(
        &dist.path().join("jobhost-layer-x86_64.zip"),
        &dist.path().join("layer"),
    )?;
    assert_eq!(layer, [("bootstrap".to_string(), 0o100755)]);
    let unpacked = dist.path().join("x86");
    let names = unzip(&dist.path().join("handlers-x86_64.zip"), &unpacked)?;
    let artifacts = |names: &[(String, u32)]| {
        let mut a: Vec<String> = names
            .iter()
            .filter(|(n, _)| n.ends_with(".cwasm"))
            .map(|(n, _)| n.clone())
            .collect();
        a.sort();
        a
    };
    assert_eq!(artifacts(&names).len(), 3);
    assert_eq!(
        names.iter().filter(|(n, _)| n.ends_with(".wasm")).count(),
        3
    );
    // The arm64 artifacts are other code (another target), for the same three handlers.
    let arm = unzip(
        &dist.path().join("handlers-arm64.zip"),
        &dist.path().join("arm"),
    )?;
    assert_eq!(artifacts(&arm).len(), 3);
    assert_ne!(artifacts(&arm), artifacts(&names));

    // As on Lambda: a read-only folder; every handler deserialized, none compiled.
    let dir = unpacked.join("handlers");
    let status = std::process::Command::new("chmod")
        .args(["-R", "a-w"])
        .arg(&dir)
        .status()?;
    assert!(status.success());
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let cache = dir.join(".jobhost-cache");
    let cache = cache.to_string_lossy();
    let mut function = Function::start(
        &dir,
        &[
            ("JOBHOST_LOG_FORMAT", "json"),
            ("JOBHOST_CACHE_DIR", &cache),
        ],
    )?;
    let (status, report) =
        function.invoke(&json!({"job": "echo", "payload": {"message": "packaged"}}))?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["output"]["echo"], "packaged");
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        let log = function.log();
        if let Some(line) = log.lines().find(|l| l.contains("Lambda runtime ready")) {
            break serde_json::from_str::<Value>(line)?;
        }
        anyhow::ensure!(Instant::now() < deadline, "no ready line: {log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready["fields"]["handlers"], 3, "{ready}");
    assert_eq!(ready["fields"]["precompiled"], 3, "{ready}");
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&dir)
        .status();
    Ok(())
}

#[test]
fn the_deployment_templates_follow_the_sqs_rules() -> anyhow::Result<()> {
    let tools = jobhost_tests::tools_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sam = root.join("examples/deploy/sam/template.yaml");
    let stacktape = root.join("examples/deploy/stacktape/stacktape.yml");
    let lint = std::process::Command::new(tools.join("py/bin/cfn-lint"))
        .arg(&sam)
        .output()?;
    assert!(
        lint.status.success(),
        "cfn-lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let check = |sam: &Path| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(tools.join("py/bin/python"))
            .arg(root.join("examples/deploy/check.py"))
            .arg(sam)
            .arg(&stacktape)
            .output()?)
    };
    let out = check(&sam)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check bites: partial batch responses off is refused.
    let broken = tempfile::NamedTempFile::new()?;
    std::fs::write(
        broken.path(),
        std::fs::read_to_string(&sam)?.replace(
            "FunctionResponseTypes: [ReportBatchItemFailures]",
            "BatchSize: 10",
        ),
    )?;
    assert!(!check(broken.path())?.status.success());
    Ok(())
}

#[test]
fn the_recipe_templates_are_what_jobhost_template_writes() -> anyhow::Result<()> {
    let tools = jobhost_tests::tools_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // What each recipe's SAM template must have, beside the host.
    let recipes: [(&str, &[&str]); 5] = [
        (
            "api-worker",
            &["Type: HttpApi", "Path: /jobs", "DeadLettersAlarm"],
        ),
        (
            "cron",
            &[
                "Type: ScheduleV2",
                "cron(0 9 ? * 2-6 *)",
                r#"{"job":"report""#,
            ],
        ),
        (
            "s3-uploads",
            &[
                "BucketName: jobhost-uploads-example",
                r#""Value":"incoming/""#,
                "Queue: !GetAtt JobsQueue.Arn",
            ],
        ),
        (
            "event-bus",
            &[
                r#""detail-type":["OrderCreated","OrderShipped"]"#,
                r#"{"source":[{"prefix":""}]}"#,
            ],
        ),
        ("webhook", &["Path: /hooks/{name}", "JOBHOST_SQS_URL"]),
    ];
    for (recipe, expected) in recipes {
        let mut written = Vec::new();
        for (format, file) in [
            ("sam", format!("examples/deploy/sam/{recipe}.yaml")),
            (
                "stacktape",
                format!("examples/deploy/stacktape/{recipe}.yml"),
            ),
        ] {
            let mut command = jobhost_command()?;
            command
                .current_dir(&root)
                .args([
                    "template",
                    "--plugins",
                    &format!("examples/deploy/recipes/{recipe}"),
                ])
                .args(["--format", format]);
            if matches!(recipe, "api-worker" | "webhook") {
                command.arg("--api");
            }
            let output = command.output()?;
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let committed = std::fs::read_to_string(root.join(&file))?;
            assert!(
                String::from_utf8(output.stdout)? == committed,
                "{file} is not what `jobhost template` writes: write it again (see \
                 examples/deploy/recipes/README.md)"
            );
            written.push((root.join(&file), committed));
        }
        for needle in expected {
            assert!(written[0].1.contains(needle), "{recipe}: no {needle}");
        }
        let lint = std::process::Command::new(tools.join("py/bin/cfn-lint"))
            .arg(&written[0].0)
            .output()?;
        assert!(
            lint.status.success(),
            "cfn-lint {recipe}: {}",
            String::from_utf8_lossy(&lint.stdout)
        );
        let check = std::process::Command::new(tools.join("py/bin/python"))
            .arg(root.join("examples/deploy/check.py"))
            .arg(&written[0].0)
            .arg(&written[1].0)
            .output()?;
        assert!(
            check.status.success(),
            "check.py {recipe}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // A schedule EventBridge cannot express is refused, saying why.
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("fast.toml"),
        "[[schedule]]\ncron = \"*/10 * * * * *\"\n",
    )?;
    let refused = jobhost_command()?
        .args(["template", "--plugins"])
        .arg(dir.path())
        .output()?;
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("once a minute") && why.contains("fast.toml"),
        "{why}"
    );
    Ok(())
}

#[test]
fn a_job_never_outlives_the_invocation() -> anyhow::Result<()> {
    let handlers = handlers()?;
    handlers.add(fixtures::SPIN, "spin")?;
    // The handler's own timeout is long; the invocation has 700 ms left, less a 200 ms margin.
    handlers.sidecar(
        "spin",
        "toml",
        "[limits]\ntimeout-ms = 60_000\nfuel = 1_000_000_000_000\n",
    )?;
    let rt = sqs::threaded_runtime()?;
    let client = rt.block_on(sqs::client())?;
    let host = lambda_host(&handlers, client, 2)?;
    let started = Instant::now();
    let deadline = std::time::SystemTime::now() + Duration::from_millis(700);
    let result = rt.block_on(host.handle(json!({"job": "spin", "payload": {}}), deadline));
    let elapsed = started.elapsed();
    let report: Value =
        serde_json::from_str(&result.err().map(|e| e.to_string()).unwrap_or_default())?;
    assert_eq!(report["reason"], "timeout", "{report}");
    assert!(
        elapsed < Duration::from_millis(700),
        "ran {elapsed:?}, past the invocation's deadline"
    );
    assert!(
        elapsed >= Duration::from_millis(450),
        "stopped early: {elapsed:?}"
    );
    Ok(())
}

/// A failed init is posted to the Runtime API's init error endpoint (here a real HTTP
/// server standing in for it, since the emulator only accepts it), so Lambda can show why.
#[test]
fn an_init_failure_is_reported_to_the_runtime_api() -> anyhow::Result<()> {
    let api = jobhost_tests::TestServer::start()?;
    let empty = tempfile::tempdir()?;
    let broken = Handlers::new()?;
    broken.sidecar("echo", "wasm", "not a component")?;
    let missing = empty.path().join("no-such-folder");
    let cases = [
        (missing.as_path(), "cannot read the plugins folder"),
        (empty.path(), "no handler loaded"),
        (broken.path(), "echo.wasm"),
    ];
    for (plugins, expected) in cases {
        let mut command = jobhost_command()?;
        sqs::aws_env(&mut command)?;
        let output = command
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{}", api.port),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("JOBHOST_PLUGINS", plugins)
            .output()?;
        assert!(
            !output.status.success(),
            "{expected}: init failed, so the runtime exits"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("could not report"), "{stderr}");
        let reports: Vec<_> = api
            .received()
            .into_iter()
            .filter(|r| r.path == "/2018-06-01/runtime/init/error")
            .collect();
        let last = reports
            .last()
            .ok_or_else(|| anyhow::anyhow!("{expected}: no init error posted"))?;
        assert_eq!(last.method, "POST");
        assert!(
            last.headers
                .iter()
                .any(|(k, v)| k == "lambda-runtime-function-error-type" && v == "Runtime.InitError"),
            "{:?}",
            last.headers
        );
        let body: Value = serde_json::from_slice(&last.body)?;
        assert_eq!(body["errorType"], "Runtime.InitError");
        let message = body["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{expected}: {message}");
    }
    Ok(())
}

/// JSON log lines as CloudWatch keeps them: each key once, and a function error logged by
/// jobhost with its type, not echoed by the runtime as if it had panicked.
#[test]
fn json_logs_carry_each_key_once_and_no_false_panic() -> anyhow::Result<()> {
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let handlers = handlers()?;
    let mut function = Function::start(handlers.path(), &[("JOBHOST_LOG_FORMAT", "json")])?;
    let (_, error) = function.invoke(&json!({"job": "permanent", "payload": {}}))?;
    assert_eq!(error["errorType"], "JobNotDone", "{error}");
    let (_, unknown) = function.invoke(&json!({"detail-type": "Scheduled Event"}))?;
    assert_eq!(unknown["errorType"], "UnknownEvent", "{unknown}");
    let log = function.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    let failed = lines
        .iter()
        .find(|l| l.contains("job failed"))
        .ok_or_else(|| anyhow::anyhow!("no `job failed` line: {log}"))?;
    assert_eq!(failed.matches("\"message\":").count(), 1, "{failed}");
    let line: Value = serde_json::from_str(failed)?;
    assert_eq!(line["fields"]["reason"], "permanent", "{line}");
    assert!(line["fields"]["error"].is_string(), "{line}");
    for line in &lines {
        serde_json::from_str::<Value>(line)?;
        assert!(
            !line.contains("layers::panic") && !line.contains("panicked"),
            "{line}"
        );
    }
    let answered: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("answers a function error"))
        .collect();
    assert_eq!(answered.len(), 2, "{log}");
    assert!(answered[1].contains("UnknownEvent"), "{}", answered[1]);
    Ok(())
}

/// A Lambda host over `handlers`, running `concurrency` records at once.
fn lambda_host(
    handlers: &Handlers,
    client: aws_sdk_sqs::Client,
    concurrency: usize,
) -> anyhow::Result<jobhost::run::lambda::LambdaHost> {
    use jobhost::run::lambda::{LambdaHost, LambdaOptions};
    let options = LambdaOptions {
        dlq_url: None,
        concurrency,
        margin: Duration::from_millis(200),
        metrics_namespace: None,
    };
    Ok(LambdaHost::new(
        std::sync::Arc::new(handlers.dispatcher()?),
        std::sync::Arc::new(jobhost::clock::SystemClock),
        client,
        options,
    ))
}

/// A manifest's `concurrency` holds on Lambda as on the poller: four records of a handler
/// limited to one at a time run one after the other, though the host runs four at once.
#[test]
fn a_manifest_concurrency_limit_holds_in_a_lambda_batch() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    handlers.sidecar("busy", "toml", "concurrency = 1\n")?;
    let rt = sqs::threaded_runtime()?;
    let host = lambda_host(&handlers, rt.block_on(sqs::client())?, 4)?;
    // Done records need no SQS call, so the source queue need not exist.
    let records: Vec<Value> = (0..4)
        .map(|i| {
            json!({
                "messageId": format!("m{i}"), "receiptHandle": format!("r{i}"),
                "body": json!({"job": "busy", "payload": {"i": i, "ms": 300}}).to_string(),
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:gated",
                "awsRegion": "us-east-1",
            })
        })
        .collect();
    let deadline = std::time::SystemTime::now() + Duration::from_secs(60);
    let started = Instant::now();
    let response = rt.block_on(host.handle(json!({"Records": records}), deadline))?;
    let elapsed = started.elapsed();
    assert_eq!(failures(&response), Vec::<String>::new(), "{response}");
    // Each record spins 300 ms of wall-clock time: one at a time, they take 1.2 s at least
    // (four at once would take about 300 ms).
    assert!(
        elapsed >= Duration::from_millis(1200),
        "the four records overlapped: the batch took {elapsed:?}"
    );
    Ok(())
}

/// The follow-up jobs of a whole batch go out together, ten to a call, not one call per
/// parent (counted at a proxy in front of moto).
#[test]
fn a_lambda_batch_sends_its_follow_up_jobs_in_batches() -> anyhow::Result<()> {
    let proxy = sqs::CountingProxy::start()?;
    let rt = sqs::threaded_runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "fanout", 30, false))?;
    let bodies: Vec<String> = (0..10)
        .map(|i| {
            json!({"job": "echo", "payload": {"message": format!("p{i}"), "children": 1}})
                .to_string()
        })
        .collect();
    rt.block_on(sqs::send_raw(&client, &queue.url, &bodies))?;
    let received = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    assert_eq!(received.len(), 10);
    let proxied = sqs::client_at(&proxy.endpoint);
    let host = lambda_host(&handlers()?, proxied, 4)?;
    let deadline = std::time::SystemTime::now() + Duration::from_secs(60);
    let response = rt.block_on(host.handle(event_for(&queue, &received), deadline))?;
    assert_eq!(failures(&response), Vec::<String>::new(), "{response}");
    assert_eq!(
        (proxy.count("SendMessageBatch"), proxy.count("SendMessage")),
        (1, 0),
        "ten follow-up jobs in one call"
    );
    // The parents are left for Lambda to delete; the ten children are in the queue.
    let children = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    let mut messages: Vec<String> = children
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(&m.body).ok())
        .filter_map(|b| b["payload"]["message"].as_str().map(str::to_string))
        .collect();
    messages.sort();
    assert_eq!(messages, vec!["child 0"; 10]);
    Ok(())
}

/// The queue for direct invocations' follow-up jobs is looked up once, at init: two
/// invocations that enqueue make no `GetQueueAttributes` call (counted at a proxy).
#[test]
fn direct_invocations_look_up_their_follow_up_queue_only_at_init() -> anyhow::Result<()> {
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let proxy = sqs::CountingProxy::start()?;
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "children", 30, false))?;
    let handlers = handlers()?;
    let mut function = Function::start(
        handlers.path(),
        &[
            ("JOBHOST_SQS_URL", &queue.url),
            ("AWS_ENDPOINT_URL", &proxy.endpoint),
        ],
    )?;
    let ready = Instant::now();
    while !function.log().contains("Lambda runtime ready") {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "never ready: {}",
            function.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let at_init = proxy.count("GetQueueAttributes");
    for message in ["first", "second"] {
        let (status, report) = function
            .invoke(&json!({"job": "echo", "payload": {"message": message, "children": 1}}))?;
        assert_eq!(
            (status, report["outcome"].as_str()),
            (200, Some("done")),
            "{report}"
        );
    }
    assert_eq!(
        proxy.count("GetQueueAttributes"),
        at_init,
        "GetQueueAttributes after init"
    );
    assert_eq!(proxy.count("SendMessageBatch"), 2);
    let sent = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    assert_eq!(sent.len(), 2, "{sent:?}");
    Ok(())
}

/// An API Gateway HTTP API (payload v2) request, as the AWS documentation shows one.
fn api_gateway_request(method: &str, path: &str, body: &str, base64: bool) -> Value {
    use base64::Engine as _;
    let body = if base64 {
        base64::engine::general_purpose::STANDARD.encode(body)
    } else {
        body.to_string()
    };
    json!({
        "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path,
        "rawQueryString": "", "cookies": [],
        "headers": {"content-type": "application/json", "host": "id.execute-api.us-east-1.amazonaws.com"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api-id",
            "domainName": "id.execute-api.us-east-1.amazonaws.com", "domainPrefix": "id",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "192.0.2.1", "userAgent": "agent"},
            "requestId": "id", "routeKey": format!("{method} {path}"), "stage": "$default",
            "time": "12/Mar/2020:19:03:58 +0000", "timeEpoch": 1_583_348_638_390_u64
        },
        "body": body, "isBase64Encoded": base64
    })
}

/// The jobs now on `queue`: (job name, payload).
fn queued_jobs(
    rt: &tokio::runtime::Runtime,
    client: &aws_sdk_sqs::Client,
    queue: &QueuePair,
) -> anyhow::Result<Vec<(String, Value)>> {
    let received = rt.block_on(sqs::receive_all(client, &queue.url))?;
    let mut jobs = Vec::new();
    for message in received {
        let body: Value = serde_json::from_str(&message.body)?;
        jobs.push((
            body["job"].as_str().unwrap_or_default().to_string(),
            body["payload"].clone(),
        ));
    }
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(jobs)
}

#[test]
fn direct_s3_eventbridge_and_scheduler_events_are_routed_by_trigger() -> anyhow::Result<()> {
    use crate::triggers::{event_handlers, eventbridge_event, s3_event};
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "direct-events", 30, false))?;
    let bucket = "amzn-s3-demo-bucket";
    let handlers = event_handlers(bucket)?;
    let mut function = Function::start(handlers.path(), &[("JOBHOST_SQS_URL", &queue.url)])?;

    // S3 invoking the function with one record: the job runs in place.
    let (status, report) = function.invoke(&s3_event(bucket, &["incoming%2Fmy+photo.jpg"]))?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["output"]["job"], "on-upload", "{report}");
    assert_eq!(report["output"]["payload"]["key"], "incoming/my photo.jpg");
    assert_eq!(
        report["output"]["payload"]["etag"],
        "0123456789abcdef0123456789abcdef"
    );
    // Two records: both sent to JOBHOST_SQS_URL, the invocation done.
    let (status, report) = function.invoke(&s3_event(bucket, &["incoming/1", "incoming/2"]))?;
    assert_eq!(status, 200, "{report}");
    let sent = queued_jobs(&rt, &client, &queue)?;
    let keys: Vec<&Value> = sent.iter().map(|(_, p)| &p["key"]).collect();
    assert_eq!(keys.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|(name, _)| name == "on-upload"));

    // An EventBridge rule's event matching one trigger runs in place.
    let ec2 = eventbridge_event(
        "aws.ec2",
        "EC2 Instance State-change Notification",
        json!({"instance-id": "i-1234567890abcdef0", "state": "terminated"}),
    );
    let (status, report) = function.invoke(&ec2)?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["output"]["job"], "on-event");
    assert_eq!(report["output"]["payload"]["detail"]["state"], "terminated");
    assert_eq!(report["output"]["payload"]["source"], "aws.ec2");
    // One matching two triggers: both sent.
    let order = eventbridge_event("orders", "OrderShipped", json!({"order": 9}));
    let (status, _) = function.invoke(&order)?;
    assert_eq!(status, 200);
    let sent = queued_jobs(&rt, &client, &queue)?;
    let names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["on-event", "on-order"]);
    assert!(sent.iter().all(|(_, p)| p["detail"]["order"] == 9));

    // A scheduled rule's event, by rule name.
    let mut scheduled = eventbridge_event("aws.events", "Scheduled Event", json!({}));
    scheduled["resources"] = json!(["arn:aws:events:us-east-1:123456789012:rule/nightly-report"]);
    let (status, report) = function.invoke(&scheduled)?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["output"]["job"], "on-schedule");
    assert_eq!(report["output"]["payload"], json!({"period": "day"}));
    // EventBridge Scheduler passes its target's input unchanged: an envelope; and the
    // Glasswork style with `jobName`.
    for input in [
        json!({"job": "on-event", "payload": {"from": "scheduler"}}),
        json!({"jobName": "on-event", "payload": {"from": "glasswork"}}),
    ] {
        let (status, report) = function.invoke(&input)?;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["output"]["payload"], input["payload"]);
    }

    // S3's test event is acknowledged; an event no trigger matches is `Unrouted`.
    let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent",
        "Time": "2026-12-01T09:00:00.000Z", "Bucket": bucket});
    let (status, report) = function.invoke(&test_event)?;
    assert_eq!(
        (status, report["outcome"].as_str()),
        (200, Some("done")),
        "{report}"
    );
    let (_, unrouted) = function.invoke(&s3_event("another-bucket", &["incoming/x"]))?;
    assert_eq!(unrouted["errorType"], "Unrouted", "{unrouted}");
    assert!(
        unrouted["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("s3://another-bucket/incoming/x")),
        "{unrouted}"
    );
    let mut other_rule = scheduled.clone();
    other_rule["resources"] = json!(["arn:aws:events:us-east-1:123456789012:rule/other"]);
    let (_, unrouted) = function.invoke(&other_rule)?;
    assert_eq!(unrouted["errorType"], "Unrouted", "{unrouted}");
    assert!(queued_jobs(&rt, &client, &queue)?.is_empty());
    Ok(())
}

#[test]
fn api_gateway_requests_are_checked_and_sent_to_the_queue() -> anyhow::Result<()> {
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "api-gateway", 30, false))?;
    let handlers = handlers()?;
    let mut function = Function::start(handlers.path(), &[("JOBHOST_SQS_URL", &queue.url)])?;
    let job =
        json!({"type": "echo", "payload": {"message": "hi"}, "createdAt": "2026-12-01T09:00:00Z"});
    let (status, answer) = function.invoke(&api_gateway_request(
        "POST",
        "/jobs",
        &job.to_string(),
        false,
    ))?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let accepted: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("{}"))?;
    // A function URL sends a binary body base64-encoded.
    let (_, answer) = function.invoke(&api_gateway_request(
        "POST",
        "/jobs",
        &job.to_string(),
        true,
    ))?;
    assert_eq!(answer["statusCode"], 202, "{answer}");
    for (body, status) in [
        (json!({"job": "echo", "payload": {}}), 422),
        (json!({"job": "nope", "payload": {}}), 404),
        (
            json!({"job": "echo", "payload": {"message": "x"}, "dealy": "1m"}),
            400,
        ),
        (
            json!({"job": "echo", "payload": {"message": "x".repeat(1 << 20)}}),
            413,
        ),
    ] {
        let (_, answer) = function.invoke(&api_gateway_request(
            "POST",
            "/jobs",
            &body.to_string(),
            false,
        ))?;
        assert_eq!(answer["statusCode"], status, "{body:.100}: {answer}");
    }
    let (_, answer) = function.invoke(&api_gateway_request(
        "GET",
        &format!("/jobs/{}", accepted["id"].as_str().unwrap_or("x")),
        "",
        false,
    ))?;
    assert_eq!(answer["statusCode"], 501, "{answer}");
    // Exactly the two accepted jobs are on the queue, the first with the id answered.
    let received = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    assert_eq!(received.len(), 2);
    let ids: Vec<Value> = received
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(&m.body).ok())
        .map(|b| b["id"].clone())
        .collect();
    assert!(ids.contains(&accepted["id"]), "{ids:?} {accepted}");
    Ok(())
}

#[test]
fn an_sqs_batch_acknowledges_test_events_and_dead_letters_unrouted_ones() -> anyhow::Result<()> {
    use crate::triggers::{event_handlers, s3_event};
    let _one = EMULATOR.lock().unwrap_or_else(|e| e.into_inner());
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "batch-events", 30, false))?;
    let bodies = vec![
        json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "uploads"}).to_string(),
        s3_event("uploads", &["incoming/a.png"]).to_string(),
        s3_event("uploads", &["elsewhere/b.png"]).to_string(),
        s3_event("uploads", &["incoming/c.png", "incoming/d.png"]).to_string(),
    ];
    let ids = rt.block_on(sqs::send_raw(&client, &queue.url, &bodies))?;
    let received = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    let handlers = event_handlers("uploads")?;
    let mut function = Function::start(handlers.path(), &[])?;
    let (status, response) = function.invoke(&event_for(&queue, &received))?;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response, json!({"batchItemFailures": []}));
    // The unrouted upload is in the dead-letter queue with its reason.
    let dead = rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].attributes.get("jobhost.reason").map(String::as_str),
        Some("unrouted")
    );
    assert_eq!(
        dead[0]
            .attributes
            .get("jobhost.source-message-id")
            .map(String::as_str),
        Some(ids[2].as_str())
    );
    // The two-record upload went back to its own queue as two jobs.
    let sent = queued_jobs(&rt, &client, &queue)?;
    let keys: Vec<&str> = sent.iter().filter_map(|(_, p)| p["key"].as_str()).collect();
    assert_eq!(keys.len(), 2, "{sent:?}");
    assert!(keys.contains(&"incoming/c.png") && keys.contains(&"incoming/d.png"));
    Ok(())
}
