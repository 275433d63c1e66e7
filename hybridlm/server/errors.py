"""Errors as OpenAI sends them: a status code and `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class APIError(Exception):
    """A request the server refuses. `status` is the HTTP status; `type` and `code` follow OpenAI's
    names (invalid_request_error, authentication_error, ...)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def unsupported(param: str, why: str = "") -> APIError:
    return APIError(400, f"'{param}' is not supported by this server{': ' + why if why else ''}",
                    "invalid_request_error", param, "unsupported_parameter")


def unauthorized() -> APIError:
    return APIError(401, "missing or incorrect API key: send `Authorization: Bearer <key>`",
                    "authentication_error", None, "invalid_api_key")


def model_not_found(name: str, served: str) -> APIError:
    return APIError(404, f"the model '{name}' does not exist; this server serves '{served}'",
                    "invalid_request_error", "model", "model_not_found")


def queue_full(limit: int) -> APIError:
    return APIError(429, f"the server is at capacity ({limit} requests queued); retry later",
                    "rate_limit_error", None, "queue_full")


def overloaded(message: str) -> APIError:
    return APIError(503, message, "server_error", None, "unavailable")


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """The first pydantic error as one line and the parameter it is about."""
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return f"unrecognized request argument supplied: {param}", param
    return (f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")), param
