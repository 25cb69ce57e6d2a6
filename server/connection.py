"""What the service asks of the connection under a request: a body no larger than `max_body_bytes`
that arrives within `body_timeout` (else 413 or 408), and, once the body is in, noticing when the
client leaves so that its queued work can be dropped.
"""
from __future__ import annotations

import asyncio
from types import TracebackType

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, error_response


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")


def body_timed_out(timeout: float) -> APIError:
    # Closing tells uvicorn not to wait for the rest of a body that is not coming.
    return APIError(408, f"the request body did not arrive within body_timeout ({timeout:g} s)",
                    code="body_timeout", headers={"Connection": "close"})


class BodyGuardMiddleware:
    """Refuse bodies over `max_bytes` (at once by Content-Length, else while reading: chunked bodies
    and lying headers) and bodies still incomplete `timeout` seconds after the request arrived
    (uvicorn's own timeouts cover idle keep-alive connections, not a body that stalls)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(body_too_large(self.max_bytes))(scope, receive, send)
            return
        deadline = anyio.current_time() + self.timeout
        received = 0
        complete = False
        started = False
        refusal: APIError | None = None

        async def guarded_receive() -> Message:
            nonlocal received, complete, refusal
            if complete:  # only the disconnect is left to wait for, and that may take any time
                return await receive()
            try:
                # A cancel scope, not asyncio.wait_for: no task per body chunk.
                with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                    message = await receive()
            except TimeoutError:
                refusal = body_timed_out(self.timeout)
                raise refusal from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refusal = body_too_large(self.max_bytes)
                    raise refusal
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except APIError as error:
            # Raised from `receive` outside any route's exception handling (e.g. by a middleware).
            if started or error is not refusal:
                raise
            await error_response(error)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class DisconnectWatch:
    """Waits on `receive` in the background after the body has been read, when the only message
    left to come is `http.disconnect`. Waiting is what makes it arrive: uvicorn stops reading the
    socket once a body passes its 64 KB buffer and resumes only when the app calls `receive`, so
    polling (`Request.is_disconnected`) never sees a client that left after a large upload.

    Use as a context manager around the wait for the request's result."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> DisconnectWatch:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="disconnect-watch")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _listen(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def is_disconnected(self) -> bool:
        task = self._task
        return task is not None and task.done() and not task.cancelled() and task.exception() is None
