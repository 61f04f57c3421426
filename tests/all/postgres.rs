//! Many hosts on one PostgreSQL database, as processes: `jobhost run --queue postgres://...`
//! three times over, one host killed with SIGKILL mid-run and restarted, schedules fired
//! once across hosts; and the database itself restarted under running hosts. The queue
//! suite on both backends is in `queue.rs`.

use std::io::Write as _;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobhost::clock::SystemClock;
use jobhost::queue::postgres::{PostgresOptions, PostgresQueue};
use jobhost::queue::{Inspect as _, Stats};
use jobhost_tests::{Handlers, PgServer, fixtures, jobhost_command, postgres_url};

/// A schema of its own for each test.
fn schema(test: &str) -> String {
    format!("{test}_{}", std::process::id())
}

/// `jobhost run` on the database at `url`, schema `schema`, with a short lease.
fn host(handlers: &Handlers, url: &str, schema: &str) -> anyhow::Result<Child> {
    Ok(jobhost_command()?
        .args([
            "run",
            "--queue",
            url,
            "--pg-schema",
            schema,
            "--lease",
            "3s",
        ])
        // Keep every done job: the test counts them all.
        .args(["--retain-done", "10000000"])
        .args(["--concurrency", "4", "--plugins"])
        .arg(handlers.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

fn stop(mut child: Child) -> anyhow::Result<()> {
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    child.wait()?;
    Ok(())
}

/// How many jobs of `name` are in `state`.
fn count(stats: &Stats, name: &str, state: &str) -> u64 {
    stats
        .counts
        .iter()
        .filter(|(n, s, _)| n == name && s == state)
        .map(|(_, _, c)| c)
        .sum()
}

fn enqueue_file(url: &str, schema: &str, lines: &str) -> anyhow::Result<()> {
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(lines.as_bytes())?;
    let output = jobhost_command()?
        .args(["enqueue", "--queue", url, "--pg-schema", schema, "--file"])
        .arg(file.path())
        .stdout(Stdio::null())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn three_hosts_run_every_job_once_one_killed_and_restarted_and_each_tick_once() -> anyhow::Result<()>
{
    let url = postgres_url()?;
    let schema = schema("three");
    let jobs: u64 = std::env::var("JOBHOST_TEST_PG_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let handlers = Handlers::new()?;
    handlers.add(fixtures::NOOP, "noop")?;
    handlers.add(fixtures::ECHO, "echo")?;
    // Every host runs the same schedule: a tick a second.
    handlers.sidecar(
        "echo",
        "toml",
        "[[schedule]]\ncron = \"* * * * * *\"\npayload = { message = \"tick\" }\n",
    )?;
    let lines: String = (0..jobs)
        .map(|i| format!("{{\"job\": \"noop\", \"payload\": {{\"i\": {i}}}}}\n"))
        .collect();
    enqueue_file(&url, &schema, &lines)?;
    let rt = jobhost_tests::sqs::threaded_runtime()?;
    let options = PostgresOptions {
        schema: schema.clone(),
        pool_size: 2,
        ..PostgresOptions::new(url.clone())
    };
    let queue = rt.block_on(PostgresQueue::connect(options, Arc::new(SystemClock)))?;
    let stats = || rt.block_on(queue.stats());
    let started = Instant::now();
    let mut hosts: Vec<Child> = (0..3)
        .map(|_| host(&handlers, &url, &schema))
        .collect::<anyhow::Result<_>>()?;
    // Kill one host with SIGKILL a third of the way in, and start it again.
    while count(&stats()?, "noop", "done") < jobs / 3 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "a third of the jobs not done in 5 minutes"
        );
        // (Counting is a query over every job: not too often, or it is the load.)
        std::thread::sleep(Duration::from_millis(250));
    }
    hosts[0].kill()?;
    hosts[0].wait()?;
    let killed_at = count(&stats()?, "noop", "done");
    hosts[0] = host(&handlers, &url, &schema)?;
    while count(&stats()?, "noop", "done") < jobs {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not every job done in 10 minutes: {:?}",
            stats()?
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();
    for host in hosts {
        stop(host)?;
    }
    let stats = stats()?;
    assert_eq!(count(&stats, "noop", "done"), jobs, "{stats:?}");
    for state in ["queued", "running", "dead"] {
        assert_eq!(count(&stats, "noop", state), 0, "{state}: {stats:?}");
    }
    // Jobs claimed more than once: those the killed host held, run again after their
    // lease expired (at-least-once). Counted and reported, and few.
    let client = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok::<_, tokio_postgres::Error>(client)
    })?;
    let again: i64 = rt
        .block_on(client.query_one(
            &format!("SELECT COUNT(*) FROM {schema}.jobs WHERE name = 'noop' AND attempts > 1"),
            &[],
        ))?
        .get(0);
    eprintln!(
        "{jobs} jobs on 3 hosts in {:.1} s ({:.0} jobs/s), one host killed at {killed_at} done; \
         {again} jobs ran again after its leases expired",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    assert!(again <= 3 * 4 * 64, "{again} jobs ran twice");
    // Each tick once across the hosts: no two tick jobs for one second (counted by the
    // second, so that a tick two hosts named differently would show).
    let ticks: Vec<(i64, i64)> = rt
        .block_on(client.query(
            &format!(
                "SELECT run_at / 1000, COUNT(*) FROM {schema}.jobs WHERE name = 'echo'
                 GROUP BY run_at / 1000"
            ),
            &[],
        ))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(ticks.len() >= 2, "{ticks:?}");
    assert!(
        ticks.iter().all(|(_, n)| *n == 1),
        "a tick fired twice: {ticks:?}"
    );
    Ok(())
}

#[test]
fn hosts_survive_the_database_restarting_and_lose_nothing() -> anyhow::Result<()> {
    let mut server = PgServer::start()?;
    let url = server.url();
    let schema = schema("restart");
    let handlers = Handlers::new()?;
    handlers.add(fixtures::NOOP, "noop")?;
    let lines: String = (0..2_000)
        .map(|i| format!("{{\"job\": \"noop\", \"payload\": {{\"i\": {i}}}}}\n"))
        .collect();
    enqueue_file(&url, &schema, &lines)?;
    let hosts: Vec<Child> = (0..2)
        .map(|_| host(&handlers, &url, &schema))
        .collect::<anyhow::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    // Down for two seconds while the hosts run, then up again on the same port.
    server.stop()?;
    std::thread::sleep(Duration::from_secs(2));
    server.restart()?;
    // Jobs enqueued after the restart are picked up too.
    let more: String = (2_000..2_500)
        .map(|i| format!("{{\"job\": \"noop\", \"payload\": {{\"i\": {i}}}}}\n"))
        .collect();
    enqueue_file(&url, &schema, &more)?;
    let rt = jobhost_tests::sqs::threaded_runtime()?;
    let options = PostgresOptions {
        schema: schema.clone(),
        pool_size: 2,
        ..PostgresOptions::new(url.clone())
    };
    let queue = rt.block_on(PostgresQueue::connect(options, Arc::new(SystemClock)))?;
    let started = Instant::now();
    loop {
        let stats = rt.block_on(queue.stats())?;
        if count(&stats, "noop", "done") == 2_500 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "not every job done a minute after the restart: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for mut host in hosts {
        anyhow::ensure!(
            host.try_wait()?.is_none(),
            "a host exited when the database went away"
        );
        stop(host)?;
    }
    Ok(())
}

fn cli(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let output = jobhost_command()?.args(args).output()?;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

#[test]
fn the_cli_and_the_http_api_reach_a_postgres_queue() -> anyhow::Result<()> {
    let url = postgres_url()?;
    let schema = schema("cli");
    let (ok, out, err) = cli(&["migrate", "--db", &url, "--pg-schema", &schema])?;
    assert!(ok && out.contains("up to date (version 1)"), "{out}{err}");
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let plugins = handlers.path().to_string_lossy().into_owned();
    let mut ids = Vec::new();
    for message in ["a", "b"] {
        let payload = format!("{{\"message\": \"{message}\"}}");
        let (ok, out, err) = cli(&[
            "enqueue",
            "--queue",
            &url,
            "--pg-schema",
            &schema,
            "--plugins",
            &plugins,
            "echo",
            &payload,
        ])?;
        assert!(ok, "{err}");
        ids.push(out.trim().to_string());
    }
    // Refused by the schema before anything is written, as on the file.
    let (ok, _, err) = cli(&[
        "enqueue",
        "--queue",
        &url,
        "--pg-schema",
        &schema,
        "--plugins",
        &plugins,
        "echo",
        "{}",
    ])?;
    assert!(!ok && err.contains("payload fails the schema"), "{err}");
    let (_, out, _) = cli(&["jobs", "list", "--db", &url, "--pg-schema", &schema])?;
    assert_eq!(
        out.lines().filter(|l| l.contains("queued")).count(),
        2,
        "{out}"
    );
    let (ok, out, _) = cli(&["pause", "echo", "--db", &url, "--pg-schema", &schema])?;
    assert!(
        ok && out.contains("paused echo (2 queued jobs wait)"),
        "{out}"
    );
    let (_, out, _) = cli(&["stats", "--db", &url, "--pg-schema", &schema])?;
    assert!(out.contains("paused: echo"), "{out}");
    let (ok, out, _) = cli(&[
        "jobs",
        "cancel",
        &ids[1],
        "--db",
        &url,
        "--pg-schema",
        &schema,
    ])?;
    assert!(ok && out.contains("cancelled"), "{out}");
    cli(&["resume", "echo", "--db", &url, "--pg-schema", &schema])?;
    // A host with the HTTP API: the queued job runs, and one posted to the API too.
    let port = crate::process::free_port()?;
    let host = jobhost_command()?
        .args([
            "run",
            "--queue",
            &url,
            "--pg-schema",
            &schema,
            "--plugins",
            &plugins,
        ])
        .args(["--http", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        crate::process::wait_for("the API", Duration::from_secs(30), || {
            Ok(crate::process::http(port, "GET", "/healthz", "").is_ok())
        })?;
        let (status, posted) = crate::process::http(
            port,
            "POST",
            "/jobs",
            r#"{"job": "echo", "payload": {"message": "api"}}"#,
        )?;
        assert_eq!(status, 202, "{posted}");
        for id in [ids[0].as_str(), posted["id"].as_str().unwrap_or_default()] {
            let (_, job) =
                crate::process::http(port, "GET", &format!("/jobs/{id}?wait_ms=10000"), "")?;
            assert_eq!(job["state"], "done", "{job}");
        }
        let (_, cancelled) = crate::process::http(port, "GET", &format!("/jobs/{}", ids[1]), "")?;
        assert_eq!(cancelled["state"], "cancelled");
        Ok(())
    })();
    stop(host)?;
    result?;
    // A database a newer jobhost migrated is refused, saying so.
    let rt = jobhost_tests::sqs::runtime()?;
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .execute(
                &format!("INSERT INTO {schema}.migrations (version) VALUES (99)"),
                &[],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>(())
    })?;
    let (ok, _, err) = cli(&["migrate", "--db", &url, "--pg-schema", &schema])?;
    assert!(
        !ok && err.contains("newer than this jobhost knows"),
        "{err}"
    );
    Ok(())
}
