"""Errors as RFC 9457 problem documents (``application/problem+json``)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

PROBLEM_TYPE = "https://github.com/genesis-trio/genesis_trio/blob/main/docs/api.md#errors"
"""The ``type`` of every problem: docs/api.md explains each status."""


class Problem(Exception):
    """Raised by a route: answered as a problem document with ``status``."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


def problem_response(
    status: int, detail: str, instance: str | None = None, **extra: Any
) -> JSONResponse:
    """The response for one problem."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


async def on_problem(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for :class:`Problem`."""
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.detail, request.url.path, **exc.extra)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as problem documents."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path}"
    response = problem_response(exc.status_code, detail, request.url.path)
    if exc.headers:
        response.headers.update(exc.headers)
    return response
