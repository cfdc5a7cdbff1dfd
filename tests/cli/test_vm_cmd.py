"""`hookvisor vm ...` against a served agent, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hookvisor.cli.common import UsageError
from hookvisor.cli.vm_cmd import AgentError, is_vm_id, vm_named

REPO = Path(__file__).resolve().parent.parent.parent


def hv(agent: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookvisor", "vm", "--socket", str(agent.socket), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


@pytest.fixture
def agent(dirs: Any, serve_process: Any) -> Any:
    dirs.define("UserDefinedVMProperties", "mark=^[a-z]+$")
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}}")
    dirs.hook("before_vm_start", "50_desc",
              'sed -i "s|</name>|</name><description>$mark</description>|" "$_hook_domxml"\n')
    return serve_process()


def test_create_list_pause_cont_stats_destroy(agent: Any) -> None:
    vm_id = "6f1c7f7e-6a55-4d8a-9a8e-1f0c1b2d3e4f"
    out = hv(agent, "create", "--vm-id", vm_id, "--name", "hvtest-cli", "--mem", "64",
             "--prop", "mark=hello", "--nic", "br0,mac=52:54:00:00:00:c1,speed=100", "--json")
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["vmId"] == vm_id
    assert created["status"] == "Up"
    assert created["custom"] == {"mark": "hello"}
    assert created["devices"][0]["custom"] == {"speed": "100"}

    listed = json.loads(hv(agent, "list", "--json").stdout)
    assert [(v["vmId"], v["status"]) for v in listed] == [(vm_id, "Up")]
    table = hv(agent, "list")
    assert table.returncode == 0
    assert "hvtest-cli" in table.stdout and "mark=hello" in table.stdout

    assert hv(agent, "pause", vm_id).returncode == 0
    assert json.loads(hv(agent, "list", "--json").stdout)[0]["status"] == "Paused"
    assert hv(agent, "cont", vm_id).returncode == 0
    stats = json.loads(hv(agent, "stats", vm_id, "--json").stdout)
    assert stats[0]["vmId"] == vm_id and stats[0]["status"] == "Up"
    assert hv(agent, "stats").returncode == 0

    assert hv(agent, "destroy", vm_id).returncode == 0
    assert json.loads(hv(agent, "list", "--json").stdout) == []


def test_errors_are_one_line_with_the_code(agent: Any) -> None:
    bad = hv(agent, "create", "--name", "hvtest-bad", "--prop", "mark=NOT-LOWER")
    assert bad.returncode == 1
    line = bad.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("hookvisor: createErr (9):")
    assert "mark" in line

    missing = hv(agent, "destroy", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    assert missing.stderr.startswith("hookvisor: noVM (1):")

    usage = hv(agent, "create", "--nic", "br0,novalue")
    assert usage.returncode == 2
    assert "--nic" in usage.stderr and "Traceback" not in usage.stderr


def test_veto_reaches_the_operator(agent: Any, dirs: Any) -> None:
    dirs.hook("before_vm_start", "40_no", 'echo "maintenance window" >&2\nexit 2\n')
    out = hv(agent, "create", "--name", "hvtest-veto")
    assert out.returncode == 1
    assert out.stderr.startswith("hookvisor: hookError (78):")
    assert "40_no" in out.stderr and "maintenance window" in out.stderr


def test_unreachable_agent_is_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hookvisor", "vm", "--agent", "127.0.0.1:9", "list"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("hookvisor: cannot reach the agent at 127.0.0.1:9")


def test_a_pipe_closed_early_is_a_quiet_exit(agent: Any) -> None:
    vm_id = "0b7e1c52-9d3a-4c1e-8f2b-5a6d7e8f9a0b"
    assert hv(agent, "create", "--vm-id", vm_id, "--name", "hvtest-pipe", "--mem", "64",
              "--prop", "mark=x").returncode == 0
    try:
        for verb in (["list"], ["list", "--json"], ["dumpxml", "hvtest-pipe"],
                     ["stats", vm_id]):
            # `-u`: every print is a write, so the first one meets the closed pipe inside
            # the command (its guard); buffered, the last flush meets it in main().
            for unbuffered in (["-u"], []):
                read, write = os.pipe()
                os.close(read)  # the reader is gone (`| head` that has had its line)
                try:
                    proc = subprocess.run(
                        [sys.executable, *unbuffered, "-m", "hookvisor", "vm", "--socket",
                         str(agent.socket), *verb], stdout=write, stderr=subprocess.PIPE,
                        text=True, cwd=REPO, timeout=60)
                finally:
                    os.close(write)
                assert (proc.returncode, proc.stderr) == (0, ""), (verb, unbuffered, proc)
    finally:
        hv(agent, "destroy", vm_id)


def test_a_vm_name_resolves_to_its_one_vm_id() -> None:
    vms = [{"vmId": "id-a", "vmName": "a"}, {"vmId": "id-b1", "vmName": "b"},
           {"vmId": "id-b2", "vmName": "b"}]
    assert vm_named(vms, "a") == "id-a"
    with pytest.raises(UsageError, match=r"2 VMs are named 'b': give a vmId \(id-b1, id-b2\)"):
        vm_named(vms, "b")
    with pytest.raises(AgentError, match="no VM named 'c'") as err:
        vm_named(vms, "c")
    assert err.value.code == 1
    assert is_vm_id("6F1C7F7E-6A55-4D8A-9A8E-1F0C1B2D3E4F")
    assert not is_vm_id("6f1c7f7e6a554d8a9a8e1f0c1b2d3e4f")  # a name, however odd
    assert not is_vm_id("hvtest-vm")
