"""The bulkhead lets at most `limit` API requests through at once; event streams and pages pass freely."""

import anyio
import pytest

from backend.bulkhead import RequestBulkhead


@pytest.mark.parametrize(("path", "most_at_once"), [("/api/jobs", 2), ("/api/jobs/x/events", 6), ("/", 6)])
def test_at_most_limit_api_requests_run_at_once(path, most_at_once):
    running, seen = 0, []

    async def app(scope, receive, send):
        nonlocal running
        running += 1
        seen.append(running)
        await anyio.sleep(0.01)
        running -= 1

    async def main():
        bulkhead = RequestBulkhead(app, limit=2)
        async with anyio.create_task_group() as tasks:
            for _ in range(6):
                tasks.start_soon(bulkhead, {"type": "http", "path": path}, None, None)

    anyio.run(main)
    assert max(seen) == most_at_once


def test_a_streaming_reply_gives_its_slot_back_once_its_headers_are_sent():
    finish_stream = anyio.Event()
    order = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/api/jobs/x/checkpoint":
            await finish_stream.wait()
        order.append(scope["path"])
        await send({"type": "http.response.body", "body": b""})

    async def send(_message):
        pass

    async def main():
        bulkhead = RequestBulkhead(app, limit=1)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(bulkhead, {"type": "http", "path": "/api/jobs/x/checkpoint"}, None, send)
            await anyio.sleep(0.01)
            with anyio.fail_after(2):
                await bulkhead({"type": "http", "path": "/api/jobs"}, None, send)
            finish_stream.set()

    anyio.run(main)
    assert order == ["/api/jobs", "/api/jobs/x/checkpoint"]
