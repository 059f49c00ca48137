"""Pending sign-ins through an identity provider, on the identity table.

Lambda keeps nothing between the redirect to the provider and the provider's redirect back, so the
state, nonce and PKCE verifier wait here under `LOGINSTATE#<state>` for at most ten minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pynamodb.attributes import NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DeleteError

from layers.shared.dal.base import BaseModel, table_meta
from layers.shared.domain.provider_sign_in import PendingLogin

_SORT_KEY = "LOGINSTATE"


class LoginStateItem(BaseModel):
    """One pending login. The table's TTL removes abandoned ones (eventually: see `consume`)."""

    Meta = table_meta("identity")

    pk = UnicodeAttribute(hash_key=True)  # LOGINSTATE#<state>
    sk = UnicodeAttribute(range_key=True)
    expires_at = NumberAttribute()  # epoch seconds; the table's TTL attribute
    provider = UnicodeAttribute()
    nonce = UnicodeAttribute()
    code_verifier = UnicodeAttribute()
    redirect_uri = UnicodeAttribute()


def _key(state: str) -> tuple[str, str]:
    return f"LOGINSTATE#{state}", _SORT_KEY


class DynamoLoginStateStore:
    """`LoginStateStore` on the identity table."""

    def save(self, pending: PendingLogin) -> None:
        LoginStateItem(
            *_key(pending.state), expires_at=int(pending.expires_at.timestamp()), provider=pending.provider,
            nonce=pending.nonce, code_verifier=pending.code_verifier, redirect_uri=pending.redirect_uri,
        ).save(condition=LoginStateItem.pk.does_not_exist())

    def consume(self, state: str, now: datetime) -> PendingLogin | None:
        try:
            item = LoginStateItem.get(*_key(state), consistent_read=True)
        except LoginStateItem.DoesNotExist:
            return None
        try:
            # The conditional delete is what makes a state single use: of two callbacks racing
            # with the same state, only one deletes the item. DynamoDB's TTL deletes up to days
            # late, hence the expiry in the condition.
            item.delete(condition=LoginStateItem.pk.exists() & (LoginStateItem.expires_at > int(now.timestamp())))
        except DeleteError as error:
            if getattr(error, "cause_response_code", None) == "ConditionalCheckFailedException":
                return None
            raise
        return PendingLogin(state=state, provider=item.provider, nonce=item.nonce, code_verifier=item.code_verifier,
                            redirect_uri=item.redirect_uri,
                            expires_at=datetime.fromtimestamp(item.expires_at, tz=UTC))
