//! EventBridge event patterns, the subset jobhost matches: a pattern is an object whose
//! leaves are arrays of matchers, and an event matches when every field the pattern names
//! matches one of its matchers (nested objects recurse; when the event's field is an
//! array, one element matching is enough). Matchers:
//!
//! - a value (string, number, boolean, `null`): equal;
//! - `{"prefix": "x"}`, `{"suffix": "x"}`, `{"equals-ignore-case": "x"}`;
//! - `{"anything-but": v}` where `v` is a value, an array of values, or `{"prefix": "x"}`
//!   / `{"suffix": "x"}`;
//! - `{"exists": true|false}`.
//!
//! Main functions: [`check`], [`matches`].

use serde_json::{Map, Value};

/// Checks a pattern's shape, so a mistake is refused when the handler loads, not
/// silently never matched.
pub fn check(pattern: &Map<String, Value>) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(
            "an empty pattern; to match every event use source = [{ prefix = \"\" }]".into(),
        );
    }
    for (key, rule) in pattern {
        match rule {
            Value::Object(nested) => check(nested).map_err(|e| format!("{key}.{e}"))?,
            Value::Array(matchers) if matchers.is_empty() => {
                return Err(format!("{key}: an empty list matches nothing"));
            }
            Value::Array(matchers) => {
                for matcher in matchers {
                    check_matcher(matcher).map_err(|e| format!("{key}: {e}"))?;
                }
            }
            other => {
                return Err(format!(
                    "{key}: {other} is not a list of matchers (write [{other}])"
                ));
            }
        }
    }
    Ok(())
}

fn check_matcher(matcher: &Value) -> Result<(), String> {
    let Value::Object(op) = matcher else {
        return match matcher {
            Value::Array(_) => Err("a list inside a list of matchers".into()),
            _ => Ok(()),
        };
    };
    let mut keys = op.iter();
    let (Some((name, arg)), None) = (keys.next(), keys.next()) else {
        return Err(format!("{matcher} must have exactly one operator"));
    };
    let ok = match name.as_str() {
        "prefix" | "suffix" | "equals-ignore-case" => arg.is_string(),
        "exists" => arg.is_boolean(),
        "anything-but" => match arg {
            Value::Array(values) => values.iter().all(|v| !v.is_object() && !v.is_array()),
            Value::Object(inner) => {
                inner.len() == 1
                    && inner
                        .iter()
                        .all(|(k, v)| matches!(k.as_str(), "prefix" | "suffix") && v.is_string())
            }
            _ => true,
        },
        other => {
            return Err(format!(
                "unsupported operator `{other}` (jobhost matches prefix, suffix, \
                 equals-ignore-case, anything-but and exists)"
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad argument for `{name}`: {arg}"))
    }
}

/// Whether `event` matches `pattern` (checked with [`check`]).
pub fn matches(pattern: &Map<String, Value>, event: &Value) -> bool {
    pattern.iter().all(|(key, rule)| {
        let field = event.get(key);
        match rule {
            Value::Object(nested) => field.is_some_and(|f| matches(nested, f)),
            Value::Array(matchers) => matchers.iter().any(|m| matcher_matches(m, field)),
            _ => false,
        }
    })
}

fn matcher_matches(matcher: &Value, field: Option<&Value>) -> bool {
    let Value::Object(op) = matcher else {
        return field.is_some_and(|f| any_element(f, |v| v == matcher));
    };
    let Some((name, arg)) = op.iter().next() else {
        return false;
    };
    if name == "exists" {
        return arg.as_bool() == Some(field.is_some_and(|f| !f.is_null()));
    }
    let Some(field) = field else {
        return false;
    };
    any_element(field, |v| operator_matches(name, arg, v))
}

/// `test` on the value, or on any element when it is an array.
fn any_element(value: &Value, test: impl Fn(&Value) -> bool) -> bool {
    match value {
        Value::Array(items) => items.iter().any(test),
        other => test(other),
    }
}

fn operator_matches(name: &str, arg: &Value, value: &Value) -> bool {
    let text = value.as_str();
    match name {
        "prefix" => text
            .zip(arg.as_str())
            .is_some_and(|(t, p)| t.starts_with(p)),
        "suffix" => text.zip(arg.as_str()).is_some_and(|(t, s)| t.ends_with(s)),
        "equals-ignore-case" => text
            .zip(arg.as_str())
            .is_some_and(|(t, e)| t.eq_ignore_ascii_case(e)),
        "anything-but" => match arg {
            Value::Array(values) => !values.contains(value),
            Value::Object(inner) => inner
                .iter()
                .next()
                .is_some_and(|(op, a)| !operator_matches(op, a, value)),
            other => other != value,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pattern(value: Value) -> Map<String, Value> {
        let Value::Object(map) = value else {
            panic!("a pattern is an object")
        };
        check(&map).expect("a valid pattern");
        map
    }

    #[test]
    fn fields_values_and_operators_match_like_eventbridge() {
        let order = json!({"source": "orders", "detail-type": "OrderCreated",
            "resources": ["arn:aws:events:us-east-1:1:rule/nightly"],
            "detail": {"total": 12, "country": "FR", "tags": ["a", "b"]}});
        let yes = [
            json!({"source": ["orders"], "detail-type": ["OrderCreated", "OrderShipped"]}),
            json!({"source": [{"prefix": ""}]}),
            json!({"detail": {"country": [{"anything-but": ["US", "CA"]}]}}),
            json!({"detail": {"tags": ["b"]}}),
            json!({"detail": {"total": [12]}}),
            json!({"detail": {"coupon": [{"exists": false}]}}),
            json!({"resources": [{"suffix": "rule/nightly"}]}),
            json!({"detail-type": [{"equals-ignore-case": "ordercreated"}]}),
            json!({"source": [{"anything-but": {"prefix": "aws."}}]}),
        ];
        for p in yes {
            assert!(matches(&pattern(p.clone()), &order), "{p}");
        }
        let no = [
            json!({"source": ["billing"]}),
            json!({"detail-type": ["OrderShipped"]}),
            json!({"detail": {"country": [{"anything-but": "FR"}]}}),
            json!({"detail": {"coupon": [{"exists": true}]}}),
            json!({"detail": {"total": ["12"]}}),
            json!({"missing": {"x": ["y"]}}),
        ];
        for p in no {
            assert!(!matches(&pattern(p.clone()), &order), "{p}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused_with_the_field() {
        for (bad, says) in [
            (json!({}), "empty"),
            (json!({"source": "orders"}), "source"),
            (json!({"source": []}), "empty list"),
            (json!({"detail": {"n": [{"numeric": [">", 1]}]}}), "numeric"),
            (json!({"source": [{"prefix": 1}]}), "prefix"),
        ] {
            let Value::Object(map) = bad else { panic!() };
            let error = check(&map).expect_err("refused");
            assert!(error.contains(says), "{error}");
        }
    }
}
