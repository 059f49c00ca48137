"""cdk-nag: the AWS Solutions rule pack, and acknowledgments that each carry their reason.

cdk-nag 3 runs as a CDK validation plugin (`Validations.of(app).add_plugins`) and reads
acknowledgments written with `Validations.of(construct).acknowledge`, which replaced v2's
`NagSuppressions`. An unacknowledged finding, error or warning, fails the synth.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, DefaultStackSynthesizer, Stack, Token, Validations
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

MIN_REASON_LENGTH = 40  # a reason must say why, not just "ok"


def add_checks(scope: IConstruct) -> None:
    Validations.of(scope).add_plugins(AwsSolutionsChecks(scope, verbose=True))


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge one finding (`AwsSolutions-IAM5[Resource::*]`) on `scope` and what it contains."""
    if len(reason) < MIN_REASON_LENGTH:
        raise ValueError(f"the reason for acknowledging {rule} must explain it: {reason!r}")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


def flatten_reference(value: Any) -> str:
    """A resolved CloudFormation value as cdk-nag prints it: `<Logical.Arn>`, `<AWS::Region>`, ..."""
    if isinstance(value, str):
        return value.replace("${", "<").replace("}", ">")
    if isinstance(value, dict) and "Fn::Join" in value:
        delimiter, items = value["Fn::Join"]
        return delimiter.join(flatten_reference(item) for item in items)
    if isinstance(value, dict) and "Fn::Sub" in value:
        return flatten_reference(value["Fn::Sub"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        resource, attribute = value["Fn::GetAtt"]
        return f"<{flatten_reference(resource)}.{flatten_reference(attribute)}>"
    if isinstance(value, dict) and "Ref" in value:
        return f"<{flatten_reference(value['Ref'])}>"
    raise ValueError(f"cannot flatten {value!r}")


def wildcard_resource_finding(scope: IConstruct, resource: str) -> str:
    """The IAM5 finding id for a policy resource, whether the stack's account and region are known or not."""
    return f"AwsSolutions-IAM5[Resource::{flatten_reference(Stack.of(scope).resolve(resource))}]"


def managed_policy_finding(scope: IConstruct, policy_name: str) -> str:
    """The IAM4 finding id for an AWS managed policy (`service-role/...`) attached in `scope`'s stack."""
    arn = iam.ManagedPolicy.from_aws_managed_policy_name(policy_name).managed_policy_arn
    return f"AwsSolutions-IAM4[Policy::{flatten_reference(Stack.of(scope).resolve(arn))}]"


def bootstrap_asset_objects_arn(scope: IConstruct) -> str | None:
    """ARN of the objects in the bootstrap asset bucket, spelled the way CDK's default synthesizer spells it."""
    stack = Stack.of(scope)
    synthesizer = stack.synthesizer
    if not isinstance(synthesizer, DefaultStackSynthesizer):
        return None
    qualifier = synthesizer.bootstrap_qualifier or DefaultStackSynthesizer.DEFAULT_QUALIFIER
    bucket_name = DefaultStackSynthesizer.DEFAULT_FILE_ASSETS_BUCKET_NAME.replace("${Qualifier}", qualifier)
    # The synthesizer writes in the account and region when the stack has them, and leaves ${...} otherwise.
    if not Token.is_unresolved(stack.region):
        bucket_name = bucket_name.replace("${AWS::Region}", stack.region)
    if not Token.is_unresolved(stack.account):
        bucket_name = bucket_name.replace("${AWS::AccountId}", stack.account)
    return stack.format_arn(service="s3", region="", account="", resource=bucket_name) + "/*"
