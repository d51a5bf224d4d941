"""Log lines: one JSON object per line with LOG_FORMAT=json, carrying the job id while a job is worked on."""

import io
import json
import logging
import subprocess

import httpx

from backend.logs import JsonFormatter, WorkIdFilter, bind_work_ids, unbind_work_ids
from tests.e2e.stack import BIN, REPO, Stack, base_env, free_port


def test_json_lines_carry_the_bound_work_id():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(WorkIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json-lines")
    logger.addHandler(handler)
    try:
        logger.warning("before")
        token = bind_work_ids(job_id="job-1")
        logger.warning("two\nlines, %s", "one record")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        unbind_work_ids(token)
        logger.warning("after")
    finally:
        logger.removeHandler(handler)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["before", "two\nlines, one record", "failed", "after"]
    assert [line.get("job_id") for line in lines] == [None, "job-1", "job-1", None]
    assert {line["logger"] for line in lines} == {"tests.json-lines"}
    assert lines[0]["level"] == "WARNING" and lines[0]["time"].endswith("+00:00")
    assert "ValueError: boom" in lines[2]["exception"]


def test_the_api_logs_json_lines_uvicorn_s_own_included(database_url, redis_url, tmp_path):
    port = free_port()
    env = base_env(DATABASE_URL=database_url, BROKER_URL=redis_url, DATA_DIR=str(tmp_path), LOG_FORMAT="json")
    stack = Stack(url=f"http://127.0.0.1:{port}", log_dir=tmp_path, env=env)
    api = stack.start("api", str(BIN / "uvicorn"), "backend.main:app", "--host", "127.0.0.1", "--port", str(port))
    try:
        stack.wait_ready()
        assert httpx.get(f"{stack.url}/api/jobs").status_code == 401
    finally:
        stack.stop()
    assert api.returncode is not None
    lines = [json.loads(line) for line in (tmp_path / "api.log").read_text().splitlines() if line.strip()]
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    assert any('"GET /api/jobs HTTP/1.1" 401' in line["message"] for line in lines)


def test_text_stays_the_default():
    env = base_env()
    env.pop("LOG_FORMAT", None)
    output = subprocess.run(
        [
            str(BIN / "python"),
            "-c",
            "from backend.main import app; import logging; logging.getLogger('x').warning('hi')",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert output.stderr.strip().endswith("WARNING x: hi")
