"""OpenAI-style errors: what a client sees when its request cannot be served."""

from __future__ import annotations

import orjson
from aiohttp import web


class ApiError(Exception):
    """A request the sidecar refuses or cannot serve, as the OpenAI API would report it."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """The error as an HTTP response with an OpenAI-shaped JSON body."""
        return error_response(self.status, self.message, self.kind, self.param, self.code, headers)


def error_response(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An OpenAI-shaped JSON error response."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
