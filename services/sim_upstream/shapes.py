"""What the simulated engines write: the canonical answer and its tokens, each engine's error bodies,
each model family's tool-call markup, a rough prompt token count."""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from aiohttp import web

Engine = Literal["vllm", "llamacpp", "lmstudio", "ollama"]
ENGINES: tuple[Engine, ...] = ("vllm", "llamacpp", "lmstudio", "ollama")


def tool_markup(fmt: str, calls: list[dict[str, Any]]) -> str:
    """Calls written the way each model family writes them when no engine parser turns them into tool_calls."""
    if fmt == "hermes":
        return "".join("<tool_call>\n" + orjson.dumps({"name": c["name"], "arguments": c["arguments"]}).decode()
                       + "\n</tool_call>" for c in calls)
    if fmt == "glm45":
        out = ""
        for c in calls:
            args = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v if isinstance(v, str) else orjson.dumps(v).decode()}"
                           "</arg_value>\n" for k, v in c["arguments"].items())
            out += f"<tool_call>{c['name']}\n{args}</tool_call>"
        return out
    if fmt == "llama3_json":
        return "<|python_tag|>" + "; ".join(
            orjson.dumps({"name": c["name"], "parameters": c["arguments"]}).decode() for c in calls)
    if fmt == "mistral":
        return "[TOOL_CALLS]" + orjson.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls]).decode()
    raise ValueError(fmt)


def answer_text(words: int = 12) -> str:
    """The deterministic answer every simulated model gives (the same on every route, so one
    route can continue what another started)."""
    body = " ".join(f"word{i}" for i in range(words))
    return f"The simulated answer: {body}."


def tokens(text: str) -> list[str]:
    # Split keeping the separators so joined chunks rebuild the exact text.
    out = []
    for i, w in enumerate(text.split(" ")):
        out.append(w if i == 0 else " " + w)
    return [piece for piece in out if piece]


def example_for_schema(schema: dict[str, Any]) -> Any:
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: example_for_schema(v) for k, v in props.items()}
    if t == "array":
        return [example_for_schema(schema.get("items", {"type": "string"}))]
    if t == "integer":
        return int(schema.get("minimum", 1))
    if t == "number":
        return float(schema.get("maximum", 1.0))
    if t == "boolean":
        return True
    return "sim"


def has_image(messages: list[Any]) -> bool:
    for m in messages:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in c):
            return True
    return False


CONTINUE_MARK = "Continue it exactly where it stopped"


def _words(content: Any) -> int:
    if isinstance(content, list):
        content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return len(str(content or "").split())


def prompt_tokens(messages: list[Any], open_last: bool) -> int:
    """Tokens of the rendered prompt, chat-template style: per turn a 3-token header, its words and an
    end-of-turn token, then a 3-token assistant header for the new turn. A continued prefill (open_last)
    leaves the last turn open and adds no new header."""
    n = sum(3 + _words(m.get("content")) + 1 for m in messages if isinstance(m, dict))
    return n - 1 if open_last else n + 3


def context_error(engine: Engine, status: int = 400) -> web.Response:
    """Each engine's own words and shape for a prompt over its context window."""
    if engine == "lmstudio":
        body: Any = {"error": "The number of tokens to keep from the initial prompt is greater than the context "
                              "length (n_keep: 13055>= n_ctx: 4096). Try to load the model with a larger context "
                              "length, or provide a shorter input."}
    elif engine == "ollama":
        body = {"error": {"message": "the prompt is longer than the context length currently available to the "
                                     "model; shorten the prompt, or load the model with a larger context",
                          "type": "invalid_request_error", "param": None, "code": None}}
    elif engine == "llamacpp":
        body = {"error": {"message": "Requested tokens (40000) exceed context window of 8192",
                          "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    else:
        body = {"error": {"message": "This model's maximum context length is 32768 tokens. However, your request "
                                     "has 40000 input tokens. Please reduce the length of the input messages.",
                          "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


ENGINE_DEAD = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                         "type": "InternalServerError", "param": None, "code": 500}}


def err(status: int, message: str, type_: str, code: str | None = None, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


# ---- a simulated model that acts on the prompt -------------------------------------------------

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']+)'")
_FILE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.[A-Za-z0-9]{1,8})(?![\w.])")
# what the last user turn asks for, in order of precedence, and the tool names that do it
_INTENTS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"\b(write|create|save|make|put)\b", re.I), ("write", "create_file", "write_file", "edit", "apply")),
    (re.compile(r"\b(read|show|open|cat|look at|print)\b", re.I), ("read", "view", "open_file", "cat")),
    (re.compile(r"\b(run|execute|exec|ls|list|bash|shell|command)\b", re.I),
     ("bash", "shell", "exec", "run", "command", "terminal")),
    (re.compile(r"\b(search|grep|find)\b", re.I), ("grep", "search", "glob", "find")),
)


def last_user_text(messages: list[Any]) -> str:
    """The words of the last user turn (an agent's system reminders left out)."""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                c = "\n".join(str(p.get("text") or "") for p in c if isinstance(p, dict))
            return _REMINDER.sub("", str(c or "")).strip()
    return ""


def _argument(key: str, schema: dict[str, Any], text: str) -> Any:
    """A value for one parameter, taken from the prompt where it says one."""
    k = key.lower()
    quoted = next((g for m in _QUOTED.finditer(text) for g in m.groups() if g), None)
    if schema.get("type", "string") == "string":
        if any(w in k for w in ("path", "file", "filename", "name")):
            found = _FILE.search(text)
            return found.group(1) if found else "notes.txt"
        if any(w in k for w in ("content", "text", "body", "data")):
            return quoted if quoted is not None else "hello"
        if any(w in k for w in ("command", "cmd", "script")):
            return quoted or "ls"
        if any(w in k for w in ("pattern", "query", "regex", "glob")):
            return quoted or "TODO"
        if "description" in k:
            return "as asked"
    return example_for_schema(schema)


def acted_call(messages: list[Any], tools: list[Any]) -> dict[str, Any] | None:
    """The tool call a model would make for the last user turn (``{"name", "arguments"}``), or None when
    it asks for none of the tools offered (the model answers in text)."""
    text = last_user_text(messages)
    offered: list[dict[str, Any]] = [t["function"] for t in tools
                                     if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    named = [f for f in offered if f.get("name") and re.search(rf"\b{re.escape(str(f['name']))}\b", text, re.I)]
    choices = [(None, (str(named[0]["name"]).lower(),))] if named else list(_INTENTS)
    for pattern, names in choices:  # a tool the user names, else the one their words ask for
        if pattern is not None and not pattern.search(text):
            continue
        for want in names:
            fn = next((f for f in offered if want in str(f.get("name", "")).lower()), None)
            if fn is None:
                continue
            params: dict[str, Any] = fn["parameters"] if isinstance(fn.get("parameters"), dict) else {}
            props: dict[str, Any] = params["properties"] if isinstance(params.get("properties"), dict) else {}
            required: list[Any] = params["required"] if isinstance(params.get("required"), list) else list(props)
            args = {k: _argument(k, props.get(k) or {}, text) for k in required if isinstance(k, str)}
            return {"name": str(fn["name"]), "arguments": args}
    return None
