"""tune_allocator: set on glibc, left to the operator when glibc's own variables are set."""

from __future__ import annotations

import pytest

from orders_shared.allocator import tune_allocator


def test_sets_thresholds_on_glibc() -> None:
    assert tune_allocator() is True  # the build machine and the images are glibc (Debian)


@pytest.mark.parametrize("var", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_operator_setting_wins(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "131072")
    assert tune_allocator() is False
