"""Users and bearer tokens: only hashes are stored; unknown, revoked and expired tokens are refused."""

import hashlib
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from backend.auth import authenticate, create_user, issue_token, revoke_token
from backend.errors import Conflict, Unauthorized
from backend.models import ApiToken, utcnow
from backend.settings import get_settings


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


def test_a_checked_token_is_taken_on_trust_for_a_while_in_its_process(db, monkeypatch):
    monkeypatch.setattr(get_settings(), "token_cache_seconds", 0.5)
    user, token = create_user(db, "alice")
    assert authenticate(db, token).id == user.id
    # another process revokes it: this one still trusts it, until its trust runs out
    db.execute(update(ApiToken).values(revoked_at=utcnow()))
    db.commit()
    trusted = authenticate(db, token)
    assert (trusted.id, trusted.name) == (user.id, "alice") and trusted is not user
    time.sleep(0.6)
    with pytest.raises(Unauthorized):
        authenticate(db, token)


def test_trust_ends_at_once_on_a_revocation_here_and_at_the_expiry(db, monkeypatch):
    monkeypatch.setattr(get_settings(), "token_cache_seconds", 60)
    user, token = create_user(db, "alice")
    authenticate(db, token)
    revoke_token(db, user, db.scalar(select(ApiToken.id)))
    with pytest.raises(Unauthorized):
        authenticate(db, token)

    soon = issue_token(db, user, expires_at=utcnow() + timedelta(seconds=0.5))
    authenticate(db, soon)
    time.sleep(0.6)
    with pytest.raises(Unauthorized):
        authenticate(db, soon)


def test_no_trust_when_the_cache_is_off(db, monkeypatch):
    monkeypatch.setattr(get_settings(), "token_cache_seconds", 0)
    _user, token = create_user(db, "alice")
    authenticate(db, token)
    db.execute(update(ApiToken).values(revoked_at=utcnow()))
    db.commit()
    with pytest.raises(Unauthorized):
        authenticate(db, token)
