"""Live viewing through the real (embedded) WebSocket API: a ticket from the REST API, the viewer
subprotocol at $connect, the `subscribe` route, the backlog then live pushes through @connections,
in order, without gaps or duplicates across a reconnect, identical for two viewers, confined to the
viewer's session and workspace, and ended by a removal from the workspace."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import websockets

from layers.shared.dal import session_viewers as viewers_dal
from layers.shared.domain.session_viewers import VIEWER_SUBPROTOCOL
from tests.identity_support import Browser, join, sign_up, unique_email
from tests.support import RunningStack, wait_until
from tests.viewer_support import (
    SessionLogDriver,
    connect_viewer,
    new_events,
    product_code_on,
    receive,
    received_seqs,
    received_until_live,
    subscribe,
    viewer_ticket,
)


@dataclass
class Team:
    owner: Browser
    guest: Browser
    guest_id: str
    workspace_id: str


@pytest.fixture(scope="module")
def log(stack: RunningStack) -> SessionLogDriver:
    return SessionLogDriver(stack)


@pytest.fixture
def team(stack: RunningStack) -> Iterator[Team]:
    """An owner's workspace with a guest in it (guests may watch)."""
    owner, _ = sign_up(stack.base_url, "owner")
    guest, guest_user = sign_up(stack.base_url, "guest")
    workspace_id = owner.get("/api/workspaces").json()["items"][0]["id"]
    join(owner, workspace_id, guest, guest_user["email"], "guest")
    yield Team(owner, guest, guest_user["id"], workspace_id)
    owner.close()
    guest.close()


def viewer_items(stack: RunningStack, session_id: str) -> list[dict]:
    found = stack.aws("dynamodb").query(TableName=stack.name("viewers"), KeyConditionExpression="pk = :pk",
                                        ExpressionAttributeValues={":pk": {"S": f"SESSION#{session_id}"}})
    return list(found["Items"])


def test_a_viewer_gets_the_backlog_then_live_events_in_order(stack: RunningStack, log: SessionLogDriver,
                                                             team: Team) -> None:
    session_id = log.create_session(team.owner, team.workspace_id)
    log.append(session_id, new_events(3, "before"))
    issued = viewer_ticket(team.guest, session_id)
    assert issued["protocols"] == [VIEWER_SUBPROTOCOL, issued["ticket"]] and issued["ticket"] not in issued["url"]

    async def scenario() -> tuple[str | None, list[int], dict, list[int]]:
        async with connect_viewer(stack, session_id, issued["ticket"]) as ws:
            await subscribe(ws, after=0)
            backlog, live = await received_until_live(ws)
            wait_until(lambda: viewer_items(stack, session_id))
            for batch in range(3):  # appends of 1, 2 and 3 events, each pushed as it is logged
                await asyncio.to_thread(log.append, session_id, new_events(batch + 1, f"live{batch}"))
            return ws.subprotocol, backlog, live, await received_seqs(ws, until=10)

    subprotocol, backlog, live, pushed = asyncio.run(scenario())
    assert subprotocol == VIEWER_SUBPROTOCOL
    # seq 1 is the turn.queued of the turn the events belong to
    assert backlog == [1, 2, 3, 4] and live == {"type": "live", "last_seq": 4}
    assert pushed == [5, 6, 7, 8, 9, 10]
    # Its $disconnect removed the viewer: no push goes to a closed connection
    wait_until(lambda: viewer_items(stack, session_id) == [])


def test_a_reconnect_after_n_continues_without_duplicates_or_gaps(stack: RunningStack, log: SessionLogDriver,
                                                                   team: Team) -> None:
    session_id = log.create_session(team.owner, team.workspace_id)
    log.append(session_id, new_events(4, "first"))

    async def first_view() -> list[int]:
        async with connect_viewer(stack, session_id, viewer_ticket(team.guest, session_id)["ticket"]) as ws:
            await subscribe(ws, after=0)
            backlog, _ = await received_until_live(ws)
            await asyncio.to_thread(log.append, session_id, new_events(2, "seen"))
            return backlog + await received_seqs(ws, until=7)

    seen = asyncio.run(first_view())
    wait_until(lambda: viewer_items(stack, session_id) == [])
    log.append(session_id, new_events(3, "while away"))  # 8..10: nobody watching

    async def second_view(after: int) -> list[int]:
        async with connect_viewer(stack, session_id, viewer_ticket(team.guest, session_id)["ticket"]) as ws:
            await subscribe(ws, after=after)
            backlog, live = await received_until_live(ws)
            assert live["last_seq"] == 10
            await asyncio.to_thread(log.append, session_id, new_events(1, "back"))
            return backlog + await received_seqs(ws, until=11)

    again = asyncio.run(second_view(after=seen[-1]))
    assert seen == [1, 2, 3, 4, 5, 6, 7] and again == [8, 9, 10, 11]
    assert seen + again == list(range(1, 12))


def test_two_viewers_see_identical_sequences(stack: RunningStack, log: SessionLogDriver, team: Team) -> None:
    session_id = log.create_session(team.owner, team.workspace_id)
    log.append(session_id, new_events(2, "old"))

    async def scenario() -> tuple[list[int], list[int]]:
        async with connect_viewer(stack, session_id, viewer_ticket(team.owner, session_id)["ticket"]) as first:
            await subscribe(first, after=0)
            first_seqs, _ = await received_until_live(first)
            await asyncio.to_thread(log.append, session_id, new_events(3, "between"))  # before the second joins
            async with connect_viewer(stack, session_id, viewer_ticket(team.guest, session_id)["ticket"]) as second:
                await subscribe(second, after=0)
                second_seqs, _ = await received_until_live(second)
                for n in range(5):
                    await asyncio.to_thread(log.append, session_id, new_events(1, f"both{n}"))
                first_seqs += await received_seqs(first, until=11)
                second_seqs += await received_seqs(second, until=11)
                return first_seqs, second_seqs

    first_seqs, second_seqs = asyncio.run(scenario())
    assert first_seqs == second_seqs == list(range(1, 12))


def test_a_viewer_hears_only_its_own_session_and_ignores_what_it_is_sent(
        stack: RunningStack, log: SessionLogDriver, team: Team) -> None:
    # Another workspace, of someone else, with its own busy session
    stranger, _ = sign_up(stack.base_url, "stranger")
    elsewhere = log.create_session(stranger, stranger.get("/api/workspaces").json()["items"][0]["id"])
    sibling = log.create_session(team.owner, team.workspace_id)
    session_id = log.create_session(team.owner, team.workspace_id)
    # The guest can get no ticket for the stranger's session: 404, as for a session that does not exist
    refused = team.guest.post(f"/api/sessions/{elsewhere}/viewer-tickets")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert team.guest.post("/api/sessions/se_nothing/viewer-tickets").status_code == 404

    async def scenario() -> list[dict]:
        async with connect_viewer(stack, session_id, viewer_ticket(team.guest, session_id)["ticket"]) as ws:
            await subscribe(ws, after=0)
            await received_until_live(ws)
            # A viewer sends nothing else: whatever it sends has no effect
            for junk in ("hello", '{"action": "ping"}', '{"action": "subscribe", "after": 0}', "AAAA"):
                await ws.send(junk)
            await asyncio.to_thread(log.append, elsewhere, new_events(2, "foreign"))
            await asyncio.to_thread(log.append, sibling, new_events(2, "sibling"))
            await asyncio.to_thread(log.append, session_id, new_events(1, "mine"))
            return [await receive(ws)]

    (only,) = asyncio.run(scenario())
    assert only["type"] == "events" and [(e["seq"], e["id"]) for e in only["events"]] == [(2, "mine-0")]
    stranger.close()


def test_handshakes_without_a_valid_ticket_in_the_subprotocol_are_refused(
        stack: RunningStack, log: SessionLogDriver, team: Team) -> None:
    session_id = log.create_session(team.owner, team.workspace_id)
    other_session = log.create_session(team.owner, team.workspace_id)

    async def status(ticket: str | None, session: str = session_id, query: str = "") -> int:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect_viewer(stack, session, ticket, query):
                pass
        return refused.value.response.status_code

    async def scenario() -> dict[str, int]:
        statuses = {"forged": await status("asw_forged"), "none": await status(None)}
        in_url = viewer_ticket(team.guest, session_id)["ticket"]
        statuses["in the URL"] = await status(None, query=f"&ticket={in_url}")
        statuses["after being in the URL"] = await status(in_url)  # it was burnt
        for_another = viewer_ticket(team.guest, other_session)["ticket"]
        statuses["for another session"] = await status(for_another)
        used = viewer_ticket(team.guest, session_id)["ticket"]
        async with connect_viewer(stack, session_id, used):
            pass
        statuses["used"] = await status(used)
        return statuses

    assert asyncio.run(scenario()) == {"forged": 401, "none": 401, "in the URL": 400, "after being in the URL": 401,
                                       "for another session": 401, "used": 401}


def test_a_member_removed_from_the_workspace_gets_no_further_push(stack: RunningStack, log: SessionLogDriver,
                                                                   team: Team) -> None:
    session_id = log.create_session(team.owner, team.workspace_id)

    async def scenario() -> tuple[list[int], dict, int | None]:
        async with connect_viewer(stack, session_id, viewer_ticket(team.guest, session_id)["ticket"]) as ws:
            await subscribe(ws, after=0)
            await received_until_live(ws)
            await asyncio.to_thread(log.append, session_id, new_events(1, "allowed"))
            before = await received_seqs(ws, until=2)
            removed = await asyncio.to_thread(
                team.owner.delete, f"/api/workspaces/{team.workspace_id}/members/{team.guest_id}")
            assert removed.status_code == 204
            # The push path's membership cache lives up to a minute (RECHECK_AFTER): a new one, as a new
            # Lambda instance or a minute later, reads the removal
            with product_code_on(stack):
                viewers_dal._push_wiring.cache_clear()
            await asyncio.to_thread(log.append, session_id, new_events(1, "refused"))
            refusal = await receive(ws)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await receive(ws)
            return before, refusal, closed.value.rcvd.code if closed.value.rcvd else None

    before, refusal, _ = asyncio.run(scenario())
    assert before == [2]
    assert refusal["type"] == "error" and refusal["error"]["code"] == "access_revoked"
    wait_until(lambda: viewer_items(stack, session_id) == [])
    # And no new ticket: the guest is no member any more
    assert team.guest.post(f"/api/sessions/{session_id}/viewer-tickets").status_code == 404


def test_tickets_are_refused_to_strangers_and_anonymous_callers(stack: RunningStack, log: SessionLogDriver,
                                                                team: Team) -> None:
    session_id = log.create_session(team.owner, team.workspace_id)
    outsider, _ = sign_up(stack.base_url, unique_email("outsider").split("@")[0])
    assert outsider.post(f"/api/sessions/{session_id}/viewer-tickets").status_code == 404
    anonymous = Browser(base_url=stack.base_url, timeout=30)
    assert anonymous.post(f"/api/sessions/{session_id}/viewer-tickets").status_code == 401
    outsider.close()
    anonymous.close()
