"""The error model of api.md, through the FastAPI app (no server, no network)."""

from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from functions.http_api.app import create_app
from layers.shared.errors import Conflict, RateLimited


class Body(BaseModel):
    name: str
    count: int


def client_with_probe_routes() -> TestClient:
    app = create_app()
    router = APIRouter()

    @router.post("/api/probe/validate")
    def validate(body: Body) -> dict:
        return body.model_dump()

    @router.get("/api/probe/conflict")
    def conflict() -> None:
        raise Conflict("That name is taken.")

    @router.get("/api/probe/limited")
    def limited() -> None:
        raise RateLimited(retry_after_seconds=30)

    @router.get("/api/probe/crash")
    def crash() -> None:
        raise RuntimeError("secret-token-123 leaked in an exception")

    app.include_router(router)
    return TestClient(app, raise_server_exceptions=False)


def test_domain_errors_map_to_their_status_and_body() -> None:
    response = client_with_probe_routes().get("/api/probe/conflict")
    assert response.status_code == 409
    assert response.json() == {"error": {"code": "conflict", "message": "That name is taken."}}


def test_rate_limit_carries_retry_after() -> None:
    response = client_with_probe_routes().get("/api/probe/limited")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"


def test_validation_errors_are_400_and_name_the_fields() -> None:
    response = client_with_probe_routes().post("/api/probe/validate", json={"name": "x", "count": "many"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "count" in response.json()["error"]["message"]


def test_malformed_json_is_400() -> None:
    response = client_with_probe_routes().post("/api/probe/validate", content=b"{not json",
                                               headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_unexpected_errors_are_500_without_details() -> None:
    response = client_with_probe_routes().get("/api/probe/crash")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "Something went wrong on our side."}}
    assert "secret-token-123" not in response.text


def test_oversized_bodies_are_413() -> None:
    response = client_with_probe_routes().post("/api/probe/validate", content=b"x" * (1024 * 1024 + 1),
                                               headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_client_address_behind_a_trusted_proxy(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from starlette.requests import Request

    from functions.http_api.dependencies import client_address
    from layers.shared.settings import get_settings

    scope = {"type": "http", "client": ("203.0.113.9", 1), "headers": [
        (b"x-forwarded-for", b"6.6.6.6, 198.51.100.7, 203.0.113.9")]}
    assert client_address(Request(scope)) == "203.0.113.9"  # no proxy trusted: the peer itself
    monkeypatch.setenv("AGENTSERVER_TRUSTED_PROXY_HOPS", "1")
    get_settings.cache_clear()
    # CloudFront appended the viewer (198.51.100.7); a forged first entry is ignored
    assert client_address(Request(scope)) == "198.51.100.7"
