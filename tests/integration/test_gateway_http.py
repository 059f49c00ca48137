"""The HTTP side of the local gateway, over real HTTP against `agentserver up`."""

import asyncio
import http.client

import httpx

from tests.support import RunningStack


def test_health_answers_through_the_lambda_handler(stack: RunningStack) -> None:
    # When a client asks for the health document
    response = httpx.get(f"{stack.base_url}/api/health")
    # Then the FastAPI app behind Mangum answers as api.md says
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": "0.1.0"}


def test_openapi_document_lists_the_health_route(stack: RunningStack) -> None:
    document = httpx.get(f"{stack.base_url}/api/openapi.json").json()
    assert document["info"]["title"] == "agentserver API"
    assert "/api/health" in document["paths"]


def test_config_json_gives_every_endpoint_a_client_needs(stack: RunningStack) -> None:
    config = httpx.get(f"{stack.base_url}/config.json").json()
    assert set(config) == {"api_url", "websocket_url", "relay_url", "llm_base_url", "version", "sandbox_isolation"}
    assert config["relay_url"] == f"http://{{sandbox_id}}.localhost:{stack.port}"
    assert config["websocket_url"] == f"ws://localhost:{stack.port}/ws"
    assert config["api_url"] == f"http://localhost:{stack.port}"


def test_unknown_api_path_gets_the_error_body_of_api_md(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.base_url}/api/does-not-exist")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Nothing was found there."}}


def test_wrong_method_is_405_without_a_stack_trace(stack: RunningStack) -> None:
    response = httpx.post(f"{stack.base_url}/api/health", json={"x": 1})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "Traceback" not in response.text


def test_body_over_the_http_api_payload_limit_is_413(stack: RunningStack) -> None:
    # Given a body over API Gateway's 10 MB request limit
    body = b"x" * (10 * 1024 * 1024 + 1)
    response = httpx.post(f"{stack.base_url}/api/health", content=body, timeout=30)
    assert response.status_code == 413


def test_console_placeholder_is_served_at_the_root(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.base_url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "agentserver" in response.text
    # Deep links of the single-page console fall back to its index; missing assets do not.
    assert httpx.get(f"{stack.base_url}/workspaces/abc").status_code == 200
    assert httpx.get(f"{stack.base_url}/assets/missing.js").status_code == 404



def test_static_hosting_never_leaves_the_console_folder(stack: RunningStack) -> None:
    # Given a raw request line that climbs out of the folder (httpx would normalise it away)
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=5)
    connection.request("GET", "/../../../../etc/passwd")
    response = connection.getresponse()
    body = response.read().decode(errors="replace")
    connection.close()
    # Then nothing outside the console's files is served
    assert response.status == 404
    assert "root:" not in body


def test_query_string_and_cookies_reach_the_handler_unharmed(stack: RunningStack) -> None:
    # The health route ignores them, but a malformed event would make Mangum fail with a 500.
    response = httpx.get(f"{stack.base_url}/api/health?a=1&a=2&b=", cookies={"c1": "v1", "c2": "v2"})
    assert response.status_code == 200


def test_concurrent_requests_are_all_served(stack: RunningStack) -> None:
    # Given many requests at once (handlers run on a pool of threads, like concurrent Lambdas)
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.base_url) as client:
            responses = await asyncio.gather(*(client.get("/api/health") for _ in range(100)))
        return [response.status_code for response in responses]

    # Then every one is answered by the handler
    assert asyncio.run(burst()) == [200] * 100
