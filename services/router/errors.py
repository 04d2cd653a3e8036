"""Router errors.

    RouterError
    ├── PolicyError          the policy file is unreadable or invalid (not retryable: fix the file)
    └── RequestError         the client's request is bad; carries an HTTP status and OpenAI error body
        └── UnknownModel     a ``homelab/*`` alias that does not exist (404)
"""

from __future__ import annotations

from typing import Any


class RouterError(Exception):
    """Base of every router error."""


class PolicyError(RouterError):
    """The routing policy cannot be used; the message names the key and the problem."""


class RequestError(RouterError):
    """A client error, answered with an OpenAI-style error body; never retried."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type_=self.type, param=self.param, code=self.code)


class UnknownModel(RequestError):
    def __init__(self, model: str, valid: list[str]) -> None:
        super().__init__(
            f"The model '{model}' does not exist. Valid homelab models: {', '.join(valid)}",
            status=404,
            param="model",
            code="model_not_found",
        )


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-style error body, as the openai SDK parses it."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
