"""Webhooks: tell a user's own service when a job or a generation ends, from a durable outbox.

An end and its event row commit in one transaction (the outbox pattern): no event is lost when a
process dies right after the end, and none tells of an end that was rolled back. A deliverer thread in
each API process POSTs due events, signed with the owner's secret, and records every attempt. It
claims an event with one conditional UPDATE that hands it a token until a deadline (as workers claim
jobs, backend/leases.py), so any number of API processes may deliver at once, on Postgres and SQLite
alike. Delivery is at least once: a 2xx answer delivers, anything else is retried with exponential
backoff until the event runs out of attempts or time; receivers drop duplicates by `Webhook-Id`. The
events of a job (its end, then its generations') go out in order: none is sent while an earlier one
of the same job is still pending.

URLs must be http or https, and by default must not reach private, loopback, link-local, multicast,
reserved or unspecified addresses (every address the host resolves to is checked, when the URL is
given and again before each attempt, since DNS may change): the server must not be a way into its own
network. `WEBHOOK_ALLOW_PRIVATE=true` lifts that for receivers on the operator's own network.
"""

import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel
from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased, selectinload

from backend.api.generation_view import generation_out
from backend.api.job_view import job_out
from backend.db import get_sessionmaker
from backend.errors import InvalidInput
from backend.generation_schemas import GenerationOut
from backend.models import Generation, Job, User, WebhookDelivery, WebhookEvent, WebhookStatus, utcnow
from backend.schemas import JobOut
from backend.settings import get_settings

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
# Events due at once that one pass of the deliverer claims, and how many it POSTs at a time (so one slow
# receiver does not hold up the others).
BATCH_SIZE = 20
DELIVERY_THREADS = 4
# The longest wait between two attempts, however many failed.
MAX_BACKOFF_SECONDS = 3600
# A receiver's error message is kept up to this many characters.
MAX_ERROR_CHARS = 500
# After a pass that failed (the database is down), the deliverer waits at least this long before the next.
FAILED_PASS_WAIT_SECONDS = 5.0


# ── URLs ─────────────────────────────────────────────────────────────────────────────────────


class RefusedUrl(Exception):
    """The server must never POST to this URL (its scheme, or an address it resolves to)."""


def check_destination(url: str) -> None:
    """Raise RefusedUrl when the server must not POST to `url`, or OSError when its host cannot be resolved now."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedUrl("must be an http:// or https:// URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedUrl("has an invalid port") from None
    if get_settings().webhook_allow_private:
        return
    for *_, address in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP):
        ip = ipaddress.ip_address(address[0])
        if not is_public(ip):
            raise RefusedUrl(
                f"{parts.hostname} resolves to {ip}, a private, loopback, link-local or reserved address; "
                "the server only POSTs to public addresses (unless the operator sets WEBHOOK_ALLOW_PRIVATE=true)"
            )


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` is a public unicast address (an IPv6 address that embeds an IPv4 one is judged by that too)."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public(embedded):
            return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def checked_url(url: str | None, field: str) -> str | None:
    """A webhook URL a user gave (None when empty), or InvalidInput naming `field` when it is refused."""
    if not url or not url.strip():
        return None
    url = url.strip()
    try:
        check_destination(url)
    except RefusedUrl as exc:
        raise InvalidInput(f"{field}: {exc}", field) from None
    except (OSError, UnicodeError):
        raise InvalidInput(f"{field}: its host {urlsplit(url).hostname} could not be resolved", field) from None
    return url


# ── signing ──────────────────────────────────────────────────────────────────────────────────


def sign(secret: str, timestamp: int, body: str) -> str:
    """The Webhook-Signature header: HMAC-SHA256 over "<timestamp>.<body>" with the owner's secret, in hex."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def ensure_secret(session: Session, user_id: int) -> str:
    """The user's signing secret, made now if they had none (committed)."""
    session.execute(
        update(User).where(User.id == user_id, User.webhook_secret.is_(None)).values(webhook_secret=new_secret())
    )
    session.commit()
    return session.scalar(select(User.webhook_secret).where(User.id == user_id))


def new_secret() -> str:
    return secrets.token_hex(32)


# ── the outbox ───────────────────────────────────────────────────────────────────────────────


class Payload(BaseModel):
    """What an event POSTs: `data` is the job or the generation exactly as the API shows it at that moment."""

    id: uuid.UUID
    type: str
    created_at: datetime
    data: JobOut | GenerationOut


def record_job_event(session: Session, job_id: uuid.UUID) -> None:
    """Add the event of a job that just ended (`job.<status>`) if it or its owner names a URL; uncommitted, so it
    commits with the end."""
    job = session.scalar(
        select(Job)
        .where(Job.id == job_id)
        .options(selectinload(Job.artifacts), selectinload(Job.photos))
        # note: the end was an UPDATE statement; the job this session may hold is older than it
        .execution_options(populate_existing=True)
    )
    _add_event(session, f"job.{job.status}", job.owner_id, job.id, None, job.webhook_url, job_out(job))


def record_generation_event(session: Session, generation_id: uuid.UUID) -> None:
    """Add the event of a generation that just ended (`generation.<status>`), as record_job_event does."""
    generation = session.scalar(
        select(Generation).where(Generation.id == generation_id).execution_options(populate_existing=True)
    )
    _add_event(
        session,
        f"generation.{generation.status}",
        generation.owner_id,
        generation.job_id,
        generation.id,
        generation.webhook_url,
        generation_out(generation),
    )


def _add_event(
    session: Session,
    event_type: str,
    owner_id: int,
    job_id: uuid.UUID,
    generation_id: uuid.UUID | None,
    url: str | None,
    data: JobOut | GenerationOut,
) -> None:
    url = url or session.scalar(select(User.webhook_url).where(User.id == owner_id))
    if not url:
        return
    now = utcnow()
    payload = Payload(id=uuid.uuid4(), type=event_type, created_at=now, data=data)
    session.add(
        WebhookEvent(
            event_id=payload.id,
            owner_id=owner_id,
            job_id=job_id,
            generation_id=generation_id,
            type=event_type,
            url=url,
            body=payload.model_dump_json(),
            status=WebhookStatus.pending,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    log.info("%s %s: %s event queued for its webhook", "generation" if generation_id else "job", job_id, event_type)


# ── delivery ─────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Claim:
    """A deliverer's hold on one event: valid while the row still carries `token`."""

    id: int
    token: str
    event_id: uuid.UUID
    owner_id: int
    url: str
    body: str
    attempts: int  # before this one
    created_at: datetime


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None  # None: delivered
    duration_ms: int
    permanent: bool = False  # no point in trying again (the URL is refused)


def claim_due(session: Session, limit: int = BATCH_SIZE) -> list[Claim]:
    """Take up to `limit` pending events that are due, unclaimed (or whose claim lapsed) and first in line for
    their job, each with a new token until its deadline (committed)."""
    settings = get_settings()
    now = utcnow()
    earlier = aliased(WebhookEvent)
    waiting_behind = exists().where(
        earlier.job_id == WebhookEvent.job_id, earlier.id < WebhookEvent.id, earlier.status == WebhookStatus.pending
    )
    free = or_(WebhookEvent.claimed_until.is_(None), WebhookEvent.claimed_until < now)
    ids = session.scalars(
        select(WebhookEvent.id)
        .where(WebhookEvent.status == WebhookStatus.pending, WebhookEvent.next_attempt_at <= now, free, ~waiting_behind)
        .order_by(WebhookEvent.id)
        .limit(limit)
    ).all()
    # note: an attempt may take the whole timeout; a claim lapses well after, so only a dead deliverer loses one
    deadline = now + timedelta(seconds=2 * settings.webhook_timeout_seconds + 30)
    claims = []
    for event_id in ids:
        token = secrets.token_hex(16)
        row = session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id, WebhookEvent.status == WebhookStatus.pending, free)
            .values(claim_token=token, claimed_until=deadline)
            .returning(
                WebhookEvent.event_id,
                WebhookEvent.owner_id,
                WebhookEvent.url,
                WebhookEvent.body,
                WebhookEvent.attempts,
                WebhookEvent.created_at,
            )
            .execution_options(synchronize_session=False)
        ).first()
        if row is not None:
            claims.append(Claim(event_id, token, *row))
    session.commit()
    return claims


def post(claim: Claim, secret: str) -> Attempt:
    """POST the event to its URL once (its address checked again first; redirects are not followed)."""
    started = time.monotonic()

    def attempt(status_code: int | None, error: str | None, permanent: bool = False) -> Attempt:
        return Attempt(
            status_code, error and error[:MAX_ERROR_CHARS], round((time.monotonic() - started) * 1000), permanent
        )

    try:
        check_destination(claim.url)
    except RefusedUrl as exc:
        return attempt(None, f"refused: {exc}", permanent=True)
    except (OSError, UnicodeError) as exc:
        return attempt(None, f"the host could not be resolved: {exc}")
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "dreambooth-studio-webhooks/1",
        "Webhook-Id": str(claim.event_id),
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign(secret, timestamp, claim.body),
    }
    timeout = get_settings().webhook_timeout_seconds
    try:
        # note: no proxies from the environment: the address just checked must be the one connected to
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream("POST", claim.url, content=claim.body.encode(), headers=headers) as response,
        ):
            # note: the answer's body is never read; a receiver cannot make the server hold a large one
            status = response.status_code
    except Exception as exc:  # note: whatever kept the POST from being answered is a failed attempt, kept as such
        return attempt(None, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__)
    return attempt(status, None if 200 <= status < 300 else f"HTTP {status}")


def record_attempt(session: Session, claim: Claim, attempt: Attempt) -> str:
    """Keep the attempt and move the event on: delivered, retried later, or given up. Returns its new status."""
    settings = get_settings()
    now = utcnow()
    number = claim.attempts + 1
    delay = min(settings.webhook_retry_base_seconds * 2 ** min(number - 1, 32), MAX_BACKOFF_SECONDS)
    next_attempt_at = now + timedelta(seconds=delay)
    if attempt.error is None:
        status = WebhookStatus.delivered
    elif (
        attempt.permanent
        or number >= settings.webhook_max_attempts
        or next_attempt_at > claim.created_at + timedelta(seconds=settings.webhook_max_age_seconds)
    ):
        status = WebhookStatus.failed
    else:
        status = WebhookStatus.pending
    session.add(
        WebhookDelivery(
            event_id=claim.id,
            owner_id=claim.owner_id,
            attempt=number,
            url=claim.url,
            status_code=attempt.status_code,
            error=attempt.error,
            duration_ms=attempt.duration_ms,
            created_at=now,
        )
    )
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == claim.id, WebhookEvent.claim_token == claim.token)
        .values(
            status=status,
            attempts=number,
            next_attempt_at=next_attempt_at,
            claim_token=None,
            claimed_until=None,
            finished_at=None if status == WebhookStatus.pending else now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return status


def deliver_due() -> int:
    """One pass of the deliverer: claim the events due and POST them; returns how many were attempted."""
    with get_sessionmaker()() as session:
        claims = claim_due(session)
    if claims:
        with ThreadPoolExecutor(min(DELIVERY_THREADS, len(claims)), thread_name_prefix="webhook") as pool:
            list(pool.map(_deliver, claims))
    return len(claims)


def _deliver(claim: Claim) -> None:
    with get_sessionmaker()() as session:
        secret = ensure_secret(session, claim.owner_id)
    # note: no database connection is held while the receiver answers
    attempt = post(claim, secret)
    with get_sessionmaker()() as session:
        status = record_attempt(session, claim, attempt)
    if status == WebhookStatus.failed:
        log.warning("webhook event %s to %s given up: %s", claim.event_id, claim.url, attempt.error)
    elif status == WebhookStatus.pending:
        log.info(
            "webhook event %s to %s: attempt %d failed (%s)",
            claim.event_id,
            claim.url,
            claim.attempts + 1,
            attempt.error,
        )


class Deliverer:
    """Runs `deliver_due` on a daemon thread until stopped: at once again after a busy pass, else every
    `webhook_poll_seconds`."""

    def __init__(self, poll_seconds: float | None = None):
        self.poll_seconds = poll_seconds or get_settings().webhook_poll_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-deliverer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=get_settings().webhook_timeout_seconds + 5)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                if deliver_due() == 0:
                    self._stopped.wait(self.poll_seconds)
            except Exception:
                # note: the database may be down for a while; a later pass tries again
                log.exception("webhooks: a delivery pass failed")
                self._stopped.wait(max(self.poll_seconds, FAILED_PASS_WAIT_SECONDS))


def forget_old_events(session: Session) -> None:
    """Delete events that ended (delivered or given up) more than `webhook_retention_days` ago, with their
    attempts (committed): the outbox keeps what is pending and what users may still look at."""
    before = utcnow() - timedelta(days=get_settings().webhook_retention_days)
    session.execute(
        delete(WebhookEvent).where(WebhookEvent.status != WebhookStatus.pending, WebhookEvent.finished_at < before)
    )
    session.commit()


# ── what users see ───────────────────────────────────────────────────────────────────────────


def set_default_url(session: Session, user: User, url: str | None) -> User:
    """Set (or clear, with None) the URL the user's jobs and generations that name none report to."""
    session.execute(update(User).where(User.id == user.id).values(webhook_url=url))
    session.commit()
    ensure_secret(session, user.id)
    return session.get(User, user.id, populate_existing=True)


def rotate_secret(session: Session, user: User) -> User:
    """A new signing secret for the user; deliveries from now on are signed with it."""
    session.execute(update(User).where(User.id == user.id).values(webhook_secret=new_secret()))
    session.commit()
    return session.get(User, user.id, populate_existing=True)


def list_deliveries(
    session: Session, user: User, limit: int, offset: int
) -> tuple[list[tuple[WebhookDelivery, WebhookEvent]], int]:
    """The user's delivery attempts with their events, newest first, and how many there are."""
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.owner_id == user.id))
    rows = session.execute(
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookDelivery.event_id == WebhookEvent.id)
        .where(WebhookDelivery.owner_id == user.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return [tuple(row) for row in rows], total or 0
