"""Optional bearer-token authentication of the router's OpenAI edge. `--api_keys_file PATH` holds
one key per line (blank lines and `#` comments skipped); a request to /openai/v1/* must then carry
`Authorization: Bearer <key>` with one of them, or it gets an OpenAI-shaped 401. Health,
readiness, /metrics and the KServe predict routes stay open: probes and scrapers carry no key,
and an InferenceGraph calls the router's predict route without one. Unset: no authentication."""

from __future__ import annotations

import hmac
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.openai_protocol import openai_error_body

PROTECTED_PATH_PREFIX = "/openai/"
BEARER_SCHEME = "bearer"


class ApiKeysError(Exception):
    """The keys file cannot be read or holds no key: the message says which."""


class ApiKeys:
    """The keys a client may present; with none, every request is let through."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiKeysError(f"cannot read the API keys file {str(path)!r}: {exc}") from None
        keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not keys:
            raise ApiKeysError(f"the API keys file {str(path)!r} holds no key (one per line, # for comments)")
        return cls(keys)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def check_api_key(self, authorization_header: str | None) -> bool:
        """Whether a request with this Authorization header may pass. Every key is compared, each
        in constant time, so the answer's timing tells nothing about which key came close."""
        if not self.required:
            return True
        presented = _bearer_token(authorization_header)
        if presented is None:
            return False
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched


def _bearer_token(authorization_header: str | None) -> bytes | None:
    scheme, _, token = (authorization_header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER_SCHEME or not token:
        return None
    return token.encode()


class ApiKeyMiddleware:
    """Answers 401 (OpenAI's shape, `WWW-Authenticate: Bearer`) to an HTTP request under
    /openai/ without a valid key, before its body is read."""

    def __init__(self, app: ASGIApp, api_keys: ApiKeys) -> None:
        self.app = app
        self.api_keys = api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PATH_PREFIX):
            if not self.api_keys.check_api_key(_header(scope, b"authorization")):
                await unauthorized()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def unauthorized() -> JSONResponse:
    message = "a valid API key is required: send it as 'Authorization: Bearer <key>'"
    body = openai_error_body(HTTPStatus.UNAUTHORIZED, message, code="invalid_api_key")
    return JSONResponse(body, status_code=HTTPStatus.UNAUTHORIZED, headers={"www-authenticate": "Bearer"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def require_api_keys(app: FastAPI, api_keys: ApiKeys) -> None:
    """Protect the OpenAI edge of `app`; call it after the other middleware is added, so that
    this check runs first."""
    if api_keys.required:
        app.add_middleware(ApiKeyMiddleware, api_keys=api_keys)
