"""Who may talk to the server: the bind rule, the bearer token and the Origin policy (DESIGN 4).

- Bind: a loopback address needs no token; any other address is refused at startup without one.
- Token: when configured, every request (REST and the ``/ws`` upgrade) carries it as
  ``Authorization: Bearer T`` or ``?token=T``; otherwise HTTP 401 before anything else runs.
  The OpenAPI pages (``/docs``, ``/openapi.json``) stay public: they describe, never act; so do
  the dashboard's page and scripts (``/ui``, ``/ui/static/...``): they hold no data.
- Origin: a request without ``Origin`` (Qt, Python, curl) is allowed; so are loopback origins
  (``http(s)://localhost:*``, ``127.x.x.x``, ``[::1]``), the server's own address and the origins
  listed with ``--allow-origin`` (``*`` allows any). Any other Origin gets HTTP 403, for REST
  (a cross-site page cannot start a run) and for ``/ws`` before the upgrade.

``AccessMiddleware`` applies both checks to HTTP and WebSocket scopes; refusals are JSON
``{"error": ...}`` bodies (the WebSocket denial-response extension, which uvicorn supports).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import json_error_parts, send_json_error
from api.refusals import mark_deliberate_refusal

__all__ = [
    "AccessPolicy",
    "AccessMiddleware",
    "InsecureBindError",
    "LOOPBACK_ORIGIN_REGEX",
    "check_bind",
    "is_loopback_host",
    "normalize_origin",
    "own_origins",
]

LOOPBACK_ORIGIN_REGEX = r"^https?://(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?$"
_LOOPBACK_ORIGIN = re.compile(LOOPBACK_ORIGIN_REGEX, re.IGNORECASE)
PUBLIC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", "/ui"})
PUBLIC_PREFIXES = ("/ui/static/",)


class InsecureBindError(ValueError):
    """A non-loopback bind address without a token."""


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token (anyone could start runs)."""
    if not is_loopback_host(host) and not token:
        raise InsecureBindError(
            f"refusing to bind host={host!r} without a token: anyone who can reach it could start "
            "and cancel runs. Pass --token T (or set ORCHESTRATOR_TOKEN), or bind 127.0.0.1."
        )


def normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def own_origins(host: str, port: int) -> frozenset[str]:
    """The origins of pages served from this server's own address (none for a wildcard bind)."""
    if host in {"", "0.0.0.0", "::"}:
        return frozenset()
    netloc = f"[{host}]" if ":" in host else host
    return frozenset({f"http://{netloc}:{port}".lower(), f"https://{netloc}:{port}".lower()})


@dataclass(frozen=True)
class AccessPolicy:
    """The token (None: no auth) and the origins allowed besides loopback ones."""

    token: str | None = None
    allowed_origins: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty or blank when given")
        object.__setattr__(
            self, "allowed_origins", frozenset(normalize_origin(o) for o in self.allowed_origins)
        )

    @classmethod
    def build(
        cls, token: str | None, allow_origins: Iterable[str] = (), own: Iterable[str] = ()
    ) -> AccessPolicy:
        return cls(token=token, allowed_origins=frozenset([*allow_origins, *own]))

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        normalized = normalize_origin(origin)
        return (
            "*" in self.allowed_origins
            or normalized in self.allowed_origins
            or bool(_LOOPBACK_ORIGIN.match(normalized))
        )

    def token_valid(self, authorization: str | None, query_token: str | None) -> bool:
        if self.token is None:
            return True
        expected = self.token.encode()
        candidates = []
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                candidates.append(value.strip())
        if query_token is not None:
            candidates.append(query_token)
        # compare_digest: no timing hint of how much of a guess was right
        return any(hmac.compare_digest(c.encode(), expected) for c in candidates)


class AccessMiddleware:
    """Origin, then token, for every HTTP request and WebSocket upgrade."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        origin = headers.get("origin")
        if not self.policy.origin_allowed(origin):
            await _refuse(
                scope,
                send,
                403,
                f"origin {origin!r} is not allowed; start the server with --allow-origin {origin}",
            )
            return
        if self.policy.token is not None and not self._exempt(scope, headers):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            query_token = query.get("token", [None])[-1]
            if not self.policy.token_valid(headers.get("authorization"), query_token):
                given = headers.get("authorization") is not None or query_token is not None
                reason = "invalid" if given else "missing"
                await _refuse(
                    scope,
                    send,
                    401,
                    f"{reason} token: send 'Authorization: Bearer <token>' or ?token=<token>",
                    [(b"www-authenticate", b'Bearer realm="orchestrator"')],
                )
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _exempt(scope: Scope, headers: dict[str, str]) -> bool:
        if scope["type"] != "http":
            return False
        if scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIXES):
            return True
        # a CORS preflight never carries credentials; the request that follows must
        return scope["method"] == "OPTIONS" and "access-control-request-method" in headers


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _refuse(
    scope: Scope,
    send: Send,
    status: int,
    error: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A JSON error response; for a WebSocket, sent instead of the upgrade."""
    if scope["type"] != "websocket":
        await send_json_error(send, status, error, extra_headers)
        return
    mark_deliberate_refusal()
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": error[:120]})  # -> 403
        return
    body, headers = json_error_parts(error, extra_headers)
    start: Message = {"type": "websocket.http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "websocket.http.response.body", "body": body})
