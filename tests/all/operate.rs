//! Operating a running host: its metrics scraped by a real Prometheus, what each job cost,
//! the stats, live progress, cancellation and pause.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use jobhost::queue::NewJob;
use jobhost::queue::sqlite::SqliteQueue;
use jobhost_tests::{Handlers, fixtures, jobhost_command};
use serde_json::{Value, json};

use crate::process::{count, free_port, http, spawn_run, wait_exit, wait_for};

/// A GET returning the status, the headers and the body as text.
pub(crate) fn get_text(port: u16, path: &str) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

fn wait_for_http(port: u16) -> anyhow::Result<()> {
    wait_for("the HTTP API", Duration::from_secs(60), || {
        Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
    })
}

/// A process killed when dropped.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's Prometheus on 127.0.0.1, scraping `target` every second.
fn start_prometheus(dir: &Path, target: u16) -> anyhow::Result<(Killed, u16)> {
    let port = free_port()?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: jobhost\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )?;
    let binary = std::env::var("JOBHOST_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let child = std::process::Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot start {binary} (Debian's `prometheus`, installed by `cargo xtask test`): {e}")
        })?;
    let child = Killed(child);
    wait_for("Prometheus to listen", Duration::from_secs(60), || {
        Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;
    Ok((child, port))
}

/// One number from Prometheus's query API (none while the series does not exist).
fn query(port: u16, promql: &str) -> anyhow::Result<Option<f64>> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = http(port, "GET", &format!("/api/v1/query?query={encoded}"), "")?;
    anyhow::ensure!(status == 200, "query {promql}: {status} {body}");
    Ok(body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok()))
}

#[test]
fn prometheus_scrapes_the_job_counts_the_host_drained() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let port = free_port()?;
    let (_prometheus, prometheus) = start_prometheus(dir.path(), port)?;
    let _host = Killed(spawn_run(
        &handlers,
        &db,
        &["--http", &format!("127.0.0.1:{port}"), "--concurrency", "2"],
    )?);
    wait_for_http(port)?;
    // Jobs arrive while Prometheus scrapes.
    for batch in 0..5 {
        let mut jobs: Vec<NewJob> = (0..20)
            .map(|i| NewJob::new("echo", json!({"message": format!("{batch}-{i}")})))
            .collect();
        jobs.push(NewJob::new("permanent", json!({})));
        queue.enqueue_now(&jobs)?;
        std::thread::sleep(Duration::from_millis(700));
    }
    queue.enqueue_now(&[NewJob::new("no-such-job", json!({}))])?;
    wait_for("all jobs finished", Duration::from_secs(60), || {
        Ok(count(&queue, "done")? == 100 && count(&queue, "dead")? == 6)
    })?;
    let done = r#"sum(jobhost_jobs_finished_total{job_name="echo",outcome="done"})"#;
    let permanent = r#"sum(jobhost_jobs_finished_total{outcome="dead-letter",reason="permanent"})"#;
    let unknown = r#"sum(jobhost_jobs_finished_total{job_name="(unknown)",reason="unknown-job"})"#;
    let runs = r#"sum(jobhost_job_run_seconds_count{job_name="echo"})"#;
    let dead = "jobhost_dead_letters";
    wait_for(
        "Prometheus to have scraped every finished job",
        Duration::from_secs(60),
        || {
            Ok(query(prometheus, done)? == Some(100.0)
                && query(prometheus, permanent)? == Some(5.0)
                && query(prometheus, unknown)? == Some(1.0)
                && query(prometheus, runs)? == Some(100.0)
                && query(prometheus, dead)? == Some(6.0))
        },
    )
    .map_err(|e| {
        let figures: Vec<String> = [done, permanent, unknown, runs, dead]
            .iter()
            .map(|q| format!("{q} = {:?}", query(prometheus, q).ok().flatten()))
            .collect();
        e.context(figures.join("; "))
    })?;
    // The text itself: OpenMetrics, with the handler versions and histograms.
    let (status, head, text) = get_text(port, "/metrics")?;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        text.contains(r#"jobhost_handler_info{handler="echo.wasm",job_name="echo",version="#),
        "{text}"
    );
    assert!(text.contains(r#"jobhost_job_fuel_bucket{le="#), "{text}");
    assert!(
        text.contains(r#"jobhost_jobs{job_name="echo",state="done"} 100"#),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
    Ok(())
}

#[test]
fn each_job_keeps_what_it_cost_and_stats_give_percentiles() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new("busy", json!({"i": i, "ms": if i >= 18 { 200 } else { 5 }})))
        .collect();
    let ids: Vec<String> = queue
        .enqueue_now(&jobs)?
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    let mut run = spawn_run(&handlers, &db, &["--drain", "--concurrency", "1"])?;
    let (code, out) = wait_exit(&mut run, Duration::from_secs(60))?;
    assert_eq!(code, 0, "{out}");

    let show = jobhost_command()?
        .args(["jobs", "show", &ids[19], "--db"])
        .arg(&db)
        .output()?;
    assert!(show.status.success(), "{show:?}");
    let record: Value = serde_json::from_slice(&show.stdout)?;
    let cost = &record["cost"];
    assert!(cost["fuel"].as_u64().is_some_and(|f| f > 1_000), "{record}");
    assert!(
        cost["run_ms"].as_f64().is_some_and(|ms| ms >= 200.0),
        "{record}"
    );
    assert!(
        cost["wait_ms"].as_i64().is_some_and(|ms| ms >= 0),
        "{record}"
    );
    assert!(
        cost["peak_memory_bytes"]
            .as_u64()
            .is_some_and(|b| b >= 65_536),
        "{record}"
    );
    // The job that waited behind the 19 others waited longer than the first.
    let first = queue.get(&ids[0])?.and_then(|r| r.cost).map(|c| c.wait_ms);
    let last = queue.get(&ids[19])?.and_then(|r| r.cost).map(|c| c.wait_ms);
    assert!(first < last, "{first:?} {last:?}");

    let stats = jobhost_command()?
        .args(["stats", "--db"])
        .arg(&db)
        .output()?;
    let text = String::from_utf8_lossy(&stats.stdout);
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("busy") && l.split_whitespace().count() == 6)
        .unwrap_or_else(|| panic!("no timing row: {text}"));
    let cells: Vec<f64> = row
        .split_whitespace()
        .skip(1)
        .map(|c| c.parse().unwrap_or(-1.0))
        .collect();
    assert_eq!(cells[0], 20.0, "{text}");
    assert!(cells[1] >= 5.0 && cells[1] < 100.0, "p50 run ms: {text}");
    // Nearest rank: the 19th of 20 sorted, one of the two 200 ms jobs.
    assert!(cells[2] >= 200.0, "p95 run ms: {text}");
    assert!(cells[3] > 0.0 && cells[4] >= cells[3], "{text}");
    Ok(())
}

/// A `jobhost run --http` on a free loopback port, killed when dropped.
struct Served {
    _child: Killed,
    port: u16,
    queue: SqliteQueue,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(handlers: &Handlers, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("q.db");
        let queue = SqliteQueue::open(&db)?;
        let port = free_port()?;
        let mut args = vec!["--http".to_string(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = Killed(spawn_run(handlers, &db, &args)?);
        wait_for_http(port)?;
        Ok(Self {
            _child: child,
            port,
            queue,
            _dir: dir,
        })
    }

    fn db(&self) -> std::path::PathBuf {
        self._dir.path().join("q.db")
    }

    fn enqueue(&self, job: NewJob) -> anyhow::Result<String> {
        Ok(self.queue.enqueue_now(&[job])?[0].id().to_string())
    }

    fn job(&self, id: &str) -> anyhow::Result<Value> {
        let (status, body) = http(self.port, "GET", &format!("/jobs/{id}"), "")?;
        anyhow::ensure!(status == 200, "GET /jobs/{id}: {status} {body}");
        Ok(body)
    }

    fn wait_running(&self, id: &str) -> anyhow::Result<()> {
        wait_for("the job to run", Duration::from_secs(30), || {
            Ok(self.job(id)?["state"] == "running")
        })
    }

    /// Waits for the job to finish; returns it and how long that took.
    fn wait_finished(&self, id: &str) -> anyhow::Result<(Value, Duration)> {
        let started = std::time::Instant::now();
        let (status, body) = http(self.port, "GET", &format!("/jobs/{id}?wait_ms=30000"), "")?;
        anyhow::ensure!(status == 200, "{status} {body}");
        Ok((body, started.elapsed()))
    }
}

#[test]
fn progress_is_visible_while_the_job_runs() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    let host = Served::start(&handlers, &[])?;
    let id = host.enqueue(NewJob::new("busy", json!({"i": 1, "ms": 3000})))?;
    host.wait_running(&id)?;
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let job = host.job(&id)?;
        if job["state"] != "running" {
            break;
        }
        if let Some(done) = job["progress"]["done"].as_u64()
            && seen.last() != Some(&done)
        {
            assert_eq!(job["progress"]["total"], 3000, "{job}");
            seen.push(done);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Written through while it ran, and not more often than every 250 ms: over about 3 s,
    // a handful of distinct values, rising.
    assert!(seen.len() >= 4, "progress seen while running: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let show = jobhost_command()?
        .args(["jobs", "show", &id, "--json", "--db"])
        .arg(host.db())
        .output()?;
    let shown: Value = serde_json::from_slice(&show.stdout)?;
    assert!(shown["progress"]["done"].as_u64().is_some(), "{shown}");
    let (job, _) = host.wait_finished(&id)?;
    assert_eq!(job["state"], "done");
    Ok(())
}

#[test]
fn a_running_job_is_cancelled_from_the_api_and_from_another_process() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    handlers.add(fixtures::ECHO, "echo")?;
    let host = Served::start(&handlers, &[])?;

    // Through the API of the process running it: stopped within about an epoch tick.
    let id = host.enqueue(NewJob::new(
        "busy",
        json!({"i": 1, "ms": 60_000, "children": 3}),
    ))?;
    host.wait_running(&id)?;
    let asked = std::time::Instant::now();
    let (status, body) = http(host.port, "DELETE", &format!("/jobs/{id}"), "")?;
    assert_eq!(
        (status, body["cancelled"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    let (job, _) = host.wait_finished(&id)?;
    let took = asked.elapsed();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["last_error"], "cancelled while running", "{job}");
    assert_eq!(job["attempts"], 1, "not retried: {job}");
    assert!(
        took < Duration::from_secs(2),
        "stopped {took:?} after the request"
    );
    // Its follow-up jobs were not committed.
    assert!(host.queue.list(None, Some("echo"), 10)?.is_empty());

    // From another process (the CLI), through the queue file.
    let id = host.enqueue(NewJob::new("busy", json!({"i": 2, "ms": 60_000})))?;
    host.wait_running(&id)?;
    let asked = std::time::Instant::now();
    let out = jobhost_command()?
        .args(["jobs", "cancel", &id, "--db"])
        .arg(host.db())
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("it is running"),
        "{out:?}"
    );
    let (job, _) = host.wait_finished(&id)?;
    let took = asked.elapsed();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(
        took < Duration::from_secs(2),
        "stopped {took:?} after the request"
    );

    // A queued job is cancelled at once; a finished one cannot be.
    host.queue.pause("busy")?;
    let queued = host.enqueue(NewJob::new("busy", json!({"i": 3})))?;
    let (status, body) = http(host.port, "DELETE", &format!("/jobs/{queued}"), "")?;
    assert_eq!(
        (status, body["cancelled"].as_str()),
        (200, Some("queued")),
        "{body}"
    );
    let (status, _) = http(host.port, "DELETE", &format!("/jobs/{queued}"), "")?;
    assert_eq!(status, 409);
    let (status, _) = http(host.port, "DELETE", "/jobs/no-such-job", "")?;
    assert_eq!(status, 404);

    // The host kept running other jobs.
    let echo = host.enqueue(NewJob::new("echo", json!({"message": "still here"})))?;
    assert_eq!(host.wait_finished(&echo)?.0["state"], "done");
    Ok(())
}

#[test]
fn cancelling_aborts_an_outbound_http_call_in_flight() -> anyhow::Result<()> {
    // A server that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_port = silent.local_addr()?.port();
    let handlers = Handlers::new()?;
    handlers.add(fixtures::HTTP_PROBE, "http-probe")?;
    handlers.sidecar(
        "http-probe",
        "toml",
        &format!("[grants.http]\nallow = [\"127.0.0.1:{silent_port}\"]\ntimeout-ms = 60_000\n"),
    )?;
    let host = Served::start(&handlers, &[])?;
    let calls = json!([{"method": "GET", "url": format!("http://127.0.0.1:{silent_port}/never")}]);
    let id = host.enqueue(NewJob::new("http-probe", calls))?;
    host.wait_running(&id)?;
    // Let the request reach the server.
    let _accepted = silent.accept()?;
    let asked = std::time::Instant::now();
    let (status, _) = http(host.port, "DELETE", &format!("/jobs/{id}"), "")?;
    assert_eq!(status, 200);
    let (job, _) = host.wait_finished(&id)?;
    let took = asked.elapsed();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(
        took < Duration::from_secs(2),
        "stopped {took:?} after the request, not at the 60 s timeout"
    );
    Ok(())
}

#[test]
fn a_paused_job_name_stays_queued_until_resumed() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::BUSY, "busy")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = jobhost_command()?
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()?;
        anyhow::ensure!(out.status.success(), "{args:?}: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let queue = SqliteQueue::open(&db)?;
    assert!(cli(&["pause", "echo"])?.starts_with("paused echo"));
    queue.enqueue_now(&[
        NewJob::new("echo", json!({"message": "a"})),
        NewJob::new("echo", json!({"message": "b"})),
        NewJob::new("busy", json!({"i": 1})),
    ])?;
    // --drain ends with the paused jobs still queued: they are not due for this host.
    let mut run = spawn_run(&handlers, &db, &["--drain"])?;
    let (code, out) = wait_exit(&mut run, Duration::from_secs(60))?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(count(&queue, "done")?, 1);
    assert_eq!(count(&queue, "queued")?, 2);
    assert!(cli(&["stats"])?.contains("paused: echo"));

    // Resumed through the API of a running host.
    let port = free_port()?;
    let _host = Killed(spawn_run(
        &handlers,
        &db,
        &["--http", &format!("127.0.0.1:{port}")],
    )?);
    wait_for_http(port)?;
    let (status, body) = http(port, "DELETE", "/paused/echo", "")?;
    assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
    wait_for("the resumed jobs", Duration::from_secs(30), || {
        Ok(count(&queue, "done")? == 3)
    })?;
    let (_, stats) = http(port, "GET", "/stats", "")?;
    assert_eq!(stats["paused"], json!([]), "{stats}");
    let (status, body) = http(port, "PUT", "/paused/busy", "")?;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
    let (_, stats) = http(port, "GET", "/stats", "")?;
    assert_eq!(stats["paused"], json!(["busy"]), "{stats}");
    Ok(())
}

#[test]
fn changing_calls_need_the_admin_token_when_one_is_set_and_none_in_read_only_mode()
-> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let host = Served::start(&handlers, &["--admin-token", "s3cret"])?;
    let (status, _) = http(host.port, "PUT", "/paused/echo", "")?;
    assert_eq!(status, 401);
    let mut stream = TcpStream::connect(("127.0.0.1", host.port))?;
    write!(
        stream,
        "PUT /paused/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(host.queue.stats()?.paused, ["echo"]);

    let read_only = Served::start(&handlers, &["--read-only"])?;
    let (status, body) = http(read_only.port, "PUT", "/paused/echo", "")?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = http(read_only.port, "GET", "/stats", "")?;
    assert_eq!(status, 200);
    Ok(())
}

#[test]
fn one_trace_shows_the_request_its_job_the_child_jobs_and_the_retries() -> anyhow::Result<()> {
    let receiver = jobhost_tests::OtlpReceiver::start()?;
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::TRANSIENT, "transient")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let port = free_port()?;
    let _host = Killed(
        jobhost_command()?
            .args(["run", "--plugins"])
            .arg(handlers.path())
            .arg("--db")
            .arg(&db)
            .args(["--http", &format!("127.0.0.1:{port}")])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_for_http(port)?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let post = |body: Value| -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        let body = body.to_string();
        write!(
            stream,
            "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\ntraceparent: 00-{trace}-{caller}-01\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let answer: Value =
            serde_json::from_str(response.split_once("\r\n\r\n").map_or("", |(_, b)| b))?;
        Ok(answer["id"].as_str().unwrap_or_default().to_string())
    };
    post(json!({"job": "echo", "payload": {"message": "parent", "children": 2}}))?;
    post(json!({"job": "transient", "payload": {"succeed_on": 2}}))?;

    let find =
        |spans: &[jobhost_tests::ReceivedSpan], name: &str| -> Vec<jobhost_tests::ReceivedSpan> {
            spans.iter().filter(|s| s.name == name).cloned().collect()
        };
    wait_for("the spans of both trees", Duration::from_secs(60), || {
        let spans = receiver.spans();
        Ok(find(&spans, "process echo").len() == 3 && find(&spans, "process transient").len() == 2)
    })
    .map_err(|e| e.context(format!("{:#?}", receiver.spans())))?;
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == trace),
        "one trace: {spans:#?}"
    );

    // request → send echo → process echo → (its two children's) process echo
    let send_echo = find(&spans, "send echo");
    assert_eq!(send_echo.len(), 1, "{spans:#?}");
    assert_eq!(send_echo[0].parent, caller);
    assert_eq!(send_echo[0].attributes["messaging.operation.type"], "send");
    let processes = find(&spans, "process echo");
    let parent = processes
        .iter()
        .find(|s| s.parent == send_echo[0].span_id)
        .unwrap_or_else(|| panic!("no process span under the send span: {spans:#?}"));
    let children: Vec<_> = processes
        .iter()
        .filter(|s| s.parent == parent.span_id)
        .collect();
    assert_eq!(children.len(), 2, "{spans:#?}");
    for key in [
        "messaging.system",
        "messaging.operation.type",
        "messaging.message.id",
        "messaging.destination.name",
    ] {
        assert!(parent.attributes.contains_key(key), "{key}: {parent:#?}");
    }
    assert_eq!(parent.attributes["messaging.operation.type"], "process");
    assert!(
        parent.events.iter().any(|e| e.contains("echoing parent")),
        "guest log as an event: {parent:#?}"
    );

    // request → send transient → two attempts, the first failed with its reason.
    let send = find(&spans, "send transient");
    assert_eq!(send.len(), 1);
    let attempts = find(&spans, "process transient");
    assert!(
        attempts.iter().all(|s| s.parent == send[0].span_id),
        "{attempts:#?}"
    );
    let failed: Vec<_> = attempts
        .iter()
        .filter_map(|s| s.attributes.get("error.type"))
        .collect();
    assert_eq!(failed, ["transient"], "{attempts:#?}");
    Ok(())
}
