//! `jobhost template`: a SAM template or a Stacktape config for a handlers folder, with the
//! AWS resources its manifests declare, so the manifests stay the one place a schedule or
//! a route is written:
//!
//! - the host (layer, function, queue, dead-letter queue) as in `examples/deploy/`;
//! - a CloudWatch alarm on the dead-letter queue, to an SNS topic (`--alert-email`
//!   subscribes an address);
//! - each `[[schedule]]`: an EventBridge Scheduler schedule invoking the function with the
//!   job's envelope (refused when EventBridge cannot express the cron expression);
//! - each S3 trigger: the bucket, notifying the queue of its events under the prefix;
//! - the EventBridge triggers: one rule, the `$or` of their patterns, targeting the queue
//!   (an event matching two triggers is one message; jobhost routes it to both);
//! - `--api`: an HTTP API (API Gateway, payload v2) with `POST /jobs` and
//!   `POST /hooks/{name}` on the same function, which checks and sends to the queue.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use jobhost::plugin::Manifest;
use jobhost::trigger::S3Trigger;
use serde_json::{Value, json};

use crate::cli::{TemplateArgs, TemplateFormat};

/// What a handlers folder asks of AWS.
#[derive(Debug, Default)]
struct Plan {
    /// `(job, EventBridge cron expression, envelope)` of each `[[schedule]]`.
    schedules: Vec<(String, String, Value)>,
    /// Each S3 trigger.
    buckets: Vec<S3Trigger>,
    /// `(job, pattern)` of each EventBridge trigger.
    rules: Vec<(String, Value)>,
    /// Scheduled rules matched by name (they exist elsewhere).
    scheduled_rules: Vec<String>,
}

pub fn run(args: TemplateArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args.plugins)?;
    let text = match args.format {
        TemplateFormat::Sam => sam(&plan, &args),
        TemplateFormat::Stacktape => stacktape(&plan, &args),
    };
    match &args.out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The handlers of a folder by file stem: their manifests, and their job names when the
/// component loads (else the stem).
fn handlers(dir: &Path) -> anyhow::Result<Vec<(String, Vec<String>, Manifest)>> {
    let mut stems: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm" || e == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    stems.sort();
    stems.dedup();
    let loaded = if stems
        .iter()
        .any(|s| dir.join(format!("{s}.wasm")).is_file())
    {
        Some(jobhost::config::HostConfig::new(dir).start()?)
    } else {
        None
    };
    let mut out = Vec::new();
    for stem in stems {
        let manifest = Manifest::load_or_default(&dir.join(format!("{stem}.toml")))?;
        let names = loaded
            .as_ref()
            .and_then(|d| {
                d.plugins()
                    .plugins()
                    .iter()
                    .find(|p| p.path.file_stem().is_some_and(|s| *s == *stem))
                    .map(|p| p.names.clone())
            })
            .unwrap_or_else(|| vec![stem.clone()]);
        out.push((stem, names, manifest));
    }
    Ok(out)
}

fn plan(dir: &Path) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for (stem, names, manifest) in handlers(dir)? {
        let first = names.first().cloned().unwrap_or(stem.clone());
        for schedule in &manifest.schedule {
            let job = schedule.job.clone().unwrap_or(first.clone());
            let expression = eventbridge_cron(&schedule.cron)
                .with_context(|| format!("{stem}.toml: [[schedule]] {:?}", schedule.cron))?;
            let envelope = json!({"job": job, "payload": schedule.payload});
            plan.schedules.push((job, expression, envelope));
        }
        for trigger in &manifest.trigger {
            let job = trigger.job.clone().unwrap_or(first.clone());
            if let Some(s3) = &trigger.s3 {
                plan.buckets.push(s3.clone());
            }
            if let Some(pattern) = &trigger.eventbridge {
                plan.rules.push((job, Value::Object(pattern.clone())));
            }
            if let Some(rule) = &trigger.scheduled_rule {
                plan.scheduled_rules.push(rule.clone());
            }
        }
    }
    Ok(plan)
}

/// A cron expression of a `[[schedule]]` as EventBridge writes it:
/// `cron(MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK YEAR)`, with `?` in one of the day fields
/// and days of the week numbered from 1 (Sunday). EventBridge runs at most once a minute:
/// a seconds field other than `0` is refused, as is a schedule restricting both days.
pub fn eventbridge_cron(cron: &str) -> anyhow::Result<String> {
    let expanded = match cron.trim() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other => other,
    };
    let mut fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() == 6 {
        anyhow::ensure!(
            fields[0] == "0",
            "EventBridge runs a schedule at most once a minute, on the minute: this one has a \
             seconds field ({:?}); run it with `jobhost run` instead, or use a five-field cron",
            fields[0]
        );
        fields.remove(0);
    }
    anyhow::ensure!(
        fields.len() == 5,
        "expected five cron fields (minute hour day-of-month month day-of-week)"
    );
    let (minute, hour, mut dom, month, dow) =
        (fields[0], fields[1], fields[2], fields[3], fields[4]);
    let dow = if dow == "*" {
        "?".to_string()
    } else {
        anyhow::ensure!(
            dom == "*",
            "EventBridge cannot restrict both the day of the month ({dom}) and the day of the \
             week ({dow})"
        );
        dom = "?";
        day_of_week(dow)?
    };
    Ok(format!("cron({minute} {hour} {dom} {month} {dow} *)"))
}

/// Days of the week from cron's 0–7 (0 and 7 are Sunday) to EventBridge's 1–7 (1 is
/// Sunday); names pass through.
fn day_of_week(field: &str) -> anyhow::Result<String> {
    let convert = |token: &str| -> anyhow::Result<String> {
        match token.parse::<u32>() {
            Ok(n) if n <= 7 => Ok((n % 7 + 1).to_string()),
            Ok(n) => anyhow::bail!("day of week {n} is out of range"),
            Err(_) => Ok(token.to_ascii_uppercase()),
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let range = match range.split_once('-') {
            Some((a, b)) => format!("{}-{}", convert(a)?, convert(b)?),
            None if range == "*" => "*".to_string(),
            None => convert(range)?,
        };
        out.push(match step {
            Some(step) => format!("{range}/{step}"),
            None => range,
        });
    }
    Ok(out.join(","))
}

/// A CloudFormation logical id from a name: letters and digits, capitalised words.
fn logical_id(prefix: &str, name: &str, index: usize) -> String {
    let mut id = prefix.to_string();
    for word in name.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    format!("{id}{index}")
}

/// JSON is YAML: complex values are written inline as JSON.
fn inline(value: &Value) -> String {
    value.to_string()
}

const HEADER: &str = "# Written by `jobhost template` from the handlers' manifests: edit the manifests and\n# write it again rather than editing it.\n";

fn sam(plan: &Plan, args: &TemplateArgs) -> String {
    let arch = args.arch_name();
    let mut t = String::new();
    let _ = write!(
        t,
        r#"{HEADER}AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Description: >
  jobhost on AWS Lambda ({plugins}). Build first (from the repository root):
    cargo build --profile bootstrap -p jobhost
    target/bootstrap/jobhost package --plugins {plugins} --out dist --arch {arch}
  then: sam deploy --guided --template-file THIS_FILE

Parameters:
  AlertEmail:
    Type: String
    Default: "{email}"
    Description: Who is told when a job lands in the dead-letter queue (empty for nobody).

Conditions:
  HasAlertEmail: !Not [!Equals [!Ref AlertEmail, ""]]

Resources:
  JobhostLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      LayerName: jobhost
      ContentUri: ../../../dist/jobhost-layer-{arch}.zip
      CompatibleRuntimes: [provided.al2023]
      CompatibleArchitectures: [{arch}]

  # Jobs that fail for good land here, with the reason as message attributes.
  JobsDeadLetterQueue:
    Type: AWS::SQS::Queue
    Properties:
      MessageRetentionPeriod: 1209600

  JobsQueue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 180 # 6x the function timeout
      MessageRetentionPeriod: 1209600
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt JobsDeadLetterQueue.Arn
        maxReceiveCount: 20
"#,
        plugins = args.plugins.display(),
        email = args.alert_email.as_deref().unwrap_or(""),
    );
    t.push_str(
        r#"
  # A message in the dead-letter queue raises the alarm (DeadLettersAlarm, to AlertsTopic).
  AlertEmailSubscription:
    Type: AWS::SNS::Subscription
    Condition: HasAlertEmail
    Properties:
      TopicArn: !Ref AlertsTopic
      Protocol: email
      Endpoint: !Ref AlertEmail
"#,
    );
    cloudformation(&mut t, plan, &SAM_REFS);
    let _ = write!(
        t,
        r#"
  JobsFunction:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: provided.al2023
      Handler: bootstrap
      Architectures: [{arch}]
      CodeUri: ../../../dist/handlers-{arch}.zip
      Layers: [!Ref JobhostLayer]
      MemorySize: 512
      Timeout: 30
      Environment:
        Variables:
          JOBHOST_DLQ_URL: !Ref JobsDeadLetterQueue
          JOBHOST_SQS_URL: !Ref JobsQueue # for direct invocations, HTTP requests and fan-out
          JOBHOST_LOG: info
          JOBHOST_LOG_FORMAT: json
      Policies:
        - SQSPollerPolicy:
            QueueName: !GetAtt JobsQueue.QueueName
        - SQSSendMessagePolicy:
            QueueName: !GetAtt JobsQueue.QueueName
        - SQSSendMessagePolicy:
            QueueName: !GetAtt JobsDeadLetterQueue.QueueName
        - Statement:
            - Effect: Allow
              Action: [sqs:GetQueueUrl, sqs:GetQueueAttributes]
              Resource: [!GetAtt JobsQueue.Arn, !GetAtt JobsDeadLetterQueue.Arn]
      Events:
        Jobs:
          Type: SQS
          Properties:
            Queue: !GetAtt JobsQueue.Arn
            BatchSize: 10
            MaximumBatchingWindowInSeconds: 1
            FunctionResponseTypes: [ReportBatchItemFailures]
"#
    );
    if args.api {
        let _ = write!(
            t,
            r#"        # The HTTP API: POST /jobs checks a job against its handler and sends it (202).
        EnqueueJobs:
          Type: HttpApi
          Properties:
            Path: /jobs
            Method: POST
        # A webhook receiver: the body is the payload of the job named in the path.
        Webhooks:
          Type: HttpApi
          Properties:
            Path: /hooks/{{name}}
            Method: POST
"#
        );
    }
    for (index, (job, expression, envelope)) in plan.schedules.iter().enumerate() {
        let _ = write!(
            t,
            r#"        # [[schedule]] of `{job}`: EventBridge Scheduler invokes the function with the envelope.
        {id}:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: {expression}
            ScheduleExpressionTimezone: UTC
            Input: '{input}'
"#,
            id = logical_id("Schedule", job, index),
            input = inline(envelope).replace('\'', "''"),
        );
    }
    for rule in &plan.scheduled_rules {
        let _ = writeln!(
            t,
            "        # (a scheduled-rule trigger matches the events of the rule `{rule}`, defined elsewhere)"
        );
    }
    t.push_str(
        r#"
Outputs:
  QueueUrl:
    Description: 'Send jobs here ({"job": NAME, "payload": {...}}), or with jobhost enqueue --queue URL'
    Value: !Ref JobsQueue
  DeadLetterQueueUrl:
    Value: !Ref JobsDeadLetterQueue
  AlertsTopicArn:
    Value: !Ref AlertsTopic
"#,
    );
    if args.api {
        t.push_str(
            r#"  ApiUrl:
    Description: POST /jobs and POST /hooks/NAME here
    Value: !Sub "https://${ServerlessHttpApi}.execute-api.${AWS::Region}.amazonaws.com"
"#,
        );
    }
    t
}

fn stacktape(plan: &Plan, args: &TemplateArgs) -> String {
    let arch = args.arch_name();
    let mut t = String::new();
    let _ = write!(
        t,
        r#"{HEADER}# jobhost on AWS Lambda with Stacktape ({plugins}). Build first (from the repository root):
#   cargo build --profile bootstrap -p jobhost
#   target/bootstrap/jobhost package --plugins {plugins} --out dist --arch {arch}
# then unzip both zips into dist/function/ and: stacktape deploy --configPath THIS_FILE
serviceName: jobhost

resources:
  jobsDeadLetterQueue:
    type: sqs-queue
    properties:
      messageRetentionPeriodSeconds: 1209600

  jobsQueue:
    type: sqs-queue
    properties:
      visibilityTimeoutSeconds: 180 # 6x the function timeout
      messageRetentionPeriodSeconds: 1209600
      redrivePolicy:
        targetSqsQueueName: jobsDeadLetterQueue
        maxReceiveCount: 20
"#,
        plugins = args.plugins.display(),
    );
    if args.api {
        t.push_str(
            r#"
  jobsApi:
    type: http-api-gateway
"#,
        );
    }
    let _ = write!(
        t,
        r#"
  jobsFunction:
    type: function
    properties:
      packaging:
        type: custom-artifact
        properties:
          packagePath: ../../../dist/function
          handler: bootstrap
      runtime: provided.al2023
      architecture: {arch}
      memory: 512
      timeout: 30
      environment:
        - name: JOBHOST_DLQ_URL
          value: $ResourceParam('jobsDeadLetterQueue', 'url')
        - name: JOBHOST_SQS_URL
          value: $ResourceParam('jobsQueue', 'url')
        - name: JOBHOST_PLUGINS
          value: /var/task/handlers
        - name: JOBHOST_LOG_FORMAT
          value: json
      connectTo:
        - jobsQueue
        - jobsDeadLetterQueue
      events:
        - type: sqs
          properties:
            sqsQueueName: jobsQueue
            batchSize: 10
            maxBatchWindowSeconds: 1
            functionResponseTypes: [ReportBatchItemFailures]
"#
    );
    if args.api {
        for (path, what) in [("/jobs", "enqueue API"), ("/hooks/{name}", "webhooks")] {
            let _ = write!(
                t,
                r#"        - type: http-api-gateway # {what}
          properties:
            httpApiGatewayName: jobsApi
            path: {path}
            method: POST
"#
            );
        }
    }
    for (job, expression, envelope) in &plan.schedules {
        let _ = write!(
            t,
            r#"        - type: schedule # [[schedule]] of `{job}`
          properties:
            scheduleRate: {expression}
            input: {input}
"#,
            input = inline(envelope),
        );
    }
    // What Stacktape has no resource type for: plain CloudFormation.
    t.push_str("\ncloudformationResources:\n");
    if let Some(email) = &args.alert_email {
        let _ = write!(
            t,
            r#"  AlertEmailSubscription:
    Type: AWS::SNS::Subscription
    Properties:
      TopicArn: !Ref AlertsTopic
      Protocol: email
      Endpoint: {email}
"#
        );
    }
    cloudformation(&mut t, plan, &STACKTAPE_REFS);
    t
}

/// How a format refers to the host's queues in plain CloudFormation resources.
struct Refs {
    /// The jobs queue's ARN.
    queue_arn: &'static str,
    /// The jobs queue's URL.
    queue_url: &'static str,
    /// The dead-letter queue's name.
    dead_letter_name: &'static str,
}

const SAM_REFS: Refs = Refs {
    queue_arn: "!GetAtt JobsQueue.Arn",
    queue_url: "!Ref JobsQueue",
    dead_letter_name: "!GetAtt JobsDeadLetterQueue.QueueName",
};

const STACKTAPE_REFS: Refs = Refs {
    queue_arn: "$ResourceParam('jobsQueue', 'arn')",
    queue_url: "$ResourceParam('jobsQueue', 'url')",
    dead_letter_name: "$ResourceParam('jobsDeadLetterQueue', 'name')",
};

/// The resources both formats write as plain CloudFormation: the alarm on the dead-letter
/// queue and its topic, the buckets of S3 triggers and the rules of EventBridge triggers
/// (both sending to the jobs queue, which lets them).
fn cloudformation(t: &mut String, plan: &Plan, refs: &Refs) {
    let Refs {
        queue_arn,
        queue_url,
        dead_letter_name,
    } = refs;
    let _ = write!(
        t,
        r#"
  AlertsTopic:
    Type: AWS::SNS::Topic

  DeadLettersAlarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmDescription: Jobs failed for good (see jobhost.reason on each message)
      Namespace: AWS/SQS
      MetricName: ApproximateNumberOfMessagesVisible
      Dimensions:
        - Name: QueueName
          Value: {dead_letter_name}
      Statistic: Maximum
      Period: 60
      EvaluationPeriods: 1
      Threshold: 1
      ComparisonOperator: GreaterThanOrEqualToThreshold
      TreatMissingData: notBreaching
      AlarmActions: [!Ref AlertsTopic]
"#
    );
    if !plan.buckets.is_empty() || !plan.rules.is_empty() {
        let _ = write!(
            t,
            r#"
  # S3 and EventBridge may send their events to the queue.
  JobsQueuePolicy:
    Type: AWS::SQS::QueuePolicy
    Properties:
      Queues:
        - {queue_url}
      PolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Principal:
              Service: [s3.amazonaws.com, events.amazonaws.com]
            Action: sqs:SendMessage
            Resource: {queue_arn}
            Condition:
              StringEquals:
                aws:SourceAccount: !Ref AWS::AccountId
"#
        );
    }
    // One bucket resource per bucket: with one trigger on it, S3 filters by its prefix and
    // suffix; with several, S3 sends every event of theirs (overlapping filters are refused
    // by S3) and the triggers choose.
    let mut buckets: Vec<(&str, Vec<&S3Trigger>)> = Vec::new();
    for trigger in &plan.buckets {
        match buckets.iter_mut().find(|(name, _)| *name == trigger.bucket) {
            Some((_, triggers)) => triggers.push(trigger),
            None => buckets.push((&trigger.bucket, vec![trigger])),
        }
    }
    for (bucket, triggers) in buckets {
        let rules: Vec<Value> = match triggers.as_slice() {
            [one] => [("prefix", &one.prefix), ("suffix", &one.suffix)]
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| json!({"Name": name, "Value": value}))
                .collect(),
            _ => Vec::new(),
        };
        let mut events: Vec<&String> = triggers.iter().flat_map(|t| &t.events).collect();
        events.sort();
        events.dedup();
        let _ = write!(
            t,
            r#"
  # The bucket of S3 triggers: its events go to the queue.
  {id}:
    Type: AWS::S3::Bucket
    DependsOn: JobsQueuePolicy
    Properties:
      BucketName: {bucket}
      NotificationConfiguration:
        QueueConfigurations:
"#,
            id = logical_id("Bucket", bucket, 0),
        );
        for event in events {
            let _ = writeln!(t, "          - Event: \"{event}\"");
            let _ = writeln!(t, "            Queue: {queue_arn}");
            if !rules.is_empty() {
                let filter = json!({"S3Key": {"Rules": rules}});
                let _ = writeln!(t, "            Filter: {}", inline(&filter));
            }
        }
    }
    // One rule for every EventBridge trigger (`$or` of their patterns), so an event that
    // matches two triggers is one message, which jobhost routes to both.
    let patterns: Vec<&Value> = plan.rules.iter().map(|(_, p)| p).collect();
    let pattern = match patterns.as_slice() {
        [] => return,
        [one] => (*one).clone(),
        many => json!({ "$or": many }),
    };
    let jobs: Vec<&str> = plan.rules.iter().map(|(j, _)| j.as_str()).collect();
    let _ = write!(
        t,
        r#"
  # The EventBridge triggers ({jobs}): matching events go to the queue, once each.
  JobsEventsRule:
    Type: AWS::Events::Rule
    Properties:
      EventBusName: default
      EventPattern: {pattern}
      Targets:
        - Id: jobs-queue
          Arn: {queue_arn}
"#,
        jobs = jobs.join(", "),
        pattern = inline(&pattern),
    );
}

impl TemplateArgs {
    fn arch_name(&self) -> &'static str {
        match self.arch {
            crate::cli::Arch::X86_64 => "x86_64",
            crate::cli::Arch::Arm64 => "arm64",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_become_eventbridge_ones_or_are_refused() -> anyhow::Result<()> {
        for (cron, expected) in [
            ("0 9 * * *", "cron(0 9 * * ? *)"),
            ("*/5 * * * *", "cron(*/5 * * * ? *)"),
            ("0 9 * * 1-5", "cron(0 9 ? * 2-6 *)"),
            ("0 0 * * 0,6", "cron(0 0 ? * 1,7 *)"),
            ("30 2 1 * *", "cron(30 2 1 * ? *)"),
            ("0 0 9 * * MON", "cron(0 9 ? * MON *)"),
            ("@hourly", "cron(0 * * * ? *)"),
        ] {
            assert_eq!(eventbridge_cron(cron)?, expected, "{cron}");
        }
        for (cron, says) in [
            ("*/10 * * * * *", "once a minute"),
            ("0 0 1 * 1", "both"),
            ("1 2 3", "five cron fields"),
        ] {
            let error = eventbridge_cron(cron).expect_err(cron).to_string();
            assert!(error.contains(says), "{cron}: {error}");
        }
        Ok(())
    }
}
