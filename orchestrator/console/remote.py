"""The HTTP client of the commands that talk to a running server: its URL, bearer token and errors.

``submit``, ``runs``, ``cancel`` and ``hpo --url`` share it: ``--url`` / ``--token`` flags
(default ``http://127.0.0.1:8000`` and ``$ORCHESTRATOR_TOKEN``, as ``serve`` and ``watch`` name
it), one JSON request helper, and one error, ``ServerError``, for a server that refused a request
(its ``error`` text) or could not be reached. The commands let it reach ``orchestrator.console.main.main``,
which prints it and exits 2. ``check_remote_data`` refuses, before anything is posted, a ``data``
that a server would refuse anyway: a path of this machine (the server reads data only by name
under its data roots, ``orchestrator.data.names``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from orchestrator.console.flags import TOKEN_ENV, token_or_env
from orchestrator.data.names import data_name_problem
from orchestrator.errors import ConfigError, OrchestratorError

__all__ = ["DEFAULT_SERVER_URL", "Server", "ServerError", "add_server_flags", "check_remote_data"]

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


class ServerError(OrchestratorError):
    """The server answered 4xx/5xx (``status``; the message is its ``error`` text) or was
    unreachable (``status`` None)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def check_remote_data(values: dict[str, Any]) -> None:
    """``ConfigError`` when ``values["data"]`` cannot name data on a server (an absolute path, a
    ``..``): the server never reads this machine's files, nor any path a client names."""
    if "data" not in values:
        return
    problem = data_name_problem(values["data"])
    if problem is not None:
        raise ConfigError(
            f"data: {problem}. It never reads this machine's files: copy the file under one of "
            "its data roots and give its name there (e.g. --data bars.csv), or send no --data "
            "to train on the server's own"
        )


def add_server_flags(
    p: argparse.ArgumentParser,
    *,
    url_default: str | None = DEFAULT_SERVER_URL,
    url_help: str | None = None,
) -> None:
    """``--url`` and ``--token``: which server, and the bearer token it may require."""
    g = p.add_argument_group("server")
    g.add_argument(
        "--url",
        default=url_default,
        metavar="URL",
        help=url_help or f"the server's base URL (default {url_default})",
    )
    g.add_argument("--token", metavar="T", help=f"bearer token (default: ${TOKEN_ENV})")


@dataclass(frozen=True)
class Server:
    """A server's base URL (``http(s)://host:port[/prefix]``) and token; ``timeout`` in seconds."""

    url: str
    token: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Server:
        """From ``--url`` / ``--token`` (``$ORCHESTRATOR_TOKEN`` when no ``--token``). Raises
        ``ConfigError`` for a URL that is not ``http://`` or ``https://``."""
        url = str(args.url).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--url must be http://HOST:PORT or https://..., got {args.url!r}")
        token = token_or_env(args.token)
        return cls(url, token)

    @property
    def ws_url(self) -> str:
        """The server's ``/ws`` (``ws://`` for ``http://``, ``wss://`` for ``https://``)."""
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit(parts._replace(scheme=scheme, path=parts.path + "/ws"))

    def get(self, path: str, **params: Any) -> Any:
        """``GET path`` with the query ``params`` (None left out); the JSON answer."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """``POST path`` with the JSON ``body``; the JSON answer."""
        return self.request("POST", path, body=body)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON of a 2xx answer. Raises ``ServerError``: the server's ``error`` text
        and status for 4xx/5xx, a message naming the URL when it cannot be reached."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        target = f"{self.url}{path}"
        try:
            # no proxy from the environment, as `watch` connects: a loopback server is the usual target
            with httpx.Client(timeout=self.timeout, trust_env=False) as client:
                response = client.request(method, target, json=body, params=params, headers=headers)
        except httpx.TransportError as err:
            raise ServerError(
                f"cannot reach the server at {self.url} ({type(err).__name__}: {err}); is "
                "`orchestrator serve` running there? (--url sets the address)"
            ) from err
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.is_success:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        text = str(error) if error else (response.text.strip()[:500] or response.reason_phrase)
        raise ServerError(
            f"{text} (HTTP {response.status_code} from {method} {path})", response.status_code, answer
        )
