"""ORM tables: users, their hashed API tokens, jobs, the jobs' photos, artifacts and generations, and the webhooks'
outbox."""

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    # note: every constraint gets a predictable name, so later migrations can drop or alter it
    # (SQLite's batch mode cannot touch an unnamed one).
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class LeasedWork:
    """The columns of work that workers take under a lease, jobs and generations alike (see backend/leases.py)."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # queued -> running (under a lease) -> an end; generations spell their statuses as jobs do
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued, index=True)
    error_code: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)

    # Delivery bookkeeping: who holds the work, since when, and how often it was tried.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None]
    # When the last wake-up call was sent to the broker (the reaper re-sends lost ones).
    enqueued_at: Mapped[datetime | None]

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Webhooks (backend/webhooks.py): where events of jobs and generations that name no URL go (None: nowhere),
    # and the key that signs them, made when first needed.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(String(64))


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # SHA-256 of the token; the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Updated at most once a minute, so that busy clients do not write on every request.
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class Job(LeasedWork, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_id_idempotency_key"),
    )

    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    phase: Mapped[str | None] = mapped_column(String(40))
    settings: Mapped[dict[str, Any]]

    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int] = mapped_column(default=0)
    loss: Mapped[float | None]
    eta_seconds: Mapped[float | None]

    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # When the current attempt was claimed (time limits count from here).
    claimed_at: Mapped[datetime | None]
    # The client's Idempotency-Key: a retried POST returns this job instead of making another.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # When the retention rule deleted the raw photos (the job keeps their metadata).
    photos_purged_at: Mapped[datetime | None]
    # The loss curve, downsampled to at most a few hundred [step, loss] points (see worker/progress.py).
    loss_history: Mapped[list[Any] | None] = mapped_column(JSONType)
    # The scorer's per-step scores and recommended step (see worker/dreambooth/score.py); None until scored.
    evaluation: Mapped[dict[str, Any] | None]
    # The memory savers memory_profile chose for the latest attempt (worker/dreambooth/memory.py):
    # {"profile", "gpu_memory_gib", "changes": {setting: value}}; None until an attempt starts.
    memory_plan: Mapped[dict[str, Any] | None]
    # The base model's family when the job was made ("sd1", "sd2", "sdxl"; backend/base_models.py); None when
    # the API could not tell (a Hub model not in its cache yet).
    family: Mapped[str | None] = mapped_column(String(20))
    # The Celery queue the job was routed to by its memory need ("gpu-24gb"; backend/routing.py), and why a
    # queued job waits ("waiting_for_gpu": no live worker can fit it); None when it does not wait on anything.
    queue: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(40))
    # Where the job's end is POSTed (backend/webhooks.py); None: the owner's default, if any.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))

    photos: Mapped[list["Photo"]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="Photo.position"
    )
    artifacts: Mapped[list["Artifact"]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, order_by="Artifact.id"
    )


class Worker(Base):
    """A live (or lately live) worker process and what it can run: written at its start and with its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # Celery's node name, unique per process
    hostname: Mapped[str] = mapped_column(String(200))
    gpu_name: Mapped[str | None] = mapped_column(String(200))  # None: no GPU (a CPU worker)
    gpu_memory_gib: Mapped[float | None]
    gpu_count: Mapped[int] = mapped_column(default=0)
    families: Mapped[list[Any]] = mapped_column(JSONType)  # the model families its stack can train
    queues: Mapped[list[Any]] = mapped_column(JSONType)  # the Celery queues it consumes
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # "instance" | "class"
    position: Mapped[int]
    path: Mapped[str] = mapped_column(String(300))  # relative to DATA_DIR, generated
    width: Mapped[int]
    height: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Instance photos (backend/photo_checks.py, computed once at upload): the uploaded file's name (a label, never a
    # path); the square the trainer crops, [left, top, right, bottom] in the stored photo (None: random crops);
    # {"usable", "warnings": [{"code", "message"}], "faces", "sharpness", "dhash"}; the user's caption.
    name: Mapped[str | None] = mapped_column(String(200))
    crop_box: Mapped[list[Any] | None] = mapped_column(JSONType)
    checks: Mapped[dict[str, Any] | None]
    caption: Mapped[str | None] = mapped_column(Text)
    # The captioning model's caption (worker/dreambooth/captioner.py), written by the worker before training when
    # caption_mode is instance_plus_auto_caption and the user gave none; the user's caption always wins.
    auto_caption: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="photos")


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # "sample" | "checkpoint" (single files) | "pipeline" (diffusers folder) | "weights" (a kept step's
    # trained weights: a folder laid out like the pipeline's, holding only what training changed)
    kind: Mapped[str] = mapped_column(String(20))
    path: Mapped[str] = mapped_column(String(300))  # relative to DATA_DIR
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[int]
    prompt: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None]
    format: Mapped[str | None] = mapped_column(String(20))  # checkpoints: "single"
    dtype: Mapped[str | None] = mapped_column(String(10))  # checkpoints: "fp16" | "fp32"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


# Artifacts that hold a step's whole weights: what ?step=N downloads and generations start from.
WEIGHT_KINDS = ("pipeline", "weights")


def kept_steps(job: Job) -> list[int]:
    """The steps whose weights the job kept, ascending (the last is the final step once it succeeded)."""
    return sorted({artifact.step for artifact in job.artifacts if artifact.kind in WEIGHT_KINDS})


class GenerationStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class Generation(LeasedWork, Base):
    """Images rendered on demand from a finished job's weights (at its final or a kept step)."""

    __tablename__ = "generations"
    __table_args__ = (Index("ix_generations_job_created", "job_id", "created_at"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # prompt, negative_prompt, scheduler, num_inference_steps, guidance_scale, seed, num_images, step
    params: Mapped[dict[str, Any]]
    # [{"path": relative to DATA_DIR, "seed": int}, ...] once rendered
    images: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    # Where the generation's end is POSTed (backend/webhooks.py); None: the owner's default, if any.
    webhook_url: Mapped[str | None] = mapped_column(String(2000))


class WebhookStatus(enum.StrEnum):
    pending = "pending"  # not delivered yet: waiting for its turn, its next attempt, or being delivered now
    delivered = "delivered"  # a receiver answered 2xx
    failed = "failed"  # given up: refused address, or out of attempts or time


class WebhookEvent(Base):
    """The outbox: an event written in the same transaction as the end it tells of, POSTed by the deliverer."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_job_status", "job_id", "status"),
        Index("ix_webhook_events_status_next", "status", "next_attempt_at"),
    )

    # note: an integer key orders the events of a job (each is delivered after the ones before it)
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)  # the payload's id and Webhook-Id: stable over retries
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # note: no foreign keys to the job or generation: an event outlives its job being deleted
    job_id: Mapped[uuid.UUID]
    generation_id: Mapped[uuid.UUID | None]
    type: Mapped[str] = mapped_column(String(40))  # job.succeeded, ..., generation.failed
    url: Mapped[str] = mapped_column(String(2000))
    # The exact bytes POSTed, kept as text (a JSONB column would reorder the keys).
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=WebhookStatus.pending)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A deliverer's hold on the event while it POSTs it (like a job's lease): its token, and when it lapses.
    claim_token: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]  # delivered or given up


class WebhookDelivery(Base):
    """One attempt to deliver an event: what the receiver answered (or why there was no answer) and how fast."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_owner_id", "owner_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    attempt: Mapped[int]  # 1 for the first
    url: Mapped[str] = mapped_column(String(2000))
    status_code: Mapped[int | None]  # None: no answer (see error)
    error: Mapped[str | None] = mapped_column(Text)  # None when delivered
    duration_ms: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
