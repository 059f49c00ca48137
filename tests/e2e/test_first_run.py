"""The first minutes of a new user: `agentserver up` with DynamoDB Local, as `make up` runs it, and a
client that knows nothing but the console's address."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import websockets

from tests.fake_agent import tunnel_subprotocols
from tests.identity_support import registered_agent
from tests.support import RunningStack, pids_with


def test_a_client_discovers_everything_from_the_console_address(tmp_path: Path) -> None:
    state_dir = tmp_path / "agentserver"
    stack = RunningStack(state_dir=state_dir, in_memory=False).start()
    try:
        console = f"http://localhost:{stack.port}"
        # The console page is there
        page = httpx.get(f"{console}/")
        assert page.status_code == 200 and "agentserver" in page.text
        # config.json tells where the API and the WebSocket API are
        config = httpx.get(f"{console}/config.json").json()
        assert httpx.get(f"{config['api_url']}/api/health").json()["status"] == "ok"

        # A new user registers a local agent with a code, and its tunnel answers on the advertised URL
        _, _, registration = registered_agent(config["api_url"], "firstrun")
        assert registration["tunnel_url"] == config["websocket_url"]

        async def ping_over_the_advertised_websocket() -> dict:
            async with websockets.connect(config["websocket_url"],
                                          subprotocols=tunnel_subprotocols(registration["tunnel_token"])) as ws:
                await ws.send(json.dumps({"action": "ping", "id": "first"}))
                return json.loads(await asyncio.wait_for(ws.recv(), 10))

        assert asyncio.run(ping_over_the_advertised_websocket())["action"] == "pong"
        # The data lives under the state directory the user chose
        assert any((state_dir / "dynamodb").iterdir())
    finally:
        output = stack.stop()
    assert "is up" in output and "Traceback" not in output
    assert not pids_with(str(state_dir))
