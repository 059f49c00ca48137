from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from functions.http_api.dependencies import Now, SessionCaller, Store
from layers.shared.domain import identity

router = APIRouter(prefix="/api/tokens", tags=["tokens"])


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=90, ge=1, le=365)


class TokenOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class CreatedTokenOut(TokenOut):
    token: str = Field(description="The secret; shown once, now.")


class TokenList(BaseModel):
    items: list[TokenOut]
    next_cursor: str | None = None


@router.get("", response_model=TokenList)
def list_tokens(caller: SessionCaller, users: Store) -> TokenList:
    tokens = sorted(users.list_tokens(caller.user.user_id), key=lambda token: token.created_at)
    return TokenList(items=[TokenOut(**token.public()) for token in tokens])  # type: ignore[arg-type]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CreatedTokenOut)
def create_token(body: TokenIn, caller: SessionCaller, users: Store, now: Now) -> CreatedTokenOut:
    token, secret = identity.create_access_token(users, user_id=caller.user.user_id, name=body.name,
                                                 expires_in_days=body.expires_in_days, now=now)
    return CreatedTokenOut(token=secret, **token.public())  # type: ignore[arg-type]


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def revoke_token(token_id: str, caller: SessionCaller, users: Store) -> Response:
    identity.revoke_access_token(users, user_id=caller.user.user_id, token_id=token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
