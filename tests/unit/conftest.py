from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from moto import mock_aws

from layers.shared.dal import aws
from layers.shared.settings import get_settings


@pytest.fixture(autouse=True)
def fresh_event_loop_policy() -> Iterator[None]:
    """asyncio.run leaves the main thread marked as having no event loop, and Mangum (used by other
    unit tests in the same process) calls asyncio.get_event_loop(): give it a fresh policy back."""
    yield
    asyncio.set_event_loop_policy(None)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never open a connection; moto intercepts AWS calls before the socket."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(autouse=True)
def unit_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS", "AWS_PROFILE",
                 "AGENTSERVER_WEBSOCKET_MANAGEMENT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AGENTSERVER_RESOURCE_PREFIX", "unit-")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    _clear_caches()
    yield
    _clear_caches()


def _clear_caches() -> None:
    get_settings.cache_clear()
    aws.client.cache_clear()
    aws.queue_url.cache_clear()
    aws.management_client.cache_clear()


@pytest.fixture
def moto_aws() -> Iterator[None]:
    """In-process moto with the topology's tables and queues (unit tests only)."""
    from embedded.provision import provision
    from layers.shared.topology import TOPOLOGY

    with mock_aws():
        provision(TOPOLOGY, get_settings())
        yield
