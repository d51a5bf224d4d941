"""Bearer tokens: create users, issue and check tokens, and give routes the current user."""

import hashlib
import secrets
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db import SessionDep
from backend.errors import Conflict, Unauthorized
from backend.models import ApiToken, User, utcnow

TOKEN_PREFIX = "dbs_"

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
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), expires_at=expires_at))
    session.commit()
    return token


def authenticate(session: Session, token: str) -> User:
    """The user a token belongs to; unknown, revoked and expired tokens are refused alike."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= utcnow()):
        raise Unauthorized("the API token is unknown, revoked or expired")
    return row.user


def get_current_user(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if credentials is None:
        raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
    return authenticate(session, credentials.credentials)


CurrentUser = Annotated[User, Depends(get_current_user)]
