"""JSON schemas a request carries (structured outputs), each checked once and its validator kept."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson

_VALIDATORS: dict[bytes, Any] = {}


def validator(schema: dict[str, Any]) -> Any:
    """A checked validator per distinct schema (checking a schema costs ~1 ms; callers send the same few).

    Raises ``jsonschema.SchemaError`` when ``schema`` is not a JSON schema."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    v = _VALIDATORS.get(key)
    if v is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        v = _VALIDATORS[key] = cls(schema)
        if len(_VALIDATORS) > 64:
            _VALIDATORS.pop(next(iter(_VALIDATORS)))
    return v
