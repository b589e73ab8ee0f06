"""SAM and CDK describe the same deployment: a change to one without the other fails here.

Each configuration of configs.json is deployed on paper twice, once as the SAM template with
those parameter values and once as `cdk synth` with the same values as context, and the two
CloudFormation templates are compared part by part.
"""

import json
import os
from pathlib import Path

import pytest

import templates

CONFIG_NAMES = sorted(templates.CONFIGS)


@pytest.fixture(scope="module", params=CONFIG_NAMES)
def pair(request):
    cdk_out = os.environ.get("EKS_REMEDY_CDK_OUT")
    if not cdk_out:
        pytest.fail("EKS_REMEDY_CDK_OUT is not set: run infra/test.sh, which synthesizes the CDK app first")
    path = Path(cdk_out) / request.param / "EksRemedy.template.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: `cdk synth` failed for configuration {request.param}")
    return request.param, templates.sam_model(request.param), templates.cdk_model(Path(cdk_out), request.param)


def differences(sam, cdk):
    """Readable differences of two dicts (of sets or values), by key."""
    lines = []
    for key in sorted(set(sam) | set(cdk)):
        left, right = sam.get(key), cdk.get(key)
        if left == right:
            continue
        if isinstance(left, set) and isinstance(right, set):
            lines.append(f"{key}:\n  only in SAM: {sorted(left - right)}\n  only in CDK: {sorted(right - left)}")
        else:
            lines.append(
                f"{key}:\n  SAM: {json.dumps(left, default=str, sort_keys=True)}"
                f"\n  CDK: {json.dumps(right, default=str, sort_keys=True)}"
            )
    return "\n".join(lines)


def assert_same(sam, cdk, what):
    assert sam == cdk, f"SAM and CDK differ in {what}:\n{differences(sam, cdk)}"


def test_same_functions_runtime_and_environment(pair):
    _, sam, cdk = pair
    assert_same(sam.functions(), cdk.functions(), "the functions")
    assert sorted(sam.functions()) == ["NodeInterruptionFunction", "PendingPodsFunction", "VolumeAttachFunction"]


def test_same_event_patterns_schedules_retries_and_dead_letter_queues(pair):
    _, sam, cdk = pair
    assert_same(sam.rules(), cdk.rules(), "the EventBridge rules")


def test_same_iam_grants_per_function(pair):
    _, sam, cdk = pair
    assert_same(sam.function_grants(), cdk.function_grants(), "the IAM grants of the function roles")


def test_same_roles_and_trust(pair):
    _, sam, cdk = pair
    assert_same(sam.role_grants(), cdk.role_grants(), "the IAM grants of all roles")
    assert_same(sam.trust_policies(), cdk.trust_policies(), "the roles' trust policies")


def test_same_async_invoke_settings_and_invoke_permissions(pair):
    _, sam, cdk = pair
    assert_same(sam.invoke_configs(), cdk.invoke_configs(), "the asynchronous invoke settings")
    assert sam.invoke_permissions() == cdk.invoke_permissions(), (
        "SAM and CDK let different rules invoke the functions:\n"
        f"  only in SAM: {sorted(sam.invoke_permissions() - cdk.invoke_permissions())}\n"
        f"  only in CDK: {sorted(cdk.invoke_permissions() - sam.invoke_permissions())}"
    )


def test_same_access_entries(pair):
    _, sam, cdk = pair
    assert sam.access_entries() == cdk.access_entries(), (
        f"SAM and CDK differ in the EKS access entries:\n"
        f"  only in SAM: {sorted(sam.access_entries() - cdk.access_entries())}\n"
        f"  only in CDK: {sorted(cdk.access_entries() - sam.access_entries())}"
    )


def test_same_alarms_queues_topic_and_slack_channel(pair):
    _, sam, cdk = pair
    assert_same(sam.alarms(), cdk.alarms(), "the CloudWatch alarms")
    assert_same(sam.queues(), cdk.queues(), "the dead-letter queues")
    assert_same(sam.queue_senders(), cdk.queue_senders(), "who may send to the dead-letter queues")
    for resource_type in ("AWS::SNS::Topic", "AWS::Chatbot::SlackChannelConfiguration", "AWS::Logs::LogGroup"):
        assert_same(sam.single(resource_type), cdk.single(resource_type), resource_type)
    assert sam.outputs() == cdk.outputs()


def test_same_resource_names_and_deletion_policies(pair):
    _, sam, cdk = pair
    assert_same(sam.deletion_policies(), cdk.deletion_policies(), "the resources' names or deletion policies")


def test_same_resources_apart_from_how_policies_are_attached(pair):
    _, sam, cdk = pair
    # SAM attaches policies with AWS::IAM::RolePolicy (one per cluster), CDK with one
    # AWS::IAM::Policy per role; the grants themselves are compared above.
    carriers = {"AWS::IAM::Policy", "AWS::IAM::RolePolicy"}
    sam_types = {t: n for t, n in sam.resource_types().items() if t not in carriers}
    cdk_types = {t: n for t, n in cdk.resource_types().items() if t not in carriers}
    assert_same(sam_types, cdk_types, "the number of resources of each type")
