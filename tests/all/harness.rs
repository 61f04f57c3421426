//! The test harness: `jobhost test DIR` case files and the Rust `Harness` API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobhost::job::Reason;
use jobhost::sandbox::Limits;
use jobhost::testing::Harness;
use jobhost_tests::{Handlers, fixtures, jobhost_command};
use serde_json::{Value, json};

#[test]
fn the_examples_pass_their_own_cases() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/handlers");
    let output = jobhost_command()?.arg("test").arg(&dir).output()?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(output.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{stdout}");
    assert!(
        stdout.matches("\nok ").count() + usize::from(stdout.starts_with("ok ")) >= 10,
        "{stdout}"
    );
    // Rust, JavaScript (notify), Python (generate-report) and C (checksum) handlers.
    for file in [
        "report",
        "thumbnail",
        "notify",
        "generate-report",
        "checksum",
    ] {
        assert!(
            stdout.contains(&format!("ok    {file}.cases.json > ")),
            "no passing case of {file}:\n{stdout}"
        );
    }
    Ok(())
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let cases = json!([
        {"name": "right", "payload": {"message": "hi"}, "expect": {"output_includes": {"echo": "hi"}, "logs_contain": ["echoing hi"]}},
        {"name": "wrong output", "payload": {"message": "hi"}, "expect": {"output_includes": {"echo": "bye"}}},
        {"name": "wrong outcome", "payload": {"message": 5}, "expect": {"outcome": "done"}},
        {"name": "schema", "payload": {"message": 5}, "expect": {"outcome": "dead-letter", "reason": "invalid-payload"}},
        {"name": "children", "payload": {"message": "p", "children": 2}, "expect": {"enqueued": [{"job": "echo"}, {"job": "echo", "payload": {"message": "child 1"}}], "progress": {"done": 1, "total": 2}}}
    ]);
    handlers.sidecar("echo", "cases.json", &cases.to_string())?;
    let output = jobhost_command()?
        .arg("test")
        .arg(handlers.path())
        .output()?;
    let stdout = String::from_utf8(output.stdout)?;
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("3 passed, 2 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  echo.cases.json > wrong output"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"output: expected to include {"echo":"bye"}, got {"attempt":1,"echo":"hi""#
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("outcome: expected done, got dead-letter (payload fails the schema"),
        "{stdout}"
    );
    let json = jobhost_command()?
        .args(["test", "--json"])
        .arg(handlers.path())
        .output()?;
    let report: Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(3), Some(2))
    );
    Ok(())
}

#[test]
pub(crate) fn clock() -> anyhow::Result<()> {
    let harness = Harness::load(fixtures::CLOCK)?;
    let fixed = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let report = harness.job("clock", json!({})).now(fixed).run();
    report.assert_done().assert_output(
        json!({"now_ms": 1_700_000_000_123u64, "enqueued_at_ms": 1_700_000_000_123u64}),
    );
    let live = harness.job("clock", json!({})).run();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    assert!(
        live.output()["now_ms"]
            .as_u64()
            .is_some_and(|t| t.abs_diff(now_ms) < 60_000)
    );
    Ok(())
}

#[test]
fn the_rust_harness_reads_well_and_fails_loudly() -> anyhow::Result<()> {
    let echo = Harness::load(fixtures::ECHO)?;
    echo.job("echo", json!({"message": "hi", "children": 2}))
        .attempt(3)
        .run()
        .assert_done()
        .assert_output_includes(json!({"echo": "hi", "attempt": 3}))
        .assert_log_contains("echoing hi")
        .assert_enqueued(2)
        .assert_fuel_below(10_000_000);
    echo.job("echo", json!({"message": 1}))
        .run()
        .assert_dead_letter(Reason::InvalidPayload);
    let spin = Harness::load(fixtures::SPIN)?;
    let tight = Limits {
        fuel: 1_000_000,
        ..Limits::default()
    };
    spin.job("spin", json!({}))
        .limits(tight)
        .run()
        .assert_dead_letter(Reason::FuelExhausted);
    let wrong = echo.job("echo", json!({"message": "hi"})).run();
    let failure = std::panic::catch_unwind(|| {
        wrong.assert_output(json!("nope"));
    });
    let message = failure
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        message.contains("expected output \"nope\"") && message.contains("\"echo\": \"hi\""),
        "{message}"
    );
    Ok(())
}
