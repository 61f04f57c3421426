//! Triggers: AWS events that are not a jobhost envelope, routed to handlers by the
//! `[[trigger]]` entries of their manifests.
//!
//! ```toml
//! [[trigger]]
//! s3 = { bucket = "uploads", prefix = "incoming/", events = ["s3:ObjectCreated:*"] }
//! [[trigger]]
//! eventbridge = { source = ["orders"], detail-type = ["OrderCreated", "OrderShipped"] }
//! [[trigger]]
//! scheduled-rule = "nightly-report"      # an EventBridge scheduled rule, by name
//! payload = { period = "day" }           # the job's payload instead of the event
//! ```
//!
//! Events recognized, wherever they arrive (an SQS message body, a direct Lambda
//! invocation):
//!
//! - an S3 notification (`Records` with `eventSource` `aws:s3`): one job per record and
//!   matching trigger, with the payload `{"bucket", "key" (URL-decoded), "size", "etag",
//!   "event", "time", "region", "versionId"?, "sequencer"?}`;
//! - S3's `s3:TestEvent`: acknowledged, nothing runs;
//! - an EventBridge event (`source`, `detail-type`, `detail`): one job per matching
//!   trigger, with the event as payload (`id`, `source`, `detail-type`, `time`, `account`,
//!   `region`, `resources`, `detail`; `version` dropped);
//! - an SNS notification (`Type` `Notification` with `Message`, as SNS → SQS delivers it
//!   without raw delivery): its `Message` is routed instead, once.
//!
//! An event of one of these sources that no trigger matches is [`Routed::Unrouted`].
//!
//! Main types: [`Trigger`], [`Routes`], [`Routed`].

pub mod pattern;
pub mod presign;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::job::Envelope;
use crate::plugin::PluginSet;

/// One `[[trigger]]` of a manifest: exactly one of `s3`, `eventbridge` or
/// `scheduled-rule`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Trigger {
    /// S3 event notifications of a bucket.
    pub s3: Option<S3Trigger>,
    /// EventBridge events matching this pattern.
    pub eventbridge: Option<Map<String, Value>>,
    /// The events of an EventBridge scheduled rule of this name.
    pub scheduled_rule: Option<String>,
    /// The job name (default: the handler's first name).
    pub job: Option<String>,
    /// The job's payload instead of the one made from the event.
    pub payload: Option<Value>,
}

/// Which S3 notifications start a job.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Trigger {
    /// The bucket's name.
    pub bucket: String,
    /// Only keys starting with this.
    #[serde(default)]
    pub prefix: String,
    /// Only keys ending with this.
    #[serde(default)]
    pub suffix: String,
    /// Event names, S3's notation: `s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete`, ...
    #[serde(default = "object_created")]
    pub events: Vec<String>,
    /// Add a presigned GET URL of the object to the payload (`url`), so the handler reads
    /// it over HTTP with no credentials of its own ([`presign`]).
    #[serde(default)]
    pub presign: bool,
    /// How long the presigned URL works, e.g. `"5m"` (the default) or `"1h"`.
    #[serde(default)]
    pub presign_expiry: Option<String>,
}

impl S3Trigger {
    /// How long this trigger's presigned URLs work.
    pub fn expiry(&self) -> Result<std::time::Duration, String> {
        let Some(text) = &self.presign_expiry else {
            return Ok(std::time::Duration::from_secs(300));
        };
        let expiry = humantime::parse_duration(text)
            .map_err(|e| format!("trigger.s3.presign-expiry {text:?}: {e}"))?;
        if expiry.is_zero() || expiry > presign::MAX_EXPIRY {
            return Err(format!(
                "trigger.s3.presign-expiry {text:?}: between 1 s and 7 days (S3's limit)"
            ));
        }
        Ok(expiry)
    }
}

fn object_created() -> Vec<String> {
    vec!["s3:ObjectCreated:*".into()]
}

impl Trigger {
    /// Checks the trigger when its manifest loads.
    pub fn validate(&self) -> Result<(), String> {
        let kinds = [
            self.s3.is_some(),
            self.eventbridge.is_some(),
            self.scheduled_rule.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(
                "a [[trigger]] names exactly one of s3, eventbridge or scheduled-rule".into(),
            );
        }
        if let Some(s3) = &self.s3 {
            if s3.bucket.is_empty() {
                return Err("trigger.s3.bucket is empty".into());
            }
            s3.expiry()?;
            if let Some(bad) = s3.events.iter().find(|e| !e.starts_with("s3:")) {
                return Err(format!(
                    "trigger.s3.events: {bad:?} is not an S3 event name (e.g. \"s3:ObjectCreated:*\")"
                ));
            }
        }
        if let Some(pattern) = &self.eventbridge {
            pattern::check(pattern).map_err(|e| format!("trigger.eventbridge: {e}"))?;
        }
        if self.scheduled_rule.as_ref().is_some_and(String::is_empty) {
            return Err("trigger.scheduled-rule is empty".into());
        }
        Ok(())
    }

    /// The EventBridge pattern this trigger matches, if it matches EventBridge events (a
    /// scheduled rule is one: `aws.events`, `Scheduled Event`, the rule's ARN).
    pub fn eventbridge_pattern(&self) -> Option<Map<String, Value>> {
        if let Some(pattern) = &self.eventbridge {
            return Some(pattern.clone());
        }
        let rule = self.scheduled_rule.as_ref()?;
        match json!({
            "source": ["aws.events"],
            "detail-type": ["Scheduled Event"],
            "resources": [{"suffix": format!("/{rule}")}],
        }) {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }
}

impl S3Trigger {
    fn matches(&self, bucket: &str, key: &str, event: &str) -> bool {
        bucket == self.bucket
            && key.starts_with(&self.prefix)
            && key.ends_with(&self.suffix)
            && self.events.iter().any(|wanted| {
                // Records name events without the `s3:` of the configuration.
                let wanted = wanted.strip_prefix("s3:").unwrap_or(wanted);
                match wanted.strip_suffix('*') {
                    Some(stem) => event.starts_with(stem),
                    None => event == wanted,
                }
            })
    }
}

/// What an event comes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Routed {
    /// The jobs of the triggers it matched (at least one).
    Jobs(Vec<Envelope>),
    /// Nothing to run, nothing wrong (S3's test event); why.
    Acknowledged(String),
    /// An event of a known source that no trigger matches; what it was.
    Unrouted(String),
    /// An SNS notification: its message, to route instead.
    Unwrapped(String),
}

/// Every loaded handler's triggers, by kind.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    s3: Vec<(String, S3Trigger, Option<Value>)>,
    eventbridge: Vec<(String, Map<String, Value>, Option<Value>)>,
    /// Signs the URLs of `presign` triggers: from the environment, read when the first
    /// such URL is made; why not, if not.
    signer: std::sync::OnceLock<Result<presign::Signer, String>>,
}

impl Routes {
    /// The triggers of the loaded handlers.
    pub fn new(plugins: &PluginSet) -> Self {
        let mut routes = Routes::default();
        for plugin in plugins.plugins() {
            for trigger in &plugin.manifest.trigger {
                let Some(job) = trigger
                    .job
                    .clone()
                    .or_else(|| plugin.names.first().cloned())
                else {
                    continue;
                };
                if let Some(s3) = &trigger.s3 {
                    routes
                        .s3
                        .push((job.clone(), s3.clone(), trigger.payload.clone()));
                }
                if let Some(pattern) = trigger.eventbridge_pattern() {
                    routes
                        .eventbridge
                        .push((job, pattern, trigger.payload.clone()));
                }
            }
        }
        routes
    }

    /// Whether any handler has a trigger.
    pub fn is_empty(&self) -> bool {
        self.s3.is_empty() && self.eventbridge.is_empty()
    }

    /// What an event comes to, or `None` when it is not an event jobhost knows.
    pub fn route(&self, event: &Value) -> Option<Routed> {
        let object = event.as_object()?;
        if object.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
            let bucket = object.get("Bucket").and_then(Value::as_str).unwrap_or("?");
            return Some(Routed::Acknowledged(format!(
                "S3 test event of bucket {bucket} acknowledged"
            )));
        }
        if object.get("Type").and_then(Value::as_str) == Some("Notification")
            && let Some(message) = object.get("Message").and_then(Value::as_str)
        {
            return Some(Routed::Unwrapped(message.to_string()));
        }
        if let Some(records) = object.get("Records").and_then(Value::as_array)
            && !records.is_empty()
            && records
                .iter()
                .all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:s3"))
        {
            return Some(self.route_s3(records));
        }
        if ["source", "detail-type", "detail"]
            .iter()
            .all(|k| object.contains_key(*k))
        {
            return Some(self.route_eventbridge(object));
        }
        None
    }

    fn route_s3(&self, records: &[Value]) -> Routed {
        let mut jobs = Vec::new();
        let mut seen = Vec::new();
        for record in records {
            let payload = s3_payload(record);
            let (bucket, key, event) = (
                payload["bucket"].as_str().unwrap_or_default(),
                payload["key"].as_str().unwrap_or_default(),
                payload["event"].as_str().unwrap_or_default(),
            );
            seen.push(format!("{event} s3://{bucket}/{key}"));
            for (job, trigger, fixed) in &self.s3 {
                if trigger.matches(bucket, key, event) {
                    let mut payload = fixed.clone().unwrap_or(payload.clone());
                    if trigger.presign {
                        self.add_url(&mut payload, bucket, key, record, trigger);
                    }
                    jobs.push(envelope(job, payload));
                }
            }
        }
        if jobs.is_empty() {
            return Routed::Unrouted(format!(
                "no trigger matches the S3 event ({})",
                seen.join(", ")
            ));
        }
        Routed::Jobs(jobs)
    }

    /// Adds the presigned `url` of the record's object to `payload` (an object).
    fn add_url(
        &self,
        payload: &mut Value,
        bucket: &str,
        key: &str,
        record: &Value,
        trigger: &S3Trigger,
    ) {
        let signer = self.signer.get_or_init(|| {
            let signer = presign::Signer::from_env();
            if let Err(why) = &signer {
                tracing::error!(
                    why,
                    "an S3 trigger presigns URLs, but cannot: its jobs have no url"
                );
            }
            signer
        });
        let Ok(signer) = signer else {
            return;
        };
        let region = record["awsRegion"].as_str().unwrap_or_default();
        let expiry = trigger
            .expiry()
            .unwrap_or(std::time::Duration::from_secs(300));
        match signer.presign_get(bucket, key, region, expiry, std::time::SystemTime::now()) {
            Ok(url) => {
                if let Some(object) = payload.as_object_mut() {
                    object.insert("url".into(), Value::String(url));
                }
            }
            Err(why) => tracing::error!(why, bucket, key, "cannot presign the object's URL"),
        }
    }

    fn route_eventbridge(&self, event: &Map<String, Value>) -> Routed {
        let value = Value::Object(event.clone());
        let jobs: Vec<Envelope> = (self.eventbridge.iter())
            .filter(|(_, pattern, _)| pattern::matches(pattern, &value))
            .map(|(job, _, fixed)| {
                let mut payload = event.clone();
                payload.remove("version");
                envelope(job, fixed.clone().unwrap_or(Value::Object(payload)))
            })
            .collect();
        if jobs.is_empty() {
            let text = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or("?");
            return Routed::Unrouted(format!(
                "no trigger matches the EventBridge event (source {}, detail-type {})",
                text("source"),
                text("detail-type")
            ));
        }
        Routed::Jobs(jobs)
    }

    /// The job name an event runs in place, when it comes to exactly one job (for the
    /// handler's concurrency gate and the trace span).
    pub fn single_job(&self, body: &[u8]) -> Option<String> {
        let event: Value = serde_json::from_slice(body).ok()?;
        match self.route(&event)? {
            Routed::Jobs(jobs) if jobs.len() == 1 => jobs.into_iter().next().map(|j| j.job),
            Routed::Unwrapped(inner) => crate::job::Envelope::parse(inner.as_bytes(), usize::MAX)
                .ok()
                .map(|e| e.job)
                .or_else(|| self.single_job(inner.as_bytes())),
            _ => None,
        }
    }
}

fn envelope(job: &str, payload: Value) -> Envelope {
    Envelope {
        id: None,
        job: job.to_string(),
        payload,
        attempt: None,
        max_attempts: None,
        enqueued_at: None,
        not_before: None,
    }
}

/// The payload of one S3 notification record.
fn s3_payload(record: &Value) -> Value {
    let s3 = &record["s3"];
    let object = &s3["object"];
    let key = object["key"].as_str().map(decode_key).unwrap_or_default();
    let mut payload = json!({
        "bucket": s3["bucket"]["name"],
        "key": key,
        "size": object["size"],
        "etag": object["eTag"],
        "event": record["eventName"],
        "time": record["eventTime"],
        "region": record["awsRegion"],
    });
    for (from, to) in [("versionId", "versionId"), ("sequencer", "sequencer")] {
        if let Some(value) = object.get(from) {
            payload[to] = value.clone();
        }
    }
    payload
}

/// S3 notifications URL-encode keys, form style: `+` is a space.
fn decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(triggers: &[(&str, &str)]) -> Routes {
        let mut routes = Routes::default();
        for (job, toml_text) in triggers {
            let trigger: Trigger = toml::from_str(toml_text).expect("a trigger");
            trigger.validate().expect("valid");
            if let Some(s3) = trigger.s3.clone() {
                routes.s3.push((job.to_string(), s3, None));
            }
            if let Some(p) = trigger.eventbridge_pattern() {
                routes.eventbridge.push((job.to_string(), p, None));
            }
        }
        routes
    }

    #[test]
    fn s3_records_become_one_job_each_with_the_key_decoded() {
        let routes = routes(&[(
            "thumbnail",
            r#"s3 = { bucket = "uploads", prefix = "incoming/", events = ["s3:ObjectCreated:*"] }"#,
        )]);
        let record = |key: &str, name: &str| {
            json!({"eventSource": "aws:s3", "eventName": name, "eventTime": "t", "awsRegion": "r",
                   "s3": {"bucket": {"name": "uploads"}, "object": {"key": key, "size": 5, "eTag": "e"}}})
        };
        let event = json!({"Records": [record("incoming/a+b%2Bc.png", "ObjectCreated:Put"),
                                        record("other/x.png", "ObjectCreated:Put"),
                                        record("incoming/y.png", "ObjectRemoved:Delete")]});
        let Some(Routed::Jobs(jobs)) = routes.route(&event) else {
            panic!("routed")
        };
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].job, "thumbnail");
        assert_eq!(jobs[0].payload["key"], "incoming/a b+c.png");
        assert_eq!(jobs[0].payload["size"], 5);
        let outside = json!({"Records": [record("other/x.png", "ObjectCreated:Put")]});
        assert!(
            matches!(routes.route(&outside), Some(Routed::Unrouted(m)) if m.contains("other/x.png"))
        );
    }

    #[test]
    fn eventbridge_events_go_to_every_matching_trigger() {
        let routes = routes(&[
            (
                "email",
                r#"eventbridge = { source = ["orders"], detail-type = ["OrderCreated", "OrderShipped"] }"#,
            ),
            (
                "analytics",
                r#"eventbridge = { source = [{ prefix = "" }] }"#,
            ),
            ("nightly", r#"scheduled-rule = "nightly-report""#),
        ]);
        let event = |source: &str, kind: &str| {
            json!({"version": "0", "id": "1", "source": source, "detail-type": kind,
                   "time": "t", "resources": [], "detail": {"order": 7}})
        };
        let names = |event: Value| match routes.route(&event) {
            Some(Routed::Jobs(jobs)) => jobs.into_iter().map(|j| j.job).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            names(event("orders", "OrderCreated")),
            ["email", "analytics"]
        );
        assert_eq!(names(event("billing", "Paid")), ["analytics"]);
        let mut scheduled = event("aws.events", "Scheduled Event");
        scheduled["resources"] = json!(["arn:aws:events:us-east-1:1:rule/nightly-report"]);
        assert_eq!(names(scheduled), ["analytics", "nightly"]);
        let Some(Routed::Jobs(jobs)) = routes.route(&event("orders", "OrderShipped")) else {
            panic!()
        };
        assert_eq!(jobs[0].payload["detail"]["order"], 7);
        assert_eq!(jobs[0].payload["detail-type"], "OrderShipped");
        assert!(jobs[0].payload.get("version").is_none());
    }

    #[test]
    fn test_events_sns_and_unknown_shapes() {
        let routes = routes(&[]);
        let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"});
        assert!(matches!(
            routes.route(&test_event),
            Some(Routed::Acknowledged(_))
        ));
        let sns = json!({"Type": "Notification", "TopicArn": "arn", "Message": "{\"job\":\"a\"}"});
        assert_eq!(
            routes.route(&sns),
            Some(Routed::Unwrapped("{\"job\":\"a\"}".into()))
        );
        let eb = json!({"source": "x", "detail-type": "y", "detail": {}});
        assert!(matches!(routes.route(&eb), Some(Routed::Unrouted(_))));
        assert_eq!(routes.route(&json!({"hello": 1})), None);
        assert_eq!(routes.route(&json!([1])), None);
    }

    #[test]
    fn a_trigger_names_one_kind() {
        for bad in [
            "",
            r#"s3 = { bucket = "b" }
scheduled-rule = "r""#,
            r#"s3 = { bucket = "b", events = ["ObjectCreated:*"] }"#,
            r#"eventbridge = { source = "orders" }"#,
        ] {
            let trigger: Trigger = toml::from_str(bad).expect("parses");
            assert!(trigger.validate().is_err(), "{bad}");
        }
    }
}
