"""Preflight: validate a chat request body and extract what routing needs (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from services.router.errors import RequestError
from services.router.schemas import validator

# A rough per-image cost; base64 payload length says nothing about tokens.
IMAGE_TOKENS = 765
# Characters per token: prose and code ~4; JSON (tool definitions, tool-call arguments) a little more.
# Measured with a real BPE tokenizer (cl100k) on agent-shaped requests: within 25% (tests/unit/test_tokens.py).
TEXT_CHARS_PER_TOKEN = 4.0
JSON_CHARS_PER_TOKEN = 4.3
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    # Clients send many extra fields (name, tool_calls, ...): tolerated and passed through.
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None

    @field_validator("content")
    @classmethod
    def _not_empty_list(cls, v: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(v, list) and not v:
            raise ValueError("content must not be an empty list")
        return v


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    json_schema: JsonSchemaSpec | None = None


class ChatRequest(BaseModel):
    """What the router reads of a chat request; every other field passes through to the engine."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage]
    stream: StrictBool = False
    metadata: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    stream_options: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("messages")
    @classmethod
    def _some(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not v:
            raise ValueError("messages must not be empty")
        return v


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[str] | list[int] | list[list[int]]


@dataclass(frozen=True, slots=True)
class Preflight:
    model: str
    stream: bool
    has_image: bool
    tokens: int
    text: str  # what the classifier reads: the latest user turn
    metadata: dict[str, Any]
    user: str | None = None  # the OpenAI ``user`` field (a session or end-user id)


def _validation_message(exc: ValidationError) -> tuple[str, str]:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "literal_error" and loc.endswith("role"):
        msg = f"unknown role; expected one of {', '.join(ROLES)}"
    return f"Invalid request: {loc}: {msg}", loc


def without_nulls(body: Any) -> Any:
    """A request body with its top-level ``null`` fields dropped: OpenAI's schema allows ``null`` for
    every optional field, and it means the same as leaving the field out."""
    if isinstance(body, dict) and None in body.values():
        return {k: v for k, v in body.items() if v is not None}
    return body


def check_schema(schema: dict[str, Any], where: str) -> None:
    """A schema the request carries, checked before any upstream sees it: a 400 naming the field."""
    try:
        validator(schema)
    except jsonschema.SchemaError as exc:
        raise RequestError(f"Invalid request: {where}: not a valid JSON schema: {exc.message}", param=where) from exc


def preflight(body: Any) -> Preflight:
    """Validate ``body`` (decoded JSON, nulls dropped) as a chat request; raise RequestError (400)
    when it is not one."""
    if not isinstance(body, dict):
        raise RequestError("Invalid request: the body must be a JSON object")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as exc:
        msg, loc = _validation_message(exc)
        raise RequestError(msg, param=loc) from exc
    rf = req.response_format
    if rf is not None and rf.type == "json_schema":
        schema = rf.json_schema.schema_ if rf.json_schema is not None else None
        if schema is None:
            raise RequestError("Invalid request: response_format.json_schema.schema: a JSON schema is required",
                               param="response_format.json_schema.schema")
        check_schema(schema, "response_format.json_schema.schema")
    for i, tool in enumerate(req.tools or ()):
        fn = tool.get("function")
        params = fn.get("parameters") if isinstance(fn, dict) else None
        if params is None:
            continue
        where = f"tools.{i}.function.parameters"
        if not isinstance(params, dict):
            raise RequestError(f"Invalid request: {where}: a JSON schema (an object) is expected", param=where)
        check_schema(params, where)
    has_image = False
    chars = 0
    json_chars = 0
    images = 0
    last_user = ""
    tools = req.tools
    if tools:
        json_chars += len(orjson.dumps(tools))  # the engine renders every definition into the prompt
    for i, m in enumerate(req.messages):
        for call in m.tool_calls or ():
            fn = call.get("function")
            if isinstance(fn, dict):
                json_chars += len(str(fn.get("arguments") or "")) + len(str(fn.get("name") or ""))
        if m.function_call is not None:
            json_chars += len(str(m.function_call.get("arguments") or ""))
        content = m.content
        if content is None or content == "":
            if m.role in ("user", "system", "developer"):
                raise RequestError(
                    f"Invalid request: messages.{i}.content: a {m.role} message needs content",
                    param=f"messages.{i}.content",
                )
            continue
        if isinstance(content, str):
            text = content
        else:
            parts = []
            for part in content:
                if part.type == "image_url":
                    has_image = True
                    images += 1
                elif part.text is not None:
                    parts.append(part.text)
            text = "\n".join(parts)
        chars += len(text)
        if m.role == "user":
            last_user = text
    tokens = int(chars / TEXT_CHARS_PER_TOKEN + json_chars / JSON_CHARS_PER_TOKEN) + 4 * len(req.messages) \
        + IMAGE_TOKENS * images
    metadata = req.metadata or {}
    user = body.get("user")
    return Preflight(req.model, req.stream, has_image, tokens, last_user, metadata,
                     user[:200] if isinstance(user, str) else None)
