"""A corpus of bad and awkward uploads against a real API process: each gets the right 4xx or is
stored upright and stripped, nothing is kept for a refused request, and the server's memory stays flat."""

import io
import json
import select
import socket
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.stack import FAST_SETTINGS, photo_files
from tests.reliability import corpus
from tests.reliability.conftest import new_client

pytestmark = pytest.mark.e2e

LIMITS = {"MAX_PHOTO_BYTES": "4000000", "MAX_REQUEST_BYTES": "8000000", "MAX_ACTIVE_JOBS_PER_USER": "1000"}


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024


def upload(http: httpx.Client, files: list, settings: dict = FAST_SETTINGS) -> httpx.Response:
    return http.post("/api/jobs", files=files, data={"settings": json.dumps(settings)})


def one(name: str, data: bytes) -> list:
    return [("photos", (name, data, "application/octet-stream"))]


def stream_oversized_body(url: str, token: str, total: int) -> bytes:
    """POST a chunked multipart body of `total` bytes (no Content-Length), stopping as soon as the
    server answers; returns the raw reply."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST /api/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        head = b'--b\r\nContent-Disposition: form-data; name="photos"; filename="big.jpg"\r\n\r\n'
        chunk = b"\xff" * 65536
        sent = 0
        for payload in (head, *[chunk] * (total // len(chunk))):
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(payload), payload))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(payload)
        assert sent < total, "the server read the whole oversized body"
        sock.settimeout(10)
        reply = b""
        while not reply.endswith(b"}}") and (data := sock.recv(65536)):
            reply += data
        return reply


@pytest.fixture
def api(make_stack):
    stack = make_stack(**LIMITS)
    client = new_client(stack, "alice")
    return stack, client


def test_the_upload_corpus(api, subtests):
    stack, client = api
    http = client.http
    data_dir = Path(stack.env["DATA_DIR"])
    pid = stack.processes[0].pid
    assert upload(http, photo_files(3)).status_code == 202  # warm up: every decoder loaded once

    for name, (make, size) in corpus.ACCEPTED.items():
        with subtests.test(msg=f"accepted: {name}"):
            response = upload(http, one("../../" + name, make()))
            assert response.status_code == 202, response.text
            stored_path = data_dir / "jobs" / uuid.UUID(response.json()["id"]).hex / "instance-photos" / "0000.jpg"
            stored_bytes = stored_path.read_bytes()
            stored = Image.open(io.BytesIO(stored_bytes))
            assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", size)
            assert dict(stored.getexif()) == {} and "icc_profile" not in stored.info and "comment" not in stored.info
            assert b"PK\x03\x04" not in stored_bytes and stored_bytes.endswith(b"\xff\xd9")
            if name.startswith("jpeg rotated"):
                top, bottom = stored.getpixel((40, 10)), stored.getpixel((40, 110))
                assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red half turned to the top
            if name == "webp animated":
                assert stored.getpixel((48, 48))[0] > 200  # the first (red) frame

    total = http.get("/api/jobs").json()["total"]
    before = rss_bytes(pid)
    refused = {name: (make(), status, words) for name, (make, status, words) in corpus.REFUSED.items()}
    refused["over the per-photo byte limit"] = (b"\xff\xd8" + b"\0" * 4_000_000, 413, "larger than")
    for name, (data, status, words) in refused.items():
        with subtests.test(msg=f"refused: {name}"):
            response = upload(http, photo_files(2) + one(name, data))
            assert response.status_code == status, response.text
            assert words in response.json()["error"]["message"] and response.json()["error"]["field"] == "photos"

    with subtests.test(msg="zero photos"):
        response = http.post("/api/jobs", data={"settings": json.dumps(FAST_SETTINGS)})
        assert response.status_code == 422 and response.json()["error"]["field"] == "photos"
    with subtests.test(msg="1,000 photos"):
        tiny = one("p.png", corpus.save(Image.new("RGB", (64, 64)), "PNG")) * 1000
        response = upload(http, tiny)
        assert response.status_code == 422 and "at most 50" in response.json()["error"]["message"]
    with subtests.test(msg="a 64 MiB body streamed without Content-Length"):
        reply = stream_oversized_body(stack.url, http.headers["Authorization"].split()[1], 64 * 2**20)
        assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply

    assert http.get("/api/jobs").json()["total"] == total  # nothing refused was kept
    growth = rss_bytes(pid) - before
    assert growth < 40 * 2**20, f"the API grew by {growth / 2**20:.0f} MiB"
