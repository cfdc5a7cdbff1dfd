"""Timeouts and stray processes: a hung hook is killed with its whole group, a
background child does not hold the chain. No wall-clock assertions beyond
generous sanity bounds: what is checked is that nothing of the hook survives."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import MakeRunner
from .util import DOMAIN, group_alive, sh, write_hook

EV = "before_vm_start"
TIMEOUT, GRACE = 0.5, 0.2


@pytest.fixture
def pgids() -> Iterator[list[int]]:
    """Process groups a test created; whatever is left of them is killed, and fails it."""
    groups: list[int] = []
    yield groups
    survivors = [g for g in groups if group_alive(g)]
    for g in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    assert not survivors, f"process groups left alive: {survivors}"


def _wait_gone(pgid: int) -> None:
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_hung_hook_ignoring_sigterm_is_killed_with_its_children(
    hooks_dir: Path, make_runner: MakeRunner, pgids: list[int]
) -> None:
    write_hook(hooks_dir, EV, "10_hang", sh("""
        trap '' TERM
        sleep 600 &
        sleep 600 &
        while :; do sleep 0.05; done
    """))
    write_hook(hooks_dir, EV, "20_never", sh("exit 0\n"))
    result = make_runner(default_timeout=TIMEOUT, grace=GRACE).run(EV, DOMAIN)
    run = result.runs[0]
    assert run.pgid is not None
    pgids.append(run.pgid)
    assert run.outcome == "timeout" and run.rc is None
    assert [r.script for r in result.runs] == ["10_hang"]  # a timeout stops the chain
    assert result.vetoed and "timed out" in result.message() and "10_hang" in result.message()
    assert not group_alive(run.pgid)
    assert TIMEOUT <= run.duration < TIMEOUT + GRACE + 10  # generous: a sanity bound only


def test_hook_that_obeys_sigterm_ends_in_the_grace(
    hooks_dir: Path, make_runner: MakeRunner, pgids: list[int]
) -> None:
    write_hook(hooks_dir, EV, "10_hang", sh("""
        trap 'echo got TERM >&2; exit 0' TERM
        echo started >&2
        while :; do sleep 0.05; done
    """))
    run = make_runner(default_timeout=TIMEOUT, grace=5.0).run(EV, DOMAIN).runs[0]
    pgids.append(run.pgid or 0)
    assert run.outcome == "timeout"
    assert "got TERM" in run.stderr  # SIGTERM came first and the hook could clean up
    assert run.duration < TIMEOUT + 5.0  # did not need the whole grace


def test_timeout_edits_discarded(hooks_dir: Path, make_runner: MakeRunner,
                                 pgids: list[int]) -> None:
    write_hook(hooks_dir, EV, "10_hang", sh("""
        echo '<domain/>' > "$_hook_domxml"
        exec sleep 600
    """))
    result = make_runner(default_timeout=TIMEOUT, grace=GRACE).run(EV, DOMAIN)
    pgids.append(result.runs[0].pgid or 0)
    assert result.runs[0].outcome == "timeout" and result.data == DOMAIN


def test_timeout_per_event_and_per_script(hooks_dir: Path, make_runner: MakeRunner,
                                          pgids: list[int]) -> None:
    write_hook(hooks_dir, "after_vm_start", "10_slow", sh("sleep 0.8\n"))
    write_hook(hooks_dir, "after_vm_start", "20_slow", sh("sleep 0.8\n"))
    runner = make_runner(default_timeout=TIMEOUT, grace=GRACE,
                         event_timeouts={"after_vm_start": 30.0},
                         script_timeouts={"after_vm_start/20_slow": TIMEOUT})
    result = runner.run("after_vm_start", DOMAIN)
    pgids.extend(r.pgid or 0 for r in result.runs)
    assert [r.outcome for r in result.runs] == ["ok", "timeout"]
    assert not result.vetoed  # after_ events never veto


def test_background_child_does_not_hold_the_chain(
    hooks_dir: Path, make_runner: MakeRunner, pgids: list[int]
) -> None:
    write_hook(hooks_dir, EV, "10_bg", sh("""
        sleep 600 &
        echo "left a child" >&2
    """))
    write_hook(hooks_dir, EV, "20_next", sh("echo next\n"))
    result = make_runner(default_timeout=30.0).run(EV, DOMAIN)
    first = result.runs[0]
    assert first.pgid is not None
    pgids.append(first.pgid)  # the fixture kills the child afterwards (default: left alone)
    assert [r.outcome for r in result.runs] == ["ok", "ok"]
    assert first.stderr == "left a child\n" and result.runs[1].stdout == "next\n"
    assert first.duration < 30  # far below the child's 600 s: nothing waited for it
    assert group_alive(first.pgid)  # VDSM behaviour: a hook may start a helper
    os.killpg(first.pgid, signal.SIGKILL)
    _wait_gone(first.pgid)


def test_kill_leftovers_option(hooks_dir: Path, make_runner: MakeRunner,
                               pgids: list[int]) -> None:
    write_hook(hooks_dir, EV, "10_bg", sh("sleep 600 &\n"))
    result = make_runner(kill_leftovers=True).run(EV, DOMAIN)
    pgids.append(result.runs[0].pgid or 0)
    assert result.ok and not group_alive(result.runs[0].pgid or 0)


def test_background_child_output_does_not_leak_into_the_next_record(
    hooks_dir: Path, make_runner: MakeRunner, pgids: list[int]
) -> None:
    write_hook(hooks_dir, EV, "10_bg", sh("""
        (sleep 0.3; echo LATE; echo LATE >&2) &
        echo early
    """))
    write_hook(hooks_dir, EV, "20_slow", sh("sleep 0.8; echo mine\n"))
    result = make_runner().run(EV, DOMAIN)
    pgids.extend(r.pgid or 0 for r in result.runs)
    assert result.runs[1].stdout == "mine\n" and result.runs[1].stderr == ""


def test_config_from_settings_splits_per_script_keys(tmp_path: Path) -> None:
    from hookvisor.config import load_settings
    from hookvisor.hooks.runner import RunnerConfig

    conf = tmp_path / "c.toml"
    conf.write_text('hook_timeout = 30\nhook_grace = 1.5\n'
                    '[event_timeouts]\nbefore_vm_start = 120\n"after_vm_start/50_x" = 7\n')
    config = RunnerConfig.from_settings(load_settings(conf, environ={}))
    assert (config.default_timeout, config.grace) == (30.0, 1.5)
    assert config.timeout_for("before_vm_start", "10_a", None) == 120.0
    assert config.timeout_for("after_vm_start", "50_x", None) == 7.0
    assert config.timeout_for("after_vm_start", "60_y", None) == 30.0
