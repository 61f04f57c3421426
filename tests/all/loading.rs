//! Loading a plugins folder: bad files are reported by name and skipped, the rest load.

use jobhost::{ArtifactSource, Reason, SchemaSource};
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
    let artifacts = std::fs::read_dir(cache.path())?.count();
    assert_eq!(artifacts, 1);
    let second = config.start()?;
    assert_eq!(
        second.plugins().plugins()[0].artifact,
        ArtifactSource::Cached
    );
    let report = run_job(&second, "permanent", json!({}), 1);
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
