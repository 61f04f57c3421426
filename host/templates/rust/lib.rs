//! `{{name}}`: a jobhost handler.

wit_bindgen::generate!({ world: "job-plugin", path: "wit" });

use exports::jobhost::plugin::handler::{Guest, HandlerInfo, Job, JobError};
use jobhost::plugin::host::log;
use jobhost::plugin::types::LogLevel;

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["name"],
  "properties": {"name": {"type": "string", "minLength": 1}},
  "additionalProperties": false
}"#;

struct Handler;

impl Guest for Handler {
    fn describe() -> HandlerInfo {
        HandlerInfo {
            names: vec!["{{name}}".into()],
            schema: Some(SCHEMA.into()),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn handle(job: Job) -> Result<Option<String>, JobError> {
        // The host checked the payload against SCHEMA before calling this.
        let payload: serde_json::Value =
            serde_json::from_str(&job.payload).map_err(|e| JobError::Permanent(e.to_string()))?;
        let name = payload["name"].as_str().unwrap_or_default();
        if name.chars().count() > 32 {
            return Err(JobError::Permanent("name is longer than 32 characters".into()));
        }
        log(LogLevel::Info, &format!("greeted {name}"));
        let output = serde_json::json!({ "greeting": format!("Hello, {name}!") });
        Ok(Some(output.to_string()))
    }
}

export!(Handler);
