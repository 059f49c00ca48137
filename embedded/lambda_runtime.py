"""Runs the topology's Lambda handlers in this process, the way the Lambda service would call them."""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from layers.shared.topology import Function

ACCOUNT_ID = "000000000000"


class InvocationTimeout(Exception):
    pass


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    timeout_seconds: int
    region: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    started_at: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        elapsed = time.monotonic() - self.started_at
        return max(0, int((self.timeout_seconds - elapsed) * 1000))


def load_handler(dotted_path: str) -> Callable[[dict[str, Any], Any], Any]:
    module_name, _, attribute = dotted_path.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


def _give_thread_an_event_loop() -> None:
    """Lambda runs a handler on a main thread, where `asyncio.get_event_loop()` works (Mangum
    relies on it); each worker thread here gets a loop of its own to match."""
    try:
        import uvloop  # the `local` extra installs it; the gateway's own loop uses it too

        asyncio.set_event_loop(uvloop.new_event_loop())
    except ImportError:
        asyncio.set_event_loop(asyncio.new_event_loop())


class LambdaRuntime:
    """Invokes handlers on a thread pool (handlers are synchronous, like in Lambda)."""

    def __init__(self, region: str, max_concurrency: int = 32):
        self.region = region
        self.executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="lambda",
                                           initializer=_give_thread_an_event_loop)
        self._handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}

    def handler(self, function: Function) -> Callable[[dict[str, Any], Any], Any]:
        if function.name not in self._handlers:
            self._handlers[function.name] = load_handler(function.handler)
        return self._handlers[function.name]

    def invoke_sync(self, function: Function, event: dict[str, Any]) -> Any:
        context = LambdaContext(function.name, function.memory_mb, function.timeout_seconds, self.region)
        return self.handler(function)(event, context)

    async def invoke(self, function: Function, event: dict[str, Any], timeout: float | None = None) -> Any:
        """Invoke on the pool; raises InvocationTimeout past the function's (or the caller's) limit."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self.invoke_sync, function, event)
        limit = min(timeout or function.timeout_seconds, function.timeout_seconds)
        try:
            async with asyncio.timeout(limit):  # no extra task per call, unlike wait_for
                return await future
        except TimeoutError as error:
            raise InvocationTimeout(f"{function.name} did not finish within {limit} s") from error

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
