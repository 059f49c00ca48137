"""A workspace's deletion across its two tables (domain/workspace_deletion.py): the identity table holds
the workspace and its members, the sandboxes table its record (`WSUSAGE#<wid>`: sandbox usage, and the
`closed_at` mark that sandbox creation, agent registration and token checks read). DynamoDB transactions
span tables, so marking both is one write."""

from __future__ import annotations

from datetime import datetime

from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from layers.shared.dal.base import condition_failed, get_item, transaction_connection
from layers.shared.dal.identity import IdentityItem, _cancellation_codes, _to_workspace
from layers.shared.dal.sandboxes import SandboxItem, sortable
from layers.shared.domain.workspace_deletion import CLOSING
from layers.shared.domain.workspaces import Workspace
from layers.shared.errors import NotFound


def _meta(workspace_id: str) -> IdentityItem:
    return IdentityItem(f"WS#{workspace_id}", "META")


def _record(workspace_id: str) -> SandboxItem:
    return SandboxItem(f"WSUSAGE#{workspace_id}", "USAGE")


class DynamoWorkspaceDeletion:
    """`DeletionStore` on the identity and sandboxes tables."""

    def begin(self, workspace: Workspace, *, now: datetime, recheck_at: datetime) -> bool:
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.update(_meta(workspace.workspace_id), actions=[IdentityItem.deleting_at.set(now)],
                                   condition=IdentityItem.pk.exists() & IdentityItem.deleting_at.does_not_exist())
                # Closed from now on: the sandbox store's creations are conditional on this mark.
                transaction.update(_record(workspace.workspace_id), actions=[
                    SandboxItem.closed_at.set(now), SandboxItem.due.set(CLOSING),
                    SandboxItem.due_at.set(sortable(recheck_at))])
        except TransactWriteError as error:
            if "ConditionalCheckFailed" not in _cancellation_codes(error):
                raise
            current = self.get_workspace(workspace.workspace_id)
            if current is None:
                raise NotFound("No such workspace.") from error
            return False  # already being deleted
        return True

    def get_workspace(self, workspace_id: str) -> Workspace | None:
        item = get_item(IdentityItem, f"WS#{workspace_id}", "META")
        return _to_workspace(item) if item else None

    def due(self, before: datetime) -> list[str]:
        items = SandboxItem.by_due.query(CLOSING, range_key_condition=SandboxItem.due_at < sortable(before))
        return [item.pk.removeprefix("WSUSAGE#") for item in items]

    def recheck_at(self, workspace_id: str, moment: datetime) -> None:
        _record(workspace_id).update(actions=[SandboxItem.due.set(CLOSING), SandboxItem.due_at.set(sortable(moment))],
                                     condition=SandboxItem.closed_at.exists())

    def finish(self, workspace_id: str, *, now: datetime) -> None:
        """Each step is conditional or repeatable, so a pass that crashed halfway is completed by the next."""
        meta = get_item(IdentityItem, f"WS#{workspace_id}", "META")
        if meta is not None:
            try:
                with TransactWrite(connection=transaction_connection()) as transaction:
                    transaction.delete(_meta(workspace_id), condition=IdentityItem.deleting_at.exists())
                    # The owner's workspace count drops only now that nothing of the workspace runs.
                    transaction.update(IdentityItem(f"USER#{meta.user_id}", "PROFILE"),
                                       actions=[IdentityItem.owned_workspaces.add(-1)],
                                       condition=IdentityItem.owned_workspaces > 0)
            except TransactWriteError as error:
                codes = _cancellation_codes(error)
                if "ConditionalCheckFailed" not in codes:
                    raise
                # Sent as [delete META, update owner]: a count already at zero must not keep the workspace.
                if len(codes) > 1 and codes[1] == "ConditionalCheckFailed" and codes[0] != "ConditionalCheckFailed":
                    _meta(workspace_id).delete(condition=IdentityItem.deleting_at.exists())
        with IdentityItem.batch_write() as batch:
            for item in IdentityItem.query(f"WS#{workspace_id}", IdentityItem.sk.startswith("MEMBER#")):
                batch.delete(item)
        # The mark stays (a token of a gone workspace must keep failing); the reaper stops looking.
        try:
            _record(workspace_id).update(actions=[SandboxItem.due.remove(), SandboxItem.due_at.remove()],
                                         condition=SandboxItem.closed_at.exists())
        except UpdateError as error:
            if not condition_failed(error):
                raise
