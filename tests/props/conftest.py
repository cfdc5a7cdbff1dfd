from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hookvisor.props.registry import PropertyRegistry


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[PropertyRegistry]:
    r = PropertyRegistry(tmp_path / "state" / "properties.sqlite", cluster_version="4.0")
    yield r
    r.close()
