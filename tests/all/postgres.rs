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
use serde_json::Value;

use crate::operate::{Killed, get_text};
use crate::process::{free_port, http, wait_for};

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

/// One `noop` job line per number in `range`, for `enqueue --file`.
fn noop_lines(range: std::ops::Range<u64>) -> String {
    range
        .map(|i| format!("{{\"job\": \"noop\", \"payload\": {{\"i\": {i}}}}}\n"))
        .collect()
}

/// A small pool on `schema`, for the test to watch the queue, and the runtime it lives on.
fn observer(url: &str, schema: &str) -> anyhow::Result<(tokio::runtime::Runtime, PostgresQueue)> {
    let rt = jobhost_tests::sqs::threaded_runtime()?;
    let options = PostgresOptions {
        schema: schema.to_string(),
        pool_size: 2,
        ..PostgresOptions::new(url)
    };
    let queue = rt.block_on(PostgresQueue::connect(options, Arc::new(SystemClock)))?;
    Ok((rt, queue))
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
    let lines = noop_lines(0..jobs);
    enqueue_file(&url, &schema, &lines)?;
    let (rt, queue) = observer(&url, &schema)?;
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
    // The killed host held at most its 4 running jobs and 1024 claimed ahead (fast jobs);
    // twice that leaves room for a late lease renewal under a loaded debug build.
    assert!(again <= 2 * (4 + 1024), "{again} jobs ran twice");
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
    let lines = noop_lines(0..2_000);
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
    let more = noop_lines(2_000..2_500);
    enqueue_file(&url, &schema, &more)?;
    let (rt, queue) = observer(&url, &schema)?;
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

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A CA (`NAME.pem`, `NAME.key`) in `dir`.
fn certificate_authority(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let (cert, key, subject) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("/CN=jobhost test {name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
    )
}

/// TLS as libpq does it, on a server that accepts TCP connections over TLS only, with a
/// certificate for `localhost` signed by a private CA: each `sslmode` connects, checks
/// and refuses as it says, with an error that names the cause.
#[test]
fn tls_is_used_and_checked_as_the_url_asks() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let dir = certs.path();
    certificate_authority(dir, "ca")?;
    certificate_authority(dir, "other")?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n")?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    )?;
    let mut server = PgServer::start()?;
    server.require_tls(&dir.join("server.pem"), &dir.join("server.key"))?;
    let port = server.port();
    let ca = dir.join("ca.pem").to_string_lossy().into_owned();
    let other = dir.join("other.pem").to_string_lossy().into_owned();
    let url = |host: &str, query: &str| format!("postgres://jobhost@{host}:{port}/postgres{query}");

    // verify-full against the right CA and name: a job goes in, runs, and is done, every
    // connection over TLS (the server takes no other).
    let full = url(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={ca}"),
    );
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let plugins = handlers.path().to_string_lossy().into_owned();
    let (ok, id, err) = cli(&[
        "enqueue",
        "--queue",
        &full,
        "--plugins",
        &plugins,
        "echo",
        r#"{"message": "tls"}"#,
    ])?;
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["run", "--queue", &full, "--plugins", &plugins, "--drain"])?;
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["jobs", "show", id.trim(), "--db", &full])?;
    assert!(ok && out.contains("done"), "{out}{err}");

    // The default (prefer) and require encrypt without checking who answers.
    for query in ["", "?sslmode=require"] {
        let (ok, out, err) = cli(&["stats", "--db", &url("127.0.0.1", query)])?;
        assert!(ok && out.contains("echo"), "{query}: {out}{err}");
    }
    // verify-ca checks the chain only: the certificate does not name 127.0.0.1.
    let (ok, _, err) = cli(&[
        "stats",
        "--db",
        &url("127.0.0.1", &format!("?sslmode=verify-ca&sslrootcert={ca}")),
    ])?;
    assert!(ok, "{err}");

    // Refusals, each naming its cause.
    let refused = |query: String, host: &str, cause: &str| -> anyhow::Result<()> {
        let (ok, _, err) = cli(&["stats", "--db", &url(host, &query)])?;
        assert!(
            !ok && err.contains(cause),
            "{query}: wanted `{cause}` in: {err}"
        );
        Ok(())
    };
    refused("?sslmode=disable".into(), "127.0.0.1", "no encryption")?;
    refused(
        format!("?sslmode=verify-full&sslrootcert={ca}"),
        "127.0.0.1",
        "certificate not valid for name",
    )?;
    refused(
        format!("?sslmode=verify-full&sslrootcert={other}"),
        "localhost",
        "invalid peer certificate",
    )?;
    refused(
        "?sslmode=verify-full&sslrootcert=/nonexistent.pem".into(),
        "localhost",
        "/nonexistent.pem",
    )?;
    refused(
        "?sslmode=sometimes".into(),
        "localhost",
        "sslmode `sometimes`",
    )?;
    Ok(())
}

/// `jobhost run --http` on `port`, on the schema `schema` of `url`, keeping 3 done jobs.
fn api_host(handlers: &Handlers, url: &str, schema: &str, port: u16) -> anyhow::Result<Killed> {
    let child = jobhost_command()?
        .args(["run", "--queue", url, "--pg-schema", schema])
        .args(["--retain-done", "3", "--http", &format!("127.0.0.1:{port}")])
        .arg("--plugins")
        .arg(handlers.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let host = Killed(child);
    wait_for("the API", Duration::from_secs(30), || {
        Ok(http(port, "GET", "/healthz", "").is_ok())
    })?;
    Ok(host)
}

/// Two hosts on one database, each with its API: a job running on one shows its progress
/// through the other and on the other's dashboard, is cancelled through the other within
/// about a second, a name paused through one stays queued on both, done jobs beyond
/// `--retain-done` are pruned, and either host's metrics count the shared queue.
#[test]
fn one_host_sees_steers_and_cancels_what_another_runs() -> anyhow::Result<()> {
    let url = postgres_url()?;
    let schema = schema("ops");
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    handlers.add(fixtures::ECHO, "echo")?;
    let (a, b) = (free_port()?, free_port()?);
    let _host_a = api_host(&handlers, &url, &schema, a)?;
    // Only A runs while the long job is taken.
    let (status, body) = http(
        a,
        "POST",
        "/jobs",
        r#"{"job": "busy", "payload": {"i": 1, "ms": 60000, "children": 2}}"#,
    )?;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let job = |port: u16| -> anyhow::Result<Value> {
        Ok(http(port, "GET", &format!("/jobs/{id}"), "")?.1)
    };
    wait_for("the job to run on A", Duration::from_secs(30), || {
        Ok(job(a)?["state"] == "running")
    })?;
    let _host_b = api_host(&handlers, &url, &schema, b)?;

    // Progress written by A, read through B, rising.
    let mut seen: Vec<u64> = Vec::new();
    wait_for("progress through B", Duration::from_secs(20), || {
        if let Some(done) = job(b)?["progress"]["done"].as_u64()
            && seen.last() != Some(&done)
        {
            seen.push(done);
        }
        Ok(seen.len() >= 3)
    })?;
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let (status, _, page) = get_text(b, &format!("/ui/jobs/{id}"))?;
    assert!(status == 200 && page.contains("running"), "{status} {page}");

    // Cancelled through B: A stops it, its follow-up jobs are not committed, and B's wait
    // for the result returns as soon as A records it.
    let asked = Instant::now();
    let (status, body) = http(b, "DELETE", &format!("/jobs/{id}"), "")?;
    assert_eq!(
        (status, body["cancelled"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    let (_, finished) = http(b, "GET", &format!("/jobs/{id}?wait_ms=30000"), "")?;
    let took = asked.elapsed();
    assert_eq!(finished["state"], "cancelled", "{finished}");
    assert!(
        took < Duration::from_secs(3),
        "stopped and seen {took:?} after the request"
    );
    let (_, stats) = http(b, "GET", "/stats", "")?;
    assert!(
        !stats.to_string().contains("\"echo\""),
        "no follow-up jobs: {stats}"
    );

    // Paused through B: new jobs of the name stay queued on both hosts until resumed.
    let (status, _) = http(b, "PUT", "/paused/echo", "")?;
    assert!(status < 300, "{status}");
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = format!(r#"{{"job": "echo", "payload": {{"message": "m{i}"}}}}"#);
        let (status, posted) = http(if i % 2 == 0 { a } else { b }, "POST", "/jobs", &body)?;
        assert_eq!(status, 202, "{posted}");
        ids.push(posted["id"].as_str().unwrap_or_default().to_string());
    }
    std::thread::sleep(Duration::from_secs(1));
    for id in &ids {
        let (_, record) = http(a, "GET", &format!("/jobs/{id}"), "")?;
        assert_eq!(record["state"], "queued", "paused: {record}");
    }
    let (status, _) = http(a, "DELETE", "/paused/echo", "")?;
    assert!(status < 300, "{status}");
    for id in &ids {
        let (_, record) = http(b, "GET", &format!("/jobs/{id}?wait_ms=30000"), "")?;
        assert_eq!(record["state"], "done", "resumed: {record}");
    }

    // Retention: after the next prune (at most every 5 s, on a settle), 3 done jobs are left.
    std::thread::sleep(Duration::from_millis(5500));
    let (_, last) = http(
        a,
        "POST",
        "/jobs",
        r#"{"job": "echo", "payload": {"message": "last"}}"#,
    )?;
    let last = last["id"].as_str().unwrap_or_default().to_string();
    let (_, record) = http(a, "GET", &format!("/jobs/{last}?wait_ms=30000"), "")?;
    assert_eq!(record["state"], "done", "{record}");
    wait_for("the prune", Duration::from_secs(15), || {
        let (_, stats) = http(b, "GET", "/stats", "")?;
        let done: u64 = stats["counts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c[1] == "done")
            .filter_map(|c| c[2].as_u64())
            .sum();
        Ok(done == 3)
    })?;
    // Either host's metrics count the shared queue's jobs, whichever host ran them.
    wait_for("the queue gauges", Duration::from_secs(15), || {
        let (_, _, text) = get_text(a, "/metrics")?;
        Ok(
            text.contains(r#"jobhost_jobs{job_name="echo",state="done"} 3"#)
                && text.contains(r#"jobhost_jobs{job_name="busy",state="cancelled"} 1"#),
        )
    })?;
    Ok(())
}
