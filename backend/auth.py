"""Bearer tokens: create users, issue and check tokens, and give routes the current user."""

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db import SessionDep
from backend.errors import Conflict, NotFound, Unauthorized
from backend.models import ApiToken, User, utcnow
from backend.settings import get_settings

TOKEN_PREFIX = "dbs_"
# A token's last use is written at most this often, so busy clients do not write on every request.
LAST_USED_PRECISION = timedelta(minutes=1)

# note: auto_error=False so that a missing header gets our JSON 401, not FastAPI's.
_bearer = HTTPBearer(auto_error=False, description="An API token: `dreambooth create-user NAME` prints one")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, name: str) -> tuple[User, str]:
    """A new user and their first token (shown once: only its hash is kept)."""
    user = User(name=name)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"a user named {name!r} already exists", "name") from None
    return user, issue_token(session, user)


def issue_token(session: Session, user: User, expires_at: datetime | None = None) -> str:
    """A new token for `user`; without `expires_at` it lasts `token_ttl_days` (or forever)."""
    return create_token(session, user, expires_at)[1]


def create_token(session: Session, user: User, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """The new token's row and the token itself (shown once: only its hash is kept)."""
    ttl_days = get_settings().token_ttl_days
    if expires_at is None and ttl_days is not None:
        expires_at = utcnow() + timedelta(days=ttl_days)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, token_hash=hash_token(token), expires_at=expires_at, created_at=utcnow())
    session.add(row)
    session.commit()
    return row, token


def list_tokens(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


def revoke_token(session: Session, user: User, token_id: int) -> ApiToken:
    """Revoke one of the user's tokens; idempotent. Another user's token is as missing as none."""
    row = session.scalar(select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id))
    if row is None:
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def authenticate(session: Session, token: str) -> User:
    """The user a token belongs to; unknown, revoked and expired tokens are refused alike."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    now = utcnow()
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
        raise Unauthorized("the API token is unknown, revoked or expired")
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_PRECISION:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    # note: ending the transaction gives the connection back before the route runs in another
    # thread; a request waiting for a thread must not hold one, or a busy server deadlocks.
    session.commit()
    return row.user


def get_current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if credentials is None:
        raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
    return authenticate(session, credentials.credentials)


CurrentUser = Annotated[User, Depends(get_current_user)]
