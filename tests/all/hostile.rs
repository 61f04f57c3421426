//! Hostile guests: each is run beside well-behaved jobs, ends with the expected outcome,
//! and leaves the host serving with its memory bounded.

use std::path::Path;

use jobhost::job::{Outcome, Reason};
use jobhost::queue::NewJob;
use jobhost::queue::sqlite::SqliteQueue;
use jobhost_tests::{Handlers, fixtures, jobhost_command, load_errors, run_job};
use serde_json::{Value, json};

fn answers(outcome: &Outcome) -> anyhow::Result<Vec<(bool, String)>> {
    let Outcome::Done { output: Some(text) } = outcome else {
        anyhow::bail!("expected done, got {outcome:?}")
    };
    let answers: Vec<Value> = serde_json::from_str(text)?;
    Ok(answers
        .iter()
        .map(|a| {
            (
                a["ok"].as_bool().unwrap_or(false),
                a["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

#[test]
pub(crate) fn sandbox_probe() -> anyhow::Result<()> {
    // Nothing granted: no host files, no environment, not even a root to list.
    let handlers = Handlers::new()?;
    handlers.add(fixtures::SANDBOX_PROBE, "sandbox-probe")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let probes = json!([{"read": "/etc/passwd"}, {"list": "/"}, {"env": "HOME"}, {"env": "PATH"}, {"write": "/tmp/x"}, {"connect": address}]);
    let report = run_job(&handlers.dispatcher()?, "sandbox-probe", probes, 1);
    let results = answers(&report.outcome)?;
    assert!(results.iter().all(|(ok, _)| !ok), "{results:?}");
    assert!(!Path::new("/tmp/x").exists() || std::fs::read("/tmp/x")? != b"written by the guest");
    Ok(())
}

#[test]
fn grants_open_exactly_what_they_name() -> anyhow::Result<()> {
    let area = tempfile::tempdir()?;
    let inbox = area.path().join("in");
    let outbox = area.path().join("out");
    std::fs::create_dir_all(&inbox)?;
    std::fs::create_dir_all(&outbox)?;
    std::fs::write(inbox.join("a.txt"), "hello from the host")?;
    std::fs::write(area.path().join("secret.txt"), "not for guests")?;
    std::os::unix::fs::symlink(area.path().join("secret.txt"), inbox.join("link.txt"))?;
    let handlers = Handlers::new()?;
    handlers.add(fixtures::SANDBOX_PROBE, "sandbox-probe")?;
    let manifest = format!(
        "[grants]\nenv = [\"CARGO_PKG_NAME\"]\n[[grants.dirs]]\nhost = {:?}\nguest = \"/in\"\n[[grants.dirs]]\nhost = {:?}\nguest = \"/out\"\nwritable = true\n",
        inbox.display().to_string(),
        outbox.display().to_string()
    );
    handlers.sidecar("sandbox-probe", "toml", &manifest)?;
    let probes = json!([
        {"read": "/in/a.txt"},
        {"read": "/in/../secret.txt"},
        {"read": "/in/link.txt"},
        {"write": "/in/new.txt"},
        {"write": "/out/new.txt"},
        {"env": "CARGO_PKG_NAME"},
        {"env": "HOME"},
        {"read": "/etc/passwd"}
    ]);
    let report = run_job(&handlers.dispatcher()?, "sandbox-probe", probes, 1);
    let results = answers(&report.outcome)?;
    let oks: Vec<bool> = results.iter().map(|(ok, _)| *ok).collect();
    assert_eq!(
        oks,
        [true, false, false, false, true, true, false, false],
        "{results:?}"
    );
    assert_eq!(results[0].1, "hello from the host");
    assert_eq!(results[5].1, env!("CARGO_PKG_NAME"));
    assert_eq!(
        std::fs::read_to_string(outbox.join("new.txt"))?,
        "written by the guest"
    );
    assert!(
        !inbox.join("new.txt").exists(),
        "a read-only grant is read-only"
    );
    Ok(())
}

#[test]
fn a_grant_of_a_missing_directory_fails_that_handler_only() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::SANDBOX_PROBE, "sandbox-probe")?;
    handlers.add(fixtures::NOOP, "noop")?;
    handlers.sidecar(
        "sandbox-probe",
        "toml",
        "[[grants.dirs]]\nhost = \"does/not/exist\"\nguest = \"/in\"\n",
    )?;
    let dispatcher = handlers.dispatcher()?;
    let errors = load_errors(&dispatcher);
    assert!(
        errors.len() == 1
            && errors[0].contains("sandbox-probe.toml")
            && errors[0].contains("does/not/exist"),
        "{errors:?}"
    );
    assert!(run_job(&dispatcher, "noop", json!({}), 1).outcome.is_done());
    Ok(())
}

#[test]
pub(crate) fn host_flood() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::HOST_FLOOD, "host-flood")?;
    handlers.sidecar("host-flood", "toml", "[limits]\nenqueue-count = 50\n")?;
    let report = run_job(&handlers.dispatcher()?, "host-flood", json!({}), 1);
    let Outcome::Done { output: Some(text) } = &report.outcome else {
        anyhow::bail!("{:?}", report.outcome)
    };
    let tally: Value = serde_json::from_str(text)?;
    assert_eq!(tally["accepted"], 50, "{tally}");
    assert_eq!(tally["refused"], 10_003 - 50, "{tally}");
    assert!(
        tally["first_refusal"]
            .as_str()
            .is_some_and(|m| m.contains("job name")),
        "{tally}"
    );
    assert_eq!(report.enqueued.len(), 50);
    let kept: usize = report.logs.iter().map(|l| l.message.len()).sum();
    assert!(
        kept <= 8 * 1024,
        "a 16 MiB log line is cut to the line cap: {kept}"
    );
    assert!(
        report.progress[0]
            .message
            .as_ref()
            .is_some_and(|m| m.len() <= 8 * 1024)
    );
    Ok(())
}

#[test]
pub(crate) fn arg_loop() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ARG_LOOP, "arg-loop")?;
    handlers.add(fixtures::NOOP, "noop")?;
    handlers.sidecar("arg-loop", "toml", "[limits]\nmemory-mib = 16\n")?;
    let dispatcher = handlers.dispatcher()?;
    let report = run_job(&dispatcher, "arg-loop", json!({}), 1);
    assert_eq!(report.outcome.kind(), "dead-letter", "{:?}", report.outcome);
    assert!(
        matches!(
            report.outcome.reason(),
            Some(Reason::MemoryLimit | Reason::FuelExhausted)
        ),
        "{:?}",
        report.outcome
    );
    assert!(report.logs.is_empty(), "the host call was never made");
    assert!(run_job(&dispatcher, "noop", json!({}), 1).outcome.is_done());
    Ok(())
}

#[test]
pub(crate) fn describe_panics() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::DESCRIBE_PANICS, "describe-panics")?;
    handlers.add(fixtures::NOOP, "noop")?;
    let dispatcher = handlers.dispatcher()?;
    let errors = load_errors(&dispatcher);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("describe-panics.wasm") && errors[0].contains("describe() failed"),
        "{errors:?}"
    );
    assert!(run_job(&dispatcher, "noop", json!({}), 1).outcome.is_done());
    Ok(())
}

#[test]
pub(crate) fn not_a_handler() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::NOT_A_HANDLER, "command")?;
    handlers.add(fixtures::NOOP, "noop")?;
    let dispatcher = handlers.dispatcher()?;
    let errors = load_errors(&dispatcher);
    assert!(
        errors.len() == 1
            && errors[0].contains("command.wasm")
            && errors[0].contains("job-plugin world"),
        "{errors:?}"
    );
    assert!(run_job(&dispatcher, "noop", json!({}), 1).outcome.is_done());
    Ok(())
}

/// A `/proc/PID/status` figure in KiB: `VmRSS` (resident now) or `VmHWM` (its peak).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// `jobhost run` over a queue file, two workers, as its own process (its memory is its own).
fn spawn_host(handlers: &Handlers, db: &Path) -> anyhow::Result<std::process::Child> {
    Ok(jobhost_command()?
        .args(["run", "--concurrency", "2", "--plugins"])
        .arg(handlers.path())
        .arg("--db")
        .arg(db)
        .stdout(std::process::Stdio::null())
        .spawn()?)
}

fn settled(queue: &SqliteQueue) -> anyhow::Result<u64> {
    let stats = queue.stats()?;
    Ok(stats
        .counts
        .iter()
        .filter(|(_, state, _)| state == "done" || state == "dead")
        .map(|(_, _, n)| n)
        .sum())
}

fn wait_settled(queue: &SqliteQueue, count: u64) -> anyhow::Result<()> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while settled(queue)? < count {
        anyhow::ensure!(
            std::time::Instant::now() < end,
            "only {} of {count} jobs settled",
            settled(queue)?
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// The host runs as its own process, so its RSS is its own and not the test runner's.
#[test]
fn hundreds_of_hostile_jobs_beside_good_ones_keep_memory_bounded() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    for (fixture, name) in [
        (fixtures::SPIN, "spin"),
        (fixtures::MEMORY_BOMB, "memory-bomb"),
        (fixtures::PANICS, "panics"),
        (fixtures::STACK_OVERFLOW, "stack-overflow"),
        (fixtures::HUGE_OUTPUT, "huge-output"),
        (fixtures::LOG_FLOOD, "log-flood"),
        (fixtures::HOST_FLOOD, "host-flood"),
        (fixtures::ECHO, "echo"),
    ] {
        handlers.add(fixture, name)?;
        handlers.sidecar(name, "toml", "[retry]\nmax-attempts = 1\n[limits]\nfuel = 200_000_000\nmemory-mib = 24\noutput-bytes = 1000\n")?;
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let round = |rounds: usize| -> Vec<NewJob> {
        let mut jobs = Vec::new();
        for i in 0..rounds {
            for (name, payload) in [
                ("spin", json!({})),
                ("memory-bomb", json!({})),
                ("panics", json!({})),
                ("stack-overflow", json!({})),
                ("huge-output", json!({"bytes": 4000})),
                ("log-flood", json!({"lines": 200})),
                ("host-flood", json!({})),
                ("echo", json!({"message": format!("good {i}")})),
            ] {
                jobs.push(NewJob::new(name, payload));
            }
        }
        jobs
    };
    let mut host = spawn_host(&handlers, &db)?;
    let outcome = (|| -> anyhow::Result<(u64, u64)> {
        // Warm up: every handler gets its pool slots.
        queue.enqueue_now(&round(40))?;
        wait_settled(&queue, 320)?;
        let before = rss_kib(host.id())?;
        queue.enqueue_now(&round(60))?;
        wait_settled(&queue, 800)?;
        Ok((before, rss_kib(host.id())?))
    })();
    let _ = host.kill();
    let _ = host.wait();
    let (before, after) = outcome?;
    eprintln!("host RSS after 320 jobs: {before} KiB; after 800: {after} KiB");
    let dead = queue.list(Some("dead"), None, 1000)?;
    let mut reasons: Vec<String> = dead.iter().filter_map(|r| r.reason.clone()).collect();
    reasons.sort();
    reasons.dedup();
    assert_eq!(
        reasons,
        ["fuel-exhausted", "memory-limit", "output-too-large", "trap"],
        "{reasons:?}"
    );
    assert_eq!(
        queue.list(Some("done"), Some("echo"), 1000)?.len(),
        100,
        "every well-behaved job done"
    );
    // 480 more jobs later the host has not grown with them: a leak of even 0.3 MiB per job
    // would show; what varies between samples is allocator slack and warm pool slots.
    assert!(
        after < before + 128 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    Ok(())
}

/// A component that fits the job-plugin world but whose core module declares `memories`
/// memories and `tables` tables.
fn greedy_component(memories: usize, tables: usize) -> anyhow::Result<Vec<u8>> {
    let extra_memories = "(memory 1)\n".repeat(memories.saturating_sub(1));
    let tables = "(table 1 funcref)\n".repeat(tables);
    let text = format!(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    {extra_memories}
    {tables}
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
    (func (export "describe") (result i32) unreachable)
    (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i32 i64 i64) (result i32) unreachable)
  )
  (core instance $i (instantiate $m))
  (type $handler-info' (record (field "names" (list string)) (field "schema" (option string)) (field "version" string)))
  (export $handler-info "handler-info" (type $handler-info'))
  (type $job' (record (field "id" string) (field "name" string) (field "payload" string) (field "attempt" u32)
    (field "max-attempts" u32) (field "enqueued-at" u64) (field "deadline" u64)))
  (export $job "job" (type $job'))
  (type $transient-error' (record (field "message" string) (field "retry-after-ms" (option u64))))
  (export $transient-error "transient-error" (type $transient-error'))
  (type $job-error' (variant (case "permanent" string) (case "transient" $transient-error)))
  (export $job-error "job-error" (type $job-error'))
  (alias core export $i "memory" (core memory $memory))
  (alias core export $i "realloc" (core func $realloc))
  (alias core export $i "describe" (core func $describe-core))
  (alias core export $i "handle" (core func $handle-core))
  (func $describe (result $handler-info)
    (canon lift (core func $describe-core) (memory $memory) (realloc $realloc)))
  (func $handle (param "job" $job) (result (result (option string) (error $job-error)))
    (canon lift (core func $handle-core) (memory $memory) (realloc $realloc)))
  (instance $h (export "describe" (func $describe)) (export "handle" (func $handle)))
  (export "jobhost:plugin/handler@0.1.0" (instance $h))
)"#
    );
    Ok(wat::parse_str(&text)?)
}

#[test]
fn many_memories_or_tables_are_refused_at_load() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    std::fs::write(handlers.file("memories", "wasm"), greedy_component(40, 0)?)?;
    std::fs::write(handlers.file("tables", "wasm"), greedy_component(1, 40)?)?;
    std::fs::write(handlers.file("fits", "wasm"), greedy_component(1, 1)?)?;
    handlers.add(fixtures::NOOP, "noop")?;
    let dispatcher = handlers.dispatcher()?;
    let errors = load_errors(&dispatcher);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let has = |file: &str, text: &str| errors.iter().any(|e| e.contains(file) && e.contains(text));
    // The greedy ones never get an instance; the one that fits instantiates and traps in
    // describe(), which proves the world matched and the limits are what refused the others.
    assert!(has("memories.wasm", "memor"), "{errors:#?}");
    assert!(has("tables.wasm", "table"), "{errors:#?}");
    assert!(
        has("fits.wasm", "describe() failed") && has("fits.wasm", "unreachable"),
        "{errors:#?}"
    );
    assert!(run_job(&dispatcher, "noop", json!({}), 1).outcome.is_done());
    Ok(())
}

/// Waits until `count` call-flood and echo jobs (not their children) are done or dead.
fn wait_finished(queue: &SqliteQueue, count: usize) -> anyhow::Result<()> {
    let finished = || -> anyhow::Result<usize> {
        let mut n = 0;
        for state in ["done", "dead"] {
            for name in ["call-flood", "echo"] {
                n += queue.list(Some(state), Some(name), 1000)?.len();
            }
        }
        Ok(n)
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while finished()? < count {
        anyhow::ensure!(
            std::time::Instant::now() < end,
            "only {} of {count} jobs finished",
            finished()?
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Millions of minimal host calls, each of which asks the host to keep a little: the
/// host's peak RSS stays within a bound of where it was, and the other jobs finish.
#[test]
pub(crate) fn call_flood() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::CALL_FLOOD, "call-flood")?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.sidecar(
        "call-flood",
        "toml",
        "[retry]\nmax-attempts = 1\n[limits]\nfuel = 1_000_000_000_000\ntimeout-ms = 300_000\n",
    )?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let kinds = [
        "log",
        "stdout",
        "progress",
        "enqueue",
        "enqueue-big",
        "fields",
        "headers",
    ];
    let flood = |calls: u64| -> Vec<NewJob> {
        kinds
            .iter()
            .map(|kind| {
                // Enqueues are refused after 100 (or 4 MiB): fewer calls show the same.
                let calls = match *kind {
                    "enqueue-big" => calls.min(100),
                    "enqueue" => calls.min(100_000),
                    _ => calls,
                };
                NewJob::new("call-flood", json!({"kind": kind, "calls": calls}))
            })
            .chain((0..20).map(|i| NewJob::new("echo", json!({"message": format!("good {i}")}))))
            .collect()
    };
    let mut host = spawn_host(&handlers, &db)?;
    let outcome = (|| -> anyhow::Result<(u64, u64)> {
        // Warm up: both handlers get their pool slots, the queue its pages.
        queue.enqueue_now(&flood(100))?;
        wait_finished(&queue, flood(0).len())?;
        let before = status_kib(host.id(), "VmHWM")?;
        queue.enqueue_now(&flood(3_000_000))?;
        wait_finished(&queue, 2 * flood(0).len())?;
        Ok((before, status_kib(host.id(), "VmHWM")?))
    })();
    let _ = host.kill();
    let _ = host.wait();
    let (before, after) = outcome?;
    eprintln!("host peak RSS after warm-up: {before} KiB; after the floods: {after} KiB");
    let done = queue.list(Some("done"), None, 1000)?;
    assert_eq!(
        done.iter().filter(|r| r.name == "echo").count(),
        40,
        "every echo job done"
    );
    // Logs, progress and enqueues over their caps are dropped or refused, and the job goes
    // on to finish; resources (header maps) past wasmtime's handle and field-size limits
    // trap the job instead.
    let outcome = |record: &jobhost::queue::JobRecord| {
        let kind = record.payload["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let calls = record.payload["calls"].as_u64().unwrap_or_default();
        (
            kind,
            calls,
            record.state.clone(),
            record.reason.clone(),
            record.last_error.clone(),
        )
    };
    let floods: Vec<_> = ["done", "dead"]
        .into_iter()
        .map(|state| queue.list(Some(state), Some("call-flood"), 100))
        .collect::<Result<Vec<_>, _>>()?
        .concat()
        .iter()
        .map(outcome)
        .collect();
    for (kind, calls, state, reason, error) in &floods {
        match kind.as_str() {
            "fields" | "headers" if *calls > 100 => {
                assert_eq!(
                    (state.as_str(), reason.as_deref()),
                    ("dead", Some("trap")),
                    "{kind}"
                );
                let error = error.as_deref().unwrap_or_default();
                assert!(error.contains("limit"), "{kind}: {error}");
            }
            _ => assert_eq!(state, "done", "{kind}: {reason:?} {error:?}"),
        }
    }
    assert_eq!(floods.len(), 2 * kinds.len(), "{floods:?}");
    // Before the caps counted each entry, 3 million empty log lines alone held ~140 MiB.
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    Ok(())
}

/// Empty log lines cost their record: a job keeps at most `log-bytes / 64` of them, and the
/// report says how many were dropped; enqueues stop at `enqueue-bytes`.
#[test]
fn empty_log_lines_and_big_enqueues_count_against_their_caps() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::CALL_FLOOD, "call-flood")?;
    let dispatcher = handlers.dispatcher()?;
    for kind in ["log", "stdout"] {
        let report = run_job(
            &dispatcher,
            "call-flood",
            json!({"kind": kind, "calls": 100_000}),
            1,
        );
        assert!(report.outcome.is_done(), "{kind}: {:?}", report.outcome);
        let kept = report.logs.len() as u64;
        assert_eq!(kept, 64 * 1024 / 64, "{kind}: lines kept");
        assert!(
            report.logs_dropped_lines >= 100_000 - kept,
            "{kind}: {} lines dropped",
            report.logs_dropped_lines
        );
    }
    let report = run_job(
        &dispatcher,
        "call-flood",
        json!({"kind": "enqueue-big", "calls": 100}),
        1,
    );
    let Outcome::Done {
        output: Some(accepted),
    } = &report.outcome
    else {
        anyhow::bail!("{:?}", report.outcome);
    };
    // 900 KiB payloads under the 4 MiB default: four fit.
    assert_eq!(accepted, "4");
    assert_eq!(report.enqueued.len(), 4);
    Ok(())
}
