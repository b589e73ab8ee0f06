"""The SAM template and the CDK output as plain CloudFormation, reduced to what both must agree on.

SAM: the template is expanded the way CloudFormation's transforms would (AWS::LanguageExtensions
by SAM CLI's own implementation, then the SAM translator), for given parameter values, offline.
CDK: the synthesized template. Both are then rendered into one vocabulary: logical ids become
stable names (a CDK resource is named by its construct path, which the stack keeps equal to the
SAM logical id), references become `${Ref:Name}` / `${Name.Attr}`, pseudo parameters stay
`${AWS::Region}` and so on, so that equal resources compare equal.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent.parent
SAM_TEMPLATE = INFRA / "sam" / "template.yaml"
CONFIGS: dict[str, dict[str, str]] = json.loads((INFRA / "test" / "configs.json").read_text())

PSEUDO = {"AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::StackName", "AWS::StackId", "AWS::URLSuffix"}


class NoManagedPolicies:
    """The SAM translator's policy loader, offline: the template names no managed policy by name."""

    def load(self) -> dict[str, str]:
        raise AssertionError("the SAM translator asked for IAM managed policies: nothing may call AWS")


def sam_parameters(config: dict[str, str]) -> dict[str, Any]:
    """Parameter values as CloudFormation passes them: lists split, defaults filled in."""
    from samcli.yamlhelper import yaml_parse

    declared = yaml_parse(SAM_TEMPLATE.read_text())["Parameters"]
    unknown = set(config) - set(declared)
    assert not unknown, f"configs.json names parameters the template lacks: {sorted(unknown)}"
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        value = config.get(name, spec.get("Default"))
        assert value is not None, f"parameter {name} has no default and no value"
        if spec["Type"] == "CommaDelimitedList":
            value = [item.strip() for item in str(value).split(",")]
        values[name] = value
    return values


def sam_expanded(config: dict[str, str]) -> dict[str, Any]:
    """The template after AWS::LanguageExtensions, with resources of false conditions removed."""
    from samcli.lib.cfn_language_extensions.api import create_default_pipeline
    from samcli.lib.cfn_language_extensions.models import TemplateProcessingContext
    from samcli.yamlhelper import yaml_parse

    context = TemplateProcessingContext(
        fragment=yaml_parse(SAM_TEMPLATE.read_text()), parameter_values=sam_parameters(config)
    )
    template = create_default_pipeline(context).process_template(context)
    conditions = context.resolved_conditions
    template["Resources"] = {
        name: resource
        for name, resource in template["Resources"].items()
        if conditions.get(resource.get("Condition"), True)
    }
    for resource in template["Resources"].values():
        resource.pop("Condition", None)
    return template


def sam_to_cloudformation(config: dict[str, str]) -> dict[str, Any]:
    """The SAM template as CloudFormation would deploy it with these parameter values."""
    from samtranslator.translator.transform import transform

    template = sam_expanded(config)
    template["Transform"] = [t for t in template["Transform"] if t != "AWS::LanguageExtensions"]
    if len(template["Transform"]) == 1:
        template["Transform"] = template["Transform"][0]
    # `sam deploy` uploads the local zips and rewrites CodeUri; the translator needs that form.
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://placeholder/{name}.zip"
    return transform(template, sam_parameters(config), NoManagedPolicies())


def load_cdk(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def stable_names(template: dict[str, Any]) -> dict[str, str]:
    """Logical id -> name shared by SAM and CDK (for CDK: the construct path below the stack)."""
    names = {}
    for logical_id, resource in template.get("Resources", {}).items():
        path = resource.get("Metadata", {}).get("aws:cdk:path")
        if path is None:
            names[logical_id] = logical_id
            continue
        parts = path.split("/")[1:]
        if parts and parts[-1] == "Resource":
            parts = parts[:-1]
        names[logical_id] = "".join(parts)
    return names


class Renderer:
    """Turns CloudFormation values into plain, comparable data."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, Any] | None = None):
        self.names = stable_names(template)
        self.parameters = parameters or {}

    def name(self, logical_id: str) -> str:
        return self.names.get(logical_id, logical_id)

    def _sub(self, text: str, variables: dict[str, Any] | None = None) -> str:
        def replace(match: re.Match[str]) -> str:
            key = match.group(1)
            if variables and key in variables:
                return str(self.render(variables[key]))
            if key in PSEUDO:
                return "${" + key + "}"
            if key in self.parameters:
                return str(self.parameters[key])
            if "." in key:
                logical_id, attribute = key.split(".", 1)
                return "${" + self.name(logical_id) + "." + attribute + "}"
            if key in self.names:
                return "${Ref:" + self.name(key) + "}"
            return match.group(0)

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def render(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._sub(value)
        if isinstance(value, list):
            return [self.render(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), = value.items()
            if key == "Ref":
                if argument in PSEUDO:
                    return "${" + argument + "}"
                if argument in self.parameters:
                    return self.parameters[argument]
                return "${Ref:" + self.name(argument) + "}"
            if key == "Fn::GetAtt":
                logical_id, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
                return "${" + self.name(logical_id) + "." + attribute + "}"
            if key == "Fn::Join":
                delimiter, parts = argument
                return delimiter.join(str(part) for part in _as_list(self.render(parts)))
            if key == "Fn::Sub":
                if isinstance(argument, str):
                    return self._sub(argument)
                return self._sub(argument[0], argument[1])
        return {key: self.render(item) for key, item in value.items()}


def canonical(value: Any) -> Any:
    """Order-free form of an event pattern or policy condition: lists become sorted tuples."""
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        items = [canonical(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_grants(document: dict[str, Any], render: Renderer) -> set[tuple[str, str, str, str]]:
    """(effect, action, resource, condition) for every action x resource of a policy document."""
    grants = set()
    for statement in _as_list(document.get("Statement", [])):
        condition = statement.get("Condition", {})
        condition = {
            operator: {key: sorted(map(str, _as_list(render.render(v)))) for key, v in keys.items()}
            for operator, keys in condition.items()
        }
        for action in _as_list(statement["Action"]):
            for resource in _as_list(render.render(statement.get("Resource", []))):
                grants.add((statement["Effect"], action, str(resource), json.dumps(condition, sort_keys=True)))
    return grants


class Model:
    """What the drift test compares, from one CloudFormation template."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, Any] | None = None):
        self.template = template
        self.render = Renderer(template, parameters)
        self.resources = template["Resources"]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            self.render.name(logical_id): resource.get("Properties", {})
            for logical_id, resource in self.resources.items()
            if resource["Type"] == resource_type
        }

    def resource_types(self) -> Counter[str]:
        return Counter(resource["Type"] for resource in self.resources.values())

    def functions(self) -> dict[str, dict[str, Any]]:
        functions = {}
        for name, props in self.of_type("AWS::Lambda::Function").items():
            functions[name] = {
                "Runtime": props.get("Runtime"),
                "Architectures": props.get("Architectures", ["x86_64"]),
                "Handler": props.get("Handler"),
                "MemorySize": props.get("MemorySize"),
                "Timeout": props.get("Timeout"),
                "Description": props.get("Description"),
                "Role": self.render.render(props.get("Role")),
                "LoggingConfig": self.render.render(props.get("LoggingConfig")),
                "Environment": self.render.render(props.get("Environment", {}).get("Variables", {})),
            }
        return functions

    def invoke_configs(self) -> dict[str, dict[str, Any]]:
        configs = {}
        for props in self.of_type("AWS::Lambda::EventInvokeConfig").values():
            rendered = self.render.render(props)
            configs[rendered.pop("FunctionName")] = rendered
        return configs

    def rules(self) -> dict[str, dict[str, Any]]:
        rules = {}
        for name, props in self.of_type("AWS::Events::Rule").items():
            targets = [
                {
                    "Arn": self.render.render(target["Arn"]),
                    "RetryPolicy": target.get("RetryPolicy"),
                    "DeadLetterConfig": self.render.render(target.get("DeadLetterConfig")),
                }
                for target in props.get("Targets", [])
            ]
            rules[name] = {
                "Description": props.get("Description"),
                "EventPattern": canonical(self.render.render(props.get("EventPattern"))),
                "ScheduleExpression": props.get("ScheduleExpression"),
                "State": props.get("State", "ENABLED"),
                "Targets": canonical(targets),
            }
        return rules

    def invoke_permissions(self) -> set[tuple[str, ...]]:
        return {
            (
                str(self.render.render(props["FunctionName"])),
                props["Action"],
                props["Principal"],
                str(self.render.render(props.get("SourceArn"))),
            )
            for props in self.of_type("AWS::Lambda::Permission").values()
        }

    def role_grants(self) -> dict[str, set[tuple[str, str, str, str]]]:
        """Every role's grants, whichever resource type (inline, Policy, RolePolicy) carries them."""
        grants: dict[str, set[tuple[str, str, str, str]]] = {}
        for name, props in self.of_type("AWS::IAM::Role").items():
            grants[name] = set()
            for policy in props.get("Policies", []):
                grants[name] |= policy_grants(policy["PolicyDocument"], self.render)
            for arn in props.get("ManagedPolicyArns", []):
                grants[name].add(("Attach", "managed-policy", str(self.render.render(arn)), "{}"))
        for resource_type, key in (("AWS::IAM::Policy", "Roles"), ("AWS::IAM::RolePolicy", "RoleName")):
            for props in self.of_type(resource_type).values():
                for role in _as_list(props[key]):
                    role_name = self.render.render(role).removeprefix("${Ref:").removesuffix("}")
                    grants.setdefault(role_name, set())
                    grants[role_name] |= policy_grants(props["PolicyDocument"], self.render)
        return grants

    def function_grants(self) -> dict[str, set[tuple[str, str, str, str]]]:
        """The grants of each function's role, by function name."""
        roles = self.role_grants()
        by_function = {}
        for name, function in self.functions().items():
            role = function["Role"].removeprefix("${").removesuffix(".Arn}")
            by_function[name] = roles[role]
        return by_function

    def trust_policies(self) -> dict[str, Any]:
        return {
            name: canonical(self.render.render(props["AssumeRolePolicyDocument"]["Statement"]))
            for name, props in self.of_type("AWS::IAM::Role").items()
        }

    def access_entries(self) -> set[tuple[str, ...]]:
        return {
            (
                props["ClusterName"],
                str(self.render.render(props["PrincipalArn"])),
                props.get("Type", "STANDARD"),
                ",".join(sorted(props.get("KubernetesGroups", []))),
                json.dumps(props.get("AccessPolicies", []), sort_keys=True),
            )
            for props in self.of_type("AWS::EKS::AccessEntry").values()
        }

    def alarms(self) -> dict[str, dict[str, Any]]:
        fields = (
            "AlarmName", "AlarmDescription", "Namespace", "MetricName", "Statistic", "Period",
            "EvaluationPeriods", "Threshold", "ComparisonOperator", "TreatMissingData", "AlarmActions",
        )
        alarms = {}
        for name, props in self.of_type("AWS::CloudWatch::Alarm").items():
            alarm = {field: self.render.render(props.get(field)) for field in fields}
            alarm["Dimensions"] = canonical(self.render.render(props.get("Dimensions", [])))
            alarm["Threshold"] = float(alarm["Threshold"])
            alarms[name] = alarm
        return alarms

    def queues(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "MessageRetentionPeriod": props.get("MessageRetentionPeriod"),
                "SqsManagedSseEnabled": props.get("SqsManagedSseEnabled"),
            }
            for name, props in self.of_type("AWS::SQS::Queue").items()
        }

    def queue_senders(self) -> dict[str, set[tuple[str, str, str]]]:
        """Per queue: which service may send to it from which source."""
        senders: dict[str, set[tuple[str, str, str]]] = {}
        for props in self.of_type("AWS::SQS::QueuePolicy").values():
            for queue in props["Queues"]:
                queue_name = self.render.render(queue).removeprefix("${Ref:").removesuffix("}")
                for statement in _as_list(props["PolicyDocument"]["Statement"]):
                    sources = statement.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn", [])
                    for action in _as_list(statement["Action"]):
                        for source in _as_list(self.render.render(sources)):
                            principal = statement["Principal"].get("Service")
                            senders.setdefault(queue_name, set()).add((principal, action, str(source)))
        return senders

    def deletion_policies(self) -> dict[str, tuple[str, str]]:
        """What CloudFormation does with each named resource on delete and on replacement."""
        carriers = {"AWS::IAM::Policy", "AWS::IAM::RolePolicy", "AWS::Lambda::Permission", "AWS::SQS::QueuePolicy"}
        return {
            self.render.name(logical_id): (
                resource.get("DeletionPolicy", "Delete"),
                resource.get("UpdateReplacePolicy", "Delete"),
            )
            for logical_id, resource in self.resources.items()
            if resource["Type"] not in carriers and not resource["Type"].startswith("AWS::CDK::")
        }

    def single(self, resource_type: str) -> dict[str, Any]:
        return {name: self.render.render(props) for name, props in self.of_type(resource_type).items()}

    def outputs(self) -> set[str]:
        return set(self.template.get("Outputs", {}))


def sam_model(config_name: str) -> Model:
    config = CONFIGS[config_name]
    return Model(sam_to_cloudformation(config), sam_parameters(config))


def cdk_model(cdk_out: Path, config_name: str) -> Model:
    return Model(load_cdk(Path(cdk_out) / config_name / "EksRemedy.template.json"))


def cdk_context_args(config_name: str) -> list[str]:
    """`cdk synth` context arguments for a configuration (the SAM parameters, by name)."""
    args = []
    for key, value in CONFIGS[config_name].items():
        args += ["-c", f"{key}={value}"]
    return args


if __name__ == "__main__":
    # infra/test.sh: print one configuration's context arguments, one per line.
    import sys

    print("\n".join(cdk_context_args(sys.argv[1])))
