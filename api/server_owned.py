"""The ``TrainConfig`` fields the server owns, which neither a request nor ``serve``'s flags may set otherwise.

- ``executor`` must be ``ray``: the ``local`` executor would import torch into the API process.
- ``reports_dir`` must be the server's (``--reports-dir``), so every report is under ``/reports``.

``POST /train``, ``POST /hpo`` and ``orchestrator serve`` all ask ``owned_field_refusal``; a
refusal names the field and the value it was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVER_EXECUTOR", "Refusal", "owned_field_refusal"]

SERVER_EXECUTOR = "ray"


@dataclass(frozen=True)
class Refusal:
    """A body field refused (here, or by the trust model, ``api.trust``): the field at fault and a
    message naming its value."""

    field: str
    message: str


def owned_field_refusal(values: Mapping[str, object], reports_dir: str) -> Refusal | None:
    """The refusal when ``values`` set a server-owned field to something else, or None."""
    executor = values.get("executor", SERVER_EXECUTOR)
    if executor != SERVER_EXECUTOR:
        return Refusal(
            "executor",
            f"executor: the server trains on Ray only (the API process never imports torch), got "
            f"{executor!r}; use `orchestrator train --executor local` for an in-process run",
        )
    if "reports_dir" in values:
        given = values["reports_dir"]
        if not isinstance(given, str) or Path(given).resolve() != Path(reports_dir).resolve():
            return Refusal(
                "reports_dir",
                f"reports_dir: set by the server (--reports-dir {reports_dir}), got {given!r}",
            )
    return None
