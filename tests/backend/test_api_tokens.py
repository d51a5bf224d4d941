"""/api/tokens: list (never the token), create (shown once), revoke; expiry and last use."""

from datetime import datetime, timedelta

from sqlalchemy import select

from backend.auth import hash_token
from backend.models import ApiToken, utcnow
from backend.settings import get_settings

FIELDS = {"id", "created_at", "expires_at", "revoked_at", "last_used_at"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_listed_without_the_token(client, user_factory):
    _user, token = user_factory("alice")
    user_factory("bob")
    listed = client.get("/api/tokens", headers=bearer(token))
    assert listed.status_code == 200
    [row] = listed.json()
    assert set(row) == FIELDS and token not in listed.text and hash_token(token) not in listed.text
    assert row["last_used_at"] is not None and row["revoked_at"] is row["expires_at"] is None


def test_a_new_token_is_shown_once_and_works(client, user_factory, db):
    _user, token = user_factory("alice")
    created = client.post("/api/tokens", headers=bearer(token))
    assert created.status_code == 201
    new = created.json()
    assert set(new) == FIELDS | {"token"} and new["token"].startswith("dbs_")
    assert db.scalar(select(ApiToken.token_hash).where(ApiToken.id == new["id"])) == hash_token(new["token"])
    listed = client.get("/api/tokens", headers=bearer(new["token"])).json()
    assert [row["id"] for row in listed] == [1, new["id"]] and new["token"] not in str(listed)


def test_a_revoked_token_is_refused_at_once_and_revoking_is_idempotent(client, user_factory):
    _user, token = user_factory("alice")
    second = client.post("/api/tokens", headers=bearer(token)).json()
    assert client.delete(f"/api/tokens/{second['id']}", headers=bearer(token)).status_code == 204
    assert client.get("/api/jobs", headers=bearer(second["token"])).status_code == 401
    assert client.delete(f"/api/tokens/{second['id']}", headers=bearer(token)).status_code == 204
    rows = {row["id"]: row for row in client.get("/api/tokens", headers=bearer(token)).json()}
    assert rows[second["id"]]["revoked_at"] is not None and rows[1]["revoked_at"] is None


def test_another_users_token_cannot_be_seen_or_revoked(client, user_factory):
    _alice, alice_token = user_factory("alice")
    _bob, bob_token = user_factory("bob")
    bob_ids = [row["id"] for row in client.get("/api/tokens", headers=bearer(bob_token)).json()]
    response = client.delete(f"/api/tokens/{bob_ids[0]}", headers=bearer(alice_token))
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/api/jobs", headers=bearer(bob_token)).status_code == 200


def test_tokens_expire_after_the_configured_ttl(client, user_factory, monkeypatch):
    _user, token = user_factory("alice")
    monkeypatch.setattr(get_settings(), "token_ttl_days", 30)
    default = client.post("/api/tokens", headers=bearer(token)).json()
    chosen = client.post("/api/tokens", json={"expires_in_days": 1}, headers=bearer(token)).json()
    for new, days in ((default, 30), (chosen, 1)):
        expires_in = datetime.fromisoformat(new["expires_at"]) - utcnow()
        assert timedelta(days=days) - timedelta(minutes=1) < expires_in <= timedelta(days=days)


def test_a_token_request_with_unknown_fields_is_refused(client, user_factory):
    _user, token = user_factory("alice")
    response = client.post("/api/tokens", json={"user_id": 2, "expires_at": None}, headers=bearer(token))
    assert response.status_code == 422 and response.json()["error"]["field"] in ("user_id", "expires_at")


def test_last_use_is_written_at_most_once_a_minute(client, user_factory, db):
    _user, token = user_factory("alice")
    client.get("/api/jobs", headers=bearer(token))
    first = db.scalar(select(ApiToken.last_used_at))
    client.get("/api/jobs", headers=bearer(token))
    db.expire_all()
    assert first is not None and db.scalar(select(ApiToken.last_used_at)) == first
