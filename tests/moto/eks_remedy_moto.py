"""moto server with the operations eks-remedy calls that moto 5.2.5 lacks.

Started by the test and demo scripts instead of `moto_server`. It registers, before the
server starts:

* Auto Scaling `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat`. An instance of
  a group that has a terminate lifecycle hook has one active lifecycle action per hook, as if
  it were in `Terminating:Wait`; completing it moves the instance to `Terminating:Proceed`
  (CONTINUE) or back to `InService` (ABANDON), and a second completion answers AWS's
  `No active Lifecycle Action found` error.
* EKS `DescribeCluster` pointing at a local Kubernetes test server: a cluster created with the
  tag `eks-remedy.test/endpoint` (an http://127.0.0.1 URL) reports that endpoint and no
  certificate authority; moto's own endpoint and CA are fake and must never be dialled.

Pinned to moto 5.2.5: the response classes and models patched here are that version's.
"""

import sys

import moto
from moto.autoscaling import models as asg_models
from moto.autoscaling.responses import AutoScalingResponse
from moto.autoscaling.exceptions import ValidationError
from moto.core.responses import ActionResult, EmptyResult
from moto.eks.responses import EKSResponse

PINNED = "5.2.5"
TEST_ENDPOINT_TAG = "eks-remedy.test/endpoint"

# (account, region, group, hook, instance) -> "active" | "CONTINUE" | "ABANDON"
_completed = {}
# (account, region, group, hook, instance) -> number of heartbeats recorded
_heartbeats = {}


def _find_action(response, group_name, hook_name, instance_id, token):
    backend = response.autoscaling_backend
    group = backend.autoscaling_groups.get(group_name)
    if group is None:
        raise ValidationError(f"Group {group_name} not found")
    hook = backend.lifecycle_hooks.get(f"{group_name}_{hook_name}")
    if hook is None:
        raise ValidationError(
            f"No Lifecycle Hook found with name {hook_name} for group {group_name}"
        )
    if not instance_id and token:
        # Tokens issued by this emulator are "<instance id>/<hook name>".
        instance_id = token.split("/")[0]
    states = [s for s in group.instance_states if s.instance.id == instance_id]
    key = (response.current_account, response.region, group_name, hook_name, instance_id)
    if not states or key in _completed:
        raise ValidationError(
            f"No active Lifecycle Action found with instance ID {instance_id}"
        )
    return key, states[0]


def complete_lifecycle_action(self):
    key, state = _find_action(
        self,
        self._get_param("AutoScalingGroupName"),
        self._get_param("LifecycleHookName"),
        self._get_param("InstanceId"),
        self._get_param("LifecycleActionToken"),
    )
    result = self._get_param("LifecycleActionResult")
    if result not in ("CONTINUE", "ABANDON"):
        raise ValidationError("LifecycleActionResult must be CONTINUE or ABANDON")
    _completed[key] = result
    state.lifecycle_state = "Terminating:Proceed" if result == "CONTINUE" else "InService"
    return EmptyResult()


def record_lifecycle_action_heartbeat(self):
    key, _ = _find_action(
        self,
        self._get_param("AutoScalingGroupName"),
        self._get_param("LifecycleHookName"),
        self._get_param("InstanceId"),
        self._get_param("LifecycleActionToken"),
    )
    _heartbeats[key] = _heartbeats.get(key, 0) + 1
    return EmptyResult()


_original_describe_cluster = EKSResponse.describe_cluster


def describe_cluster(self):
    result = _original_describe_cluster(self)
    cluster = self.eks_backend.describe_cluster(name=self._get_param("name"))
    endpoint = (cluster.tags or {}).get(TEST_ENDPOINT_TAG)
    if endpoint:
        if not endpoint.startswith("http://127.0.0.1:"):
            raise ValidationError(f"{TEST_ENDPOINT_TAG} must be an http://127.0.0.1 URL")
        cluster.endpoint = endpoint
        cluster.certificate_authority = {}
    return result


def _reset(*_args, **_kwargs):
    _completed.clear()
    _heartbeats.clear()


def install():
    if moto.__version__ != PINNED:
        sys.exit(f"eks_remedy_moto is written for moto {PINNED}, found {moto.__version__}")
    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action
    AutoScalingResponse.record_lifecycle_action_heartbeat = record_lifecycle_action_heartbeat
    EKSResponse.describe_cluster = describe_cluster
    original_reset = asg_models.AutoScalingBackend.reset

    def reset(self):
        _reset()
        original_reset(self)

    asg_models.AutoScalingBackend.reset = reset


def main():
    install()
    from moto.server import main as server_main

    # Loopback only, whatever the caller passes.
    args = [a for a in sys.argv[1:]]
    if "-H" not in args and "--host" not in args:
        args = ["-H", "127.0.0.1"] + args
    server_main(args)


if __name__ == "__main__":
    main()
