# The API image: `uvicorn backend.main:app` (several processes: WEB_CONCURRENCY), and `alembic upgrade head`
# for compose's migrate service. No torch, no CUDA: the distribution's default dependencies only, at the
# versions requirements/api.txt pins with hashes (`make lock` writes it from the versions the tests ran).
# Build: docker compose build api   (or: docker build -t dreambooth-studio-api .)
FROM python:3.11-slim-bookworm

# note: the same uid as Dockerfile.gpu's user: the API and the workers write the same DATA_DIR volume
ARG APP_UID=10001

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    DATA_DIR=/data \
    HF_HOME=/hf-cache \
    WEB_CONCURRENCY=4

RUN python -m venv /opt/venv \
 && groupadd --gid "$APP_UID" studio \
 && useradd --uid "$APP_UID" --gid studio --create-home --shell /usr/sbin/nologin studio \
 && mkdir -p /data /hf-cache \
 && chown studio:studio /data /hf-cache

WORKDIR /app

# Dependencies first, so a code change reuses this layer. --no-deps: exactly the lock's packages, no others.
COPY requirements/api.txt requirements/api.txt
RUN pip install --no-deps --require-hashes -r requirements/api.txt

# note: worker/ comes along only for the `dreambooth` command (create-user, tokens), which imports no torch
# (tests/deploy); the API process never imports it. frontend/ is served from /app (backend/main.py).
COPY pyproject.toml README.md alembic.ini ./
COPY alembic alembic
COPY formats formats
COPY backend backend
COPY worker worker
COPY frontend frontend
# note: PYTHONPATH=/app makes every process run this source tree; the install adds the `dreambooth`
# command and the metadata `pip check` holds the lock against (a dependency missing from it fails here)
RUN pip install --no-deps . && pip check

# note: numeric, so a runtime can tell it is not root without reading /etc/passwd
USER $APP_UID:$APP_UID
EXPOSE 8000
# note: liveness only; /readyz (database, broker, file store) is for load balancers: an orchestrator that
# restarted the API whenever Postgres blinked would only add to the outage
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# note: uvicorn reads WEB_CONCURRENCY itself (its --workers default), so the exec form needs no shell
CMD ["uvicorn", "backend.main:app", "--host", "0.0.0.0", "--port", "8000"]
