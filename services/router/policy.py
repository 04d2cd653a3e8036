"""The routing policy: validated pydantic models loaded from YAML (the contract in routing_policy.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from services.router.errors import PolicyError


class _Strict(BaseModel):
    # Our own config: a misspelt key is an error, not a silently ignored line.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spill(_Strict):
    text: str
    image: str


ContinuationMode = Literal["prefill", "instruct"]
CONTINUATION_MODES: tuple[ContinuationMode, ...] = ("prefill", "instruct")


class Route(_Strict):
    base_url: str
    model: str
    vision: bool = False
    max_concurrency: PositiveInt = 4
    spill: Spill | None = None
    failover: str | None = None
    terminal: bool = False
    aliases: tuple[str, ...] = ()
    # How this route can finish a partial answer, in order of preference: ``prefill`` (an assistant
    # prefill, vLLM's continue_final_message), ``instruct`` (the partial answer, then a user turn asking
    # for the rest). ``true`` means [prefill], ``false`` none; a list gives fallbacks.
    continuation: tuple[ContinuationMode, ...] = ()
    # Where a 400 context_length_exceeded goes (default: failover).
    context_failover: str | None = None
    connect_timeout: PositiveFloat = 3.0
    first_token_timeout: PositiveFloat = 30.0
    stream_idle_timeout: PositiveFloat = 60.0
    request_timeout: PositiveFloat = 600.0
    api_key: str | None = None
    recover_command: tuple[str, ...] | None = None
    # seconds the recovery command may run before it is killed (and the route's lock released)
    recover_timeout: PositiveFloat = 120.0
    # How the engine takes a JSON schema: OpenAI's ``json_schema`` (vLLM, LM Studio), or
    # ``json_object`` with a ``schema`` beside it (llama-cpp-python's server answers json_schema with 500).
    structured_output: Literal["json_schema", "json_object"] = "json_schema"
    # /v1/responses: ``native`` relays to the engine's own /v1/responses (recent vLLM); ``translate``
    # turns it into Chat Completions and the answer back
    responses: Literal["translate", "native"] = "translate"
    # /v1/messages (Anthropic): ``native`` relays to the engine's own /v1/messages (llama.cpp's server,
    # vLLM, Ollama); ``translate`` turns it into Chat Completions and the answer back
    messages: Literal["translate", "native"] = "translate"
    # tool calls the engine writes as text (no parser of its own): hermes (Qwen, Hermes), glm45,
    # llama3_json, mistral — the names vLLM gives its parsers; none passes answers through
    tool_parser: Literal["none", "hermes", "glm45", "llama3_json", "mistral"] = "none"
    # slots of max_concurrency only the named client classes may take (the camera pipeline first)
    reserve: dict[Literal["camera", "interactive", "batch"], PositiveInt] = {}
    # the GPU's power while it works (W): energy per client when no live power reading is known
    watts: PositiveFloat | None = None
    # the live reading that wins over watts: "<netdata host>/<sensor>" as the Netdata bridge publishes it
    # on homelab/netdata/<host>/state (e.g. "ubuntu-4090/gpu0_power"); the router needs the bus for it
    power_sensor: str | None = Field(default=None, pattern=r"^[\w.-]+/[\w.-]+$")
    # the model's context window in tokens (the engine's own max_model_len wins when its /v1/models
    # reports one): a Messages request's max_tokens is clamped to what is left of it
    context_length: PositiveInt | None = None

    @field_validator("continuation", mode="before")
    @classmethod
    def _modes(cls, v: Any) -> Any:
        if v is True:
            return ("prefill",)
        if v is False or v is None or v == "none":
            return ()
        if isinstance(v, str):
            return (v,)
        if isinstance(v, list | tuple) and len(set(v)) != len(v):
            raise ValueError("a continuation mode is listed twice")
        return v

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def responses_url(self) -> str:
        return self.base_url.rstrip("/") + "/responses"

    @property
    def messages_url(self) -> str:
        return self.base_url.rstrip("/") + "/messages"

    @property
    def embeddings_url(self) -> str:
        return self.base_url.rstrip("/") + "/embeddings"

    @property
    def models_url(self) -> str:
        return self.base_url.rstrip("/") + "/models"


class Bucket(_Strict):
    route: str
    keywords: tuple[str, ...]


class SizePromotions(_Strict):
    thresholds: tuple[PositiveInt, ...]
    table: dict[str, tuple[str, ...]]

    @model_validator(mode="after")
    def _bands(self) -> SizePromotions:
        if list(self.thresholds) != sorted(self.thresholds):
            raise ValueError("thresholds must be ascending")
        bands = len(self.thresholds) + 1
        for bucket, row in self.table.items():
            if len(row) != bands:
                raise ValueError(f"table.{bucket} has {len(row)} routes, {bands} bands need {bands}")
        return self

    def band(self, tokens: int) -> int:
        for i, limit in enumerate(self.thresholds):
            if tokens <= limit:
                return i
        return len(self.thresholds)


class Example(_Strict):
    """A golden case: run at start and on reload; any failure rejects the policy."""

    prompt: str
    image: bool = False
    tokens: int | None = None
    model: str | None = None
    expect_bucket: str | None = None
    expect_route: str


ClientClass = Literal["camera", "interactive", "batch"]


class Client(_Strict):
    """A client of the lab: who it is (the sha256 of its key; the key itself is never stored), its
    priority class, and the routes it may use (all when absent)."""

    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    class_: ClientClass = Field(default="interactive", alias="class")
    routes: tuple[str, ...] | None = None


class Health(_Strict):
    probe_interval: PositiveFloat = 5.0
    probe_timeout: PositiveFloat = 2.0
    failure_threshold: PositiveInt = 3
    circuit_cooldown: PositiveFloat = 10.0
    retry_after_max: float = Field(default=2.0, ge=0)
    # A reset within silent_after of sending is transient (a stale pooled connection, a restarting
    # server): one retry after a jittered backoff in [retry_backoff_min, retry_backoff_max]. A hang-up
    # after a longer silence is a silent upstream: no retry, fail over at once.
    silent_after: PositiveFloat = 1.0
    retry_backoff_min: float = Field(default=0.05, ge=0)
    retry_backoff_max: float = Field(default=0.25, ge=0)
    # Re-check declared continuation modes at start and after reload (a tiny prefill request).
    probe_continuation: bool = True
    # Ask each route for a tool call once (at start, after a reload): does its engine give real
    # tool_calls, markup that the route's tool_parser turns into calls, or markup nobody parses?
    probe_tools: bool = True

    @model_validator(mode="after")
    def _backoff(self) -> Health:
        if self.retry_backoff_max < self.retry_backoff_min:
            raise ValueError("retry_backoff_max must be at least retry_backoff_min")
        return self


class SharedState(_Strict):
    """Router replicas and workers that share the lab's books (slots, drains, circuits, policy)."""

    # e.g. redis://127.0.0.1:6379/0 (HOMELAB_REDIS_URL sets or overrides it); none: the router runs alone
    redis_url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://")
    # a slot held by a replica that died is given back after this long
    lease_seconds: float = Field(default=15.0, ge=2, le=600)


class Policy(_Strict):
    version: Literal[1]
    routes: dict[str, Route]
    buckets: dict[str, Bucket]
    unknown_route: str
    image_route: str
    tie_break: tuple[str, ...] = ()
    size_promotions: SizePromotions | None = None
    embeddings_route: str | None = None
    examples: tuple[Example, ...] = ()
    health: Health = Health()
    # who may use the lab (absent: anyone who reaches it, as "anonymous")
    clients: dict[str, Client] | None = None
    # the fewest output tokens worth sending a request for: a route whose context leaves less after the
    # prompt (a clamped max_tokens, a continuation) is skipped for a larger one, or the client gets a 400
    min_output_tokens: PositiveInt = 256
    shared_state: SharedState = SharedState()

    @model_validator(mode="after")
    def _references(self) -> Policy:
        routes = self.routes
        if not routes:
            raise ValueError("routes: at least one route is needed")

        def need(where: str, name: str | None) -> None:
            if name is not None and name not in routes:
                raise ValueError(f"{where}: unknown route '{name}' (routes: {', '.join(routes)})")

        for name, r in routes.items():
            need(f"routes.{name}.failover", r.failover)
            need(f"routes.{name}.context_failover", r.context_failover)
            if r.spill:
                need(f"routes.{name}.spill.text", r.spill.text)
                need(f"routes.{name}.spill.image", r.spill.image)
                if not routes[r.spill.image].vision:
                    raise ValueError(f"routes.{name}.spill.image: '{r.spill.image}' cannot see images")
            if r.terminal and (r.failover or r.spill):
                raise ValueError(f"routes.{name}: a terminal route has no failover or spill")
        for name, b in self.buckets.items():
            need(f"buckets.{name}.route", b.route)
            if not b.keywords:
                raise ValueError(f"buckets.{name}.keywords: empty")
        need("unknown_route", self.unknown_route)
        need("image_route", self.image_route)
        if not routes[self.image_route].vision:
            raise ValueError(f"image_route: '{self.image_route}' cannot see images (vision: false)")
        need("embeddings_route", self.embeddings_route)
        for tb in self.tie_break:
            if tb not in self.buckets:
                raise ValueError(f"tie_break: unknown bucket '{tb}'")
        if self.size_promotions:
            for bucket, row in self.size_promotions.table.items():
                if bucket not in self.buckets:
                    raise ValueError(f"size_promotions.table: unknown bucket '{bucket}'")
                for r_name in row:
                    need(f"size_promotions.table.{bucket}", r_name)
        seen: dict[str, str] = {}
        for name, r in routes.items():
            for alias in r.aliases:
                if not alias.startswith("homelab/") and not is_glob(alias):
                    raise ValueError(f"routes.{name}.aliases: '{alias}' must start with homelab/ or be a "
                                     "shell-style pattern such as claude-*")
                if alias == "homelab/auto":
                    raise ValueError(f"routes.{name}.aliases: homelab/auto is reserved")
                if alias in seen:
                    raise ValueError(f"routes.{name}.aliases: '{alias}' is also on route '{seen[alias]}'")
                seen[alias] = name
        hashes: dict[str, str] = {}
        for cname, c in (self.clients or {}).items():
            for r_name in c.routes or ():
                need(f"clients.{cname}.routes", r_name)
            if c.key_sha256 in hashes:
                raise ValueError(f"clients.{cname}.key_sha256: the same key as client '{hashes[c.key_sha256]}'")
            hashes[c.key_sha256] = cname
        for name, r in routes.items():
            if sum(r.reserve.values()) >= r.max_concurrency:
                raise ValueError(f"routes.{name}.reserve: {sum(r.reserve.values())} reserved slots leave none of "
                                 f"max_concurrency {r.max_concurrency} for the other classes")
        for i, ex in enumerate(self.examples):
            need(f"examples[{i}].expect_route", ex.expect_route)
            if ex.expect_bucket is not None and ex.expect_bucket not in self.buckets:
                raise ValueError(f"examples[{i}].expect_bucket: unknown bucket '{ex.expect_bucket}'")
        return self

    def alias_map(self) -> dict[str, str]:
        """Exact aliases → route."""
        return {alias: name for name, r in self.routes.items() for alias in r.aliases if not is_glob(alias)}

    def alias_globs(self) -> list[tuple[str, str]]:
        """Pattern aliases (``claude-*``) → route, the longest pattern first (the most specific wins)."""
        globs = [(alias, name) for name, r in self.routes.items() for alias in r.aliases if is_glob(alias)]
        return sorted(globs, key=lambda g: -len(g[0]))

    def served_models(self) -> dict[str, str]:
        return {r.model: name for name, r in self.routes.items()}


def is_glob(alias: str) -> bool:
    return any(c in alias for c in "*?[")


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


# Deeper YAML than any policy nests (the example nests 4): a hostile document cannot exhaust the stack.
MAX_YAML_DEPTH = 32


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit (its composer recurses once per level)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate policy YAML; raise PolicyError naming the key and the problem."""
    try:
        data = yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_format_error(exc)}") from exc


def read_policy(path: Path) -> str:
    """A policy file's text (PolicyError when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc.strerror}") from exc


def load_policy(path: Path) -> Policy:
    return parse_policy(read_policy(path), str(path))
