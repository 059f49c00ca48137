"""Credit-based flow control for one stream, as in HTTP/2 but per stream only.

Each side of a stream may send at most the credit the other side has given it. Credit covers body
bytes only: the payload length of REQUEST_BODY, RESPONSE_BODY and WS_MESSAGE frames. Every stream
starts with INITIAL_WINDOW in each direction, and WINDOW_UPDATE adds to it.

Credit comes back when the receiver has *delivered* the bytes (written them to the browser or to the
local app), not when they arrive: a slow reader then stops a fast writer at one window of data,
and a large transfer cannot fill the buffers that other streams share. The receiver returns credit
in batches of half a window so WINDOW_UPDATE costs one frame per half window, not one per chunk.

These are plain counters for the async code to call; they never block and never go negative.
"""

from __future__ import annotations

from layers.shared.tunnel.codec import ProtocolError

# 256 KiB: eight full frames in flight per stream, enough to keep a loopback or LAN path busy, while
# 100 concurrent streams still bound the buffered data to 25 MiB. A receiver that wants more (a large
# download) raises its own window with `ReceiveWindow(size=...)`.
INITIAL_WINDOW = 256 * 1024
MAX_WINDOW = 2**31 - 1


class FlowControlError(ProtocolError):
    """A peer sent more than its credit, or granted credit beyond MAX_WINDOW."""


def _check_size(size: int, what: str) -> None:
    if size < 0:
        raise ValueError(f"{what} cannot be negative, got {size}")


class SendWindow:
    """How many body bytes this side may still send on one stream."""

    def __init__(self, initial: int = INITIAL_WINDOW):
        _check_size(initial, "a window")
        self._available = initial

    def available(self) -> int:
        return self._available

    def consume(self, size: int) -> None:
        """Spends credit for `size` body bytes about to be sent; refuses to overdraw."""
        _check_size(size, "a body size")
        if size > self._available:
            raise FlowControlError(f"sending {size} body bytes needs credit; only {self._available} available")
        self._available -= size

    def take(self, wanted: int) -> int:
        """Spends and returns as much of `wanted` as the credit allows (0 when the sender must wait)."""
        _check_size(wanted, "a body size")
        granted = min(wanted, self._available)
        self._available -= granted
        return granted

    def grant(self, increment: int) -> None:
        """Adds a received WINDOW_UPDATE's increment."""
        if increment < 1:
            raise FlowControlError(f"a window increment must be positive, got {increment}")
        if self._available + increment > MAX_WINDOW:
            raise FlowControlError(f"window would grow past {MAX_WINDOW} bytes")
        self._available += increment


class ReceiveWindow:
    """The credit this side has given the peer on one stream, and when to give more.

    Every byte of the window is in exactly one place: still available to the peer, received but not
    yet delivered (`consume` → `release`), or delivered but not yet granted back (`take_update`).
    """

    def __init__(self, size: int = INITIAL_WINDOW):
        if not INITIAL_WINDOW <= size <= MAX_WINDOW:
            # The peer starts out believing INITIAL_WINDOW; credit already given cannot be taken back.
            raise ValueError(f"a receive window is between {INITIAL_WINDOW} and {MAX_WINDOW} bytes, got {size}")
        self._size = size
        self._available = INITIAL_WINDOW
        self._undelivered = 0
        # A window larger than the initial one is announced by the first update.
        self._ungranted = size - INITIAL_WINDOW
        self._update_threshold = size // 2

    @property
    def size(self) -> int:
        return self._size

    def available(self) -> int:
        """Body bytes the peer may still send before it has to wait for an update."""
        return self._available

    def undelivered(self) -> int:
        return self._undelivered

    def consume(self, size: int) -> None:
        """Counts body bytes that arrived; a peer that overran its credit broke the protocol."""
        _check_size(size, "a body size")
        if size > self._available:
            raise FlowControlError(f"peer sent {size} body bytes with only {self._available} bytes of credit")
        self._available -= size
        self._undelivered += size

    def release(self, size: int) -> None:
        """Counts received bytes that have been delivered onward; they may now be granted again."""
        _check_size(size, "a body size")
        if size > self._undelivered:
            raise ValueError(f"releasing {size} bytes, but only {self._undelivered} are undelivered")
        self._undelivered -= size
        self._ungranted += size

    def take_update(self) -> int:
        """The WINDOW_UPDATE increment to send now, or 0 while less than half a window is ready to grant.

        Stop calling this once the peer has ended its side of the stream: no more body will come.
        """
        if self._ungranted < self._update_threshold:
            return 0
        increment, self._ungranted = self._ungranted, 0
        self._available += increment
        return increment
