"""Typed settings, parsed from the environment once per process."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

VERSION = "0.1.0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    resource_prefix: str = Field(default="agentserver-", alias="AGENTSERVER_RESOURCE_PREFIX")
    aws_region: str = Field(default="us-east-1", alias="AWS_REGION")
    # boto3 reads these itself; PynamoDB takes its host from here.
    aws_endpoint_url: str | None = Field(default=None, alias="AWS_ENDPOINT_URL")
    aws_endpoint_url_dynamodb: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_DYNAMODB")
    # The @connections endpoint of the WebSocket API. When unset it is derived from the event
    # (https://{domainName}/{stage}), which is what API Gateway gives a deployed function.
    websocket_management_url: str | None = Field(default=None, alias="AGENTSERVER_WEBSOCKET_MANAGEMENT_URL")
    # How long a connection record outlives its last sign of life when no $disconnect arrives:
    # API Gateway's 2 h maximum connection age plus a margin.
    connection_ttl_seconds: int = Field(default=2 * 3600 + 600, alias="AGENTSERVER_CONNECTION_TTL_SECONDS")
    operation_record_ttl_seconds: int = Field(default=7 * 86400, alias="AGENTSERVER_OPERATION_TTL_SECONDS")

    @property
    def dynamodb_endpoint(self) -> str | None:
        return self.aws_endpoint_url_dynamodb or self.aws_endpoint_url

    def physical_name(self, logical_name: str) -> str:
        """The deployed name of a topology table, queue, bucket or secret."""
        return f"{self.resource_prefix}{logical_name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
