import pytest

from layers.shared.dal import aws
from layers.shared.dal.base import transaction_connection
from layers.shared.dal.connections import ConnectionRecord
from layers.shared.settings import get_settings


def test_settings_are_parsed_once_and_cached() -> None:
    assert get_settings() is get_settings()


def test_physical_names_use_the_resource_prefix() -> None:
    assert get_settings().physical_name("connections") == "unit-connections"
    assert ConnectionRecord.Meta.table_name == "unit-connections"


def test_clients_honour_the_generic_and_per_service_endpoint_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:9324")
    assert aws.client("s3").meta.endpoint_url == "http://127.0.0.1:4566"
    assert aws.client("sqs").meta.endpoint_url == "http://127.0.0.1:9324"
    assert aws.client("s3").meta.config.s3["addressing_style"] == "path"


def test_pynamodb_models_take_their_endpoint_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000")
    get_settings.cache_clear()
    assert ConnectionRecord.Meta.host == "http://127.0.0.1:8000"


def test_a_models_connection_follows_the_endpoint_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # PynamoDB caches one connection per model by table name; a process that serves one stack after another
    # (same table names, another DynamoDB) must not keep talking to the first one
    for endpoint in ("http://127.0.0.1:8000", "http://127.0.0.1:8001"):
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
        get_settings.cache_clear()
        connection = ConnectionRecord._get_connection()
        assert connection.connection.host == endpoint
        assert ConnectionRecord._get_connection() is connection  # still one connection per endpoint
    get_settings.cache_clear()


def test_clients_are_created_once_per_service() -> None:
    assert aws.client("sqs") is aws.client("sqs")


def test_transactions_reuse_one_connection_per_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # A new PynamoDB Connection builds a botocore session and client from JSON models: tens of ms of CPU
    # that every transaction paid (most of a busy stack's time in the role matrix)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000")
    get_settings.cache_clear()
    first = transaction_connection()
    assert transaction_connection() is first and first.host == "http://127.0.0.1:8000"
    assert first.client is transaction_connection().client
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8001")
    get_settings.cache_clear()
    assert transaction_connection().host == "http://127.0.0.1:8001"
