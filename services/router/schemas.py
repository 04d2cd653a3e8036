"""JSON schemas a request carries (structured outputs), each checked once and its validator kept."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import referencing.exceptions

_VALIDATORS: dict[bytes, Any] = {}


def validator(schema: dict[str, Any]) -> Any:
    """A checked validator per distinct schema (checking a schema costs ~1 ms; callers send the same few).

    Raises ``jsonschema.SchemaError`` when ``schema`` is not a JSON schema the router can use: not one
    by its metaschema, a ``$schema`` that is not a URI string, or a ``$ref`` that points nowhere within
    it (the router never fetches a remote reference)."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    v = _VALIDATORS.get(key)
    if v is None:
        if "$schema" in schema and not isinstance(schema["$schema"], str):
            raise jsonschema.SchemaError(f"$schema must be a URI string, not {type(schema['$schema']).__name__}")
        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            v = cls(schema)
        except jsonschema.SchemaError:
            raise
        except Exception as exc:  # the library's own surprise at a hostile schema is still a bad schema
            raise jsonschema.SchemaError(f"{type(exc).__name__}: {exc}") from exc
        for ref in _refs(schema):
            try:
                v._resolver.lookup(ref)  # type: ignore[attr-defined]  # the resolver validation uses
            except referencing.exceptions.Unresolvable as exc:
                raise jsonschema.SchemaError(f"$ref {ref!r} points nowhere within the schema "
                                             "(remote references are not fetched)") from exc
        _VALIDATORS[key] = v
        if len(_VALIDATORS) > 256:
            _VALIDATORS.pop(next(iter(_VALIDATORS)))
    return v


def _refs(schema: Any) -> set[str]:
    """Every ``$ref`` in a schema (depth is bounded by the request's own nesting limit)."""
    found: set[str] = set()
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                found.add(ref)
            todo.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            todo.extend(v for v in node if isinstance(v, dict | list))
    return found
