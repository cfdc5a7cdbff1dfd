"""Launch flags: a before_vm_start hook asks for a paused start; the agent reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookvisor.hooks.launchflags import START_PAUSED, clear_flags, read_flags, write_flags

from .conftest import MakeRunner
from .util import DOMAIN, UUID, py, write_hook


def test_hook_sets_start_paused(hooks_dir: Path, run_dir: Path,
                                make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "before_vm_start", "10_pause", py("""
        import os
        import hooking
        vm = os.environ['vmId']
        before = hooking.load_vm_launch_flags_from_file(vm)
        hooking.dump_vm_launch_flags_to_file(vm, before | 1)
        print(before, hooking.load_vm_launch_flags_from_file(vm))
    """))
    result = make_runner().run("before_vm_start", DOMAIN, vm_id=UUID)
    assert result.ok, result.message()
    assert result.runs[0].stdout == "0 1\n"
    flags = read_flags(run_dir, UUID)
    assert flags == START_PAUSED == 1 and isinstance(flags, int)
    clear_flags(run_dir, UUID)
    assert read_flags(run_dir, UUID) == 0
    clear_flags(run_dir, UUID)  # clearing twice is fine


def test_agent_flags_visible_to_the_hook(hooks_dir: Path, run_dir: Path,
                                         make_runner: MakeRunner) -> None:
    write_flags(run_dir, UUID, START_PAUSED)
    write_hook(hooks_dir, "before_vm_start", "10_read", py("""
        from vdsm.hook import hooking
        import os
        print(hooking.load_vm_launch_flags_from_file(os.environ['vmId']))
    """))
    assert make_runner().run("before_vm_start", DOMAIN, vm_id=UUID).runs[0].stdout == "1\n"
    clear_flags(run_dir, UUID)


@pytest.mark.parametrize("vm_id", ["", "..", "a/b", "/etc"])
def test_vm_id_cannot_escape(run_dir: Path, vm_id: str) -> None:
    with pytest.raises(ValueError):
        write_flags(run_dir, vm_id, 1)


def test_garbage_reads_as_zero(run_dir: Path) -> None:
    write_flags(run_dir, UUID, 1)
    (run_dir / "launchflags" / UUID).write_text("junk")
    assert read_flags(run_dir, UUID) == 0
    clear_flags(run_dir, UUID)
