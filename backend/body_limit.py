"""A cap on request bodies, counted as the bytes stream in (a Content-Length header may lie or be absent)."""

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import error_body


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException, so FastAPI's body parsing passes it on untouched."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit / 2**20:.1f} MiB")


class BodySizeLimit:
    """ASGI middleware: a request whose body grows past `max_bytes` gets a 413 and is read no further."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # note: a body announced too large is refused before a byte of it is read.
            error = BodyTooLarge(self.max_bytes)
            response = JSONResponse(error_body("payload_too_large", error.detail), status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted_receive, send)
