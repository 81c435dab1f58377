"""Reading a database URL (``--db``, ``ORCHESTRATOR_DB``, ``--storage``) without ever showing its password.

A URL's user name and password end at its last ``@``; SQLAlchemy's parser stops at the first one,
so a password that holds ``@`` (with ``/`` or ``:`` around it) is read as part of the host, the
port or the database (sqlalchemy#11262): the driver then says "failed to resolve host
'3x@127.0.0.1'" (the password's tail) or the parser raises a ``ValueError`` naming it. Such a URL
is refused before it is parsed, with one line that says to percent-encode the password and shows
the URL with everything before its last ``@`` hidden. ``describe`` is the one way a URL is shown.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from orchestrator.errors import StoreError

__all__ = ["ENCODE_HINT", "parse_url", "describe", "redact"]

ENCODE_HINT = (
    "a user name or password that holds '@', '/' or ':' must be percent-encoded in the URL "
    '(@ as %40, / as %2F, : as %3A; python -c "import urllib.parse; '
    "print(urllib.parse.quote(input(), safe=''))\" prints it encoded)"
)


def redact(url: str) -> str:
    """``url`` with everything between ``://`` and its last ``@`` hidden (no parsing needed)."""
    scheme, sep, rest = str(url).partition("://")
    if "@" not in (rest if sep else scheme):
        return str(url)
    return f"{scheme}{sep}***@{str(url).rsplit('@', 1)[1]}" if sep else f"***@{str(url).rsplit('@', 1)[1]}"


def _credentials_problem(url: str) -> str | None:
    """Why the user name and password of ``url`` cannot be told from its host, or None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() == "sqlite":
        return None  # a SQLite URL names a file, whose path may hold '@'
    signs = rest.split("?", 1)[0].count("@")
    if signs > 1:
        return f"it holds {signs} '@' before its database name, where one is expected"
    return None


def parse_url(url: str) -> URL:
    """``url`` parsed, or ``StoreError`` (one line, the password never in it) for a URL that is
    malformed or whose credentials are ambiguous."""
    problem = _credentials_problem(url)
    if problem is not None:
        raise StoreError(f"the database URL {redact(url)} cannot be read: {problem}; {ENCODE_HINT}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"--db {redact(url)!r} is not a database URL (dialect+driver://user:password@host/db)"
        ) from None
    except ValueError:  # int(port) of a port that is a password's tail
        raise StoreError(
            f"the database URL {redact(url)} cannot be read: its port is not a number; {ENCODE_HINT}"
        ) from None
    if parsed.host and any(sign in parsed.host for sign in "@?#"):
        raise StoreError(
            f"the database URL {redact(url)} cannot be read: the part read as its host holds "
            f"'@' or '?' (a password's tail); {ENCODE_HINT}"
        )
    return parsed


def describe(url: str | URL) -> str:
    """The URL as it may be shown: password hidden; for SQLite, the file."""
    try:
        parsed = url if isinstance(url, URL) else parse_url(url)
    except StoreError:
        return redact(str(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return f"SQLite file {parsed.database}"
    return parsed.render_as_string(hide_password=True)
