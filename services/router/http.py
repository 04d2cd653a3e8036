"""The HTTP edge's helpers: reading a request body (size and nesting bounded), error answers, and
the admin token check."""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from services.router.errors import RequestError, error_body
from services.router.request import JSON

# Deeper JSON than any real request nests; orjson re-encodes at most 254 levels.
MAX_DEPTH = 128
T = TypeVar("T")


# A header value is written to the decision log at most this long (a 64 KB header is someone's mistake).
MAX_LOGGED_HEADER = 512
MAX_REQUEST_ID = 128


def header(request: Request, name: str) -> str | None:
    """A request header's value as the router keeps it (cut to what the log may hold), or None."""
    value = request.headers.get(name)
    return value[:MAX_LOGGED_HEADER] if value else None


def request_id(request: Request) -> str:
    """The client's own ``X-Request-Id`` (at most 128 printable ASCII characters), else a new one."""
    given = request.headers.get("x-request-id")
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable() and given.strip():
        return given
    return os.urandom(8).hex()


class ClientGone(Exception):
    """The client hung up (mid-upload, or while its answer was being made): nobody to answer."""


def error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
          param: str | None = None, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(error_body(message, type_=type_, code=code, param=param)),
                    status_code=status, media_type=JSON, headers=headers)


def _too_deep(raw: bytes, value: Any) -> bool:
    if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return False  # cannot nest that deep: no walk needed
    level: list[tuple[Any, int]] = [(value, 1)]
    while level:
        v, depth = level.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(v, dict):
            level.extend((x, depth + 1) for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            level.extend((x, depth + 1) for x in v if isinstance(x, dict | list))
    return False


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or a RequestError (400) that says what is wrong with it."""
    if not raw:
        raise RequestError("Invalid request: the body is empty; a JSON object is expected")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"Invalid request: the body is not valid JSON ({exc})") from exc
    if _too_deep(raw, value):
        raise RequestError(f"Invalid request: the JSON nests deeper than {MAX_DEPTH} levels")
    return value


async def read_body(request: Request, limit: int) -> Any:
    return parse_json(await read_raw(request, limit))


async def read_raw(request: Request, limit: int) -> bytes:
    """The body's bytes, at most ``limit`` (a 413 at once when Content-Length says more); a client
    that hangs up mid-upload is :class:`ClientGone`, never an internal error."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"Request body of {length} bytes is over the limit of {limit} bytes",
                           status=413, code="request_too_large")
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"Request body is over the limit of {limit} bytes", status=413,
                                   code="request_too_large")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ClientGone(f"the client hung up after {size} bytes of its body") from exc
    return b"".join(chunks)


async def watched(request: Request, work: Awaitable[T]) -> T:
    """``work`` (the request's answer being made, its body already read), cancelled the moment the
    client hangs up: the upstream call is dropped and the slot freed at once (:class:`ClientGone`)."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            pass
        raise ClientGone("the client hung up before its answer was ready")
    return task.result()


def check_admin(request: Request, token: str | None) -> None:
    """The admin API's one check: a bearer token compared in constant time."""
    if not token:
        raise RequestError("Admin API is disabled: set HOMELAB_ADMIN_TOKEN to enable it", status=403,
                           type_="permission_error", code="admin_disabled")
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        raise RequestError("Missing or wrong admin bearer token", status=401,
                           type_="authentication_error", code="invalid_token")


def is_admin(request: Request, token: str | None) -> bool:
    try:
        check_admin(request, token)
    except RequestError:
        return False
    return True
