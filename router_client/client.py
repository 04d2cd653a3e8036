"""A small async client for the router's OpenAI-compatible API.

    CallFailed              a call to the router did not give an answer
    ├── RouterUnavailable   connection refused, timeout, 5xx (retryable later; fail closed now)
    └── RouterRejected      4xx: the request itself is wrong (not retryable)
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson


class CallFailed(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RouterUnavailable(CallFailed):
    """The router or every upstream behind it could not answer in time."""


class RouterRejected(CallFailed):
    """The router answered 4xx."""


class RouterClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    async def chat(self, body: dict[str, Any], *, time_limit: float) -> dict[str, Any]:
        """POST /chat/completions (non-streaming); the decoded answer or a CallFailed."""
        try:
            async with self.session.post(f"{self.base_url}/chat/completions", data=orjson.dumps(body),
                                         headers=self.headers, timeout=aiohttp.ClientTimeout(total=time_limit)) as r:
                raw = await r.read()
                status = r.status
        except TimeoutError as exc:
            raise RouterUnavailable(f"no answer within {time_limit:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RouterUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RouterUnavailable(f"HTTP {status}: the body is not JSON", status) from exc
        if status >= 500:
            raise RouterUnavailable(f"HTTP {status}: {_message(data)}", status)
        if status >= 400:
            raise RouterRejected(f"HTTP {status}: {_message(data)}", status)
        if not isinstance(data, dict):
            raise RouterUnavailable("the answer is not a JSON object", status)
        return data

    @staticmethod
    def content(answer: dict[str, Any]) -> str:
        """The assistant's text of a chat completion."""
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise RouterUnavailable("the answer has no choices[0].message.content") from exc
        return text if isinstance(text, str) else ""


def _message(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message"))
    return str(data)[:200]
