"""Synthesize the AgentServer stack for tests, and read the template the way the assertions need.

Each test module synthesizes once (a module-scoped fixture): a synth costs seconds, a lookup nothing.
The context is cdk.json's, so tests see the feature flags `cdk synth` sees, plus
`aws:cdk:bundling-stacks: []`, CDK's own switch that skips asset bundling (no pip run).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from aws_cdk import App, Environment, PolicyValidationPluginReport
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

from infra_cdk.app import build_stack
from infra_cdk.config import DeploymentConfig
from infra_cdk.stack import AgentServerStack
from layers.shared.topology import TOPOLOGY, Topology

REPO_ROOT = Path(__file__).resolve().parents[2]
CDK_JSON_CONTEXT: dict[str, Any] = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


@dataclass
class Synthesized:
    stack: AgentServerStack
    config: DeploymentConfig
    template: Template
    json: dict[str, Any]
    assembly_dir: Path

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.json["Resources"]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {name: res for name, res in self.resources.items() if res["Type"] == resource_type}

    def properties(self, logical_id: str) -> dict[str, Any]:
        return self.resources[logical_id].get("Properties", {})

    def one(self, resource_type: str, **properties: Any) -> tuple[str, dict[str, Any]]:
        """The single resource of a type whose properties include the given values."""
        matches = [
            (name, res.get("Properties", {}))
            for name, res in self.of_type(resource_type).items()
            if all(res.get("Properties", {}).get(key) == value for key, value in properties.items())
        ]
        assert len(matches) == 1, f"expected one {resource_type} with {properties}, found {len(matches)}"
        return matches[0]

    def function_id(self, function_name: str) -> str:
        """Logical id of a topology function, found by its physical name."""
        return self.one("AWS::Lambda::Function", FunctionName=self.config.resource_prefix + function_name)[0]

    def nag_report(self) -> PolicyValidationPluginReport:
        return AwsSolutionsChecks().validate_scope(self.stack)

    def nag_findings(self) -> list[str]:
        """Every cdk-nag violation left (none, unless something went unacknowledged), one line each."""
        report = self.nag_report()
        return [
            f"{violation.severity} {violation.rule_name}: {[r.construct_path for r in violation.violating_resources]}"
            for violation in report.violations
        ] + ([] if report.success else ["the AWS Solutions report did not succeed"])

    def dependency_cycle(self) -> list[str] | None:
        """A cycle among the resources' Ref, GetAtt, Sub and DependsOn links, or None when CloudFormation can
        order them."""
        graph = {
            logical_id: {ref for ref in references(resource) if ref in self.resources}
            | set(resource.get("DependsOn", []))
            for logical_id, resource in self.resources.items()
        }
        try:
            tuple(TopologicalSorter(graph).static_order())
        except CycleError as cycle:
            return list(cycle.args[1])
        return None

    def environment(self, function_name: str) -> dict[str, Any]:
        """The environment variables of a topology function."""
        return self.properties(self.function_id(function_name))["Environment"]["Variables"]

    def distribution(self) -> tuple[str, dict[str, Any]]:
        """The console's CloudFront distribution: its logical id and DistributionConfig."""
        distribution_id, distribution = self.one("AWS::CloudFront::Distribution")
        return distribution_id, distribution["DistributionConfig"]

    def assembly_text(self) -> str:
        """Everything synthesis wrote that CloudFormation or the deployment reads: templates, manifests, and
        the staged data assets such as config.json (code and layer bundles are not built in tests)."""
        return "\n".join(
            path.read_text(errors="replace")
            for path in sorted(self.assembly_dir.rglob("*"))
            if path.is_file() and path.stat().st_size < 1_000_000
        )


def synthesize(
    topology: Topology = TOPOLOGY,
    *,
    context: dict[str, Any] | None = None,
    env: Environment | None = None,
) -> Synthesized:
    """Build the app exactly as `infra_cdk.app` does (cdk-nag included) and synthesize it once.

    Without `env` the stack is env-agnostic, whatever AWS settings the machine has.
    """
    app = App(context={**CDK_JSON_CONTEXT, "aws:cdk:bundling-stacks": [], **(context or {})})
    stack = build_stack(app, topology, env=env or Environment())
    # Raises, with cdk-nag's report, if any finding is not acknowledged.
    assembly = app.synth()
    template_json = assembly.get_stack_by_name(stack.stack_name).template
    return Synthesized(
        stack=stack,
        config=DeploymentConfig.from_context(app.node),
        template=Template.from_json(template_json),
        json=template_json,
        assembly_dir=Path(assembly.directory),
    )


def references(value: Any) -> Iterator[str]:
    """Every logical id a CloudFormation value points at through Ref, Fn::GetAtt or Fn::Sub."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str) and not inner.startswith("AWS::"):
                yield inner
            elif key == "Fn::GetAtt":
                yield inner[0] if isinstance(inner, list) else inner.split(".")[0]
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                for part in text.split("${")[1:]:
                    name = part.split("}")[0].split(".")[0]
                    if not name.startswith("AWS::"):
                        yield name
                if isinstance(inner, list):
                    yield from references(inner[1])
            else:
                yield from references(inner)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def render(value: Any) -> str:
    """A CloudFormation string value with references shown as `<LogicalId>`, `<LogicalId.Attr>`, `<AWS::Region>`."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        delimiter, items = value["Fn::Join"]
        return delimiter.join(render(item) for item in items)
    if "Fn::Sub" in value:
        return re.sub(r"\$\{([^}]+)\}", r"<\1>", value["Fn::Sub"])
    if "Fn::GetAtt" in value:
        resource, attribute = value["Fn::GetAtt"]
        return f"<{resource}.{attribute}>"
    if "Ref" in value:
        return f"<{value['Ref']}>"
    raise ValueError(f"cannot render {value!r}")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
