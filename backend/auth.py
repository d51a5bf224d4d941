"""Bearer tokens: create users, issue and check tokens, and give routes the current user."""

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

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
    forget_checked_tokens()
    return row


@dataclass(frozen=True)
class _Checked:
    """A token the database accepted lately: whose it is, and until when it may be taken on trust."""

    user: dict[str, Any]  # the user's columns
    expires_at: datetime | None
    trusted_until: float  # time.monotonic()


# Tokens this process checked lately, by hash (TOKEN_CACHE_SECONDS): a poller's requests need no token query.
_checked: dict[str, _Checked] = {}
# The most tokens remembered at once; past it the memory starts again empty.
MAX_CHECKED_TOKENS = 10_000


def authenticate(session: Session, token: str) -> User:
    """The user a token belongs to; unknown, revoked and expired tokens are refused alike.

    A token the database accepted is taken on trust for TOKEN_CACHE_SECONDS in this process (its expiry is
    still checked every time), so a revocation made by another process takes effect within that time; one
    made by this process (revoke_token) at once.
    """
    key = hash_token(token)
    now = utcnow()
    checked = _checked.get(key)
    if checked and time.monotonic() < checked.trusted_until and not (checked.expires_at and checked.expires_at <= now):
        return _detached_user(checked.user)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == key))
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
        _checked.pop(key, None)
        raise Unauthorized("the API token is unknown, revoked or expired")
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_PRECISION:
        session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    # note: ending the transaction gives the connection back before the route runs in another
    # thread; a request waiting for a thread must not hold one, or a busy server deadlocks.
    session.commit()
    if (seconds := get_settings().token_cache_seconds) > 0:
        if len(_checked) >= MAX_CHECKED_TOKENS:
            _checked.clear()
        columns = {column.key: getattr(row.user, column.key) for column in User.__table__.columns}
        _checked[key] = _Checked(columns, row.expires_at, time.monotonic() + seconds)
    return row.user


def forget_checked_tokens() -> None:
    """Take no token on trust any more (after a revocation)."""
    _checked.clear()


def _detached_user(columns: dict[str, Any]) -> User:
    """A fresh User object for one request, as if loaded and its session closed (no other request shares it).

    note: LAST_USED_PRECISION is a minute and the trust lasts seconds, so a busy token's last use still
    reaches the database about as often as before.
    """
    user = User(**columns)
    make_transient_to_detached(user)
    return user


def get_current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if credentials is None:
        raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
    return authenticate(session, credentials.credentials)


CurrentUser = Annotated[User, Depends(get_current_user)]
