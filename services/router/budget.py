"""How many tokens an answer may ask for on a route: its context window minus the prompt it is sent.

An Anthropic client asks for what it wants (Claude Code: ``max_tokens: 128000``) and expects the
gateway to fit it; a continuation re-sends the conversation with the partial answer (and, in
``instruct`` mode, a user turn of its own) and must ask for no more than the rest. A route that
would leave less than the policy's ``min_output_tokens`` is no place for the request: the walk takes
its one context hop to a larger route, or the client gets a 400 naming the sizes.
"""

from __future__ import annotations

from services.router.outcomes import ErrorBody, Outcome
from services.router.policy import Route
from services.router.preflight import TEXT_CHARS_PER_TOKEN
from services.router.state import RouteState

# A route's context when neither the engine nor the policy says (vLLM's smallest common default).
DEFAULT_CONTEXT = 32_768


def window(route: Route, st: RouteState) -> int:
    """The route's context in tokens: the engine's own max_model_len, else the policy's, else 32K."""
    return st.max_model_len or route.context_length or DEFAULT_CONTEXT


def text_tokens(text: str) -> int:
    """The preflight's estimate for a piece of plain text (a partial answer, an instruction)."""
    return int(len(text) / TEXT_CHARS_PER_TOKEN) + 1


def asked(body: dict[str, object]) -> tuple[str, int] | None:
    """The output limit a chat body asks for: (its key, its value), or None."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def too_small(name: str, route: Route, st: RouteState, prompt: int, room: int, floor: int) -> Outcome:
    """A route whose context leaves no useful room for the answer: a context error of the router's
    own (no upstream call), so the walk hops to a larger route or tells the client the sizes."""
    message = (f"This model's maximum context length is {window(route, st)} tokens (route '{name}'); the prompt "
               f"(~{prompt} tokens) leaves {max(room, 0)} for the answer, under the lab's min_output_tokens "
               f"({floor}). Shorten the prompt.")
    err = ErrorBody.of_message(message)
    return Outcome.failed("context_length", message, kind="context", status=400, error=err)
