//! `jobhost run` as a process, as a user runs it: killed with SIGKILL mid-run, stopped
//! with SIGTERM, fed through its HTTP API and by concurrent enqueuers.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use jobhost::queue::NewJob;
use jobhost::queue::sqlite::SqliteQueue;
use jobhost_tests::{Handlers, fixtures, jobhost_command};
use serde_json::{Value, json};

pub(crate) fn spawn_run(handlers: &Handlers, db: &Path, args: &[&str]) -> anyhow::Result<Child> {
    Ok(jobhost_command()?
        .arg("run")
        .arg("--plugins")
        .arg(handlers.path())
        .arg("--db")
        .arg(db)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?)
}

pub(crate) fn count(queue: &SqliteQueue, state: &str) -> anyhow::Result<u64> {
    Ok(queue
        .stats()?
        .counts
        .iter()
        .filter(|(_, s, _)| s == state)
        .map(|(_, _, n)| n)
        .sum())
}

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("timed out waiting for {what}")
}

pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<(i32, String)> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                stdout.read_to_string(&mut out)?;
            }
            return Ok((status.code().unwrap_or(-1), out));
        }
        if Instant::now() > end {
            let _ = child.kill();
            anyhow::bail!("jobhost run did not exit in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    Ok(())
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[test]
fn sigkill_mid_run_loses_nothing() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    handlers.sidecar("busy", "toml", "[limits]\ntimeout-ms = 1_000\n")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let jobs: Vec<NewJob> = (0..3000)
        .map(|i| NewJob::new("busy", json!({"i": i, "ms": 1})))
        .collect();
    queue.enqueue_now(&jobs)?;
    let mut first = spawn_run(&handlers, &db, &["--concurrency", "2", "--lease", "3s"])?;
    wait_for("some jobs done", Duration::from_secs(60), || {
        Ok(count(&queue, "done")? >= 300)
    })?;
    first.kill()?;
    first.wait()?;
    let done_at_kill = count(&queue, "done")?;
    assert!(
        done_at_kill < 3000,
        "the kill must land mid-run ({done_at_kill} done)"
    );
    // Restart: the killed worker's leases expire and its jobs run again.
    let mut second = spawn_run(
        &handlers,
        &db,
        &["--concurrency", "2", "--lease", "3s", "--drain"],
    )?;
    let (code, out) = wait_exit(&mut second, Duration::from_secs(120))?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(count(&queue, "done")?, 3000);
    for state in ["queued", "running", "dead"] {
        assert_eq!(count(&queue, state)?, 0, "{state}");
    }
    for record in queue.list(Some("done"), Some("busy"), 5000)? {
        let i = record.payload["i"].as_u64().unwrap_or(u64::MAX);
        assert_eq!(
            record.output,
            Some((i * 2).to_string()),
            "job {}",
            record.id
        );
    }
    Ok(())
}

#[test]
fn sigterm_lets_running_jobs_finish_and_gives_back_the_rest() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| NewJob::new("busy", json!({"i": i, "ms": 300})))
        .collect();
    queue.enqueue_now(&jobs)?;
    let mut child = spawn_run(&handlers, &db, &["--concurrency", "2", "--grace", "20s"])?;
    wait_for("two jobs done", Duration::from_secs(60), || {
        Ok(count(&queue, "done")? >= 2)
    })?;
    sigterm(&child)?;
    let (code, out) = wait_exit(&mut child, Duration::from_secs(30))?;
    assert_eq!(code, 0, "{out}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["termination"], "shutdown");
    assert_eq!(summary["unfinished"], 0);
    assert_eq!(
        count(&queue, "running")?,
        0,
        "every lease returned or completed"
    );
    let done = count(&queue, "done")?;
    let queued = queue.list(Some("queued"), None, 100)?;
    assert_eq!(done + queued.len() as u64, 40);
    assert!(done < 40, "SIGTERM must stop taking jobs");
    assert!(
        queued.iter().all(|r| r.attempts == 0),
        "given-back jobs keep their attempts"
    );
    Ok(())
}

/// `jobhost run` with the given grace period, running one job that spins for 30 s; the
/// handlers and the folder of the queue live as long as the returned values.
fn one_long_job_running(
    grace: &str,
) -> anyhow::Result<(Handlers, tempfile::TempDir, SqliteQueue, Child)> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    handlers.sidecar(
        "busy",
        "toml",
        "[limits]\ntimeout-ms = 60_000\nfuel = 1_000_000_000_000\n",
    )?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    queue.enqueue_now(&[NewJob::new("busy", json!({"i": 1, "ms": 30_000}))])?;
    let child = spawn_run(&handlers, &db, &["--concurrency", "1", "--grace", grace])?;
    wait_for("the job running", Duration::from_secs(60), || {
        Ok(count(&queue, "running")? == 1)
    })?;
    Ok((handlers, dir, queue, child))
}

#[test]
fn a_job_past_the_grace_period_does_not_hold_the_host_up() -> anyhow::Result<()> {
    let (_handlers, _dir, queue, mut child) = one_long_job_running("1s")?;
    let signalled = Instant::now();
    sigterm(&child)?;
    let (code, out) = wait_exit(&mut child, Duration::from_secs(15))?;
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exited after {:?}",
        signalled.elapsed()
    );
    assert_eq!(code, 0, "{out}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (
            summary["termination"].as_str(),
            summary["unfinished"].as_u64()
        ),
        (Some("shutdown"), Some(1))
    );
    // Not lost: still leased to the stopped host, it runs again when the lease expires.
    assert_eq!(count(&queue, "running")?, 1);
    Ok(())
}

/// A second signal ends the run at once, within a long grace period, with exit code 130;
/// the running job is not lost (its lease expires and it runs again).
#[test]
fn a_second_signal_exits_at_once_with_130() -> anyhow::Result<()> {
    let (_handlers, _dir, queue, mut child) = one_long_job_running("60s")?;
    sigterm(&child)?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait()?.is_none(),
        "the first signal waits for the job"
    );
    let signalled = Instant::now();
    sigterm(&child)?;
    let (code, _) = wait_exit(&mut child, Duration::from_secs(15))?;
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited {:?} after the second signal",
        signalled.elapsed()
    );
    assert_eq!(code, 130);
    assert_eq!(count(&queue, "running")?, 1, "still leased: it runs again");
    Ok(())
}

/// With its default logging `jobhost run` says what it runs (version, queue, handlers with
/// their names and versions) and one line per finished job; a stderr nobody reads (a full
/// pipe) never stalls the workers.
#[test]
fn run_logs_a_banner_and_a_line_per_job_and_a_full_pipe_never_stalls_it() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let jobs = |n: usize| -> Vec<NewJob> {
        (0..n)
            .map(|i| NewJob::new("echo", json!({"message": format!("m{i}")})))
            .collect()
    };
    queue.enqueue_now(&jobs(20))?;
    let run = jobhost_command()?
        .args(["run", "--drain", "--plugins"])
        .arg(handlers.path())
        .arg("--db")
        .arg(&db)
        .env_remove("JOBHOST_LOG")
        .output()?;
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let banner = stderr
        .lines()
        .find(|l| l.contains("jobhost running"))
        .unwrap_or_default();
    for part in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        format!("queue={}", db.display()),
        "handlers=echo".to_string(),
        "refused=0".to_string(),
    ] {
        assert!(banner.contains(&part), "{part} not in the banner: {stderr}");
    }
    let done: Vec<&str> = stderr.lines().filter(|l| l.contains("job done")).collect();
    assert_eq!(done.len(), 20, "{stderr}");
    assert!(
        done.iter()
            .all(|l| l.contains("job.name=\"echo\"") && l.contains("attempt=1")),
        "{stderr}"
    );

    // 3,000 lines are far more than a pipe holds: nobody reads this one.
    queue.enqueue_now(&jobs(3000))?;
    let mut child = jobhost_command()?
        .args(["run", "--drain", "--plugins"])
        .arg(handlers.path())
        .arg("--db")
        .arg(&db)
        .env_remove("JOBHOST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (code, out) = wait_exit(&mut child, Duration::from_secs(120))?;
    assert_eq!(code, 0, "{out}");
    let summary: Value = serde_json::from_str(out.trim())?;
    assert_eq!(summary["done"], 3000, "{summary}");
    Ok(())
}

#[test]
fn the_http_api_answers_with_the_right_status_codes() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn_run(
        &handlers,
        &db,
        &["--http", &addr, "--max-body-bytes", "2000"],
    )?;
    wait_for("the API", Duration::from_secs(60), || {
        Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;
    let (status, body) = http(port, "GET", "/healthz", "")?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        port,
        "POST",
        "/jobs",
        r#"{"job": "echo", "payload": {"message": "hi"}}"#,
    )?;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let (status, job) = http(port, "GET", &format!("/jobs/{id}?wait_ms=10000"), "")?;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("done")),
        "{job}"
    );
    let output: Value = serde_json::from_str(job["output"].as_str().unwrap_or("null"))?;
    assert_eq!(output["echo"], "hi");
    // Enqueue and wait in one call: the finished job, or 202 with it still queued.
    let (status, job) = http(
        port,
        "POST",
        "/jobs?wait_ms=10000",
        r#"{"job": "echo", "payload": {"message": "at once"}}"#,
    )?;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("done")),
        "{job}"
    );
    assert_eq!(job["duplicate"], false, "{job}");
    assert!(
        job["output"]
            .as_str()
            .is_some_and(|o| o.contains("at once")),
        "{job}"
    );
    let (status, job) = http(
        port,
        "POST",
        "/jobs?wait_ms=300",
        r#"{"job": "echo", "payload": {"message": "later"}, "delay": "1h"}"#,
    )?;
    assert_eq!(
        (status, job["state"].as_str()),
        (202, Some("queued")),
        "{job}"
    );
    let (status, body) = http(port, "POST", "/jobs?wait_ms=10", r#"[{"job": "echo"}]"#)?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        port,
        "POST",
        "/jobs",
        r#"{"job": "echo", "payload": {"message": 7}}"#,
    )?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("/message")),
        "{body}"
    );
    let (status, _) = http(port, "POST", "/jobs", r#"{"job": "nobody", "payload": {}}"#)?;
    assert_eq!(status, 404);
    let big = format!(
        r#"{{"job": "echo", "payload": {{"message": "{}"}}}}"#,
        "x".repeat(3000)
    );
    let (status, _) = http(port, "POST", "/jobs", &big)?;
    assert_eq!(status, 413);
    let (status, _) = http(port, "POST", "/jobs", "not json")?;
    assert_eq!(status, 400);
    let (status, _) = http(
        port,
        "POST",
        "/jobs",
        r#"{"job": "echo", "payload": {"message": "a"}, "delay": "soon"}"#,
    )?;
    assert_eq!(status, 400);
    let (status, _) = http(port, "GET", "/jobs/no-such-job", "")?;
    assert_eq!(status, 404);
    sigterm(&child)?;
    let (code, _) = wait_exit(&mut child, Duration::from_secs(30))?;
    assert_eq!(code, 0);
    Ok(())
}

#[test]
fn concurrent_enqueuers_while_running() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    SqliteQueue::open(&db)?;
    let mut child = spawn_run(&handlers, &db, &["--concurrency", "2"])?;
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let db = db.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let queue = SqliteQueue::open(&db)?;
                for i in 0..250 {
                    queue.enqueue_now(&[NewJob::new("busy", json!({"i": p * 1000 + i}))])?;
                }
                Ok(())
            })
        })
        .collect();
    for producer in producers {
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    let queue = SqliteQueue::open(&db)?;
    wait_for("all 1000 jobs done", Duration::from_secs(60), || {
        Ok(count(&queue, "done")? == 1000)
    })?;
    sigterm(&child)?;
    let (code, _) = wait_exit(&mut child, Duration::from_secs(30))?;
    assert_eq!(code, 0);
    assert_eq!(count(&queue, "dead")?, 0);
    Ok(())
}
