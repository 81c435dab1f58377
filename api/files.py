"""Which server files a request may reach: a regular file under a root, never the job store.

``file_under`` is the one path check (``/reports/...``, the dashboard's scripts, data names under
``serve --data-root``): a relative path, no escape by ``..`` or by a symlink. ``ReportFiles``
is what ``GET /reports/...`` serves: report files by suffix (CSV, JSON, JSON lines, HTML, YAML),
and never the job store's SQLite file or its ``-wal``/``-shm``/``-journal`` companions, whatever
their names. Every refusal is None, so a file that exists and one that does not look the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["REPORT_SUFFIXES", "ReportFiles", "file_under", "sqlite_files"]

# what runs and studies write under the reports root: summary.json, events.jsonl, the
# predictions' and trials' CSVs, report.html, best_config.yaml
REPORT_SUFFIXES = frozenset({".csv", ".json", ".jsonl", ".html", ".yaml"})
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def file_under(root: Path, relative: str) -> Path | None:
    """The regular file ``relative`` names under ``root``, or None for anything that escapes it.

    Refused: absolute paths, any ``..``, ``.`` or empty component, backslashes, NUL, and anything
    whose real path (symlinks followed) is not inside the real ``root``, or is not a regular file.
    """
    if not relative or "\x00" in relative or "\\" in relative or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    try:
        real_root = root.resolve(strict=True)
        candidate = (real_root / Path(*parts)).resolve(strict=True)
        if not candidate.is_relative_to(real_root) or not candidate.is_file():
            return None
    except (OSError, RuntimeError, ValueError):  # ENAMETOOLONG, a symlink loop
        return None
    return candidate


def sqlite_files(url: str | None) -> frozenset[Path]:
    """The real paths of a SQLite database's file and companions (none for other URLs)."""
    if not url:
        return frozenset()
    try:
        parsed = make_url(url)
    except ArgumentError:
        return frozenset()
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return frozenset()
    database = database.removeprefix("file:").partition("?")[0]
    main = Path(database).resolve()
    return frozenset(main.with_name(main.name + suffix) for suffix in SQLITE_COMPANIONS)


@dataclass(frozen=True)
class ReportFiles:
    """``GET /reports/...``: report files under ``root``, none of the ``hidden`` real paths."""

    root: Path
    hidden: frozenset[Path] = field(default_factory=frozenset)

    @classmethod
    def of(cls, root: str | Path, store_urls: Iterable[str | None] = ()) -> ReportFiles:
        """Hides the SQLite files of ``store_urls`` and the default store's name under ``root``."""
        from orchestrator.store.engine import DB_FILE

        hidden = set(sqlite_files(f"sqlite:///{Path(root).resolve() / DB_FILE}"))
        for url in store_urls:
            hidden |= sqlite_files(url)
        return cls(Path(root), frozenset(hidden))

    def resolve(self, relative: str) -> Path | None:
        found = file_under(self.root, relative)
        if found is None or found.suffix.lower() not in REPORT_SUFFIXES or found in self.hidden:
            return None
        return found
