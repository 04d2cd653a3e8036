"""The camera triage's structured output, failing closed.

A request with ``metadata.homelab_task: camera_triage`` and a ``json_schema`` response format gets
an answer that matches its schema, or a synthetic "ambiguous, escalate" envelope in its place (the
reason in ``structured-validation.jsonl``): a model that answers badly never silences an alert.
"""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import orjson

from services.router.request import Ctx
from services.router.schemas import validator
from shared.jsonl import JsonlWriter


def requested_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a chat request asks its answer to match, if any."""
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") != "json_schema":
        return None
    js = rf.get("json_schema")
    schema = js.get("schema") if isinstance(js, dict) else None
    return schema if isinstance(schema, dict) else None


def is_camera_triage(body: dict[str, Any]) -> bool:
    meta = body.get("metadata")
    return isinstance(meta, dict) and meta.get("homelab_task") == "camera_triage"


def validate_camera(ctx: Ctx, name: str, raw: bytes, validations: JsonlWriter) -> bytes:
    """The answer as it came when it matches the schema, else the answer with a synthetic envelope."""
    schema = requested_schema(ctx.body)
    if schema is None:
        return raw
    reason = None
    try:
        v = validator(schema)
        body = orjson.loads(raw)
        content = body["choices"][0]["message"]["content"]
        answer = orjson.loads(content)
        v.validate(answer)
        return raw
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        reason = f"answer is not valid JSON: {type(exc).__name__}: {exc}"
    except jsonschema.ValidationError as exc:
        reason = f"answer does not match the schema: {exc.message}"
    except jsonschema.SchemaError as exc:
        reason = f"the request's schema is invalid: {exc.message}"
    except Exception as exc:  # e.g. a $ref that cannot be resolved: fail closed, never a 500
        reason = f"the answer could not be checked against the schema: {type(exc).__name__}: {exc}"
    envelope = {"verdict": "ambiguous", "confidence": 0.0, "escalate_to_spark": True,
                "synthetic": True, "reason": reason}
    validations.write({"source": "router", "request_id": ctx.request_id, "route": name,
                       "reason": reason, "answer": raw[:2000].decode("utf-8", "replace")})
    ctx.events.append("camera_triage_synthetic")
    try:
        body = orjson.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"] \
                or not isinstance(body["choices"][0], dict) or not isinstance(body["choices"][0].get("message"), dict):
            raise ValueError
    except (orjson.JSONDecodeError, ValueError):
        body = {"id": f"chatcmpl-{ctx.request_id}", "object": "chat.completion",
                "created": int(time.time()), "model": ctx.policy.routes[name].model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant"}}]}
    body["choices"][0]["message"]["content"] = orjson.dumps(envelope).decode()
    return orjson.dumps(body)
