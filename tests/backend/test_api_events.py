"""/api/jobs/{id}/events: the job now, again on every change, and the end of the stream once it finished."""

import json
import threading
import time

import pytest

from backend import jobs
from backend.api import events
from backend.db import get_sessionmaker
from backend.models import User


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read_events(client, job_id, headers) -> list[dict]:
    """Every job the stream sent, until the server ended it."""
    with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


@pytest.fixture
def owner(user_factory):
    user, token = user_factory("alice")
    return user, bearer(token)


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(events, "POLL_SECONDS", 0.05)


def later(action, delay=0.3) -> threading.Thread:
    """Run `action(session)` in a moment, in a session of its own, as another process would."""

    def run():
        time.sleep(delay)
        with get_sessionmaker()() as session:
            action(session)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_finished_job_is_sent_once(client, db, make_job, owner):
    user, headers = owner
    job = make_job(user)
    jobs.request_cancel(db, user, job.id)
    [sent] = read_events(client, job.id, headers)
    assert (sent["id"], sent["status"]) == (str(job.id), "cancelled")


def test_changes_are_sent_until_the_job_finishes(client, make_job, owner):
    user, headers = owner
    job = make_job(user)
    thread = later(lambda session: jobs.request_cancel(session, session.get(User, user.id), job.id))
    sent = read_events(client, job.id, headers)
    thread.join()
    assert [event["status"] for event in sent] == ["queued", "cancelled"]


def test_the_stream_ends_when_the_job_is_deleted(client, make_job, owner):
    user, headers = owner
    job = make_job(user)
    thread = later(lambda session: jobs.delete_job(session, session.get(User, user.id), job.id))
    sent = read_events(client, job.id, headers)
    thread.join()
    assert [event["status"] for event in sent] == ["queued"]
