"""Serve the REST API and the /ws event stream.

The ``serve`` subcommand of ``orchestrator``, registered as an entry point of the
``orchestrator.commands`` group (pyproject.toml). This module imports nothing at its top: the CLI
reads its docstring for ``orchestrator --help``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["serve"]


def serve(argv: Sequence[str] | None = None) -> int:
    """``orchestrator serve``: ``api.server.main``."""
    from api.server import main

    return main(argv)
