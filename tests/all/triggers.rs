//! Triggers: S3, EventBridge and SNS events routed to handlers by their manifests'
//! `[[trigger]]` entries, on the embedded queue (`enqueue --raw`), on the SQS poller with
//! the events sent by moto's S3, EventBridge and SNS, and the HTTP API in front of SQS.
//! The Lambda side is in `lambda.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jobhost::queue::sqlite::SqliteQueue;
use jobhost::queue::{Inspect as _, JobFilter};
use jobhost_tests::sqs;
use jobhost_tests::{Handlers, fixtures, jobhost_command};
use serde_json::{Value, json};

use crate::process::{free_port, http, wait_for};

/// The `events` fixture with every kind of trigger.
pub(crate) const TRIGGERS: &str = r#"
[[trigger]]
s3 = { bucket = "uploads", prefix = "incoming/", events = ["s3:ObjectCreated:*"] }
job = "on-upload"

[[trigger]]
eventbridge = { source = ["orders"], detail-type = ["OrderCreated", "OrderShipped"] }
job = "on-order"

[[trigger]]
eventbridge = { source = [{ prefix = "" }], detail-type = [{ anything-but = "Scheduled Event" }] }
job = "on-event"

[[trigger]]
scheduled-rule = "nightly-report"
job = "on-schedule"
payload = { period = "day" }
"#;

/// A handlers folder with the `events` fixture and its triggers (`bucket` for S3).
pub(crate) fn event_handlers(bucket: &str) -> anyhow::Result<Handlers> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::EVENTS, "events")?;
    handlers.add(fixtures::ECHO, "echo")?;
    let triggers = TRIGGERS.replace("bucket = \"uploads\"", &format!("bucket = {bucket:?}"));
    handlers.sidecar("events", "toml", &triggers)?;
    Ok(handlers)
}

/// An S3 notification of `keys` in `bucket`, as S3 sends it (keys URL-encoded).
pub(crate) fn s3_event(bucket: &str, keys: &[&str]) -> Value {
    let records: Vec<Value> = keys
        .iter()
        .map(|key| {
            json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": "2026-12-01T09:00:00.000Z", "eventName": "ObjectCreated:Put",
                "s3": {"s3SchemaVersion": "1.0", "configurationId": "uploads",
                       "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                       "object": {"key": key, "size": 1024, "eTag": "0123456789abcdef0123456789abcdef",
                                  "sequencer": "0A1B2C3D4E5F678901"}}
            })
        })
        .collect();
    json!({ "Records": records })
}

/// An EventBridge event, as the AWS documentation shows one.
pub(crate) fn eventbridge_event(source: &str, detail_type: &str, detail: Value) -> Value {
    json!({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": detail_type, "source": source, "account": "111122223333",
        "time": "2026-12-01T09:00:00Z", "region": "us-east-1", "resources": [],
        "detail": detail
    })
}

fn enqueue_raw(db: &Path, body: &str) -> anyhow::Result<String> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), body)?;
    let output = jobhost_command()?
        .args(["enqueue", "--db"])
        .arg(db)
        .arg("--raw")
        .arg(file.path())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

/// `jobhost run --drain` on the queue file `db` (with the test AWS environment); the queue.
fn drain(handlers: &Handlers, db: &Path) -> anyhow::Result<SqliteQueue> {
    let mut run = jobhost_command()?;
    run.args(["run", "--drain", "--plugins"])
        .arg(handlers.path())
        .arg("--db")
        .arg(db);
    if sqs::endpoint().is_ok() {
        sqs::aws_env(&mut run)?;
    }
    let output = run.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(SqliteQueue::open(db)?)
}

/// The `events` fixture is the handler of every trigger test.
#[test]
pub(crate) fn events() -> anyhow::Result<()> {
    events_on_the_embedded_queue_become_jobs_by_trigger()
}

fn events_on_the_embedded_queue_become_jobs_by_trigger() -> anyhow::Result<()> {
    let handlers = event_handlers("uploads")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("queue.db");
    let upload = enqueue_raw(
        &db,
        &s3_event("uploads", &["incoming/a+b%2Bc.png"]).to_string(),
    )?;
    let two_uploads = enqueue_raw(
        &db,
        &s3_event("uploads", &["incoming/1.png", "incoming/2.png"]).to_string(),
    )?;
    let order = enqueue_raw(
        &db,
        &eventbridge_event("orders", "OrderCreated", json!({"order": 7})).to_string(),
    )?;
    let mut scheduled = eventbridge_event("aws.events", "Scheduled Event", json!({}));
    scheduled["resources"] = json!(["arn:aws:events:us-east-1:111122223333:rule/nightly-report"]);
    let nightly = enqueue_raw(&db, &scheduled.to_string())?;
    let test_event = enqueue_raw(
        &db,
        r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-12-01T09:00:00.000Z","Bucket":"uploads","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}"#,
    )?;
    let other_bucket = enqueue_raw(&db, &s3_event("elsewhere", &["incoming/x.png"]).to_string())?;
    let not_an_event = enqueue_raw(&db, r#"{"hello": "world"}"#)?;

    let queue = drain(&handlers, &db)?;
    let rt = sqs::runtime()?;
    let jobs = rt.block_on(queue.jobs(JobFilter {
        limit: 100,
        ..JobFilter::default()
    }))?;
    let by_id: HashMap<&str, &jobhost::queue::JobRecord> =
        jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let output_of = |id: &str| -> Value {
        by_id
            .get(id)
            .and_then(|j| j.output.as_deref())
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or(Value::Null)
    };
    let state_of = |id: &str| by_id.get(id).map(|j| j.state.clone()).unwrap_or_default();

    // One record, one trigger: the job runs in place, with the key decoded.
    let ran = output_of(&upload);
    assert_eq!(ran["job"], "on-upload", "{ran}");
    assert_eq!(ran["payload"]["key"], "incoming/a b+c.png");
    assert_eq!(ran["payload"]["bucket"], "uploads");
    assert_eq!(ran["payload"]["size"], 1024);
    assert_eq!(ran["payload"]["event"], "ObjectCreated:Put");
    // Two records: two follow-up jobs, each done on its own.
    let fanned = output_of(&two_uploads);
    let children: Vec<&str> = fanned["routed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(children.len(), 2, "{fanned}");
    let keys: Vec<Value> = children
        .iter()
        .map(|id| output_of(id)["payload"]["key"].clone())
        .collect();
    assert_eq!(keys, [json!("incoming/1.png"), json!("incoming/2.png")]);
    // An order matches two triggers: two jobs, the event's detail beside its metadata.
    let routed = output_of(&order);
    let names: Vec<Value> = routed["routed"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .map(|id| output_of(id.as_str().unwrap_or_default())["job"].clone())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names, [json!("on-order"), json!("on-event")], "{routed}");
    let first = routed["routed"][0].as_str().unwrap_or_default();
    assert_eq!(output_of(first)["payload"]["detail"]["order"], 7);
    assert_eq!(output_of(first)["payload"]["detail-type"], "OrderCreated");
    // The scheduled rule's job gets the trigger's payload.
    let nightly = output_of(&nightly);
    assert_eq!(nightly["job"], "on-schedule");
    assert_eq!(nightly["payload"], json!({"period": "day"}));
    // S3's test event is acknowledged; another bucket is unrouted; an unknown shape
    // stays malformed.
    assert_eq!(state_of(&test_event), "done");
    let unrouted = by_id.get(other_bucket.as_str()).expect("the unrouted job");
    assert_eq!(
        (unrouted.state.as_str(), unrouted.reason.as_deref()),
        ("dead", Some("unrouted"))
    );
    assert!(
        unrouted
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("s3://elsewhere/incoming/x.png")),
        "{:?}",
        unrouted.last_error
    );
    let malformed = by_id.get(not_an_event.as_str()).expect("the malformed job");
    assert_eq!(malformed.reason.as_deref(), Some("malformed"));
    Ok(())
}

/// The `done` log lines of a run's stderr: (job name, job id).
fn done_lines(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "job done")
        .map(|l| {
            (
                l["fields"]["job.name"].as_str().unwrap_or("").to_string(),
                l["fields"]["job.id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn tools_python() -> std::path::PathBuf {
    jobhost_tests::tools_dir().join("py/bin/python")
}

#[test]
fn s3_eventbridge_and_sns_events_reach_their_handlers_through_sqs() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "pipelines", 10, false))?;
    let prefix = format!("p{}", std::process::id());
    let bucket = format!("{prefix}-uploads");
    // moto's S3, EventBridge and SNS send their events to the queue.
    let mut setup = std::process::Command::new(tools_python());
    setup
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("aws/pipelines.py")
                .as_os_str(),
        )
        .args([&sqs::endpoint()?, &queue.arn, &prefix]);
    sqs::aws_env(&mut setup)?;
    let wired = setup.output()?;
    assert!(
        wired.status.success(),
        "{}",
        String::from_utf8_lossy(&wired.stderr)
    );
    let handlers = event_handlers(&bucket)?;
    let mut command = jobhost_command()?;
    command
        .args(["run", "--drain", "--sqs-wait", "1s", "--queue", &queue.url])
        .args(["--log-format", "json", "--plugins"])
        .arg(handlers.path())
        .env("JOBHOST_LOG", "info");
    sqs::aws_env(&mut command)?;
    let output = command.output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary: Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default(),
    )?;
    let mut ran: HashMap<String, usize> = HashMap::new();
    for (name, _) in done_lines(&stderr) {
        *ran.entry(name).or_default() += 1;
    }
    // The upload under the prefix ran once; the one outside it never did. The order went
    // to both its triggers; the billing event and the two SNS messages (wrapped and raw)
    // to the catch-all. Also done without a job: S3's test event and the order event
    // itself, which was fanned out.
    let expected: HashMap<String, usize> = [("on-upload", 1), ("on-order", 1), ("on-event", 4)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let named: HashMap<String, usize> = ran
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(named, expected, "{summary}\n{stderr}");
    assert_eq!(
        (summary["done"].as_u64(), summary["dead"].as_u64()),
        (Some(8), Some(1)),
        "{summary}"
    );
    // The upload outside the prefix is in the dead-letter queue, unrouted, its raw body
    // kept.
    let dead = rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].attributes.get("jobhost.reason").map(String::as_str),
        Some("unrouted")
    );
    let body: Value = serde_json::from_str(&dead[0].body)?;
    // (moto encodes the `/` as well as S3 encodes other characters.)
    let key = body["Records"][0]["s3"]["object"]["key"]
        .as_str()
        .unwrap_or_default();
    assert!(key.starts_with("other") && key.ends_with("x.txt"), "{key}");
    Ok(())
}

#[test]
fn the_http_api_in_front_of_sqs_checks_and_sends() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "api", 10, false))?;
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let port = free_port()?;
    let log = tempfile::NamedTempFile::new()?;
    let mut command = jobhost_command()?;
    command
        .args(["run", "--sqs-wait", "1s", "--queue", &queue.url])
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "json", "--plugins"])
        .arg(handlers.path())
        .env("JOBHOST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen()?);
    sqs::aws_env(&mut command)?;
    let mut host = command.spawn()?;
    let _stop = scopeguard(&mut host);
    wait_for("the API", Duration::from_secs(30), || {
        Ok(http(port, "GET", "/healthz", "").is_ok())
    })?;
    let (status, one) = http(
        port,
        "POST",
        "/jobs",
        r#"{"type": "echo", "payload": {"message": "hi"}, "createdAt": "2026-12-01T09:00:00Z"}"#,
    )?;
    assert_eq!(status, 202, "{one}");
    let (status, batch) = http(
        port,
        "POST",
        "/jobs",
        r#"[{"job": "echo", "payload": {"message": "a"}}, {"job": "echo", "payload": {"message": "b"}}]"#,
    )?;
    assert_eq!(status, 202, "{batch}");
    let (status, invalid) = http(port, "POST", "/jobs", r#"{"job": "echo", "payload": {}}"#)?;
    assert_eq!(status, 422, "{invalid}");
    assert!(invalid["errors"].as_array().is_some_and(|e| !e.is_empty()));
    let (status, bad_batch) = http(
        port,
        "POST",
        "/jobs",
        r#"[{"job": "echo", "payload": {"message": "ok"}}, {"job": "nope"}]"#,
    )?;
    assert_eq!(
        (status, bad_batch["index"].as_u64()),
        (404, Some(1)),
        "{bad_batch}"
    );
    let (status, unknown) = http(port, "POST", "/jobs", r#"{"job": "nope"}"#)?;
    assert_eq!(status, 404, "{unknown}");
    let (status, typo) = http(
        port,
        "POST",
        "/jobs",
        r#"{"job": "echo", "payload": {"message": "x"}, "dealy": "1m"}"#,
    )?;
    assert_eq!(status, 400, "{typo}");
    assert!(typo["error"].as_str().is_some_and(|e| e.contains("dealy")));
    let big = json!({"job": "echo", "payload": {"message": "x".repeat(1 << 20)}}).to_string();
    let (status, _) = http(port, "POST", "/jobs", &big)?;
    assert_eq!(status, 413);
    let id = one["id"].as_str().unwrap_or_default().to_string();
    let (status, lookup) = http(port, "GET", &format!("/jobs/{id}"), "")?;
    assert_eq!(status, 501, "{lookup}");
    assert!(lookup["error"].as_str().is_some_and(|e| e.contains("SQS")));
    // The accepted jobs were sent, and this same process ran them: three, with the ids
    // it answered.
    let mut expected: Vec<String> = vec![id];
    for job in batch["jobs"].as_array().into_iter().flatten() {
        expected.push(job["id"].as_str().unwrap_or_default().to_string());
    }
    expected.sort();
    wait_for("the jobs to run", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(log.path())?;
        Ok(done_lines(&text).len() >= 3)
    })?;
    let text = std::fs::read_to_string(log.path())?;
    let mut ran: Vec<String> = done_lines(&text).into_iter().map(|(_, id)| id).collect();
    ran.sort();
    assert_eq!(ran, expected);
    // Nothing refused was sent: once the three are deleted, the queue is empty.
    wait_for("the queue to empty", Duration::from_secs(10), || {
        let (visible, hidden, delayed) = rt.block_on(sqs::counts(&client, &queue.url))?;
        Ok(visible + hidden + delayed == 0)
    })?;
    // (a refused job that had been sent would have been dead-lettered)
    assert!(
        rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?
            .is_empty()
    );
    Ok(())
}

/// Kills the child when dropped.
fn scopeguard(child: &mut std::process::Child) -> impl Drop + '_ {
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Kill(child)
}

#[test]
fn schedules_on_sqs_fire_each_tick_once_across_hosts_on_fifo_only() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.sidecar(
        "echo",
        "toml",
        "[[schedule]]\ncron = \"* * * * * *\"\npayload = { message = \"tick\" }\n",
    )?;
    // A standard queue cannot deduplicate: refused at start, saying why.
    let standard = rt.block_on(sqs::queue_pair(&client, "ticks", 10, false))?;
    let mut command = jobhost_command()?;
    command
        .args(["run", "--drain", "--queue", &standard.url, "--plugins"])
        .arg(handlers.path());
    sqs::aws_env(&mut command)?;
    let refused = command.output()?;
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("FIFO") && why.contains("[[schedule]]"),
        "{why}"
    );
    // Two hosts on one FIFO queue for a few seconds: each tick once.
    let fifo = rt.block_on(sqs::queue_pair(&client, "ticks", 10, true))?;
    let logs = [
        tempfile::NamedTempFile::new()?,
        tempfile::NamedTempFile::new()?,
    ];
    let mut hosts = Vec::new();
    for log in &logs {
        let mut command = jobhost_command()?;
        command
            .args(["run", "--sqs-wait", "1s", "--queue", &fifo.url])
            .args(["--log-format", "json", "--plugins"])
            .arg(handlers.path())
            .env("JOBHOST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log.reopen()?);
        sqs::aws_env(&mut command)?;
        hosts.push(command.spawn()?);
    }
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    for host in &mut hosts {
        // SIGTERM: finish what runs, then exit.
        let _ = std::process::Command::new("kill")
            .arg(host.id().to_string())
            .status();
    }
    for host in &mut hosts {
        host.wait()?;
    }
    let ran: Vec<String> = logs
        .iter()
        .flat_map(|log| done_lines(&std::fs::read_to_string(log.path()).unwrap_or_default()))
        .map(|(_, id)| id)
        .collect();
    assert!(ran.len() >= 3, "only {} ticks ran in 5 s", ran.len());
    // Both hosts name each tick alike (its id and deduplication id come from the tick's
    // key), so SQS keeps one of the copies. Counted with the ticks still on the queue (each
    // host also catches up on the last minute's ticks at start): at most one id per second
    // of the minute looked back and of the run, where hosts naming ticks differently would
    // make two. (moto deduplicates only against messages still queued, where SQS remembers a
    // deduplication id for 5 minutes: a copy of a tick already run and deleted can arrive
    // again here, so copies of one id are not counted against the host.)
    let left = rt.block_on(sqs::receive_all(&client, &fifo.url))?;
    let mut ids = ran.clone();
    for message in &left {
        let body: Value = serde_json::from_str(&message.body)?;
        ids.push(body["id"].as_str().unwrap_or_default().to_string());
    }
    ids.sort();
    ids.dedup();
    let seconds = started.elapsed().as_secs() + 60 + 2;
    assert!(
        ids.len() as u64 <= seconds,
        "{} tick ids for {seconds} s of ticks: the hosts name ticks differently",
        ids.len()
    );
    Ok(())
}

#[test]
fn an_upload_is_read_through_a_presigned_url_with_no_credentials_in_the_sandbox()
-> anyhow::Result<()> {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/handlers/upload-stats.wasm");
    anyhow::ensure!(
        example.is_file(),
        "examples are not built: run `cargo xtask examples`"
    );
    let endpoint = sqs::endpoint()?;
    let bucket = format!("presign-{}", std::process::id());
    let content = "day,total\n1,10\n2,32\n";
    // The object, put in moto's S3 with boto3.
    let mut put = std::process::Command::new(tools_python());
    put.args([
        "-c",
        "import boto3, sys; s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1'); \
         s3.create_bucket(Bucket=sys.argv[2]); s3.put_object(Bucket=sys.argv[2], Key=sys.argv[3], Body=sys.argv[4].encode())",
        &endpoint,
        &bucket,
        "incoming/day report.csv",
        content,
    ]);
    sqs::aws_env(&mut put)?;
    let put = put.output()?;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    // The example with the bucket's trigger, and a grant for moto's address only.
    let handlers = Handlers::new()?;
    handlers.add(&example.to_string_lossy(), "upload-stats")?;
    let host = endpoint.trim_start_matches("http://");
    handlers.sidecar(
        "upload-stats",
        "toml",
        &format!(
            "[[trigger]]\ns3 = {{ bucket = {bucket:?}, prefix = \"incoming/\", presign = true, presign-expiry = \"2m\" }}\n\
             [grants.http]\nallow = [{host:?}]\nmethods = [\"GET\"]\n"
        ),
    )?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("queue.db");
    let id = enqueue_raw(
        &db,
        &s3_event(&bucket, &["incoming/day+report.csv"]).to_string(),
    )?;
    let queue = drain(&handlers, &db)?;
    let rt = sqs::runtime()?;
    let job = rt
        .block_on(queue.job(&id))?
        .ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
    assert_eq!(job.state, "done", "{:?} {:?}", job.reason, job.last_error);
    let stats: Value = serde_json::from_str(job.output.as_deref().unwrap_or("null"))?;
    assert_eq!(
        stats["object"],
        format!("s3://{bucket}/incoming/day report.csv")
    );
    assert_eq!(stats["bytes"], content.len());
    assert_eq!(stats["lines"], 3);
    // (moto serves the object without checking the signature; the URL's signed form is
    // checked by the unit tests of `trigger::presign`.)
    Ok(())
}
