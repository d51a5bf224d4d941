"""The caller's API tokens: list them, make a new one (shown once), revoke one."""

from datetime import timedelta

from fastapi import APIRouter

from backend import auth
from backend.api.params import RowId
from backend.auth import CurrentUser
from backend.db import SessionDep
from backend.models import utcnow
from backend.schemas import NewTokenOut, TokenCreate, TokenOut

router = APIRouter(prefix="/api/tokens", tags=["tokens"])


@router.get("")
def list_tokens(session: SessionDep, user: CurrentUser) -> list[TokenOut]:
    """Every token of the caller, revoked and expired ones too; the tokens themselves are never kept."""
    return [TokenOut.model_validate(row, from_attributes=True) for row in auth.list_tokens(session, user)]


@router.post("", status_code=201)
def create_token(session: SessionDep, user: CurrentUser, body: TokenCreate | None = None) -> NewTokenOut:
    """A new token for the caller; the reply is the only time it is shown."""
    days = body.expires_in_days if body else None
    expires_at = utcnow() + timedelta(days=days) if days is not None else None
    row, token = auth.create_token(session, user, expires_at)
    return NewTokenOut(**TokenOut.model_validate(row, from_attributes=True).model_dump(), token=token)


@router.delete("/{token_id}", status_code=204)
def revoke_token(token_id: RowId, session: SessionDep, user: CurrentUser) -> None:
    """Revoke a token at once (the one making this request too, if named); idempotent."""
    auth.revoke_token(session, user, token_id)
