"""Reading a local app's response ahead of the tunnel, so that what is already read leaves together.

httpx hands a response over in reads of at most 64 KB. Sent one by one, a fast download would
cost a WebSocket message (a `$default` invocation on AWS) per 64 KB. Read ahead in a task of its
own, the bytes that piled up while the previous message was being written go out in one full
message. Nothing ever waits to fill a message: a slow response (an SSE event) leaves the moment
it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType


class ReadAhead:
    def __init__(self, source: AsyncIterator[bytes], limit: int):
        self._source = source
        self._limit = limit  # reading pauses once this much is waiting
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._finished = False
        self._error: Exception | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReadAhead:
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pump(self) -> None:
        try:
            async for chunk in self._source:
                if not chunk:
                    continue
                self._chunks.append(chunk)
                self._buffered += len(chunk)
                self._arrived.set()
                while self._buffered >= self._limit:
                    self._room.clear()
                    await self._room.wait()
        except Exception as error:  # handed to the reader after the bytes read before it
            self._error = error
        finally:
            self._finished = True
            self._arrived.set()

    async def take(self, most: int) -> bytes | None:
        """Everything read so far, up to `most` bytes (at least one); None once the source is
        exhausted. Waits only while nothing has been read."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._finished:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        parts: list[bytes] = []
        size = 0
        while self._chunks and size < most:
            chunk = self._chunks.popleft()
            if size + len(chunk) > most:
                self._chunks.appendleft(chunk[most - size:])
                chunk = chunk[: most - size]
            parts.append(chunk)
            size += len(chunk)
        self._buffered -= size
        self._room.set()
        return b"".join(parts)
