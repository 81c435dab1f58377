"""What a REST body may name on the server (DESIGN 10, Trust): data by name, no storage, no file.

- ``data`` (``POST /train``, ``POST /hpo`` at the top level or under ``config``) is ``sp500``, the
  server's own ``--data`` exactly as the operator gave it, or a relative name resolved under the
  folders the operator allowed (``serve --data-root DIR``, in the order given) without ``..`` or a
  symlink out of the folder. Anything else is refused before the disk is touched; a name under the
  roots that is missing or escapes gets one answer, so no answer tells whether a path exists.
- ``storage`` (``POST /hpo``): refused; a study over REST lives in the server's own store.
- ``search_space`` (``POST /hpo``): a mapping in the body, never a path the server would read.

Each refusal is a ``Refusal`` naming the field (a 422 at the route); nothing is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.files import file_under
from api.server_owned import Refusal
from orchestrator.data.names import data_name_problem, is_bundled
from orchestrator.errors import brief

__all__ = ["BodyTrust", "Refusal"]


@dataclass(frozen=True)
class BodyTrust:
    """The operator's grants: the server's own data and the folders names resolve under."""

    own_data: str = "sp500"
    data_roots: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, own_data: str, data_roots: Sequence[str | Path]) -> BodyTrust:
        return cls(own_data, tuple(Path(root) for root in data_roots))

    def resolve_data(self, value: object, where: str = "data") -> str | Refusal:
        """The data a run of this body reads: ``value`` itself or the file it names."""
        if isinstance(value, str) and (value == self.own_data or is_bundled(value)):
            return value
        problem = data_name_problem(value)
        if problem is not None:
            return Refusal(where, f"{where}: {problem}")
        assert isinstance(value, str)
        for root in self.data_roots:
            found = file_under(root, value)
            if found is not None:
                return str(found)
        roots = (
            f"{len(self.data_roots)} data root(s)" if self.data_roots else "no data root (serve --data-root)"
        )
        return Refusal(
            where,
            f"{where}: no data file named {brief(value)} under this server's data roots (it has {roots}); "
            "names are relative to a root, e.g. 'bars.csv' or 'futures/es.parquet'",
        )

    def run_values(self, values: Mapping[str, Any], where: str = "") -> dict[str, Any] | Refusal:
        """A run's fields (``POST /train``'s body, ``POST /hpo``'s run fields), ``data`` resolved."""
        out = dict(values)
        if "data" in out:
            resolved = self.resolve_data(out["data"], f"{where}data")
            if isinstance(resolved, Refusal):
                return resolved
            out["data"] = resolved
        return out

    def study_values(self, values: Mapping[str, Any]) -> dict[str, Any] | Refusal:
        """``POST /hpo``'s body: ``storage`` refused, ``search_space`` a mapping, ``data`` resolved
        at the top level and under ``config``."""
        if values.get("storage") is not None:
            return Refusal(
                "storage",
                f"storage: a study over REST is kept in the server's own store; a body names no "
                f"storage, got storage={brief(values['storage'])} (run it here with `orchestrator "
                "hpo --storage ...` instead)",
            )
        space = values.get("search_space")
        if space is not None and not isinstance(space, dict):
            return Refusal(
                "search_space",
                f"search_space: must be a mapping of field -> distribution in the body, got "
                f"{type(space).__name__}; the server reads no file (`orchestrator hpo --url "
                "--search-space FILE` reads the file on your machine and sends its mapping)",
            )
        top = self.run_values(values)
        if isinstance(top, Refusal):
            return top
        nested = values.get("config")
        if isinstance(nested, dict):
            inner = self.run_values(nested, "config.")
            if isinstance(inner, Refusal):
                return inner
            top["config"] = inner
        return top
