"""infra/k8s/rbac.yaml grants the group eks-remediators exactly what the functions use.

What they use is listed in infra/k8s/required-permissions.txt ("group resource verb" a line),
kept next to the code that makes the calls.
"""


import pytest
import yaml

import templates

K8S = templates.INFRA / "k8s"
GROUP = "eks-remediators"
RBAC_API = "rbac.authorization.k8s.io/v1"


def documents():
    return [doc for doc in yaml.safe_load_all((K8S / "rbac.yaml").read_text()) if doc]


def required() -> set[tuple[str, str, str]]:
    permissions = set()
    for number, line in enumerate((K8S / "required-permissions.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        assert len(fields) == 3, f"required-permissions.txt:{number}: want 'group resource verb', got {line!r}"
        group, resource, verb = fields
        permissions.add(("" if group == "core" else group, resource, verb))
    return permissions


def bindings_of_group():
    """(role name, namespace or None for cluster-wide) of every binding naming the group."""
    bound = []
    for doc in documents():
        if doc["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if any(s["kind"] == "Group" and s["name"] == GROUP for s in doc.get("subjects", [])):
            namespace = doc["metadata"].get("namespace", "default") if doc["kind"] == "RoleBinding" else None
            bound.append((doc["roleRef"]["name"], namespace))
    return bound


def granted() -> set[tuple[str, str, str]]:
    roles = {doc["metadata"]["name"]: doc for doc in documents() if doc["kind"] in ("ClusterRole", "Role")}
    permissions = set()
    for role_name, _ in bindings_of_group():
        for rule in roles[role_name].get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        permissions.add((group, resource, verb))
    return permissions


def show(permissions):
    return sorted(f"{group or 'core'} {resource} {verb}" for group, resource, verb in permissions)


def test_manifest_parses_into_rbac_objects():
    docs = documents()
    assert docs, "rbac.yaml is empty"
    for doc in docs:
        assert doc["apiVersion"] == RBAC_API, doc["metadata"]["name"]
        assert doc["kind"] in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
        assert doc["metadata"].get("name")
    names = {doc["metadata"]["name"] for doc in docs if doc["kind"] in ("ClusterRole", "Role")}
    for role_name, _ in bindings_of_group():
        assert role_name in names, f"a binding names the missing role {role_name}"


def test_manifest_grants_exactly_the_required_permissions():
    missing, extra = required() - granted(), granted() - required()
    assert not missing and not extra, (
        f"rbac.yaml and required-permissions.txt disagree:\n"
        f"  required but not granted: {show(missing)}\n  granted but not required: {show(extra)}"
    )


def test_no_rule_uses_wildcards():
    for doc in documents():
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), f"{doc['metadata']['name']}: wildcard in {key}"


def test_every_role_is_bound_to_the_group_and_nothing_else_is_bound():
    roles = {doc["metadata"]["name"] for doc in documents() if doc["kind"] in ("ClusterRole", "Role")}
    assert {name for name, _ in bindings_of_group()} == roles
    for doc in documents():
        if doc["kind"].endswith("Binding"):
            assert [(s["kind"], s["name"]) for s in doc["subjects"]] == [("Group", GROUP)]


@pytest.mark.parametrize("resource", ["daemonsets", "deployments"])
def test_add_on_workloads_are_writable_only_by_name_in_kube_system(resource):
    roles = {doc["metadata"]["name"]: doc for doc in documents() if doc["kind"] in ("ClusterRole", "Role")}
    for role_name, namespace in bindings_of_group():
        for rule in roles[role_name].get("rules", []):
            if resource in rule.get("resources", []) and "patch" in rule.get("verbs", []):
                assert namespace == "kube-system", f"{role_name} lets {resource} be patched outside kube-system"
                assert rule.get("resourceNames"), f"{role_name} lets any {resource} be patched"
