"""Every route with an id in its path answers an over-long id with api.md's 404, never a 500.

A longer id than any the server makes names nothing; passed on, it would reach DynamoDB as a key over
its size limit (moto refuses it as DynamoDB does) and the caller would get a 500.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from functions.http_api import dependencies
from functions.http_api.app import MAX_PATH_ID_LENGTH, app

OVERSIZED = "x" * 3000  # over DynamoDB's 2048-byte partition key limit


def _routes_with_path_ids() -> list[tuple[str, str]]:
    """Every (method, path template) the API publishes with a `{param}` in it, from its OpenAPI."""
    return sorted((method.upper(), path) for path, operations in app.openapi()["paths"].items()
                  if "{" in path for method in operations)


@pytest.fixture
def signed_in(moto_aws: None) -> Iterator[TestClient]:
    caches = (dependencies.store, dependencies.auth_policy, dependencies.sign_up_policy)
    for cache in caches:
        cache.cache_clear()
    with TestClient(app, base_url="http://localhost") as client:
        created = client.post("/api/auth/register", json={"email": "someone@example.com",
                                                          "password": "correct horse battery staple"})
        assert created.status_code == 201, created.text
        client.headers["x-csrf-token"] = client.cookies["agentserver_csrf"]
        yield client
    for cache in caches:
        cache.cache_clear()


def test_the_api_has_routes_with_path_ids_to_check() -> None:
    # Guards the parametrisation below against silently covering nothing
    assert len(_routes_with_path_ids()) >= 20


def test_an_over_long_path_id_is_a_404_not_a_500(signed_in: TestClient) -> None:
    # One client for every route (a fresh moto and sign-up per route would cost seconds each)
    answers = {}
    for method, path in _routes_with_path_ids():
        url = re.sub(r"\{[^}]+\}", OVERSIZED, path)
        response = signed_in.request(method, url, json={} if method in ("POST", "PUT", "PATCH") else None)
        answers[f"{method} {path}"] = (response.status_code, response.json().get("error", {}).get("code"))
    assert {route: answer for route, answer in answers.items() if answer != (404, "not_found")} == {}


def test_an_id_at_the_bound_is_looked_up_as_usual(signed_in: TestClient) -> None:
    # An id of the largest allowed length is not refused by the bound: the lookup itself says not found
    response = signed_in.get(f"/api/sandboxes/{'s' * MAX_PATH_ID_LENGTH}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    one_over = signed_in.get(f"/api/workspaces/{'w' * (MAX_PATH_ID_LENGTH + 1)}")
    assert one_over.status_code == 404
