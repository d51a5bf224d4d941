"""Every knob of the service, read once from environment variables (and `.env`)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TINY_MODEL = "builtin:tiny"
# The other families' tiny built-in models, offered in demo mode so a machine without a GPU can try each family.
DEMO_FAMILY_MODELS = ("builtin:tiny-sd2", "builtin:tiny-sdxl")
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_SCORER = "builtin:tiny-clip"
DEFAULT_SCORER = "openai/clip-vit-large-patch14"
TINY_CAPTIONER = "builtin:tiny-blip"
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"


def gpu_present() -> bool:
    """Whether this host has an NVIDIA driver loaded (checked without importing torch)."""
    return Path("/proc/driver/nvidia/version").exists()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    data_dir: Path = Path("./data")
    # Empty means the embedded default: SQLite files under data_dir.
    database_url: str = ""
    broker_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000

    # Demo mode trains the built-in tiny model, for machines without a GPU. None = decide by GPU.
    demo_mode: bool | None = None
    base_model: str = ""
    # Base models users may pick, besides base_model itself (comma separated); families may be mixed.
    extra_base_models: str = ""
    # The workers' GPU memory in GiB. When set, a job whose training method cannot fit in it at all (SDXL full
    # fine-tuning, say) is refused at creation; None: the workers' memory planner decides alone.
    gpu_memory_gib: float | None = Field(None, gt=0)
    # The model that scores validation samples to recommend a step: a CLIP (or DINO) Hub id or folder,
    # "none" to not score. Empty: CLIP ViT-L/14, or the built-in tiny CLIP in demo mode.
    scorer_model: str = ""
    # The model that captions photos for caption_mode instance_plus_auto_caption: a BLIP-class Hub id or folder,
    # "none" to offer no automatic captions. Empty: BLIP base, or the built-in tiny BLIP in demo mode.
    caption_model: str = ""

    # Jobs: a worker whose heartbeat is older than this is presumed dead. Every running job's lease beats from
    # a background thread every quarter of this, through long validations and exports too.
    heartbeat_stale_seconds: int = 30
    max_attempts: int = 3
    progress_interval_seconds: float = 1.0
    # The reaper (a thread in every worker): how often it looks for lost, stuck and expired jobs.
    reaper_interval_seconds: float = 10.0

    # Routing (backend/routing.py): the GPU classes in GiB, one Celery queue each ("gpu-24gb"); a job goes to
    # the smallest class that fits it, a worker reads its own class and every smaller one.
    gpu_classes_gib: str = "12,16,24,48,80"
    # The queues this worker reads (comma separated), instead of those its GPU's memory picks.
    worker_queues: str = ""
    # How often each worker records itself in the workers table (what it has, that it is alive).
    worker_heartbeat_seconds: float = 5.0
    # User names that see every worker in /api/info (comma separated); others see how many are live.
    admin_users: str = ""
    # A job still queued this long after its last wake-up call is sent another (the first may be lost).
    requeue_queued_after_seconds: int = 600
    # Training stops at the soft limit and the job fails with `timeout`; the reaper fails a job
    # still running at the hard limit. Both count from when the current attempt started.
    job_soft_time_limit_seconds: int = 6 * 3600
    job_time_limit_seconds: int = 6 * 3600 + 900
    # A generation still running this long after it first started fails with `timeout` (the reaper's check).
    generation_time_limit_seconds: int = 1800
    # How long a worker keeps trying to record a job's or a generation's outcome while the database is down.
    finish_retry_seconds: float = 300.0
    # Raw photos of a finished job are deleted this many days after it ended (None: kept).
    photo_retention_days: float | None = None

    # Upload limits.
    max_request_bytes: int = 256 * 1024 * 1024
    max_photos: int = 50
    max_class_photos: int = 500
    max_photo_bytes: int = 25 * 1024 * 1024
    max_photo_pixels: int = 50_000_000
    # A job needs at least this many usable photos (backend/photo_checks.py: not too small, not a duplicate, ...).
    min_usable_photos: int = Field(3, ge=0)

    # Per-user limits: jobs queued or running at once, and bytes of photos and outputs kept.
    max_active_jobs_per_user: int = 3
    max_storage_bytes_per_user: int = 20 * 1024**3
    # New API tokens expire after this many days (None: never).
    token_ttl_days: float | None = None
    # A token the database accepted is taken on trust this long by the API process that checked it, so pollers
    # cost no token query; a revocation made through another process takes effect within it. 0: check every time.
    token_cache_seconds: float = Field(10.0, ge=0, le=300)

    # Webhooks (backend/webhooks.py): POST to private, loopback or link-local addresses too (receivers on the
    # operator's own network); how long a receiver may take to answer; the first retry's delay (doubling after
    # each failure, up to an hour); when an event is given up (attempts, or seconds since it happened); how often
    # each API process looks for events due.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=300)
    webhook_retry_base_seconds: float = Field(10.0, gt=0)
    webhook_max_attempts: int = Field(30, ge=1)
    webhook_max_age_seconds: float = Field(24 * 3600, gt=0)
    webhook_poll_seconds: float = Field(1.0, gt=0)
    # Delivered and given-up events (and their attempts) are deleted this many days after they ended.
    webhook_retention_days: float = Field(30.0, gt=0)

    # Celery: a message not acknowledged in this time is redelivered (Redis); must exceed any job.
    broker_visibility_timeout_seconds: int = 48 * 3600

    log_level: str = "INFO"
    # "text": the readable one-line format; "json": one JSON object per line (backend/logs.py), for log collectors.
    log_format: Literal["text", "json"] = "text"
    # The port each worker process serves its Prometheus metrics on (worker/metrics.py); 0: not served.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # /readyz fails while the file store (DATA_DIR) has less free space than this: a job's outputs need room.
    ready_min_free_bytes: int = Field(1024**3, ge=0)

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        self.data_dir = self.data_dir.resolve()
        if self.demo_mode is None:
            self.demo_mode = not gpu_present()
        if not self.base_model:
            self.base_model = TINY_MODEL if self.demo_mode else DEFAULT_BASE_MODEL
        if not self.scorer_model:
            self.scorer_model = TINY_SCORER if self.demo_mode else DEFAULT_SCORER
        if not self.caption_model:
            self.caption_model = TINY_CAPTIONER if self.demo_mode else DEFAULT_CAPTIONER
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'studio.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if not _positive_numbers(self.gpu_classes_gib):
            raise ValueError("gpu_classes_gib must list GPU memory sizes in GiB, comma separated: 12,16,24,48,80")
        if self.job_time_limit_seconds <= self.job_soft_time_limit_seconds:
            raise ValueError("job_time_limit_seconds must exceed job_soft_time_limit_seconds")
        if self.database_url.startswith("postgresql://"):
            # note: SQLAlchemy would pick psycopg2 for a bare scheme; we ship psycopg 3.
            self.database_url = "postgresql+psycopg://" + self.database_url.removeprefix("postgresql://")
        return self

    @property
    def allowed_base_models(self) -> list[str]:
        """Base models a job may name, the default first; always builtin:tiny, and in demo mode every family's."""
        demo = DEMO_FAMILY_MODELS if self.demo_mode else ()
        names = [self.base_model, *self.extra_base_models.split(","), TINY_MODEL, *demo]
        return list(dict.fromkeys(name.strip() for name in names if name.strip()))

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")


def _positive_numbers(text: str) -> bool:
    """Whether `text` is a comma-separated list of one or more positive numbers."""
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        return False
    return all(value > 0 for value in values)


@lru_cache
def get_settings() -> Settings:
    return Settings()
