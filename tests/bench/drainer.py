"""A node drainer written the way a Python Lambda function is: clients made at import, then
the Runtime API loop. The benchmark compares its cold start with node-interruption's.

It does the first call node-interruption does for an interruption event: it asks EC2 about the
instance (DescribeInstances) and, when EC2 does not know it, answers that the event is ignored.
For a known instance it would go on to DescribeCluster, sign a token and drain with the official
`kubernetes` client, which is imported and configured here, as such a function does at start.

Only AWS_LAMBDA_RUNTIME_API (a 127.0.0.1 address) and the AWS_* variables of the benchmark are
read; the endpoint is moto's on 127.0.0.1.
"""

import json
import os
import urllib.request

import boto3
from botocore.exceptions import ClientError
from kubernetes import client as k8s

EC2 = boto3.client("ec2")
KUBERNETES = k8s.Configuration()
KUBERNETES.retries = 3

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation"


def handle(event):
    detail = event.get("detail") or {}
    instance = detail.get("instance-id") or detail.get("EC2InstanceId")
    if not instance:
        return {"rejected": ["no instance in the event"]}
    try:
        found = EC2.describe_instances(InstanceIds=[instance])["Reservations"]
    except ClientError as err:
        if err.response["Error"]["Code"].startswith("InvalidInstanceID"):
            found = []
        else:
            raise
    if not found:
        return {"reports": [{"instance_id": instance, "outcome": "ignored"}]}
    return {"reports": [{"instance_id": instance, "outcome": "not-benchmarked"}]}


def main():
    while True:
        with urllib.request.urlopen(API + "/next") as answer:
            request_id = answer.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(answer.read())
        body = json.dumps(handle(event)).encode()
        respond = urllib.request.Request(API + "/" + request_id + "/response", data=body, method="POST")
        urllib.request.urlopen(respond).read()


if __name__ == "__main__":
    main()
