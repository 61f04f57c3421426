//! The SQS backend against a real SQS-compatible server (moto, started by `cargo xtask
//! test`): outcomes, the dead-letter queue, lease renewal, backoff, long delays, FIFO
//! order, poison messages, and the server going away mid-run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use jobhost::clock::{Clock, ManualClock, SystemClock};
use jobhost::queue::sqs::{SqsOptions, SqsQueue};
use jobhost::queue::{Delivered, NewJob, Queue, Settlement};
use jobhost::run::poller::{RunOptions, Runner};
use jobhost_tests::sqs::{self, QueuePair, Received};
use jobhost_tests::{Handlers, Observed, fixtures, jobhost_command};
use serde_json::{Value, json};

fn handlers() -> anyhow::Result<Handlers> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    handlers.add(fixtures::TRANSIENT, "transient")?;
    handlers.add(fixtures::BUSY, "busy")?;
    Ok(handlers)
}

/// `jobhost run --queue URL --drain` with short long-polls; returns its summary.
fn run_drain(handlers: &Handlers, queue: &QueuePair, extra: &[&str]) -> anyhow::Result<Value> {
    let mut command = jobhost_command()?;
    command
        .args([
            "run",
            "--drain",
            "--sqs-wait",
            "1s",
            "--queue",
            &queue.url,
            "--plugins",
        ])
        .arg(handlers.path())
        .args(extra);
    sqs::aws_env(&mut command)?;
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "jobhost run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    Ok(serde_json::from_str(
        stdout.lines().last().unwrap_or_default(),
    )?)
}

fn enqueue(
    handlers: &Handlers,
    queue: &QueuePair,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut command = jobhost_command()?;
    command
        .args(["enqueue", "--queue", &queue.url, "--plugins"])
        .arg(handlers.path())
        .args(args);
    sqs::aws_env(&mut command)?;
    Ok(command.output()?)
}

fn by_reason(dead: &[Received]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            (
                m.attributes
                    .get("jobhost.reason")
                    .cloned()
                    .unwrap_or_default(),
                m.body.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn done_retry_and_dead_letter_on_sqs() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "outcomes", 10, false))?;
    let handlers = handlers()?;
    for i in 0..3 {
        let out = enqueue(
            &handlers,
            &queue,
            &["echo", &json!({"message": format!("m{i}")}).to_string()],
        )?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    enqueue(&handlers, &queue, &["permanent", "{}"])?;
    enqueue(&handlers, &queue, &["transient", r#"{"succeed_on": 2}"#])?;
    // The schema is checked before sending: nothing is sent, exit 2.
    let refused = enqueue(&handlers, &queue, &["echo", r#"{"message": 5}"#])?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("payload fails the schema"));

    let started = Instant::now();
    let summary = run_drain(&handlers, &queue, &["--concurrency", "2"])?;
    assert_eq!(
        (
            summary["done"].as_u64(),
            summary["retried"].as_u64(),
            summary["dead"].as_u64()
        ),
        (Some(4), Some(1), Some(1)),
        "{summary}"
    );
    // The transient job's retry-after (1.5 s) was honoured: the message was hidden.
    assert!(started.elapsed() >= Duration::from_millis(1500));

    let dead = rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].attributes.get("jobhost.reason").map(String::as_str),
        Some("permanent")
    );
    assert_eq!(
        dead[0].attributes.get("jobhost.error").map(String::as_str),
        Some("the recipient does not exist")
    );
    assert_eq!(
        dead[0]
            .attributes
            .get("jobhost.attempts")
            .map(String::as_str),
        Some("1")
    );
    let body: Value = serde_json::from_str(&dead[0].body)?;
    assert_eq!(body["job"], "permanent");
    assert_eq!(rt.block_on(sqs::counts(&client, &queue.url))?, (0, 0, 0));
    Ok(())
}

#[test]
fn a_job_longer_than_the_visibility_timeout_keeps_its_lease_and_runs_once() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "renew", 2, false))?;
    let handlers = handlers()?;
    handlers.sidecar(
        "busy",
        "toml",
        "[limits]\ntimeout-ms = 20_000\nfuel = 100_000_000_000\n",
    )?;
    enqueue(&handlers, &queue, &["busy", r#"{"i": 21, "ms": 5000}"#])?;
    // Two workers: without renewal, the other one would get the message after 2 s.
    let summary = run_drain(&handlers, &queue, &["--concurrency", "2"])?;
    assert_eq!(
        (summary["done"].as_u64(), summary["retried"].as_u64()),
        (Some(1), Some(0)),
        "{summary}"
    );
    assert_eq!(rt.block_on(sqs::counts(&client, &queue.url))?, (0, 0, 0));
    Ok(())
}

async fn connect(
    queue: &QueuePair,
    clock: Arc<dyn Clock>,
    max_hide: Duration,
) -> anyhow::Result<SqsQueue> {
    let mut options = SqsOptions::new(&queue.url);
    options.wait = Duration::from_secs(1);
    options.max_hide = max_hide;
    Ok(SqsQueue::connect(sqs::client().await?, options, clock).await?)
}

#[test]
fn a_retry_hides_the_message_for_its_backoff_and_counts_the_attempt() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    rt.block_on(async {
        let client = sqs::client().await?;
        let pair = sqs::queue_pair(&client, "backoff", 30, false).await?;
        let queue = connect(&pair, Arc::new(SystemClock), jobhost::queue::sqs::MAX_HOP).await?;
        assert_eq!(queue.visibility_timeout(), Duration::from_secs(30));
        queue
            .enqueue(vec![NewJob::new("echo", json!({"message": "x"}))])
            .await?;
        let first = queue.receive(10, Duration::from_secs(30)).await?;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].attempt, 1);
        queue
            .settle(vec![Settlement::new(
                first[0].clone(),
                jobhost::job::Outcome::Retry {
                    delay: Duration::from_secs(2),
                    reason: jobhost::job::Reason::Transient,
                    message: "503".into(),
                },
                SystemTime::now(),
            )])
            .await?;
        let early = queue.receive(10, Duration::from_secs(30)).await?;
        assert!(early.is_empty(), "delivered before its backoff: {early:?}");
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let again = queue.receive(10, Duration::from_secs(30)).await?;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempt, 2);
        anyhow::Ok(())
    })
}

#[test]
fn delays_use_delay_seconds_up_to_15_minutes_and_hidden_hops_beyond() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    rt.block_on(async {
        let client = sqs::client().await?;
        let pair = sqs::queue_pair(&client, "delays", 30, false).await?;
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        // Hops of 1 s instead of 12 h, and a clock the test moves: a 20-minute delay in seconds.
        let queue = connect(&pair, clock.clone(), Duration::from_secs(1)).await?;
        let mut short = NewJob::new("echo", json!({"message": "short"}));
        short.run_at = Some(clock.now() + Duration::from_secs(2));
        let mut long = NewJob::new("echo", json!({"message": "long"}));
        long.run_at = Some(clock.now() + Duration::from_secs(20 * 60));
        queue.enqueue(vec![short, long]).await?;
        // The short one is delayed by SQS itself; the long one is visible but not due.
        assert_eq!(sqs::counts(&client, &pair.url).await?, (1, 0, 1));
        assert!(queue.receive(10, Duration::from_secs(30)).await?.is_empty());
        // Received early, the long one was hidden again (one hop), not run.
        assert_eq!(sqs::counts(&client, &pair.url).await?.1, 1);
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let due = queue.receive(10, Duration::from_secs(30)).await?;
        assert_eq!(due.len(), 1, "{due:?}");
        assert!(String::from_utf8_lossy(body(&due[0])).contains("short"));
        assert_eq!(due[0].attempt, 1);
        // Twenty minutes later (by the clock), the long one runs.
        clock.advance(Duration::from_secs(20 * 60 + 1));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut late = Vec::new();
        for _ in 0..3 {
            late.extend(queue.receive(10, Duration::from_secs(30)).await?);
            if !late.is_empty() {
                break;
            }
        }
        assert_eq!(late.len(), 1);
        assert!(String::from_utf8_lossy(body(&late[0])).contains("long"));
        anyhow::Ok(())
    })
}

fn body(delivered: &Delivered) -> &[u8] {
    match &delivered.message {
        jobhost::queue::Message::Raw(body) => body,
        jobhost::queue::Message::Envelope(_) => b"",
    }
}

#[test]
fn fifo_groups_run_in_order_and_a_failure_holds_the_rest_of_its_group() -> anyhow::Result<()> {
    let handlers = handlers()?;
    let dispatcher = Arc::new(handlers.dispatcher()?);
    let rt = sqs::threaded_runtime()?;
    let order = rt.block_on(async {
        let client = sqs::client().await?;
        let pair = sqs::queue_pair(&client, "fifo", 10, true).await?;
        let queue = connect(&pair, Arc::new(SystemClock), jobhost::queue::sqs::MAX_HOP).await?;
        assert!(queue.is_fifo());
        let mut jobs = Vec::new();
        for i in 1..=6 {
            let mut job = if i == 3 {
                // Fails once (retry after 1.5 s): 4, 5 and 6 must wait for it.
                NewJob::new("transient", json!({"succeed_on": 2}))
            } else {
                NewJob::new("echo", json!({"message": format!("{i}")}))
            };
            job.group = Some("orders-7".into());
            jobs.push(job);
        }
        queue.enqueue(jobs).await?;
        // Records the order in which jobs were settled done.
        let done: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut recording = Observed::new(queue);
        let log = done.clone();
        recording.on_settle = Box::new(move |batch: &Vec<Settlement>| {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            for s in batch.iter().filter(|s| s.outcome.is_done()) {
                let envelope: Value =
                    serde_json::from_slice(body(&s.delivered)).unwrap_or_default();
                log.push(
                    envelope["payload"]["message"]
                        .as_str()
                        .unwrap_or("transient")
                        .to_string(),
                );
            }
            Ok(())
        });
        let mut options = RunOptions::new(4, Duration::from_secs(10));
        options.lease = Duration::from_secs(10);
        options.drain = true;
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let summary = Runner::new(
            Arc::new(recording),
            dispatcher,
            Arc::new(SystemClock),
            options,
        )
        .run(stopped)
        .await;
        assert_eq!((summary.done, summary.retried), (6, 1), "{summary:?}");
        let order = done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        anyhow::Ok(order)
    })?;
    assert_eq!(order, ["1", "2", "transient", "4", "5", "6"]);
    Ok(())
}

#[test]
fn fifo_enqueue_from_the_command_line_takes_a_group() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "fifo-cli", 10, true))?;
    let handlers = handlers()?;
    let out = enqueue(
        &handlers,
        &queue,
        &["--group", "customer-9", "echo", r#"{"message": "a"}"#],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = rt.block_on(sqs::receive_all(&client, &queue.url))?;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].system.get("MessageGroupId").map(String::as_str),
        Some("customer-9")
    );
    Ok(())
}

#[test]
fn poison_messages_on_sqs_are_dead_lettered_with_their_reason() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "poison", 10, false))?;
    let handlers = handlers()?;
    let deep = format!(
        "{{\"job\":\"echo\",\"payload\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let big = json!({"job": "echo", "payload": {"message": "x".repeat(3000)}}).to_string();
    let poison = vec![
        "not json at all".to_string(),
        "[1, 2, 3]".to_string(),
        r#"{"payload": {"message": "no job name"}}"#.to_string(),
        r#"{"job": "nobody", "payload": {}}"#.to_string(),
        r#"{"job": "echo", "payload": {"message": 42}}"#.to_string(),
        big,
        deep,
    ];
    let mut bodies = poison.clone();
    for i in 0..20 {
        bodies
            .push(json!({"job": "echo", "payload": {"message": format!("good {i}")}}).to_string());
    }
    rt.block_on(sqs::send_raw(&client, &queue.url, &bodies))?;
    let summary = run_drain(&handlers, &queue, &["--max-body-bytes", "2048"])?;
    assert_eq!(
        (summary["done"].as_u64(), summary["dead"].as_u64()),
        (Some(20), Some(7)),
        "{summary}"
    );
    let dead = rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?;
    let reasons: Vec<String> = by_reason(&dead).into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        reasons,
        [
            "invalid-payload",
            "malformed",
            "malformed",
            "malformed",
            "malformed",
            "too-large",
            "unknown-job"
        ],
        "{dead:?}"
    );
    // Each keeps its body, byte for byte.
    let mut kept: Vec<&str> = dead.iter().map(|m| m.body.as_str()).collect();
    kept.sort();
    let mut sent: Vec<&str> = poison.iter().map(String::as_str).collect();
    sent.sort();
    assert_eq!(kept, sent);
    assert_eq!(rt.block_on(sqs::counts(&client, &queue.url))?, (0, 0, 0));
    Ok(())
}

/// A TCP proxy in front of moto that can be taken down and brought back on the same port
/// (moto keeps its queues in memory, so the proxy stands in for the server going away).
struct Proxy {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
    upstream: String,
}

impl Proxy {
    async fn start(upstream: &str, port: u16) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let target = upstream.trim_start_matches("http://").to_string();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self {
            port,
            task: Some(task),
            upstream: upstream.to_string(),
        })
    }

    /// Closes the listener and every connection.
    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[test]
fn the_host_rides_out_the_sqs_server_going_away_and_loses_nothing() -> anyhow::Result<()> {
    let rt = sqs::threaded_runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "outage", 5, false))?;
    let bodies: Vec<String> = (0..300)
        .map(|i| json!({"job": "echo", "payload": {"message": format!("job {i}")}}).to_string())
        .collect();
    rt.block_on(sqs::send_raw(&client, &queue.url, &bodies))?;
    let mut proxy = rt.block_on(Proxy::start(&sqs::endpoint()?, 0))?;
    let handlers = handlers()?;
    let mut command = jobhost_command()?;
    command
        .args([
            "run",
            "--sqs-wait",
            "1s",
            "--concurrency",
            "2",
            "--queue",
            &queue.url,
            "--plugins",
        ])
        .arg(handlers.path());
    sqs::aws_env(&mut command)?;
    command
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", proxy.port),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut host = command.spawn()?;
    let remaining = |rt: &tokio::runtime::Runtime| -> anyhow::Result<u64> {
        let (visible, hidden, delayed) = rt.block_on(sqs::counts(&client, &queue.url))?;
        Ok(visible + hidden + delayed)
    };
    // Let it work through part of the queue, then take the server away for 3 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining(&rt)? > 250 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        host.try_wait()?.is_none(),
        "the host exited during the outage"
    );
    let port = proxy.port;
    let upstream = proxy.upstream.clone();
    let _proxy = rt.block_on(Proxy::start(&upstream, port))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while remaining(&rt)? > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = remaining(&rt)?;
    // SIGTERM: a graceful stop.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &host.id().to_string()])
        .status();
    let output = host.wait_with_output()?;
    assert_eq!(left, 0, "messages left in the queue after the outage");
    assert!(
        rt.block_on(sqs::receive_all(&client, &queue.dlq_url))?
            .is_empty()
    );
    let stdout = String::from_utf8(output.stdout)?;
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    // At least once: every job done (a delete lost in the outage makes one run twice).
    assert!(summary["done"].as_u64() >= Some(300), "{summary}");
    assert_eq!(summary["termination"], "shutdown");
    Ok(())
}

/// A `jobhost run` over SQS with the default 20 s long polls, killed when dropped.
struct Host(std::process::Child);

impl Host {
    fn start(handlers: &Handlers, queue: &QueuePair, extra: &[&str]) -> anyhow::Result<Self> {
        let mut command = jobhost_command()?;
        command
            .args(["run", "--queue", &queue.url, "--plugins"])
            .arg(handlers.path())
            .args(extra)
            .stdout(std::process::Stdio::piped());
        sqs::aws_env(&mut command)?;
        Ok(Self(command.spawn()?))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the queue holds nothing (visible, in flight or delayed); returns when.
async fn until_empty(
    client: &aws_sdk_sqs::Client,
    url: &str,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if sqs::counts(client, url).await? == (0, 0, 0) {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the queue still holds messages after {limit:?}")
}

#[test]
fn on_an_idle_queue_each_job_is_done_within_seconds_of_being_sent() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "idle", 30, false))?;
    let handlers = handlers()?;
    let _host = Host::start(&handlers, &queue, &[])?;
    // Let the host start and settle into its long polls.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..4 {
        let body = json!({"job": "echo", "payload": {"message": format!("m{i}")}}).to_string();
        let sent = Instant::now();
        rt.block_on(sqs::send_raw(&client, &queue.url, &[body]))?;
        let done = rt.block_on(until_empty(&client, &queue.url, Duration::from_secs(30)))?;
        let latency = done - sent;
        assert!(
            latency < Duration::from_secs(5),
            "job {i} was done {latency:?} after it was sent"
        );
    }
    Ok(())
}

#[test]
fn with_a_visibility_shorter_than_the_long_poll_no_job_runs_twice() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "short-vis", 10, false))?;
    let handlers = handlers()?;
    for i in 0..3 {
        enqueue(
            &handlers,
            &queue,
            &["busy", &json!({"i": i, "ms": 500}).to_string()],
        )?;
    }
    // Several receive calls with 20 s waits and a 10 s visibility timeout.
    let mut command = jobhost_command()?;
    command
        .args([
            "run",
            "--drain",
            "--concurrency",
            "8",
            "--queue",
            &queue.url,
            "--plugins",
        ])
        .arg(handlers.path());
    sqs::aws_env(&mut command)?;
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(
        String::from_utf8(output.stdout)?
            .lines()
            .last()
            .unwrap_or_default(),
    )?;
    assert_eq!(
        (
            summary["done"].as_u64(),
            summary["retried"].as_u64(),
            summary["dead"].as_u64()
        ),
        (Some(3), Some(0), Some(0)),
        "each of the 3 jobs runs exactly once: {summary}"
    );
    Ok(())
}

#[test]
fn drain_exits_within_one_long_poll_of_the_last_job() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "drain-exit", 30, false))?;
    let handlers = handlers()?;
    let bodies: Vec<String> = (0..200)
        .map(|i| json!({"job": "echo", "payload": {"message": format!("m{i}")}}).to_string())
        .collect();
    rt.block_on(async {
        for chunk in bodies.chunks(10) {
            let entries = chunk.iter().enumerate().map(|(i, body)| {
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
            });
            client
                .send_message_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries.collect::<Result<Vec<_>, _>>()?))
                .send()
                .await?;
        }
        anyhow::Ok(())
    })?;
    let mut host = Host::start(&handlers, &queue, &["--drain"])?;
    let last_done = rt.block_on(until_empty(&client, &queue.url, Duration::from_secs(60)))?;
    let deadline = last_done + Duration::from_secs(20 + 8);
    let status = loop {
        if let Some(status) = host.0.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "run --drain still running {:?} after the last job was done",
            last_done.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(host.0.stdout.as_mut().expect("piped"), &mut stdout)?;
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    assert_eq!(summary["done"].as_u64(), Some(200), "{summary}");
    Ok(())
}

#[test]
fn the_sqs_poller_serves_its_metrics_on_a_listener_of_their_own() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "metrics", 30, false))?;
    let handlers = handlers()?;
    let port = crate::process::free_port()?;
    let _host = Host::start(
        &handlers,
        &queue,
        &["--metrics", &format!("127.0.0.1:{port}")],
    )?;
    let mut bodies: Vec<String> = (0..5)
        .map(|i| json!({"job": "echo", "payload": {"message": format!("m{i}")}}).to_string())
        .collect();
    bodies.push(json!({"job": "permanent", "payload": {}}).to_string());
    rt.block_on(sqs::send_raw(&client, &queue.url, &bodies))?;
    rt.block_on(until_empty(&client, &queue.url, Duration::from_secs(30)))?;
    let (status, _, text) = crate::operate::get_text(port, "/metrics")?;
    assert_eq!(status, 200);
    for line in [
        r#"jobhost_jobs_finished_total{job_name="echo",outcome="done",reason=""} 5"#,
        r#"jobhost_jobs_finished_total{job_name="permanent",outcome="dead-letter",reason="permanent"} 1"#,
        r#"jobhost_job_wait_seconds_count{job_name="echo"} 5"#,
        "jobhost_jobs_in_flight 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    // No queue gauges: SQS shows no message without receiving it.
    assert!(!text.contains("jobhost_jobs{"), "{text}");
    Ok(())
}

#[test]
fn the_trace_context_travels_through_sqs_from_enqueue_to_the_job() -> anyhow::Result<()> {
    let rt = sqs::runtime()?;
    let client = rt.block_on(sqs::client())?;
    let queue = rt.block_on(sqs::queue_pair(&client, "traces", 30, false))?;
    let handlers = handlers()?;
    let receiver = jobhost_tests::OtlpReceiver::start()?;
    let otlp = |command: &mut std::process::Command| {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    };
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let mut enqueue = jobhost_command()?;
    enqueue
        .args([
            "enqueue",
            "--queue",
            &queue.url,
            "echo",
            r#"{"message": "traced"}"#,
        ])
        .env("TRACEPARENT", format!("00-{trace}-b7ad6b7169203331-01"));
    sqs::aws_env(&mut enqueue)?;
    otlp(&mut enqueue);
    let out = enqueue.output()?;
    assert!(out.status.success(), "{out:?}");
    // The message carries it as an attribute and in its envelope.
    let attribute = rt.block_on(async {
        client
            .receive_message()
            .queue_url(&queue.url)
            .message_attribute_names("All")
            .visibility_timeout(0)
            .wait_time_seconds(2)
            .send()
            .await
    })?;
    let message = attribute.messages().first().cloned();
    let carried = message
        .as_ref()
        .and_then(|m| m.message_attributes())
        .and_then(|a| a.get("traceparent"))
        .and_then(|v| v.string_value())
        .unwrap_or_default()
        .to_string();
    assert!(carried.starts_with(&format!("00-{trace}-")), "{message:?}");
    let body: Value =
        serde_json::from_str(message.and_then(|m| m.body).as_deref().unwrap_or("{}"))?;
    assert_eq!(body["traceparent"], carried.as_str());

    let mut run = jobhost_command()?;
    run.args([
        "run",
        "--queue",
        &queue.url,
        "--sqs-wait",
        "1s",
        "--drain",
        "--plugins",
    ])
    .arg(handlers.path());
    sqs::aws_env(&mut run)?;
    otlp(&mut run);
    let out = run.output()?;
    assert!(out.status.success(), "{out:?}");
    crate::process::wait_for("the process span", Duration::from_secs(30), || {
        Ok(receiver.spans().iter().any(|s| s.name == "process echo"))
    })?;
    let spans = receiver.spans();
    let send = spans
        .iter()
        .find(|s| s.name == "send echo")
        .expect("a send span");
    let process = spans
        .iter()
        .find(|s| s.name == "process echo")
        .expect("a process span");
    assert_eq!(send.trace_id, trace);
    assert_eq!(process.trace_id, trace);
    assert_eq!(process.parent, send.span_id, "{spans:#?}");
    assert_eq!(process.attributes["messaging.system"], "aws_sqs");
    Ok(())
}
