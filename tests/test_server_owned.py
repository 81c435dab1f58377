"""``api.server_owned``: the one rule for the config fields a request (or ``serve``) may not set."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.server_owned import Refusal, owned_field_refusal


def test_values_that_leave_the_owned_fields_alone_or_repeat_them_pass(tmp_path: Path) -> None:
    reports = str(tmp_path / "reports")
    assert owned_field_refusal({}, reports) is None
    assert owned_field_refusal({"epochs": 3, "data": "sp500"}, reports) is None
    assert owned_field_refusal({"executor": "ray"}, reports) is None
    # the same folder spelled another way is the same folder
    assert owned_field_refusal({"reports_dir": str(tmp_path / "x" / ".." / "reports")}, reports) is None


def test_the_local_executor_is_refused_naming_the_value() -> None:
    refusal = owned_field_refusal({"executor": "local"}, "reports")
    assert refusal is not None and refusal.field == "executor"
    assert "got 'local'" in refusal.message and refusal.message.startswith("executor:")


@pytest.mark.parametrize("given", ["/tmp/elsewhere", 7, None])
def test_another_reports_dir_is_refused_naming_the_servers(given: object) -> None:
    refusal = owned_field_refusal({"reports_dir": given}, "reports")
    assert refusal == Refusal(
        "reports_dir", f"reports_dir: set by the server (--reports-dir reports), got {given!r}"
    )
