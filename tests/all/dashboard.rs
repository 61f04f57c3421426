//! The dashboard in a real browser: Playwright (`playwright-core` from npm) drives Debian's
//! Chromium, headless, through every screen and every action of a running host, with the
//! admin token enforced (`tests/dashboard/walk.mjs`). Screenshots are kept in
//! `$CARGO_TARGET_DIR/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jobhost::queue::NewJob;
use jobhost::queue::sqlite::SqliteQueue;
use jobhost_tests::{Handlers, fixtures};
use serde_json::{Value, json};

use crate::process::{count, free_port, spawn_run, wait_for};

fn screenshots_dir() -> anyhow::Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()?
            .ancestors()
            .nth(3)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("no target folder"))?,
    };
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn every_screen_and_action_works_in_a_real_browser_with_the_token_enforced() -> anyhow::Result<()> {
    let walker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    anyhow::ensure!(
        walker.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run the tests with `cargo xtask test`",
        walker.display()
    );
    let chromium =
        std::env::var("JOBHOST_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    anyhow::ensure!(
        std::path::Path::new(&chromium).is_file(),
        "no Chromium at {chromium}: `cargo xtask test` installs Debian's `chromium`"
    );
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    handlers.add(fixtures::BUSY, "busy")?;
    handlers.sidecar(
        "busy",
        "toml",
        "[[schedule]]\ncron = \"0 0 1 1 *\"\npayload = { i = 7 }\n",
    )?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    let mut jobs: Vec<NewJob> = (0..70)
        .map(|i| NewJob::new("echo", json!({"message": format!("m{i}")})))
        .collect();
    jobs.extend((0..4).map(|_| NewJob::new("permanent", json!({}))));
    queue.enqueue_now(&jobs)?;
    let busy = queue.enqueue_now(&[NewJob::new("busy", json!({"i": 1, "ms": 120_000}))])?[0]
        .id()
        .to_string();
    let port = free_port()?;
    let token = "correct-horse-battery";
    let mut host = spawn_run(
        &handlers,
        &db,
        &[
            "--http",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            token,
        ],
    )?;
    let result = (|| {
        wait_for("the jobs to settle", Duration::from_secs(60), || {
            Ok(count(&queue, "done")? == 70
                && count(&queue, "dead")? == 4
                && queue.get(&busy)?.is_some_and(|j| j.state == "running"))
        })?;
        let out = screenshots_dir()?;
        let walk = std::process::Command::new("node")
            .arg(walker.join("walk.mjs"))
            .current_dir(&walker)
            .env("BASE_URL", format!("http://127.0.0.1:{port}"))
            .env("TOKEN", token)
            .env("CHROMIUM", &chromium)
            .env("OUT", &out)
            .env("BUSY_ID", &busy)
            .stderr(Stdio::inherit())
            .output()?;
        let report = String::from_utf8_lossy(&walk.stdout);
        let summary: Value = report
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        anyhow::ensure!(
            walk.status.success() && summary["ok"] == true,
            "the browser walk failed: {report}"
        );
        // What the clicks did, seen from the queue.
        let job = queue.get(&busy)?.expect("kept");
        anyhow::ensure!(job.state == "cancelled", "busy job: {job:?}");
        anyhow::ensure!(queue.stats()?.paused.is_empty());
        for shot in ["overview", "dead-letters", "job", "handlers", "schedules"] {
            anyhow::ensure!(out.join(format!("{shot}.png")).is_file(), "no {shot}.png");
        }
        Ok(())
    })();
    let _ = host.kill();
    let _ = host.wait();
    result
}
