"""Users and bearer tokens: only hashes are stored; unknown, revoked and expired tokens are refused."""

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from backend.auth import authenticate, create_user, issue_token
from backend.errors import Conflict, Unauthorized
from backend.models import ApiToken, utcnow


def test_tokens_are_stored_only_as_hashes(db):
    user, token = create_user(db, "alice")
    second = issue_token(db, user)
    assert token.startswith("dbs_") and second != token
    hashes = set(db.scalars(select(ApiToken.token_hash)))
    assert hashes == {hashlib.sha256(t.encode()).hexdigest() for t in (token, second)}
    assert authenticate(db, token).id == authenticate(db, second).id == user.id


def test_expired_tokens_are_refused(db):
    user, _token = create_user(db, "alice")
    expired = issue_token(db, user, expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(Unauthorized):
        authenticate(db, expired)
    assert authenticate(db, issue_token(db, user, expires_at=utcnow() + timedelta(hours=1))) == user


def test_user_names_are_unique(db):
    create_user(db, "alice")
    with pytest.raises(Conflict):
        create_user(db, "alice")
    assert create_user(db, "bob")[0].name == "bob"
