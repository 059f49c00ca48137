from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RunningStack


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """An in-memory stack shared by a test module; tests must not depend on each other's data.

    In a module marked `dynamodb_local` its tables live on the session's DynamoDB Local (the product's
    default store, which serialises conditional writes and transactions as DynamoDB does), the other
    services in moto."""
    running = RunningStack(state_dir=tmp_path_factory.mktemp("stack"), in_memory=True,
                           extra_args=["--queue-visibility-timeout", "1"],
                           dynamodb_endpoint=session_dynamodb(request)).start()
    yield running
    running.stop()


def session_dynamodb(request: pytest.FixtureRequest) -> str | None:
    """The session's DynamoDB Local for a test module marked `dynamodb_local`, else None (moto)."""
    if request.node.get_closest_marker("dynamodb_local") is None:
        return None
    return str(request.getfixturevalue("dynamodb_local"))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="session")
def dynamodb_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One DynamoDB Local for the whole session (≈ 3 s to start, ≈ 220 MB): its URL.

    Race tests need it: in-process moto neither serialises conditional writes nor keeps every
    concurrent ADD, so a race test on moto passes on non-atomic code and can fail on correct code.
    Each test isolates itself with its own table prefix (see `dynamodb_tables`).
    """
    from embedded.aws_services import DynamoDBLocal

    server = DynamoDBLocal(data_dir=tmp_path_factory.mktemp("dynamodb-local"), in_memory=True)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def dynamodb_tables(dynamodb_local: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The topology's tables on the shared DynamoDB Local, under a prefix of this test's own; the DAL
    (settings, boto3 and PynamoDB) points at them for the test. Returns the prefix."""
    import uuid

    from embedded.provision import table_definition
    from layers.shared.dal import aws
    from layers.shared.settings import get_settings
    from layers.shared.topology import TOPOLOGY

    prefix = f"t{uuid.uuid4().hex[:10]}-"
    for name, value in {"AWS_ENDPOINT_URL_DYNAMODB": dynamodb_local, "AGENTSERVER_RESOURCE_PREFIX": prefix,
                        "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                        "POWERTOOLS_TRACE_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    caches = (get_settings, aws.client, aws.queue_url, aws.management_client)
    for cache in caches:
        cache.cache_clear()
    dynamodb = aws.client("dynamodb")
    for table in TOPOLOGY.tables:
        dynamodb.create_table(**table_definition(table, get_settings().physical_name(table.name)))
    yield prefix
    for table in TOPOLOGY.tables:
        dynamodb.delete_table(TableName=get_settings().physical_name(table.name))
    for cache in caches:
        cache.cache_clear()
