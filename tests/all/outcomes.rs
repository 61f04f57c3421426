//! One test per row of the outcome table, each produced by a real guest.

use jobhost::job::{Outcome, Reason};
use jobhost_tests::{Handlers, fixtures, run_job};
use serde_json::{Value, json};

fn output_json(outcome: &Outcome) -> anyhow::Result<Value> {
    match outcome {
        Outcome::Done { output: Some(text) } => Ok(serde_json::from_str(text)?),
        other => anyhow::bail!("expected done with output, got {other:?}"),
    }
}

#[test]
pub(crate) fn echo() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let dispatcher = handlers.dispatcher()?;
    let report = run_job(
        &dispatcher,
        "echo",
        json!({"message": "hi", "children": 2}),
        1,
    );
    let output = output_json(&report.outcome)?;
    assert_eq!(output["echo"], "hi");
    assert_eq!(output["id"], report.job_id.as_str());
    assert_eq!(report.enqueued.len(), 2);
    assert_eq!(
        report.enqueued[1].payload_value(),
        json!({"message": "child 1"})
    );
    assert_eq!(report.progress.len(), 2);
    let logs: Vec<(&str, &str)> = report
        .logs
        .iter()
        .map(|l| (l.source, l.message.as_str()))
        .collect();
    assert_eq!(logs, [("log", "echoing hi"), ("stdout", "stdout says hi")]);
    assert!(report.fuel > 0 && report.peak_memory > 0);
    // A second name of the same handler routes to it too.
    let alias = run_job(&dispatcher, "echo-alias", json!({"message": "again"}), 1);
    assert_eq!(output_json(&alias.outcome)?["echo"], "again");
    Ok(())
}

#[test]
pub(crate) fn noop() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::NOOP, "noop")?;
    let dispatcher = handlers.dispatcher()?;
    let report = run_job(&dispatcher, "noop", json!(null), 1);
    assert_eq!(report.outcome, Outcome::Done { output: None });
    Ok(())
}

#[test]
pub(crate) fn permanent() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    let report = run_job(&handlers.dispatcher()?, "permanent", json!({}), 1);
    assert_eq!(
        report.outcome,
        Outcome::DeadLetter {
            reason: Reason::Permanent,
            message: "the recipient does not exist".into()
        }
    );
    Ok(())
}

#[test]
pub(crate) fn transient() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::TRANSIENT, "transient")?;
    handlers.sidecar(
        "transient",
        "toml",
        "[retry]\nmax-attempts = 3\nbackoff-cap-ms = 1000\n",
    )?;
    let dispatcher = handlers.dispatcher()?;
    // Attempt 1 fails with a 1.5 s hint, capped at the handler's 1 s backoff cap.
    let first = run_job(&dispatcher, "transient", json!({"succeed_on": 9}), 1);
    match &first.outcome {
        Outcome::Retry {
            reason,
            delay,
            message,
        } => {
            assert_eq!(*reason, Reason::Transient);
            assert_eq!(delay.as_millis(), 1000);
            assert_eq!(message, "upstream returned 503");
        }
        other => anyhow::bail!("expected a retry, got {other:?}"),
    }
    // The last attempt dead-letters instead of retrying.
    let last = run_job(&dispatcher, "transient", json!({"succeed_on": 9}), 3);
    assert_eq!(last.outcome.kind(), "dead-letter");
    assert_eq!(last.outcome.reason(), Some(Reason::Transient));
    assert!(
        last.outcome
            .message()
            .is_some_and(|m| m.contains("gave up after 3 attempts"))
    );
    // And a later attempt can succeed.
    let later = run_job(&dispatcher, "transient", json!({"succeed_on": 2}), 2);
    assert_eq!(
        later.outcome,
        Outcome::Done {
            output: Some("\"succeeded on attempt 2\"".into())
        }
    );
    Ok(())
}

/// With default limits the deadline stops an endless loop, not the fuel: the default
/// fuel outlasts any code for longer than the timeout (here a 1 s timeout, so the test
/// is short; the old 5 billion units ran out in 0.3 s).
#[test]
fn with_default_fuel_an_endless_loop_ends_as_a_timeout() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::SPIN, "spin")?;
    handlers.sidecar("spin", "toml", "[limits]\ntimeout-ms = 1_000\n")?;
    let report = run_job(&handlers.dispatcher()?, "spin", json!({}), 1);
    assert_eq!(
        report.outcome.reason(),
        Some(Reason::Timeout),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.outcome.kind(), "retry");
    Ok(())
}

#[test]
pub(crate) fn sleep() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::SLEEP, "sleep")?;
    handlers.sidecar("sleep", "toml", "[limits]\ntimeout-ms = 300\n")?;
    let dispatcher = handlers.dispatcher()?;
    let report = run_job(&dispatcher, "sleep", json!({"ms": 50}), 1);
    assert!(
        output_json(&report.outcome)?.as_u64() >= Some(50),
        "{:?}",
        report.outcome
    );
    // Waiting on the clock inside a host call is interrupted at the deadline too.
    let report = run_job(&dispatcher, "sleep", json!({"ms": 5_000}), 1);
    assert_eq!(
        report.outcome.reason(),
        Some(Reason::Timeout),
        "{:?}",
        report.outcome
    );
    assert!(report.duration.as_millis() < 2_000, "{:?}", report.duration);
    Ok(())
}

#[test]
pub(crate) fn spin() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::SPIN, "spin")?;
    handlers.sidecar("spin", "toml", "[limits]\nfuel = 50_000_000\n")?;
    let report = run_job(&handlers.dispatcher()?, "spin", json!({}), 1);
    assert_eq!(report.outcome.reason(), Some(Reason::FuelExhausted));
    assert_eq!(report.outcome.kind(), "dead-letter");
    assert_eq!(report.fuel, 50_000_000);

    // With fuel to spare, the deadline interrupts it, and a timeout is retried.
    let slow = Handlers::new()?;
    slow.add(fixtures::SPIN, "spin")?;
    slow.sidecar(
        "spin",
        "toml",
        "[limits]\nfuel = 1_000_000_000_000_000\ntimeout-ms = 200\n",
    )?;
    let report = run_job(&slow.dispatcher()?, "spin", json!({}), 1);
    assert_eq!(report.outcome.reason(), Some(Reason::Timeout));
    assert_eq!(report.outcome.kind(), "retry");
    assert!(report.duration.as_millis() >= 200, "{:?}", report.duration);
    assert!(report.duration.as_millis() < 2_000, "{:?}", report.duration);
    Ok(())
}

#[test]
pub(crate) fn memory_bomb() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::MEMORY_BOMB, "memory-bomb")?;
    handlers.sidecar("memory-bomb", "toml", "[limits]\nmemory-mib = 32\n")?;
    let report = run_job(&handlers.dispatcher()?, "memory-bomb", json!({}), 1);
    assert_eq!(report.outcome.kind(), "dead-letter");
    assert_eq!(report.outcome.reason(), Some(Reason::MemoryLimit));
    assert!(report.peak_memory <= 32 << 20, "{}", report.peak_memory);
    assert!(report.peak_memory > 16 << 20, "{}", report.peak_memory);
    Ok(())
}

#[test]
pub(crate) fn panics() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::PANICS, "panics")?;
    let report = run_job(&handlers.dispatcher()?, "panics", json!({}), 1);
    assert_eq!(report.outcome.kind(), "retry");
    assert_eq!(report.outcome.reason(), Some(Reason::Trap));
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.message.contains("the handler has a bug"))
    );

    // A handler can opt out of retrying traps.
    let strict = Handlers::new()?;
    strict.add(fixtures::PANICS, "panics")?;
    strict.sidecar("panics", "toml", "[retry]\nretry-traps = false\n")?;
    let report = run_job(&strict.dispatcher()?, "panics", json!({}), 1);
    assert_eq!(report.outcome.kind(), "dead-letter");
    assert_eq!(report.outcome.reason(), Some(Reason::Trap));
    Ok(())
}

#[test]
pub(crate) fn stack_overflow() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::STACK_OVERFLOW, "stack-overflow")?;
    let report = run_job(&handlers.dispatcher()?, "stack-overflow", json!({}), 1);
    assert_eq!(report.outcome.reason(), Some(Reason::Trap));
    assert!(
        report
            .outcome
            .message()
            .is_some_and(|m| m.contains("call stack exhausted")),
        "{:?}",
        report.outcome
    );
    Ok(())
}

#[test]
pub(crate) fn huge_output() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::HUGE_OUTPUT, "huge-output")?;
    handlers.sidecar("huge-output", "toml", "[limits]\noutput-bytes = 1000\n")?;
    let dispatcher = handlers.dispatcher()?;
    let report = run_job(&dispatcher, "huge-output", json!({"bytes": 5000}), 1);
    assert_eq!(report.outcome.reason(), Some(Reason::OutputTooLarge));
    assert_eq!(report.outcome.kind(), "dead-letter");
    let small = run_job(&dispatcher, "huge-output", json!({"bytes": 10}), 1);
    assert!(small.outcome.is_done());
    Ok(())
}

#[test]
pub(crate) fn log_flood() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::LOG_FLOOD, "log-flood")?;
    handlers.sidecar("log-flood", "toml", "[limits]\nlog-bytes = 10_000\n")?;
    let report = run_job(
        &handlers.dispatcher()?,
        "log-flood",
        json!({"lines": 2000}),
        1,
    );
    // The flood is truncated, never fatal.
    assert!(report.outcome.is_done(), "{:?}", report.outcome);
    let kept: usize = report.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 10_000, "{kept}");
    assert!(report.logs.len() >= 5);
    assert!(
        report.logs_dropped_bytes > 3_000_000,
        "{}",
        report.logs_dropped_bytes
    );
    Ok(())
}

#[test]
pub(crate) fn cpu() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::CPU, "cpu")?;
    let dispatcher = handlers.dispatcher()?;
    let small = run_job(&dispatcher, "cpu", json!({"below": 100}), 1);
    assert_eq!(
        small.outcome,
        Outcome::Done {
            output: Some("25".into())
        }
    );
    let large = run_job(&dispatcher, "cpu", json!({"below": 10_000}), 1);
    assert_eq!(
        large.outcome,
        Outcome::Done {
            output: Some("1229".into())
        }
    );
    assert!(
        large.fuel > small.fuel * 10,
        "{} vs {}",
        large.fuel,
        small.fuel
    );
    Ok(())
}

#[test]
fn rejected_messages_never_reach_a_handler() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let mut config = handlers.config();
    config.dispatch.max_body_bytes = 1_000;
    let dispatcher = config.start()?;
    let delivery = jobhost::dispatch::Delivery::default();
    let cases: [(&[u8], Reason); 5] = [
        (b"not json", Reason::Malformed),
        (br#"{"payload": {}}"#, Reason::Malformed),
        (&[b' '; 1_001], Reason::TooLarge),
        (br#"{"job": "nobody", "payload": {}}"#, Reason::UnknownJob),
        (
            br#"{"type": "echo", "payload": {"message": 5}}"#,
            Reason::InvalidPayload,
        ),
    ];
    for (body, reason) in cases {
        let report = dispatcher.dispatch(body, &delivery);
        assert_eq!(
            report.outcome.reason(),
            Some(reason),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(report.outcome.kind(), "dead-letter");
        // Never instantiated: no fuel burnt, no memory touched.
        assert_eq!((report.fuel, report.peak_memory), (0, 0));
    }
    let invalid = dispatcher.dispatch(br#"{"jobName": "echo", "payload": {}}"#, &delivery);
    assert!(
        invalid
            .outcome
            .message()
            .is_some_and(|m| m.contains("message")),
        "{:?}",
        invalid.outcome
    );
    Ok(())
}

#[test]
pub(crate) fn busy() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::BUSY, "busy")?;
    let report = run_job(
        &handlers.dispatcher()?,
        "busy",
        json!({"i": 21, "ms": 50}),
        1,
    );
    assert_eq!(
        report.outcome,
        Outcome::Done {
            output: Some("42".into())
        }
    );
    assert!(report.duration.as_millis() >= 50, "{:?}", report.duration);
    Ok(())
}
