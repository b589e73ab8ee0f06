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
* EKS add-ons (`CreateAddon`, `DescribeAddon`, `UpdateAddon`, `ListAddons`, `DeleteAddon`),
  `UpdateNodegroupVersion`, and Pod Identity associations (create, describe, list, update,
  delete), with the service's conflict and not-found errors, and `ListUpdates` /
  `DescribeUpdate` for the updates they record. Changes apply at once (status ACTIVE,
  update Successful).

Pinned to moto 5.2.5: the response classes and models patched here are that version's.
"""

import datetime
import json
import sys
import uuid

import moto
from moto.autoscaling import models as asg_models
from moto.autoscaling.responses import AutoScalingResponse
from moto.autoscaling.exceptions import ValidationError
from moto.core.responses import ActionResult, EmptyResult
from moto.eks import urls as eks_urls
from moto.eks.exceptions import (
    InvalidParameterException,
    InvalidRequestException,
    ResourceInUseException,
    ResourceNotFoundException,
)
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


# (account, region, cluster) -> {addon name -> addon dict}
_addons = {}
# (account, region, cluster) -> {association id -> association dict}
_associations = {}
# (account, region, cluster) -> [update dict]
_updates = {}


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _cluster_key(response):
    name = response._get_param("name") or _path_part(response, 2)
    response.eks_backend.describe_cluster(name=name)  # ResourceNotFoundException if missing
    return (response.current_account, response.region, name), name


def _path_part(response, index):
    parts = [p for p in response.path.split("?")[0].split("/") if p]
    return parts[index - 1] if len(parts) >= index else None


def _body(response):
    try:
        return json.loads(response.body or "{}")
    except ValueError:
        raise InvalidParameterException(message="request body is not JSON")


def _record_update(key, update_type, params):
    update = {
        "id": str(uuid.uuid4()),
        "status": "Successful",
        "type": update_type,
        "params": [{"type": k, "value": v} for k, v in params],
        "createdAt": _now(),
        "errors": [],
    }
    _updates.setdefault(key, []).append(update)
    return update


def create_addon(self):
    key, cluster = _cluster_key(self)
    body = _body(self)
    name = body.get("addonName")
    addons = _addons.setdefault(key, {})
    if name in addons:
        raise ResourceInUseException(
            clusterName=cluster, addonName=name, message=f"Addon already exists: {name}"
        )
    config = body.get("configurationValues")
    if config:
        try:
            json.loads(config)
        except ValueError:
            raise InvalidParameterException(message="configurationValues is not valid JSON")
    addon = {
        "addonName": name,
        "clusterName": cluster,
        "status": "ACTIVE",
        "addonVersion": body.get("addonVersion") or "v1.0.0-eksbuild.1",
        "health": {"issues": []},
        "addonArn": f"arn:aws:eks:{self.region}:{self.current_account}:addon/{cluster}/{name}/{uuid.uuid4()}",
        "createdAt": _now(),
        "modifiedAt": _now(),
        "tags": body.get("tags") or {},
        "podIdentityAssociations": [],
    }
    if config:
        addon["configurationValues"] = config
    if body.get("serviceAccountRoleArn"):
        addon["serviceAccountRoleArn"] = body["serviceAccountRoleArn"]
    addons[name] = addon
    return ActionResult({"addon": addon})


def _addon(self):
    key, cluster = _cluster_key(self)
    name = self._get_param("addonName") or _path_part(self, 4)
    addon = _addons.get(key, {}).get(name)
    if addon is None:
        raise ResourceNotFoundException(
            clusterName=cluster,
            addonName=name,
            message=f"No addon: {name} found in cluster: {cluster}",
        )
    return key, addon


def describe_addon(self):
    _, addon = _addon(self)
    return ActionResult({"addon": addon})


def list_addons(self):
    key, _ = _cluster_key(self)
    return ActionResult({"addons": sorted(_addons.get(key, {}))})


def delete_addon(self):
    key, addon = _addon(self)
    del _addons[key][addon["addonName"]]
    return ActionResult({"addon": addon})


def update_addon(self):
    key, addon = _addon(self)
    body = _body(self)
    params = []
    if "configurationValues" in body:
        try:
            json.loads(body["configurationValues"] or "{}")
        except ValueError:
            raise InvalidParameterException(message="configurationValues is not valid JSON")
        addon["configurationValues"] = body["configurationValues"]
        params.append(("ConfigurationValues", body["configurationValues"]))
    if body.get("addonVersion"):
        addon["addonVersion"] = body["addonVersion"]
        params.append(("AddonVersion", body["addonVersion"]))
    if body.get("serviceAccountRoleArn"):
        addon["serviceAccountRoleArn"] = body["serviceAccountRoleArn"]
        params.append(("ServiceAccountRoleArn", body["serviceAccountRoleArn"]))
    if body.get("resolveConflicts"):
        params.append(("ResolveConflicts", body["resolveConflicts"]))
    addon["modifiedAt"] = _now()
    update = _record_update(key, "AddonUpdate", params)
    update["addon"] = addon["addonName"]
    return ActionResult({"update": {k: v for k, v in update.items() if k != "addon"}})


def update_nodegroup_version(self):
    key, cluster = _cluster_key(self)
    nodegroup = self._get_param("nodegroupName") or _path_part(self, 4)
    self.eks_backend.describe_nodegroup(cluster_name=cluster, nodegroup_name=nodegroup)
    body = _body(self)
    params = [("ReleaseVersion", body.get("releaseVersion") or "latest")]
    if body.get("force"):
        params.append(("Force", "true"))
    update = _record_update(key, "VersionUpdate", params)
    update["nodegroup"] = nodegroup
    return ActionResult({"update": {k: v for k, v in update.items() if k != "nodegroup"}})


def _association(self):
    key, cluster = _cluster_key(self)
    association_id = self._get_param("associationId") or _path_part(self, 4)
    association = _associations.get(key, {}).get(association_id)
    if association is None:
        raise ResourceNotFoundException(
            clusterName=cluster,
            message=f"Association {association_id} not found in cluster {cluster}",
        )
    return key, association


def create_pod_identity_association(self):
    key, cluster = _cluster_key(self)
    body = _body(self)
    for field in ("namespace", "serviceAccount", "roleArn"):
        if not body.get(field):
            raise InvalidParameterException(message=f"{field} is required")
    existing = _associations.setdefault(key, {})
    for association in existing.values():
        if (association["namespace"], association["serviceAccount"]) == (
            body["namespace"],
            body["serviceAccount"],
        ):
            raise ResourceInUseException(
                clusterName=cluster,
                message="Association already exists: " + association["associationId"],
            )
    association_id = "a-" + uuid.uuid4().hex[:17]
    association = {
        "clusterName": cluster,
        "namespace": body["namespace"],
        "serviceAccount": body["serviceAccount"],
        "roleArn": body["roleArn"],
        "associationArn": f"arn:aws:eks:{self.region}:{self.current_account}:podidentityassociation/{cluster}/{association_id}",
        "associationId": association_id,
        "tags": body.get("tags") or {},
        "createdAt": _now(),
        "modifiedAt": _now(),
        "disableSessionTags": bool(body.get("disableSessionTags", False)),
    }
    existing[association_id] = association
    return ActionResult({"association": association})


def list_pod_identity_associations(self):
    key, _ = _cluster_key(self)
    namespace = self._get_param("namespace") or self.querystring.get("namespace", [None])[0]
    service_account = self._get_param("serviceAccount") or self.querystring.get(
        "serviceAccount", [None]
    )[0]
    summaries = [
        {
            k: a[k]
            for k in ("clusterName", "namespace", "serviceAccount", "associationArn", "associationId")
        }
        for a in _associations.get(key, {}).values()
        if (not namespace or a["namespace"] == namespace)
        and (not service_account or a["serviceAccount"] == service_account)
    ]
    return ActionResult({"associations": summaries})


def describe_pod_identity_association(self):
    _, association = _association(self)
    return ActionResult({"association": association})


def update_pod_identity_association(self):
    _, association = _association(self)
    body = _body(self)
    if body.get("roleArn"):
        association["roleArn"] = body["roleArn"]
    association["modifiedAt"] = _now()
    return ActionResult({"association": association})


def delete_pod_identity_association(self):
    key, association = _association(self)
    del _associations[key][association["associationId"]]
    return ActionResult({"association": association})


def list_updates(self):
    key, _ = _cluster_key(self)
    nodegroup = self.querystring.get("nodegroupName", [None])[0]
    addon = self.querystring.get("addonName", [None])[0]
    ids = [
        u["id"]
        for u in _updates.get(key, [])
        if (nodegroup is None or u.get("nodegroup") == nodegroup)
        and (addon is None or u.get("addon") == addon)
    ]
    return ActionResult({"updateIds": ids})


def describe_update(self):
    key, cluster = _cluster_key(self)
    update_id = self._get_param("updateId") or _path_part(self, 4)
    for update in _updates.get(key, []):
        if update["id"] == update_id:
            return ActionResult(
                {"update": {k: v for k, v in update.items() if k not in ("nodegroup", "addon")}}
            )
    raise ResourceNotFoundException(clusterName=cluster, message=f"No update: {update_id}")


def _reset(*_args, **_kwargs):
    _completed.clear()
    _heartbeats.clear()
    _addons.clear()
    _associations.clear()
    _updates.clear()




def install():
    if moto.__version__ != PINNED:
        sys.exit(f"eks_remedy_moto is written for moto {PINNED}, found {moto.__version__}")
    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action
    AutoScalingResponse.record_lifecycle_action_heartbeat = record_lifecycle_action_heartbeat
    EKSResponse.describe_cluster = describe_cluster
    for handler in (
        create_addon,
        describe_addon,
        list_addons,
        delete_addon,
        update_addon,
        update_nodegroup_version,
        create_pod_identity_association,
        list_pod_identity_associations,
        describe_pod_identity_association,
        update_pod_identity_association,
        delete_pod_identity_association,
        list_updates,
        describe_update,
    ):
        setattr(EKSResponse, handler.__name__, handler)
    eks_urls.url_paths.update(
        {
            "{0}/clusters/(?P<name>[^/]+)/addons$": eks_urls.response.dispatch,
            "{0}/clusters/(?P<name>[^/]+)/addons/(?P<addonName>[^/]+)$": eks_urls.response.dispatch,
            "{0}/clusters/(?P<name>[^/]+)/addons/(?P<addonName>[^/]+)/update$": eks_urls.response.dispatch,
            "{0}/clusters/(?P<name>[^/]+)/node-groups/(?P<nodegroupName>[^/]+)/update-version$": eks_urls.response.dispatch,
            "{0}/clusters/(?P<name>[^/]+)/pod-identity-associations$": eks_urls.response.dispatch,
            "{0}/clusters/(?P<name>[^/]+)/updates$": eks_urls.response.dispatch,
            "{0}/clusters/(?P<name>[^/]+)/updates/(?P<updateId>[^/]+)$": eks_urls.response.dispatch,
            "{0}/clusters/(?P<name>[^/]+)/pod-identity-associations/(?P<associationId>[^/]+)$": eks_urls.response.dispatch,
        }
    )
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
