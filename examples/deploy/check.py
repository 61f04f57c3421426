"""Checks the SQS rules in the deployment templates: visibility timeout >= 6x the function
timeout, partial batch responses on, a dead-letter queue in the redrive policy, the
provided.al2023 runtime. For what `jobhost template` adds: the alarm watches the
dead-letter queue; buckets and rules send to the jobs queue, which lets them; the function
knows the queue it sends API requests, schedules and fanned-out jobs to. Run by the tests
with the tools venv's python (PyYAML)."""

import sys

import yaml


class Loader(yaml.SafeLoader):
    pass


# CloudFormation's short tags (!Ref, !GetAtt, !Sub) as plain values.
Loader.add_multi_constructor("!", lambda loader, suffix, node: f"{suffix} {getattr(node, 'value', '')}")


def check_sam(path):
    resources = yaml.load(open(path), Loader=Loader)["Resources"]
    queue = resources["JobsQueue"]["Properties"]
    function = resources["JobsFunction"]["Properties"]
    assert int(queue["VisibilityTimeout"]) >= 6 * int(function["Timeout"]), "visibility < 6x timeout"
    assert "deadLetterTargetArn" in queue["RedrivePolicy"]
    assert function["Runtime"] == "provided.al2023"
    event = function["Events"]["Jobs"]["Properties"]
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "JOBHOST_DLQ_URL" in function["Environment"]["Variables"]
    if "DeadLettersAlarm" in resources:
        alarm = resources["DeadLettersAlarm"]["Properties"]
        assert "JobsDeadLetterQueue" in alarm["Dimensions"][0]["Value"], "the alarm watches another queue"
        assert alarm["AlarmActions"], "the alarm tells nobody"
    senders = [r for r in resources.values() if r["Type"] in ("AWS::S3::Bucket", "AWS::Events::Rule")]
    for sender in senders:
        props = sender["Properties"]
        if sender["Type"] == "AWS::S3::Bucket":
            targets = [q["Queue"] for q in props["NotificationConfiguration"]["QueueConfigurations"]]
        else:
            assert props["EventPattern"], "a rule without a pattern"
            targets = [t["Arn"] for t in props["Targets"]]
        assert targets and all("JobsQueue" in t for t in targets), f"sends elsewhere: {targets}"
    if senders:
        policy = resources["JobsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
        assert policy["Action"] == "sqs:SendMessage"
    direct = [e for e in function["Events"].values() if e["Type"] in ("HttpApi", "ScheduleV2")]
    if direct:
        assert "JOBHOST_SQS_URL" in function["Environment"]["Variables"], "no queue for direct invocations"


def check_stacktape(path):
    resources = yaml.load(open(path), Loader=Loader)["resources"]
    queue = resources["jobsQueue"]["properties"]
    function = resources["jobsFunction"]["properties"]
    assert queue["visibilityTimeoutSeconds"] >= 6 * function["timeout"], "visibility < 6x timeout"
    assert queue["redrivePolicy"]["targetSqsQueueName"] in resources
    assert function["runtime"] == "provided.al2023"
    sqs = [e for e in function["events"] if e["type"] == "sqs"][0]["properties"]
    assert sqs["functionResponseTypes"] == ["ReportBatchItemFailures"]


check_sam(sys.argv[1])
check_stacktape(sys.argv[2])
print("ok")
