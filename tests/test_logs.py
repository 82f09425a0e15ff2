"""Logged tracebacks never show local variables: a frame may hold a resolved secret."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from palyra_py.logs import configure_logging


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_exception_logs_carry_no_locals(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    configure_logging("info", fmt)
    try:
        def verify(secret: str) -> None:
            raise RuntimeError("boom")

        secret = "-".join(["sEcReT", "value", "1234"])  # not in any source line
        try:
            verify(secret)
        except RuntimeError:
            structlog.get_logger("t").exception("failed")
        output = err.getvalue()
        assert "boom" in output and "failed" in output
        assert "sEcReT-value-1234" not in output
    finally:
        structlog.reset_defaults()
