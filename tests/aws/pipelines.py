"""Wires AWS event sources to an SQS queue on moto, as the recipes do on AWS, and fires
one round of events. Run by tests/all/triggers.rs with the tools venv's python (boto3
comes with moto).

usage: pipelines.py ENDPOINT QUEUE_ARN PREFIX

- S3: bucket PREFIX-uploads notifies the queue of every ObjectCreated event (no filter:
  the handlers' triggers choose); objects incoming/a b+c.txt and other/x.txt uploaded.
- EventBridge: rule PREFIX-orders (source orders or billing) targets the queue; an
  OrderCreated event of source orders and a Paid event of source billing are put.
- SNS: topics PREFIX-wrapped and PREFIX-raw subscribe the queue, the second with raw
  message delivery; one jobhost envelope published to each.
"""

import json
import sys

import boto3

endpoint, queue_arn, prefix = sys.argv[1:4]
kw = dict(endpoint_url=endpoint, region_name="us-east-1")
s3 = boto3.client("s3", **kw)
events = boto3.client("events", **kw)
sns = boto3.client("sns", **kw)

bucket = f"{prefix}-uploads"
s3.create_bucket(Bucket=bucket)
s3.put_bucket_notification_configuration(
    Bucket=bucket,
    NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
    },
)
s3.put_object(Bucket=bucket, Key="incoming/a b+c.txt", Body=b"hello")
s3.put_object(Bucket=bucket, Key="other/x.txt", Body=b"outside the prefix")

rule = f"{prefix}-orders"
events.put_rule(Name=rule, EventPattern=json.dumps({"source": ["orders", "billing"]}))
events.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": queue_arn}])
events.put_events(
    Entries=[
        {"Source": "orders", "DetailType": "OrderCreated", "Detail": json.dumps({"order": 7})},
        {"Source": "billing", "DetailType": "Paid", "Detail": json.dumps({"invoice": 3})},
    ]
)

for kind, raw in [("wrapped", "false"), ("raw", "true")]:
    topic = sns.create_topic(Name=f"{prefix}-{kind}")["TopicArn"]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": raw},
    )
    sns.publish(TopicArn=topic, Message=json.dumps({"job": "on-event", "payload": {"via": kind}}))
print(json.dumps({"bucket": bucket, "rule": rule}))
