"""The CLI tests need jsonargparse (the ``fulmen[cli]`` extra) and must not see pytest's own argv."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("jsonargparse")


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["prog"])
