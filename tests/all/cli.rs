//! The `jobhost` binary, run as a user would.

use std::process::Command;

use jobhost_tests::{Handlers, fixtures};
use serde_json::Value;

fn jobhost() -> anyhow::Result<Command> {
    jobhost_tests::jobhost_command()
}

fn exec(handlers: &Handlers, args: &[&str]) -> anyhow::Result<(i32, Value, String)> {
    let output = jobhost()?
        .arg("exec")
        .arg("--plugins")
        .arg(handlers.path())
        .args(args)
        .output()?;
    let stdout = String::from_utf8(output.stdout)?;
    let report = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)?
    };
    Ok((
        output.status.code().unwrap_or(-1),
        report,
        String::from_utf8(output.stderr)?,
    ))
}

#[test]
fn exec_prints_one_report_and_exits_by_outcome() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::TRANSIENT, "transient")?;
    let (code, report, _) = exec(&handlers, &["echo", r#"{"message": "hello"}"#])?;
    assert_eq!(code, 0);
    assert_eq!(report["outcome"], "done");
    assert_eq!(report["output"]["echo"], "hello");
    for key in [
        "logs",
        "enqueued",
        "fuel",
        "duration_us",
        "peak_memory",
        "reason",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    let (code, report, _) = exec(
        &handlers,
        &["transient", r#"{"succeed_on": 3}"#, "--attempt", "3"],
    )?;
    assert_eq!((code, report["outcome"].as_str()), (0, Some("done")));
    let (code, report, _) = exec(&handlers, &["transient", r#"{"succeed_on": 3}"#])?;
    assert_eq!(
        (code, report["outcome"].as_str(), report["reason"].as_str()),
        (1, Some("retry"), Some("transient"))
    );
    let (code, report, _) = exec(&handlers, &["nobody", "{}"])?;
    assert_eq!((code, report["reason"].as_str()), (1, Some("unknown-job")));
    Ok(())
}

#[test]
fn exec_usage_and_load_errors_exit_2() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let (code, _, stderr) = exec(&handlers, &["echo", "{not json"])?;
    assert_eq!(code, 2);
    assert!(stderr.contains("not JSON"), "{stderr}");
    handlers.sidecar("echo", "toml", "[limits]\nbogus = 1\n")?;
    let (code, _, stderr) = exec(&handlers, &["echo", "{}"])?;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("echo.toml") && stderr.contains("bogus"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn inspect_and_compile() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let cache = tempfile::tempdir()?;
    let inspect = |cache: &std::path::Path| -> anyhow::Result<Value> {
        let output = jobhost()?
            .args(["inspect", "--json"])
            .arg(handlers.file("echo", "wasm"))
            .env("JOBHOST_CACHE_DIR", cache)
            .output()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    let before = inspect(cache.path())?;
    assert_eq!(before["names"], serde_json::json!(["echo", "echo-alias"]));
    assert_eq!(before["schema"]["required"], serde_json::json!(["message"]));
    assert!(
        before["wasi_imports"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    assert!(
        before["imports"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i
                .as_str()
                .is_some_and(|s| s.starts_with("jobhost:plugin/host"))))
    );
    let compiled = jobhost()?
        .arg("compile")
        .arg(handlers.path())
        .env("JOBHOST_CACHE_DIR", cache.path())
        .output()?;
    assert!(compiled.status.success());
    let after = inspect(cache.path())?;
    assert_eq!(after["precompiled_cached"], true);
    // A plain Rust handler imports wasi:cli/environment and wasi:filesystem; ungranted,
    // their calls answer an empty environment and no folders, so they are no warning.
    assert!(
        before["wasi_imports"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i
                .as_str()
                .is_some_and(|s| s.starts_with("wasi:cli/environment")))),
        "{before}"
    );
    assert_eq!(
        before["ungranted_imports"],
        serde_json::json!([]),
        "{before}"
    );
    let text = jobhost()?
        .arg("inspect")
        .arg(handlers.file("echo", "wasm"))
        .env("JOBHOST_CACHE_DIR", cache.path())
        .output()?;
    let text =
        String::from_utf8_lossy(&text.stdout).into_owned() + &String::from_utf8_lossy(&text.stderr);
    assert!(!text.contains("will be refused"), "{text}");
    Ok(())
}

fn admin(db: &std::path::Path, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = jobhost()?.args(args).env("JOBHOST_DB", db).output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

#[test]
fn enqueue_checks_the_schema_and_the_queue_commands_work() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let plugins = handlers.path().to_string_lossy().into_owned();
    // A payload that fails the schema: exit 2, the errors listed, nothing enqueued.
    let (code, _, stderr) = admin(
        &db,
        &[
            "enqueue",
            "--plugins",
            &plugins,
            "echo",
            r#"{"message": 1}"#,
        ],
    )?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/message"), "{stderr}");
    let (code, _, stderr) = admin(&db, &["enqueue", "--plugins", &plugins, "nobody", "{}"])?;
    assert_eq!(code, 2, "{stderr}");
    let (code, id, _) = admin(
        &db,
        &[
            "enqueue",
            "--plugins",
            &plugins,
            "echo",
            r#"{"message": "hi"}"#,
            "--priority",
            "3",
        ],
    )?;
    assert_eq!(code, 0);
    let id = id.trim().to_string();
    let (_, again, _) = admin(
        &db,
        &["enqueue", "echo", r#"{"message": "u"}"#, "--unique", "k1"],
    )?;
    let (_, same, stderr) = admin(
        &db,
        &["enqueue", "echo", r#"{"message": "u"}"#, "--unique", "k1"],
    )?;
    assert_eq!(again, same, "a queued unique key returns the existing id");
    assert!(stderr.contains("already queued"), "{stderr}");
    let (_, later, _) = admin(
        &db,
        &[
            "enqueue",
            "echo",
            r#"{"message": "later"}"#,
            "--delay",
            "1h",
        ],
    )?;
    let file = dir.path().join("jobs.ndjson");
    std::fs::write(
        &file,
        "{\"job\": \"echo\", \"payload\": {\"message\": \"a\"}}\n\n{\"job\": \"permanent\"}\n",
    )?;
    let (code, ids, _) = admin(&db, &["enqueue", "--file", &file.to_string_lossy()])?;
    assert_eq!((code, ids.lines().count()), (0, 2));
    let (code, _, _) = admin(&db, &["jobs", "cancel", later.trim()])?;
    assert_eq!(code, 0);
    let run = jobhost()?
        .args(["run", "--drain", "--plugins", &plugins])
        .env("JOBHOST_DB", &db)
        .output()?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Value = serde_json::from_slice(&run.stdout)?;
    assert_eq!(
        (summary["done"].as_u64(), summary["dead"].as_u64()),
        (Some(3), Some(1)),
        "{summary}"
    );
    let (_, shown, _) = admin(&db, &["jobs", "show", &id])?;
    let shown: Value = serde_json::from_str(&shown)?;
    assert_eq!(
        (shown["state"].as_str(), shown["priority"].as_i64()),
        (Some("done"), Some(3))
    );
    // Times a person can read; the output as JSON, not as JSON text inside JSON.
    let finished = shown["finished_at"].as_str().unwrap_or_default();
    assert!(
        finished.starts_with("20") && finished.ends_with('Z') && finished.contains('T'),
        "{shown}"
    );
    assert_eq!(shown["output"]["echo"], "hi", "{shown}");
    let (_, raw, _) = admin(&db, &["jobs", "show", "--json", &id])?;
    let raw: Value = serde_json::from_str(&raw)?;
    assert!(
        raw["finished_at"]
            .as_i64()
            .is_some_and(|ms| ms > 1_700_000_000_000),
        "{raw}"
    );
    assert_eq!(raw["output"]["echo"], "hi", "{raw}");
    let (_, dead, _) = admin(&db, &["dlq", "list"])?;
    assert!(
        dead.contains("permanent") && dead.lines().count() == 1,
        "{dead}"
    );
    let (_, stats, _) = admin(&db, &["stats"])?;
    assert!(
        stats.contains("echo") && stats.contains("cancelled"),
        "{stats}"
    );
    let (_, redriven, _) = admin(&db, &["dlq", "redrive", "--all"])?;
    assert_eq!(redriven.trim(), "redriven: 1");
    let (_, queued, _) = admin(&db, &["jobs", "list", "--state", "queued", "--json"])?;
    assert_eq!(queued.lines().count(), 1);
    let (_, purged, _) = admin(&db, &["dlq", "purge"])?;
    assert_eq!(purged.trim(), "purged: 0");
    let (code, _, _) = admin(&db, &["jobs", "show", "no-such-id"])?;
    assert_eq!(code, 1);
    Ok(())
}

/// What a person reads in a file or CloudWatch: no colour codes when stderr is not a
/// terminal, and each refused handler reported once.
#[test]
fn logs_to_a_pipe_are_plain_and_a_load_error_is_said_once() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.sidecar("broken", "wasm", "not a component")?;
    let dir = tempfile::tempdir()?;
    let run = jobhost()?
        .args(["run", "--drain", "--plugins"])
        .arg(handlers.path())
        .arg("--db")
        .arg(dir.path().join("q.db"))
        .env("JOBHOST_LOG", "info")
        .output()?;
    assert!(run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
    assert_eq!(stderr.matches("broken.wasm").count(), 1, "{stderr}");
    let exec = jobhost()?
        .args(["exec", "--plugins"])
        .arg(handlers.path())
        .args(["broken", "{}"])
        .output()?;
    assert_eq!(exec.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert_eq!(stderr.matches("broken.wasm").count(), 1, "{stderr}");
    assert!(stderr.contains("failed to load"), "{stderr}");
    Ok(())
}

/// A value out of range is refused before anything starts, naming the flag (or its
/// environment variable's flag) and the allowed range; nothing is clamped silently.
#[test]
fn an_out_of_range_flag_is_refused_naming_the_flag() -> anyhow::Result<()> {
    // (flags, environment, the flag named, the range shown)
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
    );
    let cases: [Case; 4] = [
        (
            &["--sqs-wait", "30s"],
            &[],
            "--sqs-wait",
            "allowed 0s to 20s",
        ),
        (
            &[],
            &[("JOBHOST_SQS_WAIT", "30s")],
            "--sqs-wait",
            "allowed 0s to 20s",
        ),
        (
            &["--sqs-max-hide", "12h"],
            &[],
            "--sqs-max-hide",
            "allowed 1s to 11h 40m",
        ),
        (
            &["--concurrency", "0"],
            &[],
            "--concurrency",
            "0 is not in 1..",
        ),
    ];
    for (args, env, flag, range) in cases {
        let output = jobhost()?
            .args([
                "run",
                "--queue",
                "sqs://nowhere",
                "--plugins",
                "/nonexistent",
            ])
            .args(args)
            .envs(env.iter().copied())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(&format!("for '{flag} ")) && stderr.contains(range),
            "{args:?} {env:?}: {stderr}"
        );
    }
    Ok(())
}
