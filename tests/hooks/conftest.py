"""Fixtures for the hook engine tests: hook dirs, runners with test-sized timeouts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hookvisor.hooks.records import RunRecords
from hookvisor.hooks.runner import HookRunner, RunnerConfig

from .util import leftovers


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hooks"
    path.mkdir()
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


MakeRunner = Callable[..., HookRunner]


@pytest.fixture
def make_runner(hooks_dir: Path, run_dir: Path, tmp_path: Path) -> MakeRunner:
    """A runner with test-sized timeouts; records=True puts them in tmp_path/state."""

    def make(records: bool | RunRecords = False, **config: object) -> HookRunner:
        settings: dict[str, object] = {"default_timeout": 10.0, "grace": 0.2}
        settings.update(config)
        store = None
        if isinstance(records, RunRecords):
            store = records
        elif records:
            store = RunRecords(tmp_path / "state" / "hookruns.sqlite")
        return HookRunner(RunnerConfig(hooks_dir, run_dir, **settings), store)  # type: ignore[arg-type]

    return make


@pytest.fixture(autouse=True)
def _no_temp_files_left(run_dir: Path) -> Iterator[None]:
    yield
    assert leftovers(run_dir) == [], "a chain left files in the run dir"
