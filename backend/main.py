"""The FastAPI application: routers, error handlers, and the static frontend (`uvicorn backend.main:app`)."""

import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from backend import metrics, webhooks
from backend.api import artifacts, events, generations, health, info, jobs, photos, tokens
from backend.api import webhooks as webhooks_api
from backend.body_limit import BodySizeLimit
from backend.bulkhead import RequestBulkhead
from backend.db import MAX_CONCURRENT_REQUESTS
from backend.errors import install_error_handlers
from backend.logs import configure_logging
from backend.schemas import ErrorResponse
from backend.settings import get_settings

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"
# Documented once for every route: all errors share one shape (backend/errors.py).
ERROR_RESPONSES = {"4XX": {"model": ErrorResponse, "description": "An error the client can act on"}}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """While the app serves: a webhook deliverer thread (every API process runs one; they share the outbox)."""
    deliverer = webhooks.Deliverer()
    deliverer.start()
    try:
        yield
    finally:
        deliverer.stop()


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = FastAPI(
        title="Dreambooth Studio",
        summary="Teach Stable Diffusion a subject from a few photos, then download the checkpoint.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestBulkhead, limit=MAX_CONCURRENT_REQUESTS)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    for module in (health, metrics, info, jobs, photos, artifacts, events, generations, tokens, webhooks_api):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    # note: mounted last, so that "/" serves the page without shadowing /api or the probes.
    if (FRONTEND_DIR / "index.html").is_file():
        # note: browsers run ES modules only when served as JavaScript; some systems' tables map .js otherwise.
        mimetypes.add_type("text/javascript", ".js")
        app.mount("/", StaticFiles(directory=FRONTEND_DIR, html=True), name="frontend")
    return app


app = create_app()
