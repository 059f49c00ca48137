"""The role policy: which workspace role may do what. Every route consults this one table.

`docs/roles.md` is rendered from it (`python -m layers.shared.domain.roles`), and a unit test keeps
the two equal.
"""

from __future__ import annotations

from enum import StrEnum

from layers.shared.errors import Forbidden, NotFound


class Role(StrEnum):
    guest = "guest"
    developer = "developer"
    maintainer = "maintainer"
    owner = "owner"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


class SystemRole(StrEnum):
    user = "user"
    admin = "admin"


class Action(StrEnum):
    workspace_read = "workspace.read"
    workspace_rename = "workspace.rename"
    workspace_delete = "workspace.delete"
    members_list = "members.list"
    members_add = "members.add"
    members_change_role = "members.change_role"
    members_remove = "members.remove"
    sandboxes_list = "sandboxes.list"
    sandbox_read = "sandbox.read"
    sandbox_rename = "sandbox.rename"
    sandbox_delete_own = "sandbox.delete_own"
    sandbox_delete_any = "sandbox.delete_any"
    agent_code_create = "agent_code.create"
    sandbox_open = "sandbox.open"
    llm_quota_read = "llm_quota.read"
    llm_quota_set = "llm_quota.set"
    usage_read = "usage.read"
    sandbox_create = "sandbox.create"
    sandbox_pause = "sandbox.pause"
    sandbox_resume = "sandbox.resume"
    sandbox_events = "sandbox.events"
    session_watch = "session.watch"
    invitations_list = "invitations.list"
    invitations_revoke = "invitations.revoke"
    sandbox_open_others_local = "sandbox.open_others_local"
    sandbox_share_own = "sandbox.share_own"
    sandbox_unshare_any = "sandbox.unshare_any"
    sessions_read = "sessions.read"
    session_create = "session.create"
    turn_post = "turn.post"
    turn_cancel = "turn.cancel"
    approval_answer = "approval.answer"
    session_defaults_set = "session_defaults.set"
    cards_read = "cards.read"
    card_edit = "card.edit"
    message_send = "message.send"
    inbox_read = "inbox.read"
    inbox_ack = "inbox.ack"
    agent_inbox_read = "agent_inbox.read"
    task_create = "task.create"
    tasks_read = "tasks.read"
    task_cancel = "task.cancel"
    interactions_read = "interactions.read"


# The minimum workspace role for each action (api.md, "Workspaces and members").
POLICY: dict[Action, Role] = {
    Action.workspace_read: Role.guest,
    Action.workspace_rename: Role.maintainer,
    Action.workspace_delete: Role.owner,
    Action.members_list: Role.guest,
    Action.members_add: Role.maintainer,
    Action.members_change_role: Role.owner,
    Action.members_remove: Role.owner,
    Action.sandboxes_list: Role.guest,
    Action.sandbox_read: Role.guest,
    Action.sandbox_rename: Role.developer,
    Action.sandbox_delete_own: Role.developer,
    Action.sandbox_delete_any: Role.maintainer,
    Action.agent_code_create: Role.developer,
    Action.sandbox_open: Role.developer,
    Action.llm_quota_read: Role.guest,
    Action.llm_quota_set: Role.maintainer,
    Action.usage_read: Role.guest,
    Action.sandbox_create: Role.developer,
    Action.sandbox_pause: Role.developer,
    Action.sandbox_resume: Role.developer,
    Action.sandbox_events: Role.guest,
    Action.session_watch: Role.guest,  # reading: guests watch, as they read sessions
    Action.invitations_list: Role.maintainer,
    Action.invitations_revoke: Role.maintainer,  # and only invitations of a role the caller may give
    Action.sandbox_open_others_local: Role.developer,
    Action.sandbox_share_own: Role.developer,
    Action.sandbox_unshare_any: Role.maintainer,
    # Sessions: guests read; driving an agent runs code on it, so a developer's (and for another member's local
    # agent, only when it is shared: domain/sessions.py authorize_drive, as for opening it).
    Action.sessions_read: Role.guest,
    Action.session_create: Role.developer,
    Action.turn_post: Role.developer,
    Action.turn_cancel: Role.developer,
    Action.approval_answer: Role.developer,
    Action.session_defaults_set: Role.maintainer,
    # Agent cards: guests discover; developers write (another member's unshared local agent: only its owner,
    # domain/cards.py authorize_edit).
    Action.cards_read: Role.guest,
    Action.card_edit: Role.developer,
    # Mailboxes: a message to an agent drives it (it becomes a turn), so sending is a developer's; each member reads
    # and acks their own inbox; agents' mailboxes are read like sessions.
    Action.message_send: Role.developer,
    Action.inbox_read: Role.guest,
    Action.inbox_ack: Role.guest,
    Action.agent_inbox_read: Role.guest,
    # Delegation: a task drives its assignee as a message does, so asking is a developer's; the requester (or a
    # developer) cancels; everyone in the workspace reads tasks and the interaction record (the audit trail).
    Action.task_create: Role.developer,
    Action.tasks_read: Role.guest,
    Action.task_cancel: Role.developer,
    Action.interactions_read: Role.guest,
}

# What an agent may do with its own credential (its proxy token, on the /api/agent/... routes), always inside its
# own workspace: discover, message, read and ack its own mailbox, delegate, follow and cancel its own tasks. Nothing
# else: an agent never manages members, sandboxes, quotas or other agents' cards.
AGENT_ACTIONS: frozenset[Action] = frozenset({
    Action.cards_read, Action.message_send, Action.inbox_read, Action.inbox_ack,
    Action.task_create, Action.tasks_read, Action.task_cancel,
})

# The roles each role may hand out when adding a member (a maintainer may add developers and guests).
ASSIGNABLE: dict[Role, frozenset[Role]] = {
    Role.guest: frozenset(),
    Role.developer: frozenset(),
    Role.maintainer: frozenset({Role.developer, Role.guest}),
    Role.owner: frozenset(Role),
}

# Actions a member may always take on their own membership, whatever the table says.
SELF_SERVICE: frozenset[Action] = frozenset({Action.members_remove})

ACTION_DESCRIPTIONS: dict[Action, str] = {
    Action.workspace_read: "See the workspace (GET /api/workspaces/{wid})",
    Action.workspace_rename: "Rename the workspace (PATCH /api/workspaces/{wid})",
    Action.workspace_delete: "Delete the workspace (DELETE /api/workspaces/{wid})",
    Action.members_list: "List members (GET /api/workspaces/{wid}/members)",
    Action.members_add: "Invite a member (POST /api/workspaces/{wid}/members); the invitee accepts",
    Action.members_change_role: "Change a member's role (PUT /api/workspaces/{wid}/members/{uid})",
    Action.members_remove: "Remove a member (DELETE /api/workspaces/{wid}/members/{uid}); anyone may leave",
    Action.sandboxes_list: "List sandboxes and local agents (GET /api/workspaces/{wid}/sandboxes)",
    Action.sandbox_read: "See a sandbox (GET /api/sandboxes/{sid})",
    Action.sandbox_rename: "Rename a sandbox (PATCH /api/sandboxes/{sid})",
    Action.sandbox_delete_own: "Delete a sandbox one created (DELETE /api/sandboxes/{sid})",
    Action.sandbox_delete_any: "Delete any sandbox (DELETE /api/sandboxes/{sid})",
    Action.agent_code_create: "Create a code to connect a local agent (POST /api/workspaces/{wid}/agent-codes)",
    Action.sandbox_open: "Open a sandbox in the browser (POST /api/sandboxes/{sid}/open)",
    Action.llm_quota_read: "See the workspace's LLM requests-per-day quota (GET /api/workspaces/{wid}/llm-quota)",
    Action.llm_quota_set: "Set the workspace's LLM requests-per-day quota (PUT /api/workspaces/{wid}/llm-quota)",
    Action.usage_read: "See LLM usage (GET /api/workspaces/{wid}/usage, GET /api/sandboxes/{sid}/usage)",
    Action.sandbox_create: "Create a cloud sandbox (POST /api/workspaces/{wid}/sandboxes)",
    Action.sandbox_pause: "Pause a cloud sandbox (POST /api/sandboxes/{sid}/pause)",
    Action.sandbox_resume: "Resume a cloud sandbox (POST /api/sandboxes/{sid}/resume)",
    Action.sandbox_events: "See a sandbox's lifecycle events (GET /api/sandboxes/{sid}/events)",
    Action.session_watch: "Watch a session's events live (POST /api/sessions/{id}/viewer-tickets, then the "
                          "WebSocket API)",
    Action.invitations_list: "See pending invitations (GET /api/workspaces/{wid}/invitations)",
    Action.invitations_revoke: "Revoke an invitation (DELETE /api/workspaces/{wid}/invitations/{iid})",
    Action.sandbox_open_others_local: "Open another member's local agent, only when it is shared "
                                      "(POST /api/sandboxes/{sid}/open); unshared, only who connected it may",
    Action.sandbox_share_own: "Share one's own local agent with the workspace, or stop (PATCH /api/sandboxes/{sid}); "
                              "only the member who connected a local agent may share it",
    Action.sandbox_unshare_any: "Stop sharing another member's local agent (PATCH /api/sandboxes/{sid})",
    Action.sessions_read: "See sessions, their turns and event logs, and the workspace's session defaults "
                          "(GET /api/sandboxes/{sid}/sessions, /api/workspaces/{wid}/sessions, /api/sessions/{id}..., "
                          "/api/workspaces/{wid}/session-defaults)",
    Action.session_create: "Start a session on an agent (POST /api/sandboxes/{sid}/sessions); another member's "
                           "local agent only when it is shared",
    Action.turn_post: "Send a turn (POST /api/sessions/{id}/turns); another member's local agent only when it is "
                      "shared",
    Action.turn_cancel: "Cancel a turn (POST /api/sessions/{id}/turns/{tid}/cancel); as for sending",
    Action.approval_answer: "Answer an agent's approval request (POST /api/sessions/{id}/approvals/{aid}); as for "
                            "sending",
    Action.session_defaults_set: "Set the workspace's default model and permission mode for new sessions "
                                 "(PUT /api/workspaces/{wid}/session-defaults)",
    Action.cards_read: "Discover the workspace's agents and read their cards, also as A2A JSON "
                       "(GET /api/workspaces/{wid}/agents, /api/sandboxes/{sid}/card, "
                       "/api/sandboxes/{sid}/agent-card.json; an agent: GET /api/agent/agents)",
    Action.card_edit: "Edit an agent's card: description, skills, tags (PUT /api/sandboxes/{sid}/card); another "
                      "member's local agent only when it is shared",
    Action.message_send: "Send a message to a member or an agent (POST /api/workspaces/{wid}/messages; an agent: "
                         "POST /api/agent/messages); to another member's local agent only when it is shared",
    Action.inbox_read: "Read one's own inbox and the messages one sent (GET /api/workspaces/{wid}/inbox, "
                       "/api/workspaces/{wid}/messages...; an agent: GET /api/agent/inbox, /api/agent/messages/{mid})",
    Action.inbox_ack: "Acknowledge messages in one's own inbox (POST /api/workspaces/{wid}/inbox/ack; an agent: "
                      "POST /api/agent/inbox/ack, and its running turn takes in the messages queued behind it, "
                      "POST /api/agent/turns/{turn_id}/mail)",
    Action.agent_inbox_read: "See an agent's mailbox (GET /api/sandboxes/{sid}/inbox)",
    Action.task_create: "Delegate a task to an agent (POST /api/workspaces/{wid}/tasks; an agent: POST "
                        "/api/agent/tasks; A2A: POST /api/sandboxes/{sid}/a2a/message:send); to another member's "
                        "local agent only when it is shared",
    Action.tasks_read: "See the workspace's tasks and their state (GET /api/workspaces/{wid}/tasks...; an agent: "
                       "its own, GET /api/agent/tasks/{tid}; A2A: GET /api/sandboxes/{sid}/a2a/tasks/{tid})",
    Action.task_cancel: "Cancel a task (POST /api/workspaces/{wid}/tasks/{tid}/cancel; an agent: its own; A2A: "
                        "POST /api/sandboxes/{sid}/a2a/tasks/{tid}:cancel)",
    Action.interactions_read: "Read the workspace's interaction record: sends, delegations, state changes "
                              "(GET /api/workspaces/{wid}/interactions)",
}

# Actions that belong to the invitee, not to a workspace role: allowed only to an account whose
# verified address is the one invited (layers/shared/domain/invitations.py).
INVITEE_ACTIONS: dict[str, str] = {
    "invitations.mine": "See the invitations to one's own verified address (GET /api/invitations)",
    "invitations.accept": "Accept one, joining with its role (POST /api/invitations/{iid}/accept)",
    "invitations.decline": "Decline one (POST /api/invitations/{iid}/decline)",
}


def allowed(role: Role, action: Action) -> bool:
    return role.at_least(POLICY[action])


def authorize(role: Role | None, action: Action, *, on_self: bool = False) -> Role:
    """The caller's role if it may act; a non-member gets 404 so nothing leaks."""
    if role is None:
        raise NotFound("No such workspace.")
    if allowed(role, action) or (on_self and action in SELF_SERVICE):
        return role
    raise Forbidden(f"A {role.value} may not do that; it needs the {POLICY[action].value} role.")


def authorize_agent(action: Action) -> None:
    """An agent acting with its own credential may take only the actions of AGENT_ACTIONS."""
    if action not in AGENT_ACTIONS:
        raise Forbidden("An agent may not do that.")


def delete_action(*, own: bool) -> Action:
    """Deleting a sandbox one created needs less than deleting someone else's."""
    return Action.sandbox_delete_own if own else Action.sandbox_delete_any


def authorize_assignment(role: Role, assigned: Role) -> None:
    if assigned not in ASSIGNABLE[role]:
        raise Forbidden(f"A {role.value} may not give the {assigned.value} role.")


def render_markdown() -> str:
    roles = list(Role)
    lines = [
        "# Workspace roles",
        "",
        "Generated from `layers/shared/domain/roles.py` (`python -m layers.shared.domain.roles`); "
        "every route consults that table.",
        "",
        "Roles, lowest to highest: " + " < ".join(f"`{role.value}`" for role in roles) + ".",
        "Callers who are not members get 404 for everything under a workspace.",
        "",
        "The `agent` column: what an agent may do with its own credential (its proxy token, on the "
        "`/api/agent/...` routes), only inside its own workspace.",
        "",
        "| Action | " + " | ".join(role.value for role in roles) + " | agent |",
        "|---|" + "---|" * (len(roles) + 1),
    ]
    for action in Action:
        marks = ["yes" if allowed(role, action) else "no" for role in roles]
        marks.append("yes" if action in AGENT_ACTIONS else "no")
        lines.append(f"| {ACTION_DESCRIPTIONS[action]} | " + " | ".join(marks) + " |")
    lines += ["", "Roles each role may give when adding a member:", ""]
    for role in roles:
        given = ", ".join(r.value for r in roles if r in ASSIGNABLE[role]) or "none"
        lines.append(f"- `{role.value}`: {given}")
    lines += ["", "A workspace always keeps at least one owner.", ""]
    lines += ["Invitee actions (no workspace role; only with a verified address equal to the invited one):", ""]
    lines += [f"- `{name}`: {text}" for name, text in INVITEE_ACTIONS.items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
