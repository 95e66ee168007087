"""Crash points do nothing unless `crash_at` names them, and know only their own names."""

from __future__ import annotations

import pytest

from agenttest import crashpoints, settings


def test_a_point_not_named_by_crash_at_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "_active", settings.Settings(crash_at="deleting"))
    for point in crashpoints.POINTS - {"deleting"}:
        crashpoints.reached(point)  # still alive


def test_an_unknown_point_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="unknown crash point"):
        crashpoints.reached("nowhere")
