"""`hookvisor vm mem-add|cpus|ticket` against an agent served on the test driver, over
its Unix socket (the test driver changes vCPUs for real and refuses a live DIMM or
console update: one-line errors with VDSM's codes)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def hv(agent: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookvisor", "vm", "--socket", str(agent.socket), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60, input=stdin,
    )


@pytest.fixture
def vm(serve_process: Any) -> tuple[Any, str]:
    agent = serve_process()
    vm_id = str(uuid.uuid4())
    out = hv(agent, "create", "--vm-id", vm_id, "--name", "hvtest-cliextra", "--mem", "64")
    assert out.returncode == 0, out.stderr
    return agent, vm_id


def test_cpus(vm: tuple[Any, str]) -> None:
    agent, vm_id = vm
    out = hv(agent, "cpus", vm_id, "2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["smp"] == 2
    out = hv(agent, "cpus", vm_id, "0")
    assert out.returncode == 1 and "setNumberOfCpusErr (60)" in out.stderr
    assert "Traceback" not in out.stderr


def test_mem_add_refused_by_the_test_driver(vm: tuple[Any, str]) -> None:
    agent, vm_id = vm
    out = hv(agent, "mem-add", vm_id, "128")
    assert out.returncode == 1
    assert "hotplugMem (70)" in out.stderr and "libvirt could not hot-plug 128 MiB" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_ticket_password_from_stdin_only(vm: tuple[Any, str]) -> None:
    agent, vm_id = vm
    out = hv(agent, "ticket", vm_id, "--password-stdin", "--param", "userName=al",
             stdin="Pq8zz1Kd\n")
    # The test driver cannot update graphics live: ticketErr, without the password.
    assert out.returncode == 1 and "ticketErr (18)" in out.stderr, out.stderr
    assert "Pq8zz1Kd" not in out.stderr + out.stdout
    assert "Pq8zz1Kd" not in agent.log()
    out = hv(agent, "ticket", vm_id)  # no tty, no --password-stdin
    assert out.returncode != 0 and "password-stdin" in out.stderr
