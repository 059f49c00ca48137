"""Sign-in settings of the API function: provider ids and URLs from the context, client secrets by reference.

A client secret never passes through the CDK app. The context names a Secrets Manager secret that the
operator created; the function's variable holds `{{resolve:secretsmanager:<name>:SecretString:::<version>}}`,
which CloudFormation resolves while it deploys, so the template and cdk.json carry the name only. The
reference names no resource of this stack, so it adds no dependency, let alone a cycle, and the function
needs no IAM grant: CloudFormation reads the secret with the deployer's credentials.
"""

from __future__ import annotations

from aws_cdk import SecretValue

from infra_cdk import constants
from infra_cdk.config import DeploymentConfig


def secret_reference(secret_id: str, version_id: str = "") -> str:
    """A CloudFormation dynamic reference to a secret's whole string, pinned to a version when one is given."""
    # unsafe_unwrap: the token becomes the reference text, never the secret, which CDK never sees.
    return SecretValue.secrets_manager(secret_id, version_id=version_id or None).unsafe_unwrap()


def sign_in_environment(config: DeploymentConfig, *, public_url: str) -> dict[str, str]:
    """The variables settings.py reads for sign-in: only those the context sets, plus the callback base.

    `public_url` is where browsers reach the API (the console's CloudFront URL); the providers' callbacks
    are built on it unless `oidc_redirect_base_url` names another base.
    """
    environment = {
        variable: getattr(config, field) for field, variable in constants.SIGN_IN_ENV.items() if getattr(config, field)
    }
    environment.setdefault(constants.ENV_OIDC_REDIRECT_BASE_URL, public_url)
    for variable, (name_field, version_field) in constants.SIGN_IN_SECRET_ENV.items():
        secret_id = getattr(config, name_field)
        if secret_id:
            environment[variable] = secret_reference(secret_id, getattr(config, version_field))
    return environment


def configured(config: DeploymentConfig) -> bool:
    """Whether the context sets any sign-in key (the default callback base is not one)."""
    return any(getattr(config, field) for field in constants.SIGN_IN_ENV) or any(
        getattr(config, name_field) for name_field, _ in constants.SIGN_IN_SECRET_ENV.values()
    )
