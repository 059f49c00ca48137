"""The identity table: users, identities, sessions, tokens, sign-in failures, workspaces, members.

One DynamoDB table, several item types (see docs/data-model.md). Every uniqueness rule and
invariant is a condition on a write or a transaction, never a read-then-write.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cachetools import TTLCache
from pynamodb.attributes import BooleanAttribute, MapAttribute, NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import DeleteError, PutError, TransactWriteError, UpdateError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.transactions import TransactWrite

from layers.shared.dal.base import BaseModel, condition_failed, get_item, table_meta, transaction_connection
from layers.shared.domain.email_verification import PendingVerification
from layers.shared.domain.identity import AccessToken, EmailTaken, Session, User
from layers.shared.domain.invitations import Invitation, InvitationNotFound
from layers.shared.domain.roles import Role, SystemRole
from layers.shared.domain.workspaces import (
    AlreadyMember,
    LastOwner,
    Member,
    QuotaExceeded,
    Workspace,
)
from layers.shared.errors import Conflict, NotFound, ValidationFailed

USER, WORKSPACE = "USER", "WORKSPACE"


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _from_epoch(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None



def _cancellation_codes(error: TransactWriteError) -> list[str | None]:
    """Why each item of a cancelled transaction failed. PynamoDB sends the items grouped by kind
    (condition checks, deletes, puts, updates), whatever order they were added in."""
    reasons = getattr(error, "cancellation_reasons", None) or []
    return [reason.code if reason is not None else None for reason in reasons]


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode() if key else None


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValidationFailed("The cursor is not valid.") from error
    if not isinstance(key, dict):
        raise ValidationFailed("The cursor is not valid.")
    return key


class Gsi1(GlobalSecondaryIndex["IdentityItem"]):
    class Meta:
        index_name = "gsi1"
        projection = AllProjection()

    gsi1pk = UnicodeAttribute(hash_key=True)
    gsi1sk = UnicodeAttribute(range_key=True)


class ByType(GlobalSecondaryIndex["IdentityItem"]):
    class Meta:
        index_name = "by_type"
        projection = AllProjection()

    entity_type = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


class IdentityItem(BaseModel):
    """Every item type of the table; which attributes are set depends on the type (pk prefix)."""

    Meta = table_meta("identity")

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    gsi1pk = UnicodeAttribute(null=True)
    gsi1sk = UnicodeAttribute(null=True)
    entity_type = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute(null=True)  # ISO 8601, sortable
    expires_at = NumberAttribute(null=True)  # epoch seconds; the table's TTL attribute
    user_id = UnicodeAttribute(null=True)
    email = UnicodeAttribute(null=True)
    name = UnicodeAttribute(null=True)
    role = UnicodeAttribute(null=True)
    password_hash = UnicodeAttribute(null=True)
    owned_workspaces = NumberAttribute(null=True)
    owner_count = NumberAttribute(null=True)
    csrf_hash = UnicodeAttribute(null=True)
    token_id = UnicodeAttribute(null=True)
    token_hash = UnicodeAttribute(null=True)
    last_used_at = UTCDateTimeAttribute(null=True)
    failures = NumberAttribute(null=True)
    email_verified = BooleanAttribute(null=True)
    inviter_name = UnicodeAttribute(null=True)
    values = MapAttribute(null=True)  # type: ignore[var-annotated]
    deleting_at = UTCDateTimeAttribute(null=True)  # a workspace being deleted (dal/workspace_deletion.py)
    gsi1 = Gsi1()
    by_type = ByType()


def _user_key(user_id: str) -> tuple[str, str]:
    return f"USER#{user_id}", "PROFILE"



def _to_user(item: IdentityItem) -> User:
    return User(
        user_id=item.user_id,
        email=item.email,
        name=item.name,
        role=SystemRole(item.role),
        created_at=datetime.fromisoformat(item.created_at),
        password_hash=item.password_hash,
        email_verified=bool(item.email_verified),
    )


def _to_invitation(item: IdentityItem) -> Invitation:
    return Invitation(
        invitation_id=item.token_id,
        workspace_id=item.pk.removeprefix("WS#"),
        workspace_name=item.name,
        email=item.email,
        role=Role(item.role),
        invited_by=item.user_id,
        inviter_name=item.inviter_name or "",
        created_at=datetime.fromisoformat(item.created_at),
        expires_at=_from_epoch(item.expires_at) or datetime.now(UTC),
    )


def _to_workspace(item: IdentityItem) -> Workspace:
    return Workspace(
        workspace_id=item.pk.removeprefix("WS#"),
        name=item.name,
        created_by=item.user_id,
        created_at=datetime.fromisoformat(item.created_at),
        deleting_at=item.deleting_at,
    )


def _to_member(item: IdentityItem) -> Member:
    return Member(
        workspace_id=item.pk.removeprefix("WS#"),
        user_id=item.user_id,
        role=Role(item.role),
        email=item.email,
        name=item.name,
        joined_at=datetime.fromisoformat(item.created_at),
    )



class DynamoIdentityStore:
    """`UserStore` and `WorkspaceStore` on the identity table."""

    # Profiles (name, system role) change rarely and every authenticated request reads one, so a
    # few seconds' copy saves a read per request. Sessions and tokens are never cached: a
    # revoked token or a logged-out session stops working at once.
    PROFILE_CACHE_SECONDS = 5

    def __init__(self) -> None:
        self._profiles: TTLCache[str, User] = TTLCache(maxsize=10_000, ttl=self.PROFILE_CACHE_SECONDS)

    def get_user_cached(self, user_id: str) -> User | None:
        user = self._profiles.get(user_id)
        if user is None:
            user = self.get_user(user_id)
            if user is not None:
                self._profiles[user_id] = user
        return user

    # Users and identities --------------------------------------------------------------------

    def create_user(self, user: User) -> None:
        pk, sk = _user_key(user.user_id)
        claim = IdentityItem(f"EMAIL#{user.email}", "CLAIM", user_id=user.user_id)
        profile = IdentityItem(
            pk,
            sk,
            entity_type=USER,
            created_at=user.created_at.isoformat(),
            user_id=user.user_id,
            email=user.email,
            name=user.name,
            role=user.role.value,
            password_hash=user.password_hash,
            email_verified=user.email_verified,
            owned_workspaces=0,
            gsi1pk=f"ROLE#{user.role.value}",
            gsi1sk=pk,
        )
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.save(claim, condition=IdentityItem.pk.does_not_exist())
                transaction.save(profile, condition=IdentityItem.pk.does_not_exist())
        except TransactWriteError as error:
            if "ConditionalCheckFailed" in _cancellation_codes(error):
                raise EmailTaken() from error
            raise

    def claim_first_user(self, user_id: str) -> bool:
        try:
            IdentityItem("CONFIG", "FIRST_USER", user_id=user_id).save(condition=IdentityItem.pk.does_not_exist())
        except PutError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def get_user(self, user_id: str) -> User | None:
        item = get_item(IdentityItem, *_user_key(user_id))
        return _to_user(item) if item else None

    def get_user_by_email(self, email: str) -> User | None:
        claim = get_item(IdentityItem, f"EMAIL#{email}", "CLAIM")
        return self.get_user(claim.user_id) if claim else None

    def set_user_role(self, user_id: str, role: SystemRole) -> None:
        self._profiles.pop(user_id, None)
        IdentityItem(*_user_key(user_id)).update(
            actions=[IdentityItem.role.set(role.value), IdentityItem.gsi1pk.set(f"ROLE#{role.value}")],
            condition=IdentityItem.pk.exists(),
        )

    def set_password_hash(self, user_id: str, password_hash: str) -> None:
        IdentityItem(*_user_key(user_id)).update(
            actions=[IdentityItem.password_hash.set(password_hash)], condition=IdentityItem.pk.exists()
        )

    def set_email_verified(self, user_id: str, email: str) -> bool:
        self._profiles.pop(user_id, None)
        try:
            IdentityItem(*_user_key(user_id)).update(
                actions=[IdentityItem.email_verified.set(True)], condition=IdentityItem.email == email)
        except UpdateError as error:
            if condition_failed(error):  # the account is gone (or has another address)
                return False
            raise
        finally:  # a request that read the profile meanwhile must not keep the old state for the cache's 5 s
            self._profiles.pop(user_id, None)
        return True

    # Email verification tokens ---------------------------------------------------------------

    def put_verification(self, pending: PendingVerification) -> None:
        IdentityItem(f"VERIFY#{pending.token_hash}", "VERIFY", user_id=pending.user_id, email=pending.email,
                     expires_at=_epoch(pending.expires_at)).save(condition=IdentityItem.pk.does_not_exist())

    def take_verification(self, token_hash: str) -> PendingVerification | None:
        item = get_item(IdentityItem, f"VERIFY#{token_hash}", "VERIFY")
        if item is None:
            return None
        try:  # the conditional delete makes the token single use, even for two concurrent clicks
            item.delete(condition=IdentityItem.pk.exists())
        except DeleteError as error:
            if condition_failed(error):
                return None
            raise
        return PendingVerification(token_hash, item.user_id, item.email,
                                   _from_epoch(item.expires_at) or datetime.now(UTC))

    # Invitations -----------------------------------------------------------------------------

    def put_invitation(self, invitation: Invitation) -> None:
        IdentityItem(
            f"WS#{invitation.workspace_id}",
            f"INVITE#{invitation.invitation_id}",
            token_id=invitation.invitation_id,
            name=invitation.workspace_name,
            email=invitation.email,
            role=invitation.role.value,
            user_id=invitation.invited_by,
            inviter_name=invitation.inviter_name,
            created_at=invitation.created_at.isoformat(),
            expires_at=_epoch(invitation.expires_at),
            gsi1pk=f"INVITEE#{invitation.email}",
            gsi1sk=f"INVITE#{invitation.workspace_id}",
        ).save()

    def get_invitation(self, workspace_id: str, invitation_id: str) -> Invitation | None:
        item = get_item(IdentityItem, f"WS#{workspace_id}", f"INVITE#{invitation_id}")
        return _to_invitation(item) if item else None

    def list_invitations(self, workspace_id: str) -> list[Invitation]:
        return [_to_invitation(item)
                for item in IdentityItem.query(f"WS#{workspace_id}", IdentityItem.sk.startswith("INVITE#"))]

    def invitations_for(self, email: str) -> list[Invitation]:
        found = [_to_invitation(item) for item in IdentityItem.gsi1.query(f"INVITEE#{email}")]
        if not found:
            return []
        # Invitations to a deleted workspace linger until their TTL; they are not shown.
        metas = {item.pk for item in IdentityItem.batch_get([(f"WS#{i.workspace_id}", "META") for i in found])}
        return [invitation for invitation in found if f"WS#{invitation.workspace_id}" in metas]

    def has_pending_invitation(self, email: str, now: datetime) -> bool:
        return any(invitation.pending(now) for invitation in self.invitations_for(email))

    def delete_invitation(self, invitation: Invitation) -> bool:
        try:
            IdentityItem(f"WS#{invitation.workspace_id}", f"INVITE#{invitation.invitation_id}").delete(
                condition=IdentityItem.pk.exists())
        except DeleteError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def accept_invitation(self, invitation: Invitation, member: Member) -> None:
        invite_item = IdentityItem(f"WS#{invitation.workspace_id}", f"INVITE#{invitation.invitation_id}")
        # Unchanged since it was read: a re-invitation meanwhile (another role) must be accepted anew.
        unchanged = IdentityItem.role == invitation.role.value
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.delete(invite_item, condition=unchanged)
                transaction.save(self._member_item(member), condition=IdentityItem.pk.does_not_exist())
                if member.role == Role.owner:
                    self._owner_delta(transaction, member.workspace_id, 1)
                else:
                    transaction.condition_check(
                        IdentityItem, f"WS#{member.workspace_id}", "META", condition=IdentityItem.pk.exists())
        except TransactWriteError as error:
            # PynamoDB sends condition checks, then deletes, puts, updates.
            codes = _cancellation_codes(error)
            kinds = (["delete", "put", "update"] if member.role == Role.owner else ["check", "delete", "put"])
            failed = {kind for kind, code in zip(kinds, codes, strict=False) if code == "ConditionalCheckFailed"}
            if "delete" in failed:
                raise InvitationNotFound() from error
            if "put" in failed:
                raise AlreadyMember() from error
            if failed:
                raise NotFound("No such workspace.") from error
            raise

    # Outbox (the embedded stack's mail) ------------------------------------------------------

    def put_outbox(self, message_id: str, to: str, subject: str, text: str, now: datetime,
                   keep: timedelta) -> None:
        IdentityItem("OUTBOX", f"{now.isoformat()}#{message_id}", email=to, name=subject, values={"text": text},
                     created_at=now.isoformat(),
                     expires_at=_epoch(now + keep)).save()

    def list_outbox(self, limit: int) -> list[dict[str, str]]:
        items = IdentityItem.query("OUTBOX", scan_index_forward=False, limit=limit)
        return [{"id": item.sk.rsplit("#", 1)[-1], "to": item.email, "subject": item.name,
                 "text": str((item.values.as_dict() if item.values else {}).get("text", "")),
                 "sent_at": item.created_at} for item in items]

    def count_admins(self) -> int:
        return int(IdentityItem.gsi1.count(f"ROLE#{SystemRole.admin.value}"))

    def list_users(self, limit: int, cursor: str | None) -> tuple[list[User], str | None]:
        results = IdentityItem.by_type.query(USER, limit=limit, last_evaluated_key=decode_cursor(cursor))
        users = [_to_user(item) for item in results]
        return users, encode_cursor(results.last_evaluated_key)

    def user_for_identity(self, provider: str, subject: str) -> str | None:
        link = get_item(IdentityItem, f"IDP#{provider}#{subject}", "LINK")
        return link.user_id if link else None

    def link_identity(self, provider: str, subject: str, user_id: str) -> None:
        IdentityItem(f"IDP#{provider}#{subject}", "LINK", user_id=user_id).save()

    # Sessions and tokens ---------------------------------------------------------------------

    def put_session(self, session: Session) -> None:
        IdentityItem(
            f"SESSION#{session.token_hash}",
            "SESSION",
            user_id=session.user_id,
            csrf_hash=session.csrf_hash,
            created_at=session.created_at.isoformat(),
            expires_at=_epoch(session.expires_at),
        ).save()

    def get_session(self, token_hash: str) -> Session | None:
        item = get_item(IdentityItem, f"SESSION#{token_hash}", "SESSION")
        if item is None:
            return None
        return Session(
            token_hash=token_hash,
            user_id=item.user_id,
            csrf_hash=item.csrf_hash,
            created_at=datetime.fromisoformat(item.created_at),
            expires_at=_from_epoch(item.expires_at) or datetime.now(UTC),
        )

    def extend_session(self, token_hash: str, expires_at: datetime) -> None:
        try:
            IdentityItem(f"SESSION#{token_hash}", "SESSION").update(
                actions=[IdentityItem.expires_at.set(int(expires_at.timestamp()))], condition=IdentityItem.pk.exists()
            )
        except UpdateError as error:
            if not condition_failed(error):  # logged out meanwhile: nothing to extend
                raise

    def delete_session(self, token_hash: str) -> None:
        IdentityItem(f"SESSION#{token_hash}", "SESSION").delete()

    def put_token(self, token: AccessToken) -> None:
        IdentityItem(
            f"TOKEN#{token.token_hash}",
            "TOKEN",
            token_id=token.token_id,
            user_id=token.user_id,
            name=token.name,
            token_hash=token.token_hash,
            created_at=token.created_at.isoformat(),
            expires_at=_epoch(token.expires_at),
            gsi1pk=f"USER#{token.user_id}",
            gsi1sk=f"TOKEN#{token.token_id}",
        ).save(condition=IdentityItem.pk.does_not_exist())

    @staticmethod
    def _to_token(item: IdentityItem) -> AccessToken:
        return AccessToken(
            token_id=item.token_id,
            user_id=item.user_id,
            name=item.name,
            token_hash=item.token_hash,
            created_at=datetime.fromisoformat(item.created_at),
            expires_at=_from_epoch(item.expires_at),
            last_used_at=item.last_used_at,
        )

    def get_token(self, token_hash: str) -> AccessToken | None:
        item = get_item(IdentityItem, f"TOKEN#{token_hash}", "TOKEN")
        return self._to_token(item) if item else None

    def list_tokens(self, user_id: str) -> list[AccessToken]:
        items = IdentityItem.gsi1.query(f"USER#{user_id}", IdentityItem.gsi1sk.startswith("TOKEN#"))
        return [self._to_token(item) for item in items]

    def delete_token(self, user_id: str, token_id: str) -> bool:
        for item in IdentityItem.gsi1.query(f"USER#{user_id}", IdentityItem.gsi1sk == f"TOKEN#{token_id}"):
            try:
                IdentityItem(item.pk, item.sk).delete(condition=IdentityItem.user_id == user_id)
            except DeleteError as error:
                if condition_failed(error):
                    return False
                raise
            return True
        return False

    def touch_token(self, token_hash: str, used_at: datetime) -> None:
        try:
            IdentityItem(f"TOKEN#{token_hash}", "TOKEN").update(
                actions=[IdentityItem.last_used_at.set(used_at)], condition=IdentityItem.pk.exists()
            )
        except UpdateError as error:
            if not condition_failed(error):  # revoked meanwhile
                raise

    # Sign-in failures ------------------------------------------------------------------------

    def record_failure(self, key: str, now: datetime, window: timedelta) -> None:
        item = IdentityItem(f"FAIL#{key}", "FAIL")
        try:  # count within the current window...
            item.update(actions=[IdentityItem.failures.add(1)], condition=IdentityItem.expires_at > _epoch(now))
        except UpdateError as error:
            if not condition_failed(error):
                raise
            # ...or open a new window (TTL removes the item some time after it ends)
            IdentityItem(f"FAIL#{key}", "FAIL", failures=1, expires_at=_epoch(now + window)).save()

    def failures(self, key: str, now: datetime) -> tuple[int, datetime | None]:
        item = get_item(IdentityItem, f"FAIL#{key}", "FAIL")
        if item is None or item.expires_at is None or item.expires_at <= now.timestamp():
            return 0, None
        return int(item.failures or 0), _from_epoch(item.expires_at)

    def clear_failures(self, key: str) -> None:
        IdentityItem(f"FAIL#{key}", "FAIL").delete()

    # Workspaces and members ------------------------------------------------------------------

    def create_workspace(self, workspace: Workspace, owner: Member, max_owned: int) -> None:
        meta = IdentityItem(
            f"WS#{workspace.workspace_id}",
            "META",
            entity_type=WORKSPACE,
            created_at=workspace.created_at.isoformat(),
            name=workspace.name,
            user_id=workspace.created_by,
            owner_count=1,
        )
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.update(
                    IdentityItem(*_user_key(owner.user_id)),
                    actions=[IdentityItem.owned_workspaces.add(1)],
                    condition=IdentityItem.owned_workspaces < max_owned,
                )
                transaction.save(meta, condition=IdentityItem.pk.does_not_exist())
                transaction.save(self._member_item(owner))
        except TransactWriteError as error:
            # The workspace id is new, so only the quota condition can fail.
            if "ConditionalCheckFailed" in _cancellation_codes(error):
                owned = self.owned_count(owner.user_id)
                raise QuotaExceeded(f"You already own {owned} workspaces; the maximum is {max_owned}.") from error
            raise

    def owned_count(self, user_id: str) -> int:
        item = get_item(IdentityItem, *_user_key(user_id))
        return int(item.owned_workspaces or 0) if item else 0

    def get_workspace(self, workspace_id: str) -> Workspace | None:
        item = get_item(IdentityItem, f"WS#{workspace_id}", "META")
        return _to_workspace(item) if item else None

    def rename_workspace(self, workspace_id: str, name: str) -> None:
        try:
            IdentityItem(f"WS#{workspace_id}", "META").update(
                actions=[IdentityItem.name.set(name)], condition=IdentityItem.pk.exists()
            )
        except UpdateError as error:
            if condition_failed(error):
                raise NotFound("No such workspace.") from error
            raise

    def workspaces_of(self, user_id: str) -> list[tuple[Workspace, Role]]:
        memberships = list(IdentityItem.gsi1.query(f"USER#{user_id}", IdentityItem.gsi1sk.startswith("WS#")))
        if not memberships:
            return []
        metas = {item.pk: item for item in IdentityItem.batch_get([(m.pk, "META") for m in memberships])}
        found = [(_to_workspace(metas[m.pk]), Role(m.role)) for m in memberships if m.pk in metas]
        return sorted(found, key=lambda pair: pair[0].created_at)

    def list_workspaces(self, limit: int, cursor: str | None) -> tuple[list[Workspace], str | None]:
        results = IdentityItem.by_type.query(WORKSPACE, limit=limit, last_evaluated_key=decode_cursor(cursor))
        return [_to_workspace(item) for item in results], encode_cursor(results.last_evaluated_key)

    @staticmethod
    def _member_item(member: Member) -> IdentityItem:
        return IdentityItem(
            f"WS#{member.workspace_id}",
            f"MEMBER#{member.user_id}",
            user_id=member.user_id,
            role=member.role.value,
            email=member.email,
            name=member.name,
            created_at=member.joined_at.isoformat(),
            gsi1pk=f"USER#{member.user_id}",
            gsi1sk=f"WS#{member.workspace_id}",
        )

    def get_member(self, workspace_id: str, user_id: str) -> Member | None:
        item = get_item(IdentityItem, f"WS#{workspace_id}", f"MEMBER#{user_id}")
        return _to_member(item) if item else None

    def list_members(self, workspace_id: str) -> list[Member]:
        return [
            _to_member(item) for item in IdentityItem.query(f"WS#{workspace_id}", IdentityItem.sk.startswith("MEMBER#"))
        ]

    def _owner_delta(self, transaction: TransactWrite, workspace_id: str, delta: int) -> None:
        meta = IdentityItem(f"WS#{workspace_id}", "META")
        condition = IdentityItem.owner_count > 1 if delta < 0 else IdentityItem.pk.exists()
        transaction.update(meta, actions=[IdentityItem.owner_count.add(delta)], condition=condition)

    def _owner_transaction(self, member: Member, new_role: Role | None) -> None:
        """Change or remove a membership, keeping the workspace's owner count exact."""
        was_owner, is_owner = member.role == Role.owner, new_role == Role.owner
        item = IdentityItem(f"WS#{member.workspace_id}", f"MEMBER#{member.user_id}")
        unchanged = IdentityItem.role == member.role.value
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                if new_role is None:
                    transaction.delete(item, condition=unchanged)
                else:
                    transaction.update(item, actions=[IdentityItem.role.set(new_role.value)], condition=unchanged)
                if was_owner != is_owner:
                    self._owner_delta(transaction, member.workspace_id, -1 if was_owner else 1)
        except TransactWriteError as error:
            codes = _cancellation_codes(error)
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed" and was_owner:
                raise LastOwner() from error
            if codes and codes[0] == "ConditionalCheckFailed":
                raise Conflict("The membership changed meanwhile; reload and try again.") from error
            raise

    def add_member(self, member: Member) -> None:
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.save(self._member_item(member), condition=IdentityItem.pk.does_not_exist())
                if member.role == Role.owner:
                    self._owner_delta(transaction, member.workspace_id, 1)
                else:
                    transaction.condition_check(
                        IdentityItem, f"WS#{member.workspace_id}", "META", condition=IdentityItem.pk.exists()
                    )
        except TransactWriteError as error:
            # Sent as [check META, put member] or, for an owner, [put member, update META].
            codes = _cancellation_codes(error)
            member_failed = codes[0 if member.role == Role.owner else 1 :][:1] == ["ConditionalCheckFailed"]
            if member_failed:
                raise AlreadyMember() from error
            if "ConditionalCheckFailed" in codes:
                raise NotFound("No such workspace.") from error
            raise

    def change_role(self, member: Member, role: Role) -> None:
        self._owner_transaction(member, role)

    def remove_member(self, member: Member) -> None:
        self._owner_transaction(member, None)

    # Quotas ----------------------------------------------------------------------------------

    def get_quotas(self) -> dict[str, int]:
        item = get_item(IdentityItem, "CONFIG", "QUOTAS")
        return {key: int(value) for key, value in (item.values.as_dict() if item and item.values else {}).items()}

    def put_quotas(self, quotas: dict[str, int]) -> None:
        IdentityItem("CONFIG", "QUOTAS", values=quotas).save()
