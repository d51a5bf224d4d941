"""Webhooks against a real HTTP receiver on 127.0.0.1: events written with every end, signed, delivered
once and in order through an outage and an API restart; private addresses refused."""

import io
import ipaddress
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update

from backend import generations, jobs, webhooks
from backend.auth import create_user
from backend.generation_schemas import GenerationCreate
from backend.leases import LeaseLost
from backend.models import Artifact, Generation, GenerationStatus, Job, JobStatus, User, WebhookEvent, utcnow
from backend.settings import get_settings
from tests.conftest import ROOT

WAIT_SECONDS = 30


# ── a real receiver ──────────────────────────────────────────────────────────────────────────


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every request it gets; down (connections refused) until started."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict]:
        return [json.loads(body) for _headers, body in self.requests]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def configure(monkeypatch) -> Iterator[Callable[..., None]]:
    """Sets settings for the test: `configure(webhook_allow_private=True)`; receivers on 127.0.0.1 allowed and quick
    retries by default."""

    def set_values(**values) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name.upper(), str(value).lower() if isinstance(value, bool) else str(value))
        get_settings.cache_clear()

    set_values(
        webhook_allow_private=True,
        webhook_retry_base_seconds=0.2,
        webhook_poll_seconds=0.05,
        max_active_jobs_per_user=10,
    )
    yield set_values
    monkeypatch.undo()
    get_settings.cache_clear()


def wait_for(condition: Callable[[], object], what: str, seconds: float = WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


# ── helpers: work that ends ──────────────────────────────────────────────────────────────────


@pytest.fixture
def owner(db, user_factory) -> tuple[User, dict[str, str]]:
    user, token = user_factory("ada")
    return user, {"Authorization": f"Bearer {token}"}


def set_default_url(db, user: User, url: str | None) -> None:
    db.execute(update(User).where(User.id == user.id).values(webhook_url=url))
    db.commit()


def succeed(db, job: Job) -> None:
    """Run the job to success through the job service, leaving weights to generate from."""
    lease = jobs.claim_job(db, job.id)
    weights = Artifact(kind="pipeline", path="pipeline", size_bytes=1, step=5, format="diffusers", dtype="fp32")
    jobs.finish_job(db, lease, JobStatus.succeeded, artifacts=[weights])


def generate(db, user: User, job: Job, status: GenerationStatus, webhook_url: str | None = None):
    params = GenerationCreate(prompt="a photo of rufus the dog").model_dump(exclude={"webhook_url"})
    generation = generations.create_generation(db, user, job.id, params, webhook_url)
    lease = generations.claim_generation(db, generation.id)
    if status == GenerationStatus.succeeded:
        generations.finish_generation(db, lease, status, images=[{"path": "image.png", "seed": 1}])
    else:
        generations.finish_generation(db, lease, status, error_code="oops", error_message="it broke")
    return generation


def outbox(db) -> list[WebhookEvent]:
    db.expire_all()
    return list(db.scalars(select(WebhookEvent).order_by(WebhookEvent.id)))


def noise_png() -> bytes:
    """A photo unlike any other (so no duplicate check takes it for another)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (96, 96), os.urandom(96 * 96 * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def readme_verify() -> Callable[..., bool]:
    """The README's verification snippet, run as written."""
    section = (ROOT / "README.md").read_text().split("## Webhooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


# ── tests ────────────────────────────────────────────────────────────────────────────────────


def test_a_delivery_is_signed_as_the_readme_says_and_carries_the_job_as_the_api_shows_it(
    configure, receiver, db, owner, make_job, client
):
    user, headers = owner
    receiver.start()
    settings = client.put("/api/webhooks/settings", json={"default_url": receiver.url}, headers=headers)
    assert settings.status_code == 200, settings.text
    secret = settings.json()["secret"]
    assert settings.json()["default_url"] == receiver.url and len(secret) == 64
    assert client.get("/api/webhooks/settings", headers=headers).json() == settings.json()
    job = make_job(owner=user)
    succeed(db, job)

    wait_for(lambda: receiver.requests, "the delivery")
    request_headers, body = receiver.requests[0]
    verify = readme_verify()
    assert verify(secret, request_headers, body)
    assert not verify(secret, request_headers, body + b" ")
    assert not verify("another secret", request_headers, body)
    assert not verify(secret, {**request_headers, "Webhook-Timestamp": str(int(time.time()) - 3600)}, body)
    event = json.loads(body)
    assert request_headers["Webhook-Id"] == event["id"] and request_headers["Content-Type"] == "application/json"
    assert event["type"] == "job.succeeded"
    assert event["data"] == client.get(f"/api/jobs/{job.id}", headers=headers).json()
    assert event["data"]["status"] == "succeeded" and event["data"]["kept_steps"] == [5]

    rotated = client.post("/api/webhooks/secret/rotate", headers=headers).json()["secret"]
    assert rotated != secret
    generate(db, user, job, GenerationStatus.succeeded)
    wait_for(lambda: len(receiver.requests) == 2, "the generation's delivery")
    request_headers, body = receiver.requests[1]
    assert verify(rotated, request_headers, body) and not verify(secret, request_headers, body)


def test_every_end_writes_its_event_with_the_end(configure, db, owner, make_job, client, receiver, broker):
    user, headers = owner
    set_default_url(db, user, receiver.url)
    finished, failed, cancelled, abandoned = (make_job(owner=user) for _ in range(4))
    succeed(db, finished)
    jobs.finish_job(db, jobs.claim_job(db, failed.id), JobStatus.failed, "oops", "it broke")
    assert client.post(f"/api/jobs/{cancelled.id}/cancel", headers=headers).status_code == 202
    # a job whose worker died on its last attempt: the reaper fails it
    jobs.claim_job(db, abandoned.id)
    stale = utcnow().replace(year=2000)
    db.execute(
        update(Job).where(Job.id == abandoned.id).values(heartbeat_at=stale, attempts=get_settings().max_attempts)
    )
    db.commit()
    assert jobs.end_abandoned_jobs(db) == [abandoned.id]
    produced = generate(db, user, finished, GenerationStatus.succeeded, webhook_url=receiver.url + "?own")
    broken = generate(db, user, finished, GenerationStatus.failed)
    # a generation whose worker died on its last attempt: the reaper fails it
    params = GenerationCreate(prompt="a dog").model_dump(exclude={"webhook_url"})
    lost = generations.create_generation(db, user, finished.id, params)
    generations.claim_generation(db, lost.id)
    db.execute(update(Generation).values(heartbeat_at=stale, attempts=get_settings().max_attempts))
    db.commit()
    assert generations.end_abandoned_generations(db) == [(finished.id, lost.id)]

    events = outbox(db)
    assert [(e.type, e.job_id, e.generation_id) for e in events] == [
        ("job.succeeded", finished.id, None),
        ("job.failed", failed.id, None),
        ("job.cancelled", cancelled.id, None),
        ("job.failed", abandoned.id, None),
        ("generation.succeeded", finished.id, produced.id),
        ("generation.failed", finished.id, broken.id),
        ("generation.failed", finished.id, lost.id),
    ]
    assert all(e.status == "pending" for e in events)  # the receiver is down
    assert [e.url for e in events][-3:] == [receiver.url + "?own", receiver.url, receiver.url]
    bodies = [json.loads(e.body) for e in events]
    assert [b["id"] for b in bodies] == [str(e.event_id) for e in events]
    assert bodies[3]["data"]["error"]["code"] == "worker_lost"
    assert bodies[4]["data"] == client.get(f"/api/generations/{produced.id}", headers=headers).json()
    assert bodies[4]["data"]["webhook_url"] == receiver.url + "?own"
    assert bodies[5]["data"]["error"] == {"code": "oops", "message": "it broke"}
    assert bodies[6]["data"]["error"]["code"] == "worker_lost"

    # cancelling again, or cancelling a finished job, tells nothing new
    client.post(f"/api/jobs/{cancelled.id}/cancel", headers=headers)
    client.post(f"/api/jobs/{finished.id}/cancel", headers=headers)
    assert len(outbox(db)) == 7


def test_an_end_that_does_not_commit_writes_no_event_and_no_url_writes_none(configure, db, owner, make_job, receiver):
    user, _headers = owner
    quiet = make_job(owner=user)
    succeed(db, quiet)
    assert outbox(db) == []  # neither the job nor its owner names a URL
    set_default_url(db, user, receiver.url)
    job = make_job(owner=user)
    lease = jobs.claim_job(db, job.id)
    jobs.delete_job(db, user, job.id)
    with pytest.raises(LeaseLost):
        jobs.finish_job(db, lease, JobStatus.succeeded)
    assert outbox(db) == []


def test_a_receiver_down_then_up_gets_every_event_exactly_once_in_order_per_job(
    configure, receiver, db, owner, make_job, client
):
    user, headers = owner
    set_default_url(db, user, receiver.url)
    first, second = make_job(owner=user), make_job(owner=user)
    succeed(db, first)
    succeed(db, second)
    generate(db, user, first, GenerationStatus.succeeded)
    generate(db, user, first, GenerationStatus.failed)
    generate(db, user, second, GenerationStatus.succeeded)

    # down: connections are refused, each event's first in line is retried with backoff, the rest wait their turn
    def failed_attempts() -> list[dict]:
        items = client.get("/api/webhooks/deliveries?limit=100", headers=headers).json()["items"]
        return [item for item in items if item["error"]]

    wait_for(lambda: len(failed_attempts()) >= 6, "failed attempts while the receiver is down")
    tried = {item["type"] for item in failed_attempts()}
    assert tried == {"job.succeeded"}, "a later event of a job was tried before the job's first was delivered"
    assert all(item["status_code"] is None and item["event_status"] == "pending" for item in failed_attempts())
    assert receiver.requests == []

    receiver.start()
    events = outbox(db)
    wait_for(lambda: len(receiver.requests) >= len(events) and {e.status for e in outbox(db)} == {"delivered"},
             "every event delivered")  # fmt: skip
    time.sleep(0.5)  # nothing more comes
    received = receiver.events()
    assert sorted(event["id"] for event in received) == sorted(str(event.event_id) for event in events)
    assert len(received) == len(events) == 5
    assert sorted(headers["Webhook-Id"] for headers, _body in receiver.requests) == sorted(e["id"] for e in received)
    for job in (first, second):
        sent = [event["type"] for event in received if event["data"].get("job_id", event["data"]["id"]) == str(job.id)]
        expected = [event.type for event in events if event.job_id == job.id]
        assert sent == expected
    assert [event["type"] for event in received if event["data"]["id"] == str(first.id)] == ["job.succeeded"]

    listed = client.get("/api/webhooks/deliveries?limit=100", headers=headers).json()
    assert listed["total"] == len(listed["items"]) >= 6 + 5
    assert [item["id"] for item in listed["items"]] == sorted((item["id"] for item in listed["items"]), reverse=True)
    delivered = [item for item in listed["items"] if item["status_code"] == 204]
    assert len(delivered) == 5 and all(item["error"] is None and item["duration_ms"] >= 0 for item in delivered)
    page = client.get("/api/webhooks/deliveries?limit=2&offset=1", headers=headers).json()
    assert [item["id"] for item in page["items"]] == [item["id"] for item in listed["items"][1:3]]
    _other, token = create_user(db, "eve")
    assert client.get("/api/webhooks/deliveries", headers={"Authorization": f"Bearer {token}"}).json()["total"] == 0


def test_delivery_survives_an_api_restart(configure, receiver, db, owner, make_job):
    from backend.main import create_app

    user, _headers = owner
    set_default_url(db, user, receiver.url)
    job = make_job(owner=user)
    succeed(db, job)  # no API runs: the event waits in the outbox
    with TestClient(create_app()):
        # the receiver is down while this API runs: attempts fail, the event stays pending
        wait_for(lambda: outbox(db)[0].attempts >= 2, "failed attempts")
    (event,) = outbox(db)
    assert event.status == "pending" and receiver.requests == []

    receiver.start()
    configure(webhook_retry_base_seconds=0.01)
    db.execute(update(WebhookEvent).values(next_attempt_at=utcnow()))
    db.commit()
    with TestClient(create_app()):
        wait_for(lambda: receiver.requests, "the delivery after the restart")
        wait_for(lambda: outbox(db)[0].status == "delivered", "the event marked delivered")
    assert [event["id"] for event in receiver.events()] == [str(event.event_id)]


def test_an_event_is_given_up_after_its_attempts_and_a_refused_address_at_once(
    configure, receiver, db, owner, make_job
):
    user, _headers = owner
    configure(webhook_max_attempts=2, webhook_retry_base_seconds=0.01)
    receiver.status = 500
    receiver.start()
    set_default_url(db, user, receiver.url)
    succeed(db, make_job(owner=user))
    wait_for(lambda: webhooks.deliver_due() == 0 and outbox(db)[0].status != "pending", "the event given up")
    assert (outbox(db)[0].status, outbox(db)[0].attempts, len(receiver.requests)) == ("failed", 2, 2)

    # allowed when it was queued, refused when it is due (the operator changed their mind, or DNS changed)
    succeed(db, make_job(owner=user))
    configure(webhook_allow_private=False)
    assert webhooks.deliver_due() == 1
    event = outbox(db)[1]
    assert (event.status, event.attempts, len(receiver.requests)) == ("failed", 1, 2)
    assert "127.0.0.1" in webhooks.list_deliveries(db, user, 1, 0)[0][0][0].error


def test_ended_events_are_forgotten_after_the_retention_period_and_pending_ones_never(
    configure, receiver, db, owner, make_job
):
    user, _headers = owner
    configure(webhook_max_attempts=1, webhook_retry_base_seconds=0.01)
    receiver.status = 500
    receiver.start()
    set_default_url(db, user, receiver.url)
    succeed(db, make_job(owner=user))
    wait_for(lambda: webhooks.deliver_due() == 0 and outbox(db)[0].status == "failed", "the event given up")
    succeed(db, make_job(owner=user))  # still pending: never forgotten, however old
    days = get_settings().webhook_retention_days
    db.execute(update(WebhookEvent).values(created_at=utcnow() - timedelta(days=days + 1)))
    db.commit()
    webhooks.forget_old_events(db)
    assert len(outbox(db)) == 2  # the failed one ended just now

    db.execute(update(WebhookEvent).where(WebhookEvent.finished_at.is_not(None)).values(
        finished_at=utcnow() - timedelta(days=days + 1)
    ))  # fmt: skip
    db.commit()
    webhooks.forget_old_events(db)
    assert [event.status for event in outbox(db)] == ["pending"]
    assert webhooks.list_deliveries(db, user, 10, 0) == ([], 0)


def test_an_event_is_claimed_by_one_deliverer_until_its_claim_lapses(configure, db, owner, make_job, receiver):
    user, _headers = owner
    set_default_url(db, user, receiver.url)
    succeed(db, make_job(owner=user))
    (claim,) = webhooks.claim_due(db)
    assert webhooks.claim_due(db) == []  # another API process finds nothing to take
    db.execute(update(WebhookEvent).values(claimed_until=utcnow().replace(year=2000)))
    db.commit()
    (again,) = webhooks.claim_due(db)  # the first deliverer died: its claim lapsed
    assert again.event_id == claim.event_id and again.token != claim.token


PRIVATE_URLS = [
    "http://127.0.0.1:9/",
    "http://10.0.0.1/",
    "http://localhost:8000/hooks",
    "http://[::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:192.168.1.1]/",
    "http://0.0.0.0/",
    "http://2130706433/",  # 127.0.0.1 as one number
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_a_private_address_is_refused_with_a_422_naming_the_field(configure, client, owner, url):
    configure(webhook_allow_private=False)
    _user, headers = owner
    response = client.put("/api/webhooks/settings", json={"default_url": url}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "default_url"
    assert "private, loopback, link-local or reserved" in response.json()["error"]["message"]


def test_jobs_and_generations_refuse_bad_urls_too(configure, client, owner, make_job, photo_bytes, broker):
    configure(webhook_allow_private=False)
    user, headers = owner
    for url, words in (("http://10.0.0.1/", "private"), ("ftp://example.com/", "http:// or https://")):
        response = client.post(
            "/api/jobs",
            data={"settings": json.dumps({"instance_prompt": "a photo of rufus dog"}), "webhook_url": url},
            files=[("photos", (f"{i}.png", photo_bytes(), "image/png")) for i in range(3)],
            headers=headers,
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "webhook_url", response.text
        assert words in response.json()["error"]["message"]
    job = make_job(owner=user)
    response = client.post(
        f"/api/jobs/{job.id}/generations", json={"prompt": "a dog", "webhook_url": "http://localhost/"}, headers=headers
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "webhook_url"


def test_a_job_and_a_generation_keep_the_url_they_were_given(configure, client, owner, db, receiver, broker):
    _user, headers = owner
    response = client.post(
        "/api/jobs",
        data={"settings": json.dumps({"instance_prompt": "a photo of rufus dog"}), "webhook_url": receiver.url},
        files=[("photos", (f"{i}.png", noise_png(), "image/png")) for i in range(3)],
        headers=headers,
    )
    assert response.status_code == 202, response.text
    assert response.json()["webhook_url"] == receiver.url
    assert "webhook_url" not in response.json()["settings"]
    job = db.get(Job, uuid.UUID(response.json()["id"]))
    succeed(db, job)
    generation = client.post(
        f"/api/jobs/{job.id}/generations", json={"prompt": "a dog", "webhook_url": receiver.url + "/g"}, headers=headers
    )
    assert generation.status_code == 202, generation.text
    assert generation.json()["webhook_url"] == receiver.url + "/g"
    assert "webhook_url" not in generation.json()["params"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("192.168.0.1", False),
        ("172.16.5.4", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::", False),
        ("::ffff:127.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 around 127.0.0.1
    ],
)
def test_which_addresses_are_public(address, public):
    assert webhooks.is_public(ipaddress.ip_address(address)) is public
