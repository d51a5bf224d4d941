"""A bulkhead: at most so many API requests at once go on to the routes; the rest wait their turn.

Why: the sync routes hop between worker threads (dependencies, the route, its reply) while their
session holds a pooled connection. Were every thread waiting for a connection that only requests
waiting for a thread could give back, the server would deadlock. Letting fewer requests through
than the pool has connections means some holder is always running, so the pool always drains.
Waiting here costs no thread and no connection. Event streams hold no connection between their
polls, so they are not counted.
"""

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send


class RequestBulkhead:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self._slots = anyio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path.endswith("/events"):
            await self.app(scope, receive, send)
            return
        await self._slots.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._slots.release()

        async def send_releasing(message) -> None:
            # note: the slot covers the work up to the reply's headers; streaming a multi-GB
            # download holds no connection, so it must not keep other requests waiting.
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_releasing)
        finally:
            release()
