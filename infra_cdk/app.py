"""CDK entry point (`cdk.json` runs `python -m infra_cdk.app`): one AgentServer stack from the topology."""

from __future__ import annotations

import os

from aws_cdk import App, Environment, Tags

from infra_cdk import constants, nag
from infra_cdk.config import DeploymentConfig
from infra_cdk.stack import AgentServerStack
from layers.shared.topology import TOPOLOGY, Topology


def build_stack(app: App, topology: Topology = TOPOLOGY, env: Environment | None = None) -> AgentServerStack:
    """Add the stack (name from context `agentserver:stack_name`) and the cdk-nag checks to `app`.

    Without `env` the stack targets the account and region the CDK CLI found, or is env-agnostic.
    """
    config = DeploymentConfig.from_context(app.node)
    if env is None:
        env = Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION"))
    stack = AgentServerStack(
        app,
        config.stack_name,
        topology=topology,
        config=config,
        description="agentserver: operate a fleet of AI coding agents (generated from layers/shared/topology.py)",
        env=env,
    )
    Tags.of(stack).add("project", constants.SERVICE_NAME)
    nag.add_checks(app)
    return stack


def main() -> None:
    app = App()
    build_stack(app)
    app.synth()


if __name__ == "__main__":
    main()
