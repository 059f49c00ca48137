"""The embedded stack refuses what AWS refuses: one test per row of docs/aws-fidelity.md that no other
module proves. Rows the project's own functions can reach run against the real `agentserver up`
(one stack for the module); rows at limits those functions stay within (a 6 MB Lambda result, a
`$connect` that posts to its own connection, a long streamed response) run against the real local
gateway on loopback with a small topology of test functions (tests/fidelity_handlers.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import botocore.exceptions
import httpx
import pytest
import uvicorn
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from embedded.gateway import GatewayConfig, LocalGateway
from embedded.lambda_runtime import LambdaRuntime
from embedded.limits import MB, WEBSOCKET_URL_CHARACTERS, StreamingLimits
from embedded.stack import tcp_listener
from embedded.ws_protocol import MESSAGE_LIMIT_BYTES, ApiGatewayLimitsProtocol
from layers.shared.topology import Function, HttpRoute, Topology, WebSocketRoute
from tests import fidelity_handlers
from tests.support import RunningStack, wait_until

# HTTP API ---------------------------------------------------------------------------------------------


def test_http_body_within_10_mb_but_over_lambdas_6_mb_is_413(stack: RunningStack) -> None:
    """A binary body travels base64-encoded in the event: 5 MB of it is 6.7 MB, over Lambda's 6 MB."""
    binary = httpx.post(f"{stack.base_url}/api/health", content=b"\x00\xff" * (5 * MB // 2),
                        headers={"content-type": "application/octet-stream"}, timeout=60)
    assert binary.status_code == 413
    assert binary.json() == {"message": "Request Too Long"}
    # The same size as text is within 6 MB: it reaches the handler (whose own 1 MB limit answers)
    text = httpx.post(f"{stack.base_url}/api/health", content=b"a" * (5 * MB),
                      headers={"content-type": "text/plain"}, timeout=60)
    assert text.json() != {"message": "Request Too Long"}


def test_request_line_and_headers_over_10240_bytes_are_refused(stack: RunningStack) -> None:
    assert httpx.get(f"{stack.base_url}/api/health", headers={"x-pad": "p" * 9000}).status_code == 200
    refused = httpx.get(f"{stack.base_url}/api/health", headers={"x-pad": "p" * 10300})
    assert refused.status_code == 431
    assert refused.json() == {"message": "Request Header Fields Too Large"}


# Function URLs (the relay, the LLM proxy) -----------------------------------------------------------


def test_function_url_request_over_6_mb_is_refused_before_the_app(stack: RunningStack) -> None:
    refused = httpx.post(f"{stack.base_url}/llm/v1/messages", content=b"\x00\xff" * (5 * MB // 2),
                         headers={"content-type": "application/octet-stream"}, timeout=60)
    assert refused.status_code == 413
    assert refused.headers["x-amzn-errortype"] == "RequestTooLargeException"
    within = httpx.post(f"{stack.base_url}/llm/v1/messages", content=b"{}" * (2 * MB),
                        headers={"content-type": "application/json"}, timeout=60)
    assert within.headers.get("x-amzn-errortype") != "RequestTooLargeException"


# DynamoDB (moto in memory; DynamoDB Local checks these itself) --------------------------------------


def _put(table: str, key: str, size: int = 10) -> dict[str, object]:
    return {"Put": {"TableName": table, "Item": {"connection_id": {"S": key}, "pad": {"S": "p" * size}}}}


def test_batch_write_of_more_than_25_items_is_refused(stack: RunningStack) -> None:
    dynamodb, table = stack.aws("dynamodb"), stack.name("connections")
    puts = [{"PutRequest": _put(table, f"batch-{i}")["Put"]} for i in range(26)]  # type: ignore[index]
    for put in puts:
        del put["PutRequest"]["TableName"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        dynamodb.batch_write_item(RequestItems={table: puts})
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "Too many items" in refused.value.response["Error"]["Message"]
    assert "Item" not in dynamodb.get_item(TableName=table, Key={"connection_id": {"S": "batch-0"}})
    dynamodb.batch_write_item(RequestItems={table: puts[:25]})
    assert "Item" in dynamodb.get_item(TableName=table, Key={"connection_id": {"S": "batch-0"}})


def test_transaction_over_4_mb_is_refused(stack: RunningStack) -> None:
    dynamodb, table = stack.aws("dynamodb"), stack.name("connections")
    near_400_kb = 390 * 1024
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        dynamodb.transact_write_items(TransactItems=[_put(table, f"big-{i}", near_400_kb) for i in range(11)])
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "4 MB" in refused.value.response["Error"]["Message"]
    dynamodb.transact_write_items(TransactItems=[_put(table, f"big-{i}", near_400_kb) for i in range(10)])


def test_item_over_400_kb_is_refused(stack: RunningStack) -> None:
    dynamodb, table = stack.aws("dynamodb"), stack.name("connections")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        dynamodb.put_item(**_put(table, "huge", 410 * 1024)["Put"])  # type: ignore[arg-type]
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "Item size" in refused.value.response["Error"]["Message"]


# SQS (moto checks these itself) ---------------------------------------------------------------------


def test_sqs_refuses_a_message_over_1_mib_and_a_batch_over_10_or_1_mib(stack: RunningStack) -> None:
    sqs = stack.aws("sqs")
    queue = sqs.create_queue(QueueName=stack.name("fidelity-probe"))["QueueUrl"]
    with pytest.raises(botocore.exceptions.ClientError) as too_big:
        sqs.send_message(QueueUrl=queue, MessageBody="m" * (MB + 1))
    assert too_big.value.response["Error"]["Code"] == "InvalidParameterValue"
    sqs.send_message(QueueUrl=queue, MessageBody="m" * MB)
    entries = [{"Id": str(i), "MessageBody": "m"} for i in range(11)]
    with pytest.raises(botocore.exceptions.ClientError) as too_many:
        sqs.send_message_batch(QueueUrl=queue, Entries=entries)
    assert "TooManyEntriesInBatchRequest" in too_many.value.response["Error"]["Code"]
    with pytest.raises(botocore.exceptions.ClientError) as too_long:
        sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": "m" * (MB // 2)}
                                                        for i in range(3)])
    assert "BatchRequestTooLong" in too_long.value.response["Error"]["Code"]


def test_the_projects_queues_take_what_they_take_in_aws(stack: RunningStack) -> None:
    """Both runtimes set MaximumMessageSize from the topology (256 KiB), whatever the default."""
    sqs = stack.aws("sqs")
    queue = sqs.get_queue_url(QueueName=stack.name("sandbox-ops"))["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["MaximumMessageSize"])["Attributes"]
    assert attributes["MaximumMessageSize"] == str(256 * 1024)
    with pytest.raises(botocore.exceptions.ClientError) as too_big:
        sqs.send_message(QueueUrl=queue, MessageBody="m" * (256 * 1024 + 1))
    assert too_big.value.response["Error"]["Code"] == "InvalidParameterValue"


# The real gateway with test functions -----------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    ws_url: str
    management_url: str


SHORT_TIMEOUT = 1.0  # stands for the WebSocket API's 29 s
SHORT_STREAMING = StreamingLimits(response_bytes=3 * MB, uncapped_bytes=MB // 2, bytes_per_second=2 * MB)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    topology = Topology(tables=(), queues=(), buckets=(), secrets=(), functions=(
        Function("sized", "tests.fidelity_handlers.sized_response", "results of a chosen size",
                 http_routes=(HttpRoute("GET", "/sized"),)),
        Function("connect", "tests.fidelity_handlers.connect_posting_to_itself", "posts during $connect",
                 websocket_routes=(WebSocketRoute("$connect"),)),
        Function("default", "tests.fidelity_handlers.ignore", "ignores messages",
                 websocket_routes=(WebSocketRoute("$default"),)),
        Function("stream", "tests.fidelity_handlers.streaming_app", "streams bytes", streaming_url=True,
                 local_mount="/stream"),
    ))
    public, management = tcp_listener("127.0.0.1", 0), tcp_listener("127.0.0.1", 0)
    management_port = management.getsockname()[1]
    runtime = LambdaRuntime("us-east-1", max_concurrency=4)
    app = LocalGateway(topology, runtime, GatewayConfig(management_port=management_port,
                                                         streaming_limits=SHORT_STREAMING,
                                                         websocket_integration_timeout_seconds=SHORT_TIMEOUT))
    server = uvicorn.Server(uvicorn.Config(app, ws=ApiGatewayLimitsProtocol, ws_max_size=MESSAGE_LIMIT_BYTES,
                                           ws_ping_interval=None, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [public, management]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30)
    port = public.getsockname()[1]
    fidelity_handlers.MANAGEMENT_URL[:] = [f"http://127.0.0.1:{management_port}"]
    yield Gateway(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{management_port}")
    server.should_exit = True
    thread.join(15)
    runtime.shutdown()


def test_lambda_result_over_6_mb_is_an_internal_server_error(gateway: Gateway) -> None:
    within = httpx.get(f"{gateway.url}/sized", params={"bytes": str(6 * MB - 1024)}, timeout=60)
    assert within.status_code == 200 and len(within.content) == 6 * MB - 1024
    over = httpx.get(f"{gateway.url}/sized", params={"bytes": str(6 * MB + 1)}, timeout=60)
    assert over.status_code == 500
    assert over.json() == {"message": "Internal Server Error"}


def test_connect_cannot_post_to_the_connection_being_connected(gateway: Gateway) -> None:
    fidelity_handlers.CONNECT_POSTS.clear()
    with connect(gateway.ws_url, open_timeout=30) as client:
        [(connection_id, status, error_type)] = fidelity_handlers.CONNECT_POSTS
        assert (status, error_type) == (410, "GoneException")
        # Once $connect has returned, the same post reaches the client
        after = httpx.post(f"{gateway.management_url}/@connections/{connection_id}", content=b"hello after")
        assert after.status_code == 200
        assert client.recv(timeout=10) == "hello after"


def test_connect_slower_than_the_integration_timeout_fails_the_handshake(gateway: Gateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{gateway.ws_url}?slow={SHORT_TIMEOUT + 1}", open_timeout=30)
    assert refused.value.response.status_code == 504
    with connect(f"{gateway.ws_url}?slow={SHORT_TIMEOUT / 4}", open_timeout=30):
        pass  # within the timeout: connected


def test_websocket_url_over_4096_characters_is_refused_before_connect(gateway: Gateway) -> None:
    fidelity_handlers.CONNECT_POSTS.clear()
    base = f"{gateway.ws_url}?pad="
    host_and_scheme = len("wss://") + len(gateway.ws_url.split("/")[2])
    path_and_query = len(base) - len(f"ws://{gateway.ws_url.split('/')[2]}")
    room = WEBSOCKET_URL_CHARACTERS - host_and_scheme - path_and_query
    with connect(base + "p" * room, open_timeout=30):
        pass  # exactly 4096 characters: connected
    with pytest.raises(InvalidStatus) as refused:
        connect(base + "p" * (room + 1), open_timeout=30)
    assert refused.value.response.status_code == 414
    assert len(fidelity_handlers.CONNECT_POSTS) == 1  # $connect ran for the first only


def test_streamed_response_slows_to_the_cap_after_the_uncapped_burst(gateway: Gateway) -> None:
    # 1.5 MB: the first 0.5 MB uncapped, the next 1 MB at 2 MB/s, so no sooner than 0.5 s
    started = time.monotonic()
    response = httpx.get(f"{gateway.url}/stream/bytes", params={"n": str(3 * MB // 2)}, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and len(response.content) == 3 * MB // 2
    assert elapsed >= 0.45, f"1 MB past the burst took {elapsed:.2f} s; the cap allows 0.5 s at the least"


def test_streamed_response_is_cut_at_the_size_limit(gateway: Gateway) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{gateway.url}/stream/bytes", params={"n": str(4 * MB)}, timeout=60).raise_for_status()


def test_streaming_function_request_counts_a_binary_body_base64_encoded(gateway: Gateway) -> None:
    binary = b"\x00\xff" * (5 * MB // 2)  # 5 MB, 6.7 MB in base64
    refused = httpx.post(f"{gateway.url}/stream/echo", content=binary,
                         headers={"content-type": "application/octet-stream"}, timeout=60)
    assert refused.status_code == 413 and refused.headers["x-amzn-errortype"] == "RequestTooLargeException"
    accepted = httpx.post(f"{gateway.url}/stream/echo", content=binary[: 4 * MB],
                          headers={"content-type": "application/octet-stream"}, timeout=60)
    assert accepted.status_code == 200 and accepted.text == str(4 * MB)
