//! The embedded queue under faults, with `jobhost run` as a process: killed with SIGKILL
//! again and again, a disk that fills up, queue files that cannot be used, and two hosts
//! on one file. In each, no job is lost.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jobhost::queue::NewJob;
use jobhost::queue::sqlite::SqliteQueue;
use jobhost_tests::{Handlers, fixtures, jobhost_command};
use rand::Rng as _;
use serde_json::json;

use crate::process::{count, spawn_run, wait_exit, wait_for};

fn busy_handlers() -> anyhow::Result<Handlers> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    Ok(handlers)
}

fn enqueue_busy(queue: &SqliteQueue, from: u64, count: u64, ms: u64) -> anyhow::Result<()> {
    let jobs: Vec<NewJob> = (from..from + count)
        .map(|i| NewJob::new("busy", json!({"i": i, "ms": ms})))
        .collect();
    for chunk in jobs.chunks(10_000) {
        queue.enqueue_now(chunk)?;
    }
    Ok(())
}

/// Every job done, with the output of its own payload; nothing queued, running or dead.
fn assert_all_done(queue: &SqliteQueue, total: u64) -> anyhow::Result<Vec<i64>> {
    assert_eq!(count(queue, "done")?, total, "done");
    for state in ["queued", "running", "dead"] {
        assert_eq!(count(queue, state)?, 0, "{state}");
    }
    let records = queue.list(Some("done"), Some("busy"), total as usize + 1)?;
    for record in &records {
        let i = record.payload["i"].as_u64().unwrap_or(u64::MAX);
        assert_eq!(
            record.output,
            Some((i * 2).to_string()),
            "job {}",
            record.id
        );
    }
    Ok(records.iter().map(|r| r.attempts).collect())
}

/// `JOBHOST_KILL_TEST_JOBS` jobs (5,000 by default; `bench/kill-test.sh` runs 100,000),
/// the host killed with SIGKILL ten times at random moments and restarted each time.
#[test]
fn ten_sigkills_at_random_moments_lose_no_job() -> anyhow::Result<()> {
    let total: u64 = std::env::var("JOBHOST_KILL_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let handlers = busy_handlers()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    enqueue_busy(&queue, 0, total, 0)?;
    let mut rng = rand::rng();
    // Spread the kills over about the time the jobs take: the first ones land in start-up
    // and claims, later ones mid-run and mid-settle.
    let per_run_ms = (total / 10).clamp(300, 3_000);
    for kill in 1..=10 {
        let mut host = spawn_run(&handlers, &db, &["--concurrency", "2", "--lease", "2s"])?;
        let after = rng.random_range(50..per_run_ms);
        std::thread::sleep(Duration::from_millis(after));
        host.kill()?;
        host.wait()?;
        eprintln!(
            "kill {kill} after {after} ms: {} done",
            count(&queue, "done")?
        );
    }
    let mut last = spawn_run(
        &handlers,
        &db,
        &["--concurrency", "2", "--lease", "2s", "--drain"],
    )?;
    let (code, out) = wait_exit(&mut last, Duration::from_secs(600))?;
    assert_eq!(code, 0, "{out}");
    let attempts = assert_all_done(&queue, total)?;
    let again = attempts.iter().filter(|a| **a > 1).count();
    eprintln!("{total} jobs, 10 kills: all done; {again} were claimed more than once");
    Ok(())
}

/// A tmpfs of `size`, unmounted when dropped (the tests run as root, as CI does).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(
            status.success(),
            "cannot mount a tmpfs (the fault tests need root, as CI has)"
        );
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount_read_only(&self) -> anyhow::Result<()> {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()?;
        anyhow::ensure!(status.success(), "cannot remount read-only");
        Ok(())
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_stops_the_host_without_losing_a_job_and_it_resumes() -> anyhow::Result<()> {
    let disk = SmallDisk::mount("8m")?;
    let handlers = busy_handlers()?;
    let db = disk.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    enqueue_busy(&queue, 0, 2_000, 0)?;
    let filler = disk.fill()?;
    let log = tempfile::NamedTempFile::new()?;
    let mut host = jobhost_command()?
        .args(["run", "--concurrency", "2", "--lease", "2s", "--plugins"])
        .arg(handlers.path())
        .arg("--db")
        .arg(&db)
        .stdout(Stdio::null())
        .stderr(log.reopen()?)
        .spawn()?;
    let said_full =
        || std::fs::read_to_string(log.path()).is_ok_and(|text| text.contains("disk is full"));
    wait_for(
        "the host to say the disk is full",
        Duration::from_secs(30),
        || Ok(said_full()),
    )?;
    anyhow::ensure!(host.try_wait()?.is_none(), "the host exited on a full disk");
    // Enqueue on a full disk: refused with a clear error.
    let refused = jobhost_command()?
        .args(["enqueue", "--plugins"])
        .arg(handlers.path())
        .arg("--db")
        .arg(&db)
        .args(["busy", r#"{"i": 1}"#])
        .output()?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("disk is full"), "{stderr}");
    // Space comes back: the host resumes on its own and finishes every job, once each.
    std::fs::remove_file(filler)?;
    wait_for("every job done", Duration::from_secs(120), || {
        Ok(count(&queue, "done")? == 2_000)
    })?;
    host.kill()?;
    host.wait()?;
    assert_all_done(&queue, 2_000)?;
    Ok(())
}

#[test]
fn an_unusable_queue_file_is_refused_by_name_and_left_as_it_was() -> anyhow::Result<()> {
    let handlers = busy_handlers()?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.db");
    {
        let queue = SqliteQueue::open(&good)?;
        enqueue_busy(&queue, 0, 2_000, 0)?;
    }
    let good_bytes = std::fs::read(&good)?;
    let mut cases: Vec<(&str, PathBuf)> = Vec::new();
    let mut case = |name: &'static str, bytes: Vec<u8>| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(format!("{name}.db"));
        std::fs::write(&path, bytes)?;
        cases.push((name, path.clone()));
        Ok(path)
    };
    case("truncated", good_bytes[..good_bytes.len() / 2].to_vec())?;
    let mut corrupt = good_bytes.clone();
    for byte in &mut corrupt[4096..12_288] {
        *byte = 0xA5;
    }
    case("corrupt", corrupt)?;
    case(
        "not-sqlite",
        b"this is a text file, not a queue\n".repeat(100),
    )?;
    let newer = case("newer", good_bytes.clone())?;
    rusqlite::Connection::open(&newer)?.pragma_update(None, "user_version", 99)?;
    let other = case("other-program", Vec::new())?;
    rusqlite::Connection::open(&other)?.execute_batch("CREATE TABLE notes (body TEXT);")?;
    let disk = SmallDisk::mount("4m")?;
    let read_only = disk.path().join("read-only.db");
    std::fs::write(&read_only, &good_bytes)?;
    disk.remount_read_only()?;
    cases.push(("read-only", read_only));
    for (name, path) in &cases {
        let before = std::fs::read(path)?;
        let output = jobhost_command()?
            .args(["run", "--drain", "--plugins"])
            .arg(handlers.path())
            .arg("--db")
            .arg(path)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: the error names the file: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert_eq!(
            std::fs::read(path)?,
            before,
            "{name}: the file is unchanged"
        );
        assert!(
            !dir.path().join(format!("{name}.db-wal")).exists(),
            "{name}: no WAL was started"
        );
        eprintln!("{name}: {}", stderr.trim());
    }
    Ok(())
}

#[test]
fn two_hosts_on_one_queue_file_run_each_job_once_and_survive_one_being_killed() -> anyhow::Result<()>
{
    let handlers = busy_handlers()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("q.db");
    let queue = SqliteQueue::open(&db)?;
    enqueue_busy(&queue, 0, 3_000, 1)?;
    let args = ["--concurrency", "2"];
    let mut a = spawn_run(&handlers, &db, &args)?;
    let mut b = spawn_run(&handlers, &db, &args)?;
    wait_for(
        "3,000 jobs done by two hosts",
        Duration::from_secs(120),
        || Ok(count(&queue, "done")? == 3_000),
    )?;
    let attempts = assert_all_done(&queue, 3_000)?;
    assert!(
        attempts.iter().all(|a| *a == 1),
        "while both hosts are healthy each job is claimed once"
    );
    a.kill()?;
    b.kill()?;
    a.wait()?;
    b.wait()?;
    // Now one of them dies mid-run: the other takes over its jobs when their leases expire.
    enqueue_busy(&queue, 3_000, 3_000, 1)?;
    let short = ["--concurrency", "2", "--lease", "2s"];
    let mut a = spawn_run(&handlers, &db, &short)?;
    let mut b = spawn_run(&handlers, &db, &short)?;
    wait_for("some jobs done", Duration::from_secs(60), || {
        Ok(count(&queue, "done")? >= 3_300)
    })?;
    a.kill()?;
    a.wait()?;
    wait_for(
        "every job done by the survivor",
        Duration::from_secs(120),
        || Ok(count(&queue, "done")? == 6_000),
    )?;
    b.kill()?;
    b.wait()?;
    assert_all_done(&queue, 6_000)?;
    Ok(())
}
