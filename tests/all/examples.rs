//! The example handlers, built by `cargo xtask examples`, doing their real work.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jobhost::config::HostConfig;
use jobhost::dispatch::Dispatcher;
use jobhost::job::{Outcome, Reason};
use jobhost::testing::Harness;
use jobhost_tests::{run_job, shared_cache_dir};
use serde_json::{Value, json};

fn examples() -> anyhow::Result<Dispatcher> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/handlers");
    anyhow::ensure!(
        dir.join("report.wasm").is_file(),
        "examples are not built: run `cargo xtask examples`"
    );
    let mut config = HostConfig::new(dir);
    config.cache_dir = Some(shared_cache_dir());
    config.strict = true;
    config.engine.pool_instances = 16;
    Ok(config.start()?)
}

fn output(outcome: &Outcome) -> anyhow::Result<Value> {
    match outcome {
        Outcome::Done { output: Some(text) } => Ok(serde_json::from_str(text)?),
        other => anyhow::bail!("expected done with output, got {other:?}"),
    }
}

fn png(width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header()?;
    let pixels: Vec<u8> = (0..width * height)
        .flat_map(|i| [(i % 256) as u8, (i / 7 % 256) as u8, 90])
        .collect();
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(bytes)
}

#[test]
fn thumbnail_shrinks_a_png_and_refuses_garbage() -> anyhow::Result<()> {
    let dispatcher = examples()?;
    let image = STANDARD.encode(png(64, 32)?);
    let report = run_job(
        &dispatcher,
        "thumbnail",
        json!({"image": image, "size": 16}),
        1,
    );
    let out = output(&report.outcome)?;
    assert_eq!(
        (out["width"].as_u64(), out["height"].as_u64()),
        (Some(16), Some(8))
    );
    let thumb = STANDARD.decode(out["png"].as_str().unwrap_or_default())?;
    let decoder = png::Decoder::new(std::io::Cursor::new(thumb));
    let info = decoder.read_info()?.info().clone();
    assert_eq!((info.width, info.height), (16, 8));
    let garbage = run_job(
        &dispatcher,
        "thumbnail",
        json!({"image": "bm90IGFuIGltYWdl", "size": 16}),
        1,
    );
    assert_eq!(garbage.outcome.reason(), Some(Reason::Permanent));
    let too_big = run_job(
        &dispatcher,
        "thumbnail",
        json!({"image": image, "size": 5000}),
        1,
    );
    assert_eq!(too_big.outcome.reason(), Some(Reason::InvalidPayload));
    Ok(())
}

#[test]
fn report_summarizes_columns_with_progress() -> anyhow::Result<()> {
    let harness = Harness::from_dispatcher(examples()?);
    let csv = "city,sales,units\nOslo,120.5,3\nLima,80,\nOslo,10,1\n";
    let run = harness
        .job("report", json!({"csv": csv, "progress_every": 1}))
        .run();
    run.assert_done().assert_output_includes(json!({
        "rows": 3,
        "columns": {
            "sales": {"sum": 210.5, "min": 10.0},
            "units": {"empty": 1},
            "city": {"numeric": 0},
        },
    }));
    let progress = &run.0.progress;
    assert_eq!(progress.len(), 4);
    assert_eq!((progress[1].done, progress[1].total), (2, 3));
    Ok(())
}

#[test]
fn fan_out_enqueues_one_child_per_payload() -> anyhow::Result<()> {
    let harness = Harness::from_dispatcher(examples()?);
    let payloads = json!([{"csv": "a\n1"}, {"csv": "b\n2"}, {"csv": "c\n3"}]);
    let run = harness
        .job(
            "fan-out",
            json!({"job": "report", "payloads": payloads, "unique": true}),
        )
        .run();
    run.assert_done().assert_enqueued(3);
    let report = &run.0;
    let ids: Vec<&str> = report.enqueued.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(run.output()["children"], json!(ids));
    assert_eq!(report.enqueued[2].payload_value(), json!({"csv": "c\n3"}));
    assert_eq!(
        report.enqueued[0].unique_key.as_deref(),
        Some(format!("{}-0", report.job_id).as_str())
    );
    Ok(())
}

#[test]
fn flaky_api_retries_with_its_hint_then_succeeds() -> anyhow::Result<()> {
    let harness = Harness::from_dispatcher(examples()?);
    let call = json!({"url": "https://api.example.invalid", "fail_until_attempt": 3, "retry_after_ms": 1500});
    let first = harness.job("flaky-api", call.clone()).attempt(1).run();
    first.assert_retry(Reason::Transient);
    match first.0.outcome {
        Outcome::Retry { delay, .. } => assert_eq!(delay.as_millis(), 1500),
        other => anyhow::bail!("expected a retry, got {other:?}"),
    }
    harness
        .job("flaky-api", call)
        .attempt(3)
        .run()
        .assert_done()
        .assert_output_includes(json!({"attempt": 3}));
    // Its manifest allows 4 attempts: the 4th failure is final.
    let never = json!({"url": "https://api.example.invalid", "fail_until_attempt": 10});
    harness
        .job("flaky-api", never)
        .attempt(4)
        .run()
        .assert_dead_letter(Reason::Transient);
    Ok(())
}

#[test]
fn archive_packs_from_one_granted_folder_into_another() -> anyhow::Result<()> {
    let area = tempfile::tempdir()?;
    let handlers = jobhost_tests::Handlers::new()?;
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/handlers/archive.wasm");
    std::fs::copy(&wasm, handlers.file("archive", "wasm"))?;
    let (inbox, outbox) = (area.path().join("in"), area.path().join("out"));
    std::fs::create_dir_all(&inbox)?;
    std::fs::create_dir_all(&outbox)?;
    std::fs::write(inbox.join("a.txt"), "alpha")?;
    std::fs::write(inbox.join("b.txt"), "bravo!")?;
    std::fs::write(area.path().join("secret.txt"), "no")?;
    let manifest = format!(
        "[[grants.dirs]]\nhost = {:?}\nguest = \"/in\"\n[[grants.dirs]]\nhost = {:?}\nguest = \"/out\"\nwritable = true\n",
        inbox.display().to_string(),
        outbox.display().to_string()
    );
    handlers.sidecar("archive", "toml", &manifest)?;
    let dispatcher = handlers.dispatcher()?;
    let report = run_job(
        &dispatcher,
        "archive",
        json!({"files": ["a.txt", "b.txt"], "name": "bundle"}),
        1,
    );
    let out = output(&report.outcome)?;
    assert_eq!(
        (out["files"].as_u64(), out["bytes"].as_u64()),
        (Some(2), Some(11))
    );
    let mut archive = tar::Archive::new(std::fs::File::open(outbox.join("bundle.tar"))?);
    let mut names = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text)?;
        names.push((entry.path()?.display().to_string(), text));
    }
    assert_eq!(
        names,
        [
            ("a.txt".to_string(), "alpha".to_string()),
            ("b.txt".to_string(), "bravo!".to_string())
        ]
    );
    let escape = run_job(
        &dispatcher,
        "archive",
        json!({"files": ["../secret.txt"], "name": "x"}),
        1,
    );
    assert_eq!(escape.outcome.reason(), Some(Reason::Permanent));
    Ok(())
}
