"""The EventBridge rules match the events they are for, and nothing else.

Every rule of the SAM template (in the configuration with every trigger on) is run against every
sample event: the AWS documentation samples in tests/fixtures/aws-docs/ and the CloudTrail,
CloudWatch alarm, EBS and schedule samples in infra/test/events/. The drift test holds the CDK
rules equal to these. The matcher is moto's implementation of EventBridge event patterns; its
own tests below pin the parts of the pattern language the rules use.
"""

import copy
import json
from pathlib import Path

import pytest
from moto.events.models import EventPattern

import templates

ROOT = templates.INFRA.parent
DOCS_SAMPLES = ROOT / "tests" / "fixtures" / "aws-docs"
OWN_SAMPLES = templates.INFRA / "test" / "events"
STACK_NAME = "eks-remedy"

# Which rules each sample must trigger; every other rule must ignore it.
EXPECTED = {
    "aws-health-ec2-scheduled-change.json": {"HealthScheduledChangeRule"},
    "ec2-instance-rebalance-recommendation.json": {"RebalanceRecommendationRule"},
    "ec2-instance-state-change-notification.json": set(),  # "pending": an instance starting
    "ec2-instance-terminate-lifecycle-action.json": {"TerminateLifecycleActionRule"},
    "ec2-spot-instance-interruption-warning.json": {"SpotInterruptionRule"},
    "ec2-instance-state-change-stopping.json": {"InstanceStateChangeRule"},
    "cloudtrail-attachvolume-volume-in-use.json": {"VolumeApiErrorRule"},
    "cloudtrail-createvolume-unauthorized.json": {"VolumeApiErrorRule"},
    "cloudtrail-attachvolume-succeeded.json": set(),
    "cloudtrail-detachvolume-incorrect-state.json": set(),
    "ebs-volume-notification-attach-failed.json": {"VolumeNotificationRule"},
    "ebs-volume-notification-create-failed.json": {"VolumeNotificationRule"},
    "ebs-volume-notification-create-available.json": set(),
    "cloudwatch-alarm-blue-pending-alarm.json": {"PendingPodsAlarmRule"},
    "cloudwatch-alarm-blue-pending-ok.json": set(),
    "cloudwatch-alarm-created-pending-pods-alarm.json": {"PendingPodsCreatedAlarmRule"},
    "cloudwatch-alarm-ebs-stuck-alarm.json": {"VolumeAttachAlarmRule"},
    "cloudwatch-alarm-unrelated-alarm.json": set(),
    "scheduled-event.json": set(),
}


def load_sample(path: Path) -> dict:
    # The documentation leaves the time as a placeholder.
    text = path.read_text().replace("yyyy-mm-ddThh:mm:ssZ", "2026-01-27T01:43:21Z")
    return json.loads(text)


def samples() -> dict[str, dict]:
    found = {}
    for folder in (DOCS_SAMPLES, OWN_SAMPLES):
        for path in sorted(folder.glob("*.json")):
            found[path.name] = load_sample(path)
    return found


def rule_patterns() -> dict[str, dict]:
    """Event pattern of every rule of the SAM template with every trigger configured."""
    model = templates.Model(templates.sam_expanded(templates.CONFIGS["full"]), templates.sam_parameters(templates.CONFIGS["full"]))
    patterns = {}
    for name, rule in model.rules().items():
        if rule["EventPattern"] is not None:
            pattern = json.dumps(rule["EventPattern"]).replace("${AWS::StackName}", STACK_NAME)
            patterns[name] = json.loads(pattern)
    return patterns


PATTERNS = rule_patterns()
SAMPLES = samples()


def matches(pattern: dict, event: dict) -> bool:
    return EventPattern.load(json.dumps(pattern)).matches_event(event)


def test_every_sample_has_an_expectation_and_every_rule_a_sample():
    assert set(SAMPLES) == set(EXPECTED), "add the new sample to EXPECTED (or remove the stale entry)"
    triggered = set().union(*EXPECTED.values())
    assert triggered == set(PATTERNS), f"rules without a matching sample: {sorted(set(PATTERNS) - triggered)}"


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_triggers_exactly_its_rules(sample):
    event = SAMPLES[sample]
    triggered = {name for name, pattern in PATTERNS.items() if matches(pattern, event)}
    assert triggered == EXPECTED[sample]


@pytest.mark.parametrize("state", ["stopping", "stopped", "shutting-down", "terminated"])
def test_instance_going_away_triggers_node_interruption(state):
    event = copy.deepcopy(SAMPLES["ec2-instance-state-change-notification.json"])
    event["detail"]["state"] = state
    assert matches(PATTERNS["InstanceStateChangeRule"], event)


@pytest.mark.parametrize("state", ["pending", "running"])
def test_instance_starting_is_ignored(state):
    event = copy.deepcopy(SAMPLES["ec2-instance-state-change-notification.json"])
    event["detail"]["state"] = state
    assert not any(matches(pattern, event) for pattern in PATTERNS.values())


@pytest.mark.parametrize(
    "field,value",
    [("service", "RDS"), ("eventTypeCategory", "issue"), ("eventTypeCategory", "accountNotification")],
)
def test_health_events_other_than_ec2_scheduled_changes_are_ignored(field, value):
    event = copy.deepcopy(SAMPLES["aws-health-ec2-scheduled-change.json"])
    event["detail"][field] = value
    assert not any(matches(pattern, event) for pattern in PATTERNS.values())


def test_spot_warning_from_another_source_is_ignored():
    event = copy.deepcopy(SAMPLES["ec2-spot-instance-interruption-warning.json"])
    event["source"] = "custom.ec2"
    assert not any(matches(pattern, event) for pattern in PATTERNS.values())


# The matcher itself: the parts of the pattern language the rules rely on.

def test_matcher_values_in_a_list_are_alternatives():
    assert matches({"detail": {"state": ["a", "b"]}}, {"detail": {"state": "b"}})
    assert not matches({"detail": {"state": ["a", "b"]}}, {"detail": {"state": "c"}})


def test_matcher_missing_field_does_not_match_a_value():
    assert not matches({"detail": {"state": ["a"]}}, {"detail": {}})


def test_matcher_exists():
    assert matches({"detail": {"errorCode": [{"exists": True}]}}, {"detail": {"errorCode": "X"}})
    assert not matches({"detail": {"errorCode": [{"exists": True}]}}, {"detail": {}})
    assert matches({"detail": {"errorCode": [{"exists": False}]}}, {"detail": {}})


def test_matcher_prefix():
    assert matches({"name": [{"prefix": "eks-remedy-"}]}, {"name": "eks-remedy-x"})
    assert not matches({"name": [{"prefix": "eks-remedy-"}]}, {"name": "other-eks-remedy-x"})


def test_matcher_array_in_event_matches_if_any_element_matches():
    assert matches({"resources": ["r2"]}, {"resources": ["r1", "r2"]})


def test_matcher_nested_objects_and_anything_but_and_numeric():
    assert matches({"detail": {"state": {"value": ["ALARM"]}}}, {"detail": {"state": {"value": "ALARM"}}})
    assert not matches({"detail": {"state": {"value": ["ALARM"]}}}, {"detail": {"state": {"value": "OK"}}})
    assert matches({"x": [{"anything-but": ["a"]}]}, {"x": "b"})
    assert not matches({"x": [{"anything-but": ["a"]}]}, {"x": "a"})
    assert matches({"n": [{"numeric": [">", 0, "<=", 5]}]}, {"n": 5})
    assert not matches({"n": [{"numeric": [">", 0, "<=", 5]}]}, {"n": 0})


def test_matcher_is_case_sensitive():
    assert not matches({"detail": {"result": ["failed"]}}, {"detail": {"result": "Failed"}})
