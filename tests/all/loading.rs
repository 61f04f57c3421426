//! Loading a plugins folder: bad files are reported by name and skipped, the rest load.

use jobhost::job::Reason;
use jobhost::plugin::{ArtifactSource, SchemaSource};
use jobhost_tests::{Handlers, fixtures, load_errors, run_job};
use serde_json::json;

#[test]
fn a_broken_folder_loads_what_it_can() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.sidecar("garbage", "wasm", "this is not wasm")?;
    // A core module, not a component: the most common mistake.
    std::fs::write(handlers.file("core", "wasm"), b"\0asm\x01\0\0\0")?;
    handlers.add(fixtures::NOOP, "typo")?;
    handlers.sidecar("typo", "toml", "[limits]\nfuell = 1\n")?;
    handlers.add(fixtures::NOOP, "badschema")?;
    handlers.sidecar("badschema", "schema.json", r#"{"type": 17}"#)?;
    let dispatcher = handlers.dispatcher()?;
    let errors = load_errors(&dispatcher);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    let has = |file: &str, text: &str| errors.iter().any(|e| e.contains(file) && e.contains(text));
    assert!(
        has("garbage.wasm", "not a WebAssembly component"),
        "{errors:#?}"
    );
    assert!(has("core.wasm", "core wasm module"), "{errors:#?}");
    assert!(has("typo.toml", "fuell"), "{errors:#?}");
    assert!(
        has("badschema.schema.json", "invalid JSON Schema"),
        "{errors:#?}"
    );
    assert_eq!(dispatcher.plugins().names(), ["echo", "echo-alias"]);
    let report = run_job(&dispatcher, "echo", json!({"message": "still serving"}), 1);
    assert!(report.outcome.is_done());
    Ok(())
}

#[test]
fn strict_makes_any_load_error_fatal() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.sidecar("garbage", "wasm", "nope")?;
    let mut config = handlers.config();
    config.strict = true;
    let error = config
        .start()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("garbage.wasm") && error.contains("--strict"),
        "{error}"
    );
    Ok(())
}

#[test]
fn two_handlers_claiming_one_name_keep_the_first() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "a-echo")?;
    handlers.add(fixtures::ECHO, "b-echo")?;
    let dispatcher = handlers.dispatcher()?;
    let errors = dispatcher.plugins().errors();
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(
        text.contains("a-echo.wasm") && text.contains("b-echo.wasm") && text.contains("`echo`"),
        "{text}"
    );
    assert_eq!(dispatcher.plugins().plugins().len(), 1);
    assert!(
        dispatcher.plugins().plugins()[0]
            .path
            .ends_with("a-echo.wasm")
    );
    Ok(())
}

#[test]
fn the_second_load_deserializes_from_the_cache() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::PERMANENT, "permanent")?;
    let mut config = handlers.config();
    let cache = tempfile::tempdir()?;
    config.cache_dir = Some(cache.path().to_path_buf());
    let first = config.start()?;
    assert_eq!(
        first.plugins().plugins()[0].artifact,
        ArtifactSource::Compiled
    );
    let files = |ext: &str| -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(cache.path())?
            .filter(|f| {
                f.as_ref()
                    .is_ok_and(|f| f.path().to_string_lossy().ends_with(ext))
            })
            .count())
    };
    assert_eq!(files(".cwasm")?, 1);
    assert_eq!(files(".describe.json")?, 1);
    let second = config.start()?;
    assert_eq!(
        second.plugins().plugins()[0].artifact,
        ArtifactSource::Cached
    );
    assert_eq!(second.plugins().plugins()[0].names, ["permanent"]);
    let report = run_job(&second, "permanent", json!({}), 1);
    assert_eq!(report.outcome.reason(), Some(Reason::Permanent));
    // What describe() returned is kept for the limits it ran under only: under limits the
    // handler cannot start with, it is described again, and refused.
    handlers.sidecar("permanent", "toml", "[limits]\nmemory-mib = 1\n")?;
    let third = config.start()?;
    assert!(third.plugins().get("permanent").is_none());
    let errors = third.plugins().errors().iter().map(|e| e.to_string());
    assert!(
        errors.clone().any(|e| e.contains("describe() failed")),
        "{:?}",
        errors.collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn a_handler_replaced_in_place_is_loaded_anew() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "handler")?;
    let mut config = handlers.config();
    let cache = tempfile::tempdir()?;
    config.cache_dir = Some(cache.path().to_path_buf());
    let names = |config: &jobhost::config::HostConfig| -> anyhow::Result<Vec<String>> {
        Ok(config.start()?.plugins().plugins()[0].names.clone())
    };
    assert_eq!(names(&config)?, ["echo", "echo-alias"]);
    // A file changed in the last 2 s is hashed at every load; an older one is known by
    // its size, times and inode after one load.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(names(&config)?, ["echo", "echo-alias"]);
    let kept = std::fs::read_dir(cache.path())?
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "source"))
        })
        .count();
    assert_eq!(kept, 1, "the component's key is kept");
    // Replaced in place (same inode): its times and size change, so it is hashed again.
    handlers.add(fixtures::PERMANENT, "handler")?;
    assert_eq!(names(&config)?, ["permanent"]);
    let report = run_job(&config.start()?, "permanent", json!({}), 1);
    assert_eq!(report.outcome.reason(), Some(Reason::Permanent));
    Ok(())
}

#[test]
fn a_sidecar_schema_overrides_describe() -> anyhow::Result<()> {
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    let schema = r#"{"type": "object", "required": ["message"], "properties": {"message": {"type": "string", "maxLength": 3}}}"#;
    handlers.sidecar("echo", "schema.json", schema)?;
    let dispatcher = handlers.dispatcher()?;
    let plugin = dispatcher
        .plugins()
        .get("echo")
        .ok_or_else(|| anyhow::anyhow!("echo loaded"))?;
    assert!(matches!(plugin.schema_source, SchemaSource::Sidecar(_)));
    let long = run_job(&dispatcher, "echo", json!({"message": "too long"}), 1);
    assert_eq!(long.outcome.reason(), Some(Reason::InvalidPayload));
    let short = run_job(&dispatcher, "echo", json!({"message": "ok"}), 1);
    assert!(short.outcome.is_done());
    Ok(())
}

#[test]
fn a_job_for_a_refused_handler_waits_as_handler_unavailable() -> anyhow::Result<()> {
    use jobhost::job::Outcome;
    use jobhost::queue::sqlite::SqliteQueue;
    use jobhost::queue::{NewJob, Queue as _, Settlement};
    let handlers = Handlers::new()?;
    // Refused after describing its names (echo, echo-alias): an invalid schema sidecar.
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.sidecar("echo", "schema.json", r#"{"type": 17}"#)?;
    // Refused before it could describe anything: matched by its file name.
    handlers.sidecar("thumbnail", "wasm", "a broken build")?;
    handlers.add(fixtures::NOOP, "noop")?;
    let dispatcher = handlers.dispatcher()?;
    for (name, file) in [
        ("echo", "echo.schema.json"),
        ("echo-alias", "echo.schema.json"),
        ("thumbnail", "thumbnail.wasm"),
    ] {
        let report = run_job(&dispatcher, name, json!({"message": "x"}), 1);
        let Outcome::Retry {
            reason,
            message,
            delay,
        } = &report.outcome
        else {
            anyhow::bail!("{name}: {:?}", report.outcome);
        };
        assert_eq!(*reason, Reason::HandlerUnavailable, "{name}");
        assert!(
            message.contains(file) && message.contains("refused"),
            "{name}: {message}"
        );
        assert!(
            (30..=3600).contains(&delay.as_secs()),
            "{name}: a long, capped wait: {delay:?}"
        );
    }
    let unknown = run_job(&dispatcher, "nobody", json!({}), 1);
    assert_eq!(unknown.outcome.reason(), Some(Reason::UnknownJob));
    // On the embedded queue the retry uses no attempt, however often it comes back.
    let dir = tempfile::tempdir()?;
    let queue = SqliteQueue::open(&dir.path().join("q.db"))?;
    let rt = jobhost_tests::sqs::runtime()?;
    let id = rt.block_on(queue.enqueue(vec![NewJob::new("echo", json!({"message": "m"}))]))?[0]
        .id()
        .to_string();
    let claimed = rt.block_on(queue.receive(1, std::time::Duration::from_secs(30)))?;
    let delivered = claimed
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("not claimed"))?;
    let report = match &delivered.message {
        jobhost::queue::Message::Envelope(envelope) => {
            dispatcher.dispatch_envelope(envelope.clone(), &jobhost::dispatch::Delivery::default())
        }
        jobhost::queue::Message::Raw(body) => {
            dispatcher.dispatch(body, &jobhost::dispatch::Delivery::default())
        }
    };
    let settlement = Settlement::of_report(delivered, report, std::time::SystemTime::now());
    rt.block_on(queue.settle(vec![settlement]))?;
    let record = queue.get(&id)?.ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(
        (
            record.state.as_str(),
            record.attempts,
            record.reason.as_deref()
        ),
        ("queued", 0, Some("handler-unavailable"))
    );
    Ok(())
}

#[test]
fn a_job_without_a_payload_gets_an_empty_object_on_every_path() -> anyhow::Result<()> {
    use jobhost::dispatch::{Delivery, Rejection};
    use jobhost::job::{JobRequest, RequestError};
    let handlers = Handlers::new()?;
    handlers.add(fixtures::ECHO, "echo")?;
    handlers.add(fixtures::NOOP, "noop")?;
    let dispatcher = handlers.dispatcher()?;
    // The queue path: a body without `payload`.
    let report = dispatcher.dispatch(br#"{"job": "echo"}"#, &Delivery::default());
    assert_eq!(report.outcome.reason(), Some(Reason::InvalidPayload));
    let message = report.outcome.message().unwrap_or_default();
    assert!(message.contains("has no payload"), "{message}");
    assert!(!message.contains("null"), "{message}");
    // The enqueue path: the same payload, the same words.
    let request: JobRequest = serde_json::from_str(r#"{"job": "echo"}"#)?;
    let refused = request.into_new_job(std::time::SystemTime::now(), Some(&dispatcher));
    let Err(RequestError::Rejected(Rejection::InvalidPayload(errors))) = refused else {
        anyhow::bail!("{refused:?}");
    };
    assert!(errors[0].contains("has no payload"), "{errors:?}");
    // A handler whose schema takes an empty object runs it.
    let request: JobRequest = serde_json::from_str(r#"{"job": "noop"}"#)?;
    assert_eq!(
        request
            .into_new_job(std::time::SystemTime::now(), Some(&dispatcher))?
            .payload,
        json!({})
    );
    let ran = dispatcher.dispatch(br#"{"job": "noop"}"#, &Delivery::default());
    assert!(ran.outcome.is_done(), "{:?}", ran.outcome);
    Ok(())
}
