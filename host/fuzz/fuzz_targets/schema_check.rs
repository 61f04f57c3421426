//! Checking any JSON payload against a schema returns errors or none, never a panic, and
//! errors exactly when the payload is invalid.
#![no_main]

use jobhost::plugin::PayloadSchema;
use libfuzzer_sys::fuzz_target;

const SCHEMA: &str = r##"{
  "type": "object",
  "required": ["to", "count"],
  "properties": {
    "to": {"type": "string", "format": "email", "maxLength": 64},
    "count": {"type": "integer", "minimum": 0, "maximum": 1000},
    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "maxItems": 8},
    "nested": {"$ref": "#"}
  },
  "additionalProperties": false
}"##;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let schema = PayloadSchema::compile(SCHEMA).expect("the schema compiles");
    let errors = schema.check(&payload);
    assert!(errors.len() <= jobhost::plugin::MAX_SCHEMA_ERRORS);
});
