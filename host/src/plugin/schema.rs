//! A handler's JSON Schema, compiled once at load and checked before every job.
//!
//! Main type: [`PayloadSchema`].

use serde_json::Value;

/// The most schema errors reported for one payload.
pub const MAX_SCHEMA_ERRORS: usize = 20;

/// Schema text that does not compile: what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

/// A compiled schema and its source text.
#[derive(Clone, Debug)]
pub struct PayloadSchema {
    text: String,
    validator: jsonschema::Validator,
}

impl PayloadSchema {
    /// Compiles schema text; the error says what is wrong with it.
    pub fn compile(text: &str) -> Result<Self, SchemaError> {
        let schema: Value = serde_json::from_str(text)
            .map_err(|e| SchemaError(format!("schema is not JSON: {e}")))?;
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| SchemaError(format!("invalid JSON Schema: {e}")))?;
        Ok(Self {
            text: text.to_string(),
            validator,
        })
    }

    /// The schema as JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The payload's schema errors (at most [`MAX_SCHEMA_ERRORS`]); empty when valid.
    pub fn check(&self, payload: &Value) -> Vec<String> {
        if self.validator.is_valid(payload) {
            return Vec::new();
        }
        self.validator
            .iter_errors(payload)
            .take(MAX_SCHEMA_ERRORS)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("{at}: {e}")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() -> Result<(), SchemaError> {
        let schema = PayloadSchema::compile(
            r#"{"type":"object","required":["to"],"properties":{"to":{"type":"string"}}}"#,
        )?;
        assert!(schema.check(&serde_json::json!({"to": "a"})).is_empty());
        let errors = schema.check(&serde_json::json!({"to": 3}));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("/to:"), "{errors:?}");
        Ok(())
    }

    #[test]
    fn an_invalid_schema_is_refused() {
        assert!(PayloadSchema::compile(r#"{"type": 12}"#).is_err());
        assert!(PayloadSchema::compile("{not json").is_err());
    }
}
