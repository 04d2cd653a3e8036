"""The HTTP edge's helpers: reading a request body (size and nesting bounded), error answers, and
the admin token check."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from services.router.errors import RequestError, error_body
from services.router.request import JSON

# Deeper JSON than any real request nests; orjson re-encodes at most 254 levels.
MAX_DEPTH = 128


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
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"Request body of {length} bytes is over the limit of {limit} bytes",
                           status=413, code="request_too_large")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"Request body is over the limit of {limit} bytes", status=413,
                               code="request_too_large")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


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
