"""The caller's webhooks: their default URL and signing secret, and the recent delivery attempts (see
backend/webhooks.py)."""

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from backend import webhooks
from backend.auth import CurrentUser
from backend.db import SessionDep
from backend.models import User

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


class WebhookSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_url: str | None = Field(
        max_length=2000, description="Where events of jobs and generations that name no webhook_url go; null: nowhere"
    )


class WebhookSettingsOut(BaseModel):
    default_url: str | None
    secret: str  # signs every delivery: Webhook-Signature is v1=HMAC-SHA256(secret, "<timestamp>.<body>") in hex


class DeliveryOut(BaseModel):
    """One attempt to deliver an event."""

    id: int
    event_id: uuid.UUID  # the payload's id and the Webhook-Id header, the same on every attempt
    type: str  # job.succeeded, job.failed, job.cancelled, generation.succeeded, generation.failed
    job_id: uuid.UUID
    generation_id: uuid.UUID | None
    url: str
    attempt: int  # 1 for the first
    status_code: int | None  # the receiver's answer; None when there was none (see error)
    error: str | None  # None: delivered
    duration_ms: int
    created_at: datetime
    event_status: str  # the event now: pending (another attempt will come), delivered, failed (given up)


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    total: int
    limit: int
    offset: int


@router.get("/settings")
def get_settings(session: SessionDep, user: CurrentUser) -> WebhookSettingsOut:
    """The caller's default webhook URL and signing secret (made on first use)."""
    webhooks.ensure_secret(session, user.id)
    return _settings_out(session.get(User, user.id, populate_existing=True))


@router.put("/settings")
def put_settings(body: WebhookSettingsIn, session: SessionDep, user: CurrentUser) -> WebhookSettingsOut:
    """Set or clear (null) the default webhook URL; a URL the server may not POST to is a 422."""
    url = webhooks.checked_url(body.default_url, "default_url")
    return _settings_out(webhooks.set_default_url(session, user, url))


@router.post("/secret/rotate")
def rotate_secret(session: SessionDep, user: CurrentUser) -> WebhookSettingsOut:
    """A new signing secret, used from the next delivery on (pending events included); the old one stops at once."""
    return _settings_out(webhooks.rotate_secret(session, user))


@router.get("/deliveries")
def list_deliveries(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> DeliveryList:
    """The caller's delivery attempts, newest first."""
    rows, total = webhooks.list_deliveries(session, user, limit, offset)
    items = [
        DeliveryOut(
            id=delivery.id,
            event_id=event.event_id,
            type=event.type,
            job_id=event.job_id,
            generation_id=event.generation_id,
            url=delivery.url,
            attempt=delivery.attempt,
            status_code=delivery.status_code,
            error=delivery.error,
            duration_ms=delivery.duration_ms,
            created_at=delivery.created_at,
            event_status=event.status,
        )
        for delivery, event in rows
    ]
    return DeliveryList(items=items, total=total, limit=limit, offset=offset)


def _settings_out(user: User) -> WebhookSettingsOut:
    return WebhookSettingsOut(default_url=user.webhook_url, secret=user.webhook_secret)
