"""Issue 24, kind 1: a header that names a column twice is refused, naming every duplicated column.

pandas renames the second ``Close`` of a CSV to ``Close.1`` without a word (pandas-dev/pandas#14704),
so ``dup_close_volume.csv`` trained on the first pair and ignored the second; with the pairs in the
other order it failed with a misleading "low above min(open, close)".
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.console.main import main
from orchestrator.errors import DataValidationError
from tests.synthetic import random_walk_ohlcv
from workers.data import load_ohlcv

CASES = Path(__file__).parent / "data" / "cases"


def test_the_case_file_is_refused_naming_both_duplicated_columns() -> None:
    with pytest.raises(DataValidationError) as caught:
        load_ohlcv(CASES / "dup_close_volume.csv")
    message = str(caught.value)
    assert "duplicate column name(s) in" in message and "dup_close_volume.csv" in message
    assert "'close' at columns 5 and 7; 'volume' at columns 6 and 8;" in message


def test_the_case_through_train_fails_the_run_with_that_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--executor",
            "local",
            "--quiet",
            "--data",
            str(CASES / "dup_close_volume.csv"),
            "--folds",
            "2",
            "--epochs",
            "2",
            "--reports-dir",
            str(tmp_path / "reports"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [text for text in err.splitlines() if text.startswith("error:")]
    assert "'close' at columns 5 and 7" in line and "Traceback" not in err


def test_the_pairs_in_the_other_order_are_refused_the_same_way(tmp_path: Path) -> None:
    # the order that used to fail with "low above min(open, close)"
    lines = (CASES / "dup_close_volume.csv").read_text().splitlines()
    swapped = []
    for line in lines:
        cells = line.split(",")
        swapped.append(",".join([*cells[:4], cells[6], cells[7], cells[4], cells[5]]))
    path = tmp_path / "swapped.csv"
    path.write_text("\n".join(swapped) + "\n")
    with pytest.raises(DataValidationError, match=r"'close' at columns 5 and 7"):
        load_ohlcv(path)


def test_a_parquet_file_with_a_column_twice_in_another_case_is_refused(tmp_path: Path) -> None:
    # Another member of the kind: Parquet keeps both names (pandas fails with an Arrow message),
    # and the two differ only in case and a blank.
    bars = random_walk_ohlcv(40, seed=3)
    columns = [pa.array(bars[name]) for name in bars.columns] + [pa.array(bars["open"] * 2)]
    path = tmp_path / "bars.parquet"
    pq.write_table(pa.table(columns, names=[*bars.columns, " Open"]), path)
    with pytest.raises(DataValidationError, match=r"'open' at columns 2 and 7"):
        load_ohlcv(path)


def test_a_time_column_twice_is_refused_and_ignored_columns_may_repeat(tmp_path: Path) -> None:
    bars = random_walk_ohlcv(40, seed=4)
    text = bars.to_csv(index=False)
    header, body = text.split("\n", 1)
    rows = [f"{row},{row.split(',')[0]}" for row in body.splitlines()]
    twice = tmp_path / "date_twice.csv"
    twice.write_text("\n".join([header + ",Timestamp", *rows]) + "\n")
    with pytest.raises(DataValidationError, match=r"'timestamp' at columns 1 and 7"):
        load_ohlcv(twice)

    notes = tmp_path / "notes_twice.csv"
    notes.write_text("\n".join([header + ",note,note", *(f"{row},a,b" for row in body.splitlines())]) + "\n")
    assert len(load_ohlcv(notes)) == 40  # columns that are not read may repeat
