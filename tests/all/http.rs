//! Outbound HTTP: denied by default, allowlisted per handler, bounded; against a real HTTP
//! server on 127.0.0.1 (never any other address).

use jobhost::job::{Outcome, Reason};
use jobhost_tests::{Handlers, TestServer, fixtures, run_job};
use serde_json::{Value, json};

fn answers(outcome: &Outcome) -> anyhow::Result<Vec<Value>> {
    let Outcome::Done { output: Some(text) } = outcome else {
        anyhow::bail!("expected done, got {outcome:?}")
    };
    Ok(serde_json::from_str(text)?)
}

fn probe(handlers: &Handlers, calls: Value) -> anyhow::Result<Vec<Value>> {
    answers(&run_job(&handlers.dispatcher()?, "http-probe", calls, 1).outcome)
}

fn get(url: &str) -> Value {
    json!({"method": "GET", "url": url})
}

#[test]
pub(crate) fn http_probe() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    // No grant: refused before any connection is made.
    let bare = Handlers::new()?;
    bare.add(fixtures::HTTP_PROBE, "http-probe")?;
    let results = probe(&bare, json!([get(&server.url("/ok"))]))?;
    assert!(
        results[0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("denied")),
        "{results:?}"
    );
    assert!(server.received().is_empty(), "nothing reached the server");

    let other = std::net::TcpListener::bind("127.0.0.1:0")?;
    let other_port = other.local_addr()?.port();
    let granted = Handlers::new()?;
    granted.add(fixtures::HTTP_PROBE, "http-probe")?;
    let manifest = format!(
        "[grants.http]\nallow = [\"127.0.0.1:{}\", \"localhost:{}\"]\nmethods = [\"GET\", \"POST\"]\nmax-response-bytes = 1_000_000\nmax-requests = 6\ntimeout-ms = 1_000\n",
        server.port, server.port
    );
    granted.sidecar("http-probe", "toml", &manifest)?;
    let calls = json!([
        get(&server.url("/ok")),
        {"method": "POST", "url": server.url("/ok"), "body": "{\"a\": 1}"},
        get(&format!("http://127.0.0.1:{other_port}/ok")),
        get("http://example.invalid/ok"),
        {"method": "DELETE", "url": server.url("/ok")},
        get(&format!("http://localhost:{}/ok", server.port)),
        get(&server.url("/big")),
        get(&server.url("/slow")),
        get(&server.url("/ok")),
        get(&server.url("/ok"))
    ]);
    let results = probe(&granted, calls)?;
    let summary: Vec<String> = results
        .iter()
        .map(|r| {
            r["status"].as_u64().map_or_else(
                || r["error"].as_str().unwrap_or("?").to_string(),
                |s| s.to_string(),
            )
        })
        .collect();
    assert_eq!(summary[0], "200");
    assert_eq!(results[0]["body"], "hello");
    assert_eq!(summary[1], "200");
    assert!(
        summary[2].starts_with("denied"),
        "a loopback port not on the list: {summary:?}"
    );
    assert!(
        summary[3].starts_with("denied"),
        "a host not on the list: {summary:?}"
    );
    assert!(
        summary[4].starts_with("denied"),
        "a method not granted: {summary:?}"
    );
    assert!(
        summary[5].starts_with("denied"),
        "a name resolving to loopback needs the literal or allow-private: {summary:?}"
    );
    assert!(
        summary[6].contains("BodySize") || summary[6].contains("request failed"),
        "over the response cap: {summary:?}"
    );
    assert!(
        summary[7].contains("Timeout") || summary[7].contains("request failed"),
        "past the timeout: {summary:?}"
    );
    assert_eq!(summary[8], "200");
    assert!(
        summary[9].starts_with("denied"),
        "the 7th request is over max-requests (6): {summary:?}"
    );
    let posted = server
        .received()
        .into_iter()
        .find(|r| r.method == "POST")
        .ok_or_else(|| anyhow::anyhow!("POST arrived"))?;
    assert_eq!(posted.body, b"{\"a\": 1}");
    drop(other);
    Ok(())
}

fn webhook_handlers() -> anyhow::Result<Handlers> {
    let handlers = Handlers::new()?;
    let wasm = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/handlers/webhook.wasm");
    anyhow::ensure!(
        wasm.is_file(),
        "examples are not built: run `cargo xtask examples`"
    );
    std::fs::copy(&wasm, handlers.file("webhook", "wasm"))?;
    handlers.sidecar(
        "webhook",
        "secrets",
        "# the signing secret\nWEBHOOK_SECRET = s3cret\n",
    )?;
    Ok(handlers)
}

fn grant(handlers: &Handlers, server: &TestServer, env: &str) -> anyhow::Result<()> {
    let manifest = format!(
        "[grants]\nenv = [{env}]\nenv-file = \"webhook.secrets\"\n[grants.http]\nallow = [\"127.0.0.1:{}\"]\nmethods = [\"POST\"]\n",
        server.port
    );
    handlers.sidecar("webhook", "toml", &manifest)?;
    Ok(())
}

#[test]
fn webhook_example_signs_and_maps_statuses_to_outcomes() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let handlers = webhook_handlers()?;
    grant(&handlers, &server, "\"WEBHOOK_SECRET\"")?;
    let dispatcher = handlers.dispatcher()?;
    let ok = run_job(
        &dispatcher,
        "webhook",
        json!({"url": server.url("/ok"), "event": {"order": 7}}),
        2,
    );
    assert_eq!(ok.outcome.kind(), "done", "{:?}", ok.outcome);
    let sent = server
        .received()
        .pop()
        .ok_or_else(|| anyhow::anyhow!("delivered"))?;
    let body: Value = serde_json::from_slice(&sent.body)?;
    assert_eq!(
        (body["event"]["order"].as_u64(), body["attempt"].as_u64()),
        (Some(7), Some(2))
    );
    let signature = sent
        .headers
        .iter()
        .find(|(k, _)| k == "x-jobhost-signature")
        .map(|(_, v)| v.clone());
    // HMAC-SHA256("s3cret", body), computed independently of the guest.
    let expected = format!("sha256={}", hmac_sha256_hex(b"s3cret", &sent.body));
    assert_eq!(signature.as_deref(), Some(expected.as_str()));
    let failing = run_job(
        &dispatcher,
        "webhook",
        json!({"url": server.url("/fail"), "event": {}}),
        1,
    );
    match failing.outcome {
        Outcome::Retry { reason, delay, .. } => {
            assert_eq!((reason, delay.as_millis()), (Reason::Transient, 1234))
        }
        other => anyhow::bail!("a 500 is retried with the receiver's hint, got {other:?}"),
    }
    let refused = run_job(
        &dispatcher,
        "webhook",
        json!({"url": server.url("/missing"), "event": {}}),
        1,
    );
    assert_eq!(
        (refused.outcome.kind(), refused.outcome.reason()),
        ("dead-letter", Some(Reason::Permanent))
    );
    Ok(())
}

fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::Digest as _;
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let inner: Vec<u8> = block
        .iter()
        .map(|b| b ^ 0x36)
        .chain(message.iter().copied())
        .collect();
    let inner = sha2::Sha256::digest(&inner);
    let outer: Vec<u8> = block
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    hex::encode(sha2::Sha256::digest(&outer))
}

#[test]
fn webhook_example_needs_its_secret_grant() -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let handlers = webhook_handlers()?;
    grant(&handlers, &server, "")?;
    let report = run_job(
        &handlers.dispatcher()?,
        "webhook",
        json!({"url": server.url("/ok"), "event": {"a": 1}}),
        1,
    );
    assert_eq!(report.outcome.reason(), Some(Reason::Permanent));
    assert!(
        report
            .outcome
            .message()
            .is_some_and(|m| m.contains("WEBHOOK_SECRET"))
    );
    assert!(server.received().is_empty());
    Ok(())
}
