"""Tunnel bookkeeping: flow-control windows, the stream lifecycle, stream ids and frame reordering."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.shared.tunnel.codec import (
    MAX_BODY_CHUNK,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    Cancel,
    CancelReason,
    ErrorCode,
    ProtocolError,
    RequestBody,
    RequestEnd,
    RequestHead,
    ResponseBody,
    ResponseEnd,
    ResponseHead,
    StreamError,
    StreamMessage,
    WindowUpdate,
    WsClose,
    WsMessage,
    WsOpen,
    split_body,
)
from layers.shared.tunnel.flow import INITIAL_WINDOW, MAX_WINDOW, FlowControlError, ReceiveWindow, SendWindow
from layers.shared.tunnel.streams import (
    FrameReorderer,
    IllegalTransition,
    Phase,
    Side,
    StreamLifecycle,
    new_stream_id,
)

SERVER, AGENT = Side.SERVER, Side.AGENT
PROPERTY = settings(max_examples=200, deadline=None, database=None)

# ---------------------------------------------------------------------------------------------
# Send window


def test_a_send_window_starts_with_the_initial_credit_and_refuses_to_overdraw() -> None:
    window = SendWindow()
    window.consume(INITIAL_WINDOW - 10)
    with pytest.raises(FlowControlError):
        window.consume(11)
    assert window.available() == 10


def test_take_spends_what_credit_allows_and_zero_when_exhausted() -> None:
    window = SendWindow(100)
    assert window.take(MAX_BODY_CHUNK) == 100
    assert window.take(MAX_BODY_CHUNK) == 0
    window.grant(40)
    assert window.take(30) == 30
    assert window.available() == 10


def test_grants_must_be_positive_and_stay_under_the_maximum_window() -> None:
    window = SendWindow()
    with pytest.raises(FlowControlError):
        window.grant(0)
    with pytest.raises(FlowControlError):
        window.grant(MAX_WINDOW - INITIAL_WINDOW + 1)
    window.grant(MAX_WINDOW - INITIAL_WINDOW)
    assert window.available() == MAX_WINDOW


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(["consume", "take", "grant"]), st.integers(0, 400_000)), max_size=60))
def test_a_send_window_never_goes_negative(operations: list[tuple[str, int]]) -> None:
    window = SendWindow()
    for operation, size in operations:
        try:
            if operation == "consume":
                window.consume(size)
            elif operation == "take":
                assert window.take(size) <= size
            else:
                window.grant(size)
        except FlowControlError:
            pass
        assert 0 <= window.available() <= MAX_WINDOW


# ---------------------------------------------------------------------------------------------
# Receive window and the WINDOW_UPDATE policy


def test_a_peer_that_overruns_its_credit_is_a_flow_control_error() -> None:
    window = ReceiveWindow()
    window.consume(INITIAL_WINDOW)
    with pytest.raises(FlowControlError):
        window.consume(1)


def test_no_update_until_half_the_window_is_delivered_then_one_update_returns_it_all() -> None:
    # Given a full window received
    window = ReceiveWindow()
    window.consume(INITIAL_WINDOW)
    # When less than half has been delivered onward, then no update is due
    window.release(INITIAL_WINDOW // 2 - 1)
    assert window.take_update() == 0
    # When half has been delivered, then one update grants exactly what was delivered
    window.release(1)
    assert window.take_update() == INITIAL_WINDOW // 2
    assert window.available() == INITIAL_WINDOW // 2
    assert window.take_update() == 0


def test_received_bytes_that_are_not_delivered_earn_no_credit() -> None:
    # A slow browser holds the agent to one window of data in flight.
    window = ReceiveWindow()
    window.consume(INITIAL_WINDOW)
    assert window.take_update() == 0
    assert window.available() == 0
    assert window.undelivered() == INITIAL_WINDOW


def test_releasing_more_than_was_received_is_a_bug() -> None:
    window = ReceiveWindow()
    window.consume(10)
    with pytest.raises(ValueError):
        window.release(11)


def test_a_larger_receive_window_is_announced_by_the_first_update() -> None:
    window = ReceiveWindow(size=4 * INITIAL_WINDOW)
    assert window.available() == INITIAL_WINDOW  # what the peer assumes before hearing from us
    assert window.take_update() == 3 * INITIAL_WINDOW
    assert window.available() == 4 * INITIAL_WINDOW


@pytest.mark.parametrize("size", [INITIAL_WINDOW - 1, MAX_WINDOW + 1])
def test_a_receive_window_cannot_start_below_the_initial_one_or_above_the_maximum(size: int) -> None:
    with pytest.raises(ValueError):
        ReceiveWindow(size)


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(["consume", "release", "update"]), st.integers(0, 300_000)), max_size=80))
def test_every_byte_of_a_receive_window_is_accounted_for(operations: list[tuple[str, int]]) -> None:
    # available + undelivered + not yet granted == window size, whatever happens
    window = ReceiveWindow()
    granted_back = 0
    for operation, size in operations:
        try:
            if operation == "consume":
                window.consume(size)
            elif operation == "release":
                window.release(size)
            else:
                granted_back += window.take_update()
        except (FlowControlError, ValueError):
            pass
        assert window.available() >= 0 and window.undelivered() >= 0
        assert window.available() + window.undelivered() <= window.size


def test_a_5_mb_transfer_respects_credit_and_updates_at_most_once_per_half_window() -> None:
    # Given a sender and a receiver that delivers each chunk as it arrives
    body = random.Random(1).randbytes(5 * 1024 * 1024)
    sender, receiver = SendWindow(), ReceiveWindow()
    received = bytearray()
    updates: list[WindowUpdate] = []
    offset = 0
    seq = 1
    # When the sender sends whatever its credit allows, and the receiver returns credit per policy
    while offset < len(body):
        size = sender.take(min(MAX_BODY_CHUNK, len(body) - offset))
        assert size > 0, "the sender stalled with credit outstanding"
        (chunk,) = split_body(ResponseBody, 1, body[offset : offset + size], first_seq=seq)
        offset, seq = offset + size, seq + 1
        receiver.consume(len(chunk.data))
        received += chunk.data
        receiver.release(len(chunk.data))
        if increment := receiver.take_update():
            updates.append(WindowUpdate(1, len(updates), increment))
            sender.grant(increment)
        assert 0 <= sender.available() == receiver.available()
    # Then the body arrived whole, and each WINDOW_UPDATE returned at least half a window of credit
    assert bytes(received) == body
    assert all(update.increment >= INITIAL_WINDOW // 2 for update in updates)
    assert 0 < len(updates) <= len(body) // (INITIAL_WINDOW // 2)


def test_a_stalled_transfer_does_not_block_another_stream() -> None:
    # Given two streams whose large download's reader has stopped reading
    large_sender, large_receiver = SendWindow(), ReceiveWindow()
    small_sender, small_receiver = SendWindow(), ReceiveWindow()
    while size := large_sender.take(MAX_BODY_CHUNK):
        large_receiver.consume(size)  # arrives, never delivered
    # Then the large stream is held at one window, and the small one still has all its credit
    assert large_sender.available() == 0 and large_receiver.undelivered() == INITIAL_WINDOW
    assert small_sender.take(1000) == 1000
    small_receiver.consume(1000)


# ---------------------------------------------------------------------------------------------
# Stream lifecycle


def observe_all(stream: StreamLifecycle, frames: list[tuple[Side, StreamMessage]]) -> None:
    for sender, frame in frames:
        assert stream.observe(frame, sender)


def test_a_get_goes_from_head_to_closed() -> None:
    head = RequestHead(7, 0, "GET", "/session")
    stream = StreamLifecycle(head)
    observe_all(
        stream, [(SERVER, RequestEnd(7, 1)), (AGENT, ResponseHead(7, 0, 200)), (AGENT, ResponseBody(7, 1, b"[]"))]
    )
    assert not stream.closed
    assert stream.observe(ResponseEnd(7, 2), AGENT)
    assert stream.closed


def test_the_response_may_start_before_the_request_body_ends() -> None:
    # e.g. the app answers 413 while the upload is still coming; the server then ends or cancels
    stream = StreamLifecycle(RequestHead(7, 0, "POST", "/upload"))
    observe_all(
        stream,
        [
            (SERVER, RequestBody(7, 1, b"x")),
            (AGENT, ResponseHead(7, 0, 413)),
            (AGENT, ResponseEnd(7, 1)),
            (SERVER, RequestBody(7, 2, b"y")),
        ],
    )
    assert not stream.closed
    assert stream.observe(Cancel(7, 3, CancelReason.RESPONSE_COMPLETE), SERVER)
    assert stream.closed


def test_window_updates_flow_both_ways_while_the_stream_is_open() -> None:
    stream = StreamLifecycle(RequestHead(7, 0, "POST", "/"))
    observe_all(
        stream,
        [
            (AGENT, WindowUpdate(7, 0, 1000)),
            (SERVER, RequestEnd(7, 1)),
            (AGENT, ResponseHead(7, 1, 200)),
            (SERVER, WindowUpdate(7, 2, 1000)),
        ],
    )
    assert stream.next_seq(SERVER) == 3 and stream.next_seq(AGENT) == 2


def test_an_sse_stream_ends_with_cancel_when_the_browser_leaves() -> None:
    stream = StreamLifecycle(RequestHead(9, 0, "GET", "/event"))
    observe_all(
        stream,
        [
            (SERVER, RequestEnd(9, 1)),
            (AGENT, ResponseHead(9, 0, 200)),
            (AGENT, ResponseBody(9, 1, b"data: 1\n\n")),
            (AGENT, ResponseBody(9, 2, b"data: 2\n\n")),
            (SERVER, Cancel(9, 2, CancelReason.CLIENT_DISCONNECTED)),
        ],
    )
    assert stream.closed
    # A chunk that was already on its way is dropped, not an error
    assert stream.observe(ResponseBody(9, 3, b"data: 3\n\n"), AGENT) is False


def test_an_error_ends_the_stream_whatever_its_seq() -> None:
    stream = StreamLifecycle(RequestHead(9, 0, "GET", "/"))
    assert stream.observe(StreamError(9, 5, ErrorCode.UPSTREAM_UNAVAILABLE, "refused"), AGENT)
    assert stream.closed
    assert isinstance(stream.terminated_by, StreamError)


def test_a_websocket_is_accepted_with_101_and_closes_when_both_sides_have_closed() -> None:
    stream = StreamLifecycle(WsOpen(3, 0, "/pty/1/connect"))
    assert stream.phase(SERVER) is Phase.OPENING
    observe_all(
        stream,
        [
            (AGENT, ResponseHead(3, 0, 101)),
            (SERVER, WsMessage(3, 1, b"ls\r", text=True)),
            (AGENT, WsMessage(3, 1, b"file\r\n")),
            (SERVER, WsClose(3, 2, 1000)),
        ],
    )
    assert stream.phase(SERVER) is Phase.ENDED and not stream.closed
    assert stream.observe(WsMessage(3, 2, b"bye"), AGENT)  # the agent side is still open
    assert stream.observe(WsClose(3, 3, 1000), AGENT)
    assert stream.closed


def test_a_refused_websocket_carries_the_apps_http_answer() -> None:
    stream = StreamLifecycle(WsOpen(3, 0, "/pty/1/connect"))
    observe_all(stream, [(AGENT, ResponseHead(3, 0, 404)), (AGENT, ResponseBody(3, 1, b"no such pty"))])
    assert stream.phase(SERVER) is Phase.ENDED
    assert stream.observe(ResponseEnd(3, 2), AGENT)
    assert stream.closed


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([(SERVER, ResponseHead(7, 1, 200))], "RESPONSE_HEAD from the server"),
        ([(AGENT, RequestBody(7, 0, b"x"))], "REQUEST_BODY from the agent"),
        ([(AGENT, ResponseBody(7, 0, b"x"))], "while the agent side is awaiting_head"),
        ([(SERVER, RequestEnd(7, 1)), (SERVER, RequestBody(7, 2, b"x"))], "while the server side is ended"),
        ([(AGENT, ResponseHead(7, 0, 200)), (AGENT, ResponseHead(7, 1, 200))], "RESPONSE_HEAD from the agent"),
        ([(AGENT, ResponseHead(7, 0, 101))], "needs a final status"),
        ([(SERVER, RequestHead(7, 1, "GET", "/"))], "REQUEST_HEAD"),
        ([(SERVER, WsMessage(7, 1, b"x"))], "WS_MESSAGE"),
        ([(SERVER, RequestBody(7, 2, b"x"))], "expected 1"),
    ],
)
def test_frames_the_state_does_not_allow_are_illegal(frames: list[tuple[Side, StreamMessage]], message: str) -> None:
    stream = StreamLifecycle(RequestHead(7, 0, "POST", "/"))
    with pytest.raises(IllegalTransition, match=message):
        observe_all(stream, frames)


def test_websocket_messages_wait_for_the_agent_to_accept() -> None:
    stream = StreamLifecycle(WsOpen(3, 0, "/pty"))
    with pytest.raises(IllegalTransition, match="opening"):
        stream.observe(WsMessage(3, 1, b"too early"), SERVER)


def test_a_stream_opens_with_seq_zero() -> None:
    with pytest.raises(IllegalTransition):
        StreamLifecycle(RequestHead(7, 1, "GET", "/"))


# ---------------------------------------------------------------------------------------------
# Stream ids


def test_stream_ids_are_non_zero_64_bit_and_avoid_open_ones() -> None:
    draws = iter([4, 4, 9])  # randbelow(n) + 1: 5, 5, 10
    assert new_stream_id(open_ids={5}, randbelow=lambda bound: next(draws)) == 10
    ids = {new_stream_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(1 <= stream_id <= MAX_STREAM_ID for stream_id in ids)


# ---------------------------------------------------------------------------------------------
# Reordering


@PROPERTY
@given(st.permutations(list(range(12))))
def test_frames_in_any_arrival_order_come_out_in_seq_order(arrival: list[int]) -> None:
    # Given a response's frames handled by concurrent Lambda invocations in any order
    frames: list[StreamMessage] = [ResponseHead(1, 0, 200)]
    frames += [ResponseBody(1, seq, b"%d" % seq) for seq in range(1, 11)] + [ResponseEnd(1, 11)]
    reorderer = FrameReorderer()
    delivered = [ready for index in arrival for ready in reorderer.push(frames[index])]
    # Then they come out in the order sent, the end last, and the stream checks out
    assert delivered == frames
    stream = StreamLifecycle(RequestHead(1, 0, "GET", "/"))
    observe_all(stream, [(SERVER, RequestEnd(1, 1))] + [(AGENT, frame) for frame in delivered])
    assert stream.closed


def test_the_reorderer_reports_the_gap_and_drops_duplicates() -> None:
    reorderer = FrameReorderer()
    assert reorderer.push(ResponseBody(1, 1, b"b")) == []
    assert reorderer.push(ResponseBody(1, 1, b"b")) == []
    assert reorderer.waiting_for() == 0
    assert reorderer.push(ResponseHead(1, 0, 200)) == [ResponseHead(1, 0, 200), ResponseBody(1, 1, b"b")]
    assert reorderer.push(ResponseHead(1, 0, 200)) == []
    assert reorderer.waiting_for() is None


def test_cancel_and_error_are_not_held_behind_a_gap() -> None:
    reorderer = FrameReorderer()
    reorderer.push(ResponseBody(1, 2, b"late"))
    error = StreamError(1, 3, ErrorCode.UPSTREAM_FAILED)
    assert reorderer.push(error) == [error]


def test_the_reorderer_buffer_is_bounded() -> None:
    reorderer = FrameReorderer(max_buffered=3)
    for seq in (1, 2, 3):
        reorderer.push(ResponseBody(1, seq, b""))
    with pytest.raises(ProtocolError, match="wait for missing seq 0"):
        reorderer.push(ResponseBody(1, 4, b""))


def test_body_bytes_held_behind_a_gap_count_against_the_window() -> None:
    # An agent that never sends seq 0 cannot park more than its window in the receiver
    window = ReceiveWindow(INITIAL_WINDOW)
    reorderer = FrameReorderer(window=window)
    chunk = b"x" * MAX_PAYLOAD
    seq = 1
    with pytest.raises(FlowControlError):
        while True:
            reorderer.push(ResponseBody(1, seq, chunk))
            seq += 1
    assert seq - 1 == INITIAL_WINDOW // MAX_PAYLOAD
    assert reorderer.buffered_bytes() <= INITIAL_WINDOW
    # Delivered in order, the bytes were counted once: released, they can be granted back
    in_order = FrameReorderer(window=(fresh := ReceiveWindow(INITIAL_WINDOW)))
    assert in_order.push(ResponseBody(1, 1, b"abc")) == [] and fresh.available() == INITIAL_WINDOW - 3
    assert len(in_order.push(ResponseHead(1, 0, 200))) == 2 and fresh.undelivered() == 3
    assert in_order.push(ResponseBody(1, 1, b"abc")) == [] and fresh.undelivered() == 3  # a duplicate is free


def test_the_reorderer_bounds_the_bytes_it_holds_of_any_frame() -> None:
    # Heads are not flow-controlled; their payload still counts toward the byte bound
    reorderer = FrameReorderer(max_buffered_bytes=100_000)
    big_head = ResponseHead(1, 1, 200, [(b"x-filler", b"y" * 30_000)])
    reorderer.push(big_head)
    reorderer.push(ResponseHead(1, 2, 200, [(b"x-filler", b"y" * 30_000)]))
    reorderer.push(ResponseHead(1, 3, 200, [(b"x-filler", b"y" * 30_000)]))
    with pytest.raises(ProtocolError, match="wait for missing seq 0"):
        reorderer.push(ResponseHead(1, 4, 200, [(b"x-filler", b"y" * 30_000)]))
    assert reorderer.buffered_bytes() < 100_000
    # Filling the gap hands the frames out and frees what they held
    assert len(reorderer.push(ResponseHead(1, 0, 200))) == 4 and reorderer.buffered_bytes() == 0
