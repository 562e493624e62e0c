"""A cap on the size of API request bodies (ASGI middleware): a JSON body over the limit is refused with 413 before
any of it reaches Gradio, so a 200 MB body of labels is never read whole or parsed.

File uploads (``.../upload``) are exempt here: Gradio streams them to disk and enforces --max-file-size itself.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_SUFFIX = "/upload"


def too_large_message(limit: int) -> str:
    """The text of the 413 answer."""
    from .service import format_size

    return (f"the request body is over the limit of {format_size(limit)} (--max-request-size / "
            "CLIP_APP_MAX_REQUEST_SIZE); send fewer labels or a shorter text")


class BodyLimit:
    """ASGI middleware: POST/PUT/PATCH bodies over `limit` bytes get 413 (by Content-Length, or while reading)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT", "PATCH") \
                or scope.get("path", "").rstrip("/").endswith(UPLOAD_SUFFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        buffered: list[Message] = []
        size = 0
        while True:  # bodies under the limit are small: read them here, then hand them on
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": too_large_message(self.limit)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
