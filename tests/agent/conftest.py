"""Agent tests: none may leave a domain behind on the in-process test driver."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_domains(test_driver_leak_guard: None) -> None:
    pass
