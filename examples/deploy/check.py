"""Checks the SQS rules in the deployment templates: visibility timeout >= 6x the function
timeout, partial batch responses on, a dead-letter queue in the redrive policy, the
provided.al2023 runtime. Run by the tests with the tools venv's python (PyYAML)."""

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
