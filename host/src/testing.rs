//! The test harness for handler authors, in two forms:
//!
//! - [`Harness`], a library API for `cargo test`: load a component, run a job with a given
//!   attempt, and assert on the [`TestReport`].
//! - case files for `jobhost test DIR` (any language): `NAME.cases.json` next to
//!   `NAME.wasm`, run by [`run_case_files`].
//!
//! Host imports are captured, not executed against a queue: `enqueue` is recorded, `log`
//! and `progress` are recorded, and the wall clock can be fixed.
//!
//! ```no_run
//! use jobhost::testing::Harness;
//! use serde_json::json;
//!
//! let harness = Harness::load("target/wasm32-wasip2/release/greet.wasm")?;
//! harness.job("greet", json!({"name": "Ada"})).run().assert_done().assert_output(json!("hello, Ada"));
//! harness.job("greet", json!({"name": 3})).run().assert_dead_letter(jobhost::job::Reason::InvalidPayload);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dispatch::{Delivery, DispatchOptions, Dispatcher};
use crate::engine::{EngineOptions, JobEngine};
use crate::job::Envelope;
use crate::job::{Outcome, Reason, Report};
use crate::plugin::{Loader, PluginSet};
use crate::sandbox::Limits;

/// One or more loaded handlers to run jobs against.
pub struct Harness {
    dispatcher: Dispatcher,
}

impl Harness {
    /// Loads one component (with its sidecars, as the host would).
    pub fn load(component: impl AsRef<Path>) -> Result<Self, HarnessError> {
        let engine = Arc::new(JobEngine::new(EngineOptions {
            pool_instances: 8,
            ..EngineOptions::default()
        })?);
        let loader = Loader::new(engine.clone(), None)?;
        let plugin = loader.load_file(component.as_ref())?;
        let plugins = PluginSet::from_plugins(vec![plugin]);
        Ok(Self::from_dispatcher(Dispatcher::new(
            engine,
            plugins,
            DispatchOptions::default(),
        )))
    }

    /// A harness over an already-started dispatcher (a whole plugins folder).
    pub fn from_dispatcher(dispatcher: Dispatcher) -> Self {
        Self { dispatcher }
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// A job to run: `.attempt(n)`, `.limits(...)`, `.now(...)`, then `.run()`.
    pub fn job(&self, name: &str, payload: Value) -> JobRun<'_> {
        JobRun {
            harness: self,
            name: name.to_string(),
            payload,
            attempt: 1,
            limits: None,
            now: None,
        }
    }
}

/// A job about to run in the harness.
pub struct JobRun<'a> {
    harness: &'a Harness,
    name: String,
    payload: Value,
    attempt: u32,
    limits: Option<Limits>,
    now: Option<SystemTime>,
}

impl JobRun<'_> {
    /// The delivery number the handler sees.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Limits instead of the handler's.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Fixes the guest's wall clock.
    pub fn now(mut self, at: SystemTime) -> Self {
        self.now = Some(at);
        self
    }

    /// Runs the job to its report.
    pub fn run(self) -> TestReport {
        let envelope = Envelope {
            id: None,
            job: self.name,
            payload: self.payload,
            attempt: Some(self.attempt),
            max_attempts: None,
            enqueued_at: None,
            not_before: None,
        };
        let delivery = Delivery {
            attempt: Some(self.attempt),
            limits: self.limits,
            wall_clock: self.now,
            ..Delivery::default()
        };
        TestReport(
            self.harness
                .dispatcher
                .dispatch_envelope(envelope, &delivery),
        )
    }
}

/// A job's report, with assertions that panic with the whole report on failure.
#[derive(Clone, Debug)]
pub struct TestReport(pub Report);

impl TestReport {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\nreport: {}",
            serde_json::to_string_pretty(&self.0.to_json()).unwrap_or_default()
        )
    }

    /// The output parsed as JSON (`null` when there is none or it is not JSON).
    pub fn output(&self) -> Value {
        self.0.to_json()["output"].clone()
    }

    /// Asserts the job is done.
    pub fn assert_done(&self) -> &Self {
        if !self.0.outcome.is_done() {
            self.fail("expected the job to be done");
        }
        self
    }

    /// Asserts a retry for `reason`.
    pub fn assert_retry(&self, reason: Reason) -> &Self {
        if !matches!(&self.0.outcome, Outcome::Retry { reason: r, .. } if *r == reason) {
            self.fail(&format!("expected a retry ({reason})"));
        }
        self
    }

    /// Asserts a dead-letter for `reason`.
    pub fn assert_dead_letter(&self, reason: Reason) -> &Self {
        if !matches!(&self.0.outcome, Outcome::DeadLetter { reason: r, .. } if *r == reason) {
            self.fail(&format!("expected a dead-letter ({reason})"));
        }
        self
    }

    /// Asserts the output equals `expected`.
    pub fn assert_output(&self, expected: Value) -> &Self {
        if self.output() != expected {
            self.fail(&format!("expected output {expected}"));
        }
        self
    }

    /// Asserts the output contains `subset` (objects by key, recursively).
    pub fn assert_output_includes(&self, subset: Value) -> &Self {
        if !includes(&self.output(), &subset) {
            self.fail(&format!("expected output to include {subset}"));
        }
        self
    }

    /// Asserts some log line contains `text`.
    pub fn assert_log_contains(&self, text: &str) -> &Self {
        if !self.0.logs.iter().any(|l| l.message.contains(text)) {
            self.fail(&format!("expected a log line containing {text:?}"));
        }
        self
    }

    /// Asserts how many follow-up jobs were enqueued.
    pub fn assert_enqueued(&self, count: usize) -> &Self {
        if self.0.enqueued.len() != count {
            self.fail(&format!("expected {count} enqueued jobs"));
        }
        self
    }

    /// Asserts the job used at most `fuel`.
    pub fn assert_fuel_below(&self, fuel: u64) -> &Self {
        if self.0.fuel > fuel {
            self.fail(&format!("expected at most {fuel} fuel"));
        }
        self
    }
}

/// Whether `actual` contains `subset`: equal scalars, objects with at least the subset's
/// keys (compared recursively), arrays of the same length compared element-wise.
pub fn includes(actual: &Value, subset: &Value) -> bool {
    match (actual, subset) {
        (Value::Object(a), Value::Object(s)) => s
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|x| includes(x, v))),
        (Value::Array(a), Value::Array(s)) => {
            a.len() == s.len() && a.iter().zip(s).all(|(x, v)| includes(x, v))
        }
        (a, s) => a == s,
    }
}

/// One case of a case file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case checks.
    pub name: String,
    /// The job name (default: the handler's first name).
    #[serde(default)]
    pub job: Option<String>,
    /// The payload (default `{}`).
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// The attempt (default 1).
    #[serde(default)]
    pub attempt: Option<u32>,
    /// Limits to change for this case, e.g. `{"fuel": 1000}`.
    #[serde(default)]
    pub limits: Option<serde_json::Map<String, Value>>,
    /// A fixed wall clock (RFC 3339).
    #[serde(default)]
    pub now: Option<String>,
    /// What must hold.
    #[serde(default)]
    pub expect: Expect,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A case's expectations; every field is optional except that `outcome` defaults to done.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `done`, `retry` or `dead-letter` (default `done`).
    #[serde(default)]
    pub outcome: Option<String>,
    /// The reason (see the outcome table).
    #[serde(default)]
    pub reason: Option<String>,
    /// Text the failure message contains.
    #[serde(default)]
    pub message_contains: Option<String>,
    /// The exact output.
    #[serde(default)]
    pub output: Option<Value>,
    /// A subset of the output.
    #[serde(default)]
    pub output_includes: Option<Value>,
    /// Texts some log line contains, each.
    #[serde(default)]
    pub logs_contain: Vec<String>,
    /// The enqueued jobs, in order: `{"job": NAME, "payload": SUBSET}`.
    #[serde(default)]
    pub enqueued: Option<Vec<Value>>,
    /// A subset of the last progress report, e.g. `{"done": 3, "total": 3}`.
    #[serde(default)]
    pub progress: Option<Value>,
    /// The most fuel the job may use.
    #[serde(default)]
    pub max_fuel: Option<u64>,
}

/// The result of one case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The case file.
    pub file: PathBuf,
    /// The case's name.
    pub name: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// One line per expectation that failed: what was expected and what came.
    pub failures: Vec<String>,
    /// The job's report.
    pub report: Value,
}

/// Why the harness could not start or read its cases.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The component did not load.
    #[error(transparent)]
    Load(#[from] crate::plugin::LoadError),
    /// A case file could not be read or parsed.
    #[error("{0}")]
    Cases(String),
}

/// Runs every `NAME.cases.json` in `dir` against the folder's handlers.
pub fn run_case_files(
    dispatcher: &Dispatcher,
    dir: &Path,
) -> Result<Vec<CaseResult>, HarnessError> {
    let unreadable = |path: &Path| {
        let path = path.to_path_buf();
        move |error: std::io::Error| HarnessError::Cases(format!("{}: {error}", path.display()))
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".cases.json"))
        .collect();
    files.sort();
    let mut results = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(unreadable(&file))?;
        let cases: Vec<Case> = serde_json::from_str(&text)
            .map_err(|e| HarnessError::Cases(format!("{}: {e}", file.display())))?;
        let stem = file
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".cases.json")
                    .to_string()
            })
            .unwrap_or_default();
        for case in cases {
            results.push(run_case(dispatcher, &file, &stem, case));
        }
    }
    Ok(results)
}

fn run_case(dispatcher: &Dispatcher, file: &Path, stem: &str, case: Case) -> CaseResult {
    let mut failures = Vec::new();
    let job = case
        .job
        .clone()
        .or_else(|| first_name_of(dispatcher, stem))
        .unwrap_or_else(|| stem.to_string());
    let limits = match (&case.limits, dispatcher.plugins().get(&job)) {
        (Some(changes), Some(plugin)) => match merged_limits(&plugin.manifest.limits, changes) {
            Ok(limits) => Some(limits),
            Err(e) => {
                failures.push(format!("limits: {e}"));
                None
            }
        },
        _ => None,
    };
    let now = match case.now.as_deref().map(crate::job::parse_at) {
        Some(Ok(at)) => Some(at),
        Some(Err(e)) => {
            failures.push(format!("now: {e}"));
            None
        }
        None => None,
    };
    let envelope = Envelope {
        id: Some(format!("test-{stem}-{}", case.name.replace(' ', "-"))),
        job,
        payload: case.payload.clone(),
        attempt: case.attempt,
        max_attempts: None,
        enqueued_at: None,
        not_before: None,
    };
    let delivery = Delivery {
        attempt: case.attempt,
        limits,
        wall_clock: now,
        ..Delivery::default()
    };
    let report = dispatcher.dispatch_envelope(envelope, &delivery);
    failures.extend(check(&case.expect, &report));
    CaseResult {
        file: file.to_path_buf(),
        name: case.name,
        passed: failures.is_empty(),
        failures,
        report: report.to_json(),
    }
}

fn first_name_of(dispatcher: &Dispatcher, stem: &str) -> Option<String> {
    dispatcher
        .plugins()
        .plugins()
        .iter()
        .find(|p| p.path.file_stem().is_some_and(|s| s == stem))
        .map(|p| p.names[0].clone())
}

fn merged_limits(
    base: &Limits,
    changes: &serde_json::Map<String, Value>,
) -> Result<Limits, String> {
    let mut value = serde_json::to_value(base).map_err(|e| e.to_string())?;
    if let Value::Object(map) = &mut value {
        for (key, change) in changes {
            map.insert(key.clone(), change.clone());
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn check(expect: &Expect, report: &Report) -> Vec<String> {
    let json = report.to_json();
    let mut failures = Vec::new();
    let mut differ = |what: &str, expected: String, actual: String| {
        failures.push(format!("{what}: expected {expected}, got {actual}"));
    };
    let outcome = expect.outcome.as_deref().unwrap_or("done");
    if report.outcome.kind() != outcome {
        let why = report
            .outcome
            .message()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        differ(
            "outcome",
            outcome.into(),
            format!("{}{why}", report.outcome.kind()),
        );
    }
    if let Some(reason) = &expect.reason {
        let actual = report.outcome.reason().map_or("none", Reason::as_str);
        if actual != reason {
            differ("reason", reason.clone(), actual.into());
        }
    }
    if let Some(text) = &expect.message_contains {
        let message = report.outcome.message().unwrap_or("");
        if !message.contains(text.as_str()) {
            differ(
                "message",
                format!("to contain {text:?}"),
                format!("{message:?}"),
            );
        }
    }
    if let Some(output) = &expect.output
        && json["output"] != *output
    {
        differ("output", output.to_string(), json["output"].to_string());
    }
    if let Some(subset) = &expect.output_includes
        && !includes(&json["output"], subset)
    {
        differ(
            "output",
            format!("to include {subset}"),
            json["output"].to_string(),
        );
    }
    for text in &expect.logs_contain {
        if !report
            .logs
            .iter()
            .any(|l| l.message.contains(text.as_str()))
        {
            let lines: Vec<&str> = report.logs.iter().map(|l| l.message.as_str()).collect();
            differ(
                "logs",
                format!("a line containing {text:?}"),
                format!("{lines:?}"),
            );
        }
    }
    if let Some(expected) = &expect.enqueued
        && !includes(&json["enqueued"], &Value::Array(expected.clone()))
    {
        differ(
            "enqueued",
            Value::Array(expected.clone()).to_string(),
            json["enqueued"].to_string(),
        );
    }
    if let Some(subset) = &expect.progress {
        let last = json["progress"]
            .as_array()
            .and_then(|p| p.last())
            .cloned()
            .unwrap_or(Value::Null);
        if !includes(&last, subset) {
            differ(
                "progress",
                format!("last report to include {subset}"),
                last.to_string(),
            );
        }
    }
    if let Some(max) = expect.max_fuel
        && report.fuel > max
    {
        differ("fuel", format!("at most {max}"), report.fuel.to_string());
    }
    failures
}
