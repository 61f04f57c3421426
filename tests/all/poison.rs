//! Poison messages on the embedded queue: each is dead-lettered with its reason (or
//! accepted where documented), its raw body kept, and the loop keeps running.

use std::sync::Arc;

use jobhost::queue::NewJob;
use jobhost::queue::sqlite::SqliteQueue;
use jobhost::run::poller::Termination;
use jobhost_tests::{Handlers, fixtures};
use serde_json::json;

#[test]
fn poison_messages_are_dead_lettered_with_their_reason_and_body() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let mut config = handlers.config();
    config.dispatch.max_body_bytes = 4096;
    let dispatcher = Arc::new(config.start()?);
    let dir = tempfile::tempdir()?;
    let queue = SqliteQueue::open(&dir.path().join("q.db"))?;
    let nested = format!(
        r#"{{"job": "echo", "payload": {{"message": "x", "deep": {}{}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("not JSON", b"hello".to_vec(), Some("malformed")),
        (
            "JSON, not an object",
            b"[1, 2, 3]".to_vec(),
            Some("malformed"),
        ),
        (
            "no job name",
            br#"{"payload": {"message": "x"}}"#.to_vec(),
            Some("malformed"),
        ),
        (
            "unknown job name",
            br#"{"job": "nobody", "payload": {}}"#.to_vec(),
            Some("unknown-job"),
        ),
        (
            "fails the schema",
            br#"{"job": "echo", "payload": {"message": 5}}"#.to_vec(),
            Some("invalid-payload"),
        ),
        (
            "over the size cap",
            format!(
                r#"{{"job": "echo", "payload": {{"message": "{}"}}}}"#,
                "x".repeat(5000)
            )
            .into_bytes(),
            Some("too-large"),
        ),
        (
            "invalid UTF-8",
            b"{\"job\": \"echo\", \"payload\": {\"message\": \"\xff\xfe\"}}".to_vec(),
            Some("malformed"),
        ),
        ("deeply nested", nested.into_bytes(), Some("malformed")),
        (
            "a number beyond f64",
            br#"{"job": "echo", "payload": {"message": "x", "n": 1e400}}"#.to_vec(),
            Some("malformed"),
        ),
        (
            "duplicate envelope keys",
            br#"{"job": "echo", "job": "echo", "payload": {"message": "x"}}"#.to_vec(),
            Some("malformed"),
        ),
        ("empty body", Vec::new(), Some("malformed")),
        // Documented as accepted: numbers beyond i64 become floats, extra envelope fields
        // are ignored, and a duplicate key inside the payload keeps the last value.
        (
            "a number beyond i64",
            br#"{"job": "echo", "payload": {"message": "x", "n": 99999999999999999999}}"#.to_vec(),
            None,
        ),
        (
            "extra envelope fields",
            br#"{"job": "echo", "trace": "abc", "payload": {"message": "x"}}"#.to_vec(),
            None,
        ),
        (
            "duplicate payload keys",
            br#"{"job": "echo", "payload": {"message": 1, "message": "last"}}"#.to_vec(),
            None,
        ),
    ];
    let bodies: Vec<Vec<u8>> = cases.iter().map(|(_, body, _)| body.clone()).collect();
    let ids: Vec<String> = queue
        .enqueue_raw(&bodies)?
        .iter()
        .map(|e| e.id().to_string())
        .collect();
    let good: Vec<NewJob> = (0..50)
        .map(|i| NewJob::new("echo", json!({"message": format!("good {i}")})))
        .collect();
    queue.enqueue_now(&good)?;
    let summary = jobhost_tests::drain(&queue, dispatcher)?;
    assert_eq!(summary.termination, Termination::Drained);
    for ((what, body, reason), id) in cases.iter().zip(&ids) {
        let record = queue
            .get(id)?
            .ok_or_else(|| anyhow::anyhow!("{what}: kept"))?;
        match reason {
            Some(reason) => {
                assert_eq!(
                    (record.state.as_str(), record.reason.as_deref()),
                    ("dead", Some(*reason)),
                    "{what}"
                );
                let kept = record.body.unwrap_or_default();
                assert_eq!(
                    kept,
                    String::from_utf8_lossy(body),
                    "{what}: the raw body is kept"
                );
            }
            None => assert_eq!(record.state, "done", "{what}: {:?}", record.last_error),
        }
    }
    assert_eq!(
        queue.list(Some("done"), Some("echo"), 100)?.len(),
        50 + 3,
        "the good jobs all ran"
    );
    Ok(())
}
