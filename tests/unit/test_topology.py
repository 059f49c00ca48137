import pytest

from embedded.lambda_runtime import load_handler
from layers.shared.dal.connections import ConnectionRecord
from layers.shared.dal.operations import OperationRecord
from layers.shared.dal.sessions import SessionItem
from layers.shared.settings import Settings
from layers.shared.topology import SESSION_PAYLOADS, TOPOLOGY, Schedule


@pytest.mark.parametrize("function", TOPOLOGY.functions, ids=lambda f: f.name)
def test_every_handler_in_the_topology_is_importable_and_callable(function) -> None:
    assert callable(load_handler(function.handler))


@pytest.mark.parametrize("function", TOPOLOGY.functions, ids=lambda f: f.name)
def test_every_function_has_a_trigger_and_only_known_resources(function) -> None:
    triggers = [function.http_routes, function.websocket_routes, function.sqs, function.schedule,
                function.streaming_url]
    assert any(triggers)
    assert set(function.tables) <= {table.name for table in TOPOLOGY.tables}
    assert set(function.queues_send) <= {queue.name for queue in TOPOLOGY.queues}
    if function.sqs:
        queue = TOPOLOGY.queue(function.sqs.queue)
        # Lambda requires the queue's visibility timeout to cover the function's timeout
        assert queue.visibility_timeout_seconds >= function.timeout_seconds


def test_websocket_api_has_the_three_routes_api_gateway_needs() -> None:
    assert {"$connect", "$disconnect", "$default"} <= set(TOPOLOGY.websocket_routes)


@pytest.mark.parametrize("model", [ConnectionRecord, OperationRecord, SessionItem])
def test_table_models_agree_with_the_topology(model) -> None:
    table = TOPOLOGY.table(model.Meta.logical_table)
    assert model._hash_keyname == table.partition.name
    assert model._range_keyname == (table.sort.name if table.sort else None)
    for index in table.indexes:
        assert index.name in model._indexes


@pytest.mark.parametrize(("expression", "seconds"), [("rate(1 minute)", 60), ("rate(5 minutes)", 300),
                                                     ("rate(2 hours)", 7200), ("rate(1 day)", 86400)])
def test_rate_expressions_give_their_period(expression: str, seconds: int) -> None:
    assert Schedule(expression).every_seconds == seconds


def test_key_attributes_cover_table_and_index_keys() -> None:
    assert TOPOLOGY.table("connections").key_attributes == {"connection_id": "S", "kind": "S", "expires_at": "N"}


@pytest.mark.parametrize("function", TOPOLOGY.functions, ids=lambda f: f.name)
def test_every_bucket_a_function_uses_is_declared(function) -> None:
    assert set(function.buckets) <= {bucket.name for bucket in TOPOLOGY.buckets}


def test_the_session_payload_bucket_name_reaches_the_settings_by_its_variable() -> None:
    # CDK hands each function the names of its buckets in Bucket.env_var; the settings read this one.
    assert Settings.model_fields["session_payload_bucket"].alias == SESSION_PAYLOADS.env_var
    # Objects outlive the longest event retention the settings allow
    assert SESSION_PAYLOADS.expire_after_days > Settings.model_fields["sessions_retention_days"].metadata[1].le
