"""Log lines for people or for log collectors: the one-line text format, or one JSON object per line
(`LOG_FORMAT=json`), for the API and the workers alike.

Every line logged while a job or a generation is worked on carries its id: the worker binds the id in a
context variable for the task's run (worker/celery_app.py), and a filter copies it onto each record, so
the core's own lines (worker/dreambooth/, which knows nothing of jobs) carry it too.
"""

import json
import logging
from contextvars import ContextVar, Token
from datetime import UTC, datetime

from backend.settings import get_settings

# The ids a line may be about, as the JSON lines name them.
WORK_ID_FIELDS = ("job_id", "generation_id")

_work_ids: ContextVar[dict[str, str] | None] = ContextVar("work_ids", default=None)

# uvicorn's own loggers, which it gives handlers of its own (text) before the app is imported.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def bind_work_ids(**ids: object) -> Token:
    """Tag every line this context logs from now on with `ids` (job_id=..., generation_id=...)."""
    return _work_ids.set({**(_work_ids.get() or {}), **{name: str(value) for name, value in ids.items()}})


def unbind_work_ids(token: Token) -> None:
    """Undo the bind_work_ids that returned `token`."""
    _work_ids.reset(token)


class WorkIdFilter(logging.Filter):
    """Puts the bound work ids on each record (as attributes), to be written by the JSON formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_work_ids.get() or {}).items():
            setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message; the job or generation id when
    the line is about one; the traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({name: getattr(record, name) for name in WORK_ID_FIELDS if hasattr(record, name)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        # note: default=str, so a message argument that JSON cannot hold never loses the line
        return json.dumps(line, default=str)


def configure_logging(text_format: str) -> None:
    """Log to stderr at LOG_LEVEL, as LOG_FORMAT says: `text_format` (a logging.Formatter format) or JSON.

    Like logging.basicConfig, it leaves a root logger that already has handlers (pytest's) alone.
    """
    settings = get_settings()
    handler = logging.StreamHandler()
    handler.addFilter(WorkIdFilter())
    json_lines = settings.log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(text_format))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    if json_lines:
        # note: Python's warnings would be written to stderr as they are, over several lines
        logging.captureWarnings(True)
        # note: uvicorn's startup and access lines would stay text on its own handlers; through the root's
        # handler they are JSON like every other line
        for name in UVICORN_LOGGERS:
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
