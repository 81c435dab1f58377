"""What a ``data`` value sent to a server may be: ``sp500`` or a relative name, checked without the disk (pure).

A server resolves a name under the folders its operator allowed (``serve --data-root``); it never
reads an absolute path, a ``..`` or a URL a client sends. This is the rule both sides share: the
server (``api.trust``) refuses such a value before it touches the file system, so a path that
exists and one that does not get the same answer, and the CLI (``submit``, ``hpo --url``) refuses
it before posting, saying how to send data instead.
"""

from __future__ import annotations

from orchestrator.errors import brief

__all__ = ["BUNDLED", "DATA_NAME_MAX", "data_name_problem", "is_bundled"]

BUNDLED = "sp500"
DATA_NAME_MAX = 255  # a name is a relative path inside a data root; 255 is a file name's limit


def is_bundled(value: str) -> bool:
    """True for the bundled S&P 500 (``sp500``, any case and surrounding space)."""
    return value.strip().lower() == BUNDLED


def data_name_problem(value: object) -> str | None:
    """Why ``value`` cannot name data on a server (a message without the field's name), or None.

    A name is ``sp500`` or a relative path of at most ``DATA_NAME_MAX`` characters whose parts,
    separated by ``/``, are neither empty, ``.`` nor ``..``; no backslash, NUL, ``~`` at the start,
    or ``scheme://``.
    """
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value) > DATA_NAME_MAX:
        return f"a data name has at most {DATA_NAME_MAX} characters, got {len(value)}"
    if is_bundled(value):
        return None
    parts = value.split("/")
    if (
        not value
        or value.startswith(("/", "~"))
        or "\\" in value
        or "\x00" in value
        or "://" in value
        or any(part in ("", ".", "..") for part in parts)
    ):
        return (
            f"{brief(value)} is not a data name: give 'sp500' or a file's path relative to one of "
            "the server's data roots (serve --data-root DIR), without '..'; the server reads no "
            "other path"
        )
    return None
