"""Sign-in settings of the API function: provider ids and URLs from the context, client secrets by name.

A client secret never passes through the CDK app nor sits in the function's environment. The context names
a Secrets Manager secret that the operator created; the function receives that name (`*_CLIENT_SECRET_ID`)
and reads the current value when a sign-in needs it (layers/shared/dal/secrets.py, cached for 5 minutes),
with an IAM grant on that one secret. `lambda:GetFunctionConfiguration` therefore shows no secret, and a
changed secret reaches the function within minutes, without a deploy.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Stack
from aws_cdk import aws_iam as iam

from infra_cdk import constants
from infra_cdk.config import DeploymentConfig


def sign_in_environment(config: DeploymentConfig, *, public_url: str) -> dict[str, str]:
    """The variables settings.py reads for sign-in: only those the context sets, plus the callback base.

    `public_url` is where browsers reach the API (the console's CloudFront URL); the providers' callbacks
    are built on it unless `oidc_redirect_base_url` names another base.
    """
    environment = {
        variable: getattr(config, field) for field, variable in constants.SIGN_IN_ENV.items() if getattr(config, field)
    }
    environment.setdefault(constants.ENV_OIDC_REDIRECT_BASE_URL, public_url)
    for variable, name_field in constants.SIGN_IN_SECRET_ENV.items():
        if getattr(config, name_field):
            environment[variable] = getattr(config, name_field)
    return environment


def client_secret_arns(config: DeploymentConfig, stack: Stack) -> list[str]:
    """ARNs that cover exactly the named client secrets: a name gets Secrets Manager's random six-character
    suffix (`-??????`); an ARN is taken as given, or as a partial ARN that the suffix completes."""
    arns: list[str] = []
    for name_field in constants.SIGN_IN_SECRET_ENV.values():
        secret_id = getattr(config, name_field)
        if not secret_id:
            continue
        if secret_id.startswith("arn:"):
            arns += [secret_id, f"{secret_id}-??????"]
        else:
            arns.append(
                stack.format_arn(
                    service="secretsmanager",
                    resource="secret",
                    resource_name=f"{secret_id}-??????",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            )
    return arns


def allow_reading_client_secrets(config: DeploymentConfig, role: iam.IRole) -> None:
    arns = client_secret_arns(config, Stack.of(role))
    if arns:
        role.add_to_principal_policy(iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=arns))


def configured(config: DeploymentConfig) -> bool:
    """Whether the context sets any sign-in key (the default callback base is not one)."""
    return any(getattr(config, field) for field in constants.SIGN_IN_ENV) or any(
        getattr(config, name_field) for name_field in constants.SIGN_IN_SECRET_ENV.values()
    )
