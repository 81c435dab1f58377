"""Run folders, predictions CSVs and the summary JSON (DESIGN 7), written atomically.

Every file is written to a temporary name in its final folder and renamed into place, so a reader
never sees half a file under a name that an event announced; a write that fails (a full disk)
leaves no temporary file and raises ``ReportWriteError`` naming the file and its folder.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import platform
import secrets
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from orchestrator.errors import OrchestratorError
from orchestrator.messages import sanitize

__all__ = [
    "new_run_id",
    "run_dir",
    "ReportWriteError",
    "atomic_write_text",
    "write_predictions_csv",
    "write_summary",
    "aggregate_metrics",
    "package_versions",
]

PREDICTION_COLUMNS = (
    "timestamp",
    "fold_id",
    "segment",
    "y",
    "mu",
    "sigma",
    "p_up_raw",
    "p_up_cal",
    "conformal_lo",
    "conformal_hi",
    "conformal_p",
    "pit_z",
)


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"run_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


def run_dir(reports_root: str | Path, run_id: str) -> Path:
    return Path(reports_root) / run_id


class ReportWriteError(OrchestratorError):
    """A run's or study's file could not be written (a full disk, a quota, a read-only folder);
    the message names the file and its folder, never a bare ``[Errno 28]``."""


def _write_failure(path: Path, err: OSError) -> ReportWriteError:
    folder = path.parent
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if err.errno == errno.ENOSPC else "no quota left on the disk"
        return ReportWriteError(
            f"the reports folder is full: {what} that holds {folder} (writing {path.name}); free "
            "space there (or use another --reports-dir) and run again"
        )
    reason = err.strerror or str(err)
    return ReportWriteError(f"cannot write {path.name} in the reports folder {folder}: {reason}")


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place: a reader sees
    the old file or the whole new one. On an OSError (a full disk) the temporary file is removed
    and ``ReportWriteError`` names the file and its folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_failure(path, err) from err
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_failure(path, err) from err
        raise
    return path


def write_predictions_csv(folder: Path, fold_id: int, predictions: dict[str, np.ndarray]) -> Path:
    """``predictions/predictions_fold_{k}_{YYYYmmdd_HHMMSS}.csv`` with exactly the DESIGN 7 columns.

    Floats are written at shortest round-trip precision, so they read back exactly; NaN is an
    empty field. Arrow's CSV writer does it about 9 times faster than ``DataFrame.to_csv``
    (0.5 s against 4.5 s for 400k rows: bench/csv_writer.py), on the driver's path after each
    fold of a large run.
    """
    frame = pd.DataFrame({name: predictions[name] for name in PREDICTION_COLUMNS})
    frame["timestamp"] = _iso_seconds(predictions["timestamp"])
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    path = folder / "predictions" / f"predictions_fold_{fold_id}_{stamp}.csv"
    return atomic_write_text(path, predictions_csv_text(frame))


def _iso_seconds(timestamps: Any) -> Any:
    """``YYYY-mm-ddTHH:MM:SS`` of each timestamp: numpy's formatter for a datetime64 array (65 ms
    against pandas' ``strftime`` 170 ms for 130k rows: the driver's path after each fold of a
    large run), pandas' for anything else it can parse."""
    values = np.asarray(timestamps)
    if np.issubdtype(values.dtype, np.datetime64) and not np.isnat(values).any():
        return np.datetime_as_string(values.astype("datetime64[s]"), unit="s")
    return pd.to_datetime(pd.Series(timestamps)).dt.strftime("%Y-%m-%dT%H:%M:%S")


def predictions_csv_text(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text: a header row, no index, quotes only where a value needs them."""
    # Arrow quotes every string when asked for "needed"; none of ours (ISO times, segment names)
    # needs quotes, so they are left out unless some text really holds a separator or a quote.
    special = r'[,"\r\n]'
    texts = pd.Series([str(c) for c in frame.columns], dtype="string")
    plain = not texts.str.contains(special).any() and not any(
        frame[c].astype("string").str.contains(special).any()
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c])
    )
    buffer = io.BytesIO()
    pa_csv.write_csv(
        pa.Table.from_pandas(frame, preserve_index=False),
        buffer,
        write_options=pa_csv.WriteOptions(
            quoting_style="none" if plain else "needed", quoting_header="none" if plain else "needed"
        ),
    )
    return buffer.getvalue().decode()


def aggregate_metrics(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and population std over folds of every numeric metric (folds with null skipped)."""
    keys = sorted({k for m in per_fold for k, v in m.items() if isinstance(v, (int, float))})
    out: dict[str, dict[str, float | None]] = {}
    for key in keys:
        values = np.array(
            [m[key] for m in per_fold if isinstance(m.get(key), (int, float)) and m[key] is not None],
            dtype=np.float64,
        )
        values = values[np.isfinite(values)]
        out[key] = {
            "mean": float(values.mean()) if values.size else None,
            "std": float(values.std()) if values.size else None,
            "n": int(values.size),
        }
    return out


def package_versions() -> dict[str, str]:
    """The versions of Python and the packages a run's results depend on (a summary's
    ``versions``): read once per process, they cannot change under it (2 ms a package each time)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    names = [
        "forecast-orchestrator",
        "torch",
        "numpy",
        "pandas",
        "scipy",
        "scikit-learn",
        "statsmodels",
        "ray",
        "optuna",
        "arch",
        "pydantic",
        "fastapi",
    ]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    text = json.dumps(sanitize(summary), indent=2, allow_nan=False, default=str)
    return atomic_write_text(folder / "summary.json", text + "\n")
