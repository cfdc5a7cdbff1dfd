"""A hook that hangs, crashes, writes garbage or breaks the VM's identity.

Through the real XML-RPC API: the client gets hookError naming the script and
the cause, no domain is left, the agent forgets the VM, no data file or hook
process survives, and the agent goes on serving.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from support import domain_exists

# (script body, manifest, what the error message must say)
BAD_HOOKS: dict[str, tuple[str, str, list[str]]] = {
    "hang": ('echo $$ > "$PIDFILE"\nsleep 600\n', "timeout = 0.5\n", ["timed out"]),
    "hang_ignoring_term": ("trap '' TERM\necho $$ > \"$PIDFILE\"\nwhile :; do sleep 1; done\n",
                           "timeout = 0.5\n", ["timed out"]),
    "crash": ('echo $$ > "$PIDFILE"\nkill -SEGV $$\n', "", ["SIGSEGV"]),
    "garbage": ('echo $$ > "$PIDFILE"\necho "<domain><oops" > "$_hook_domxml"\n', "",
                ["invalid output", "XML"]),
    "new_uuid": ('echo $$ > "$PIDFILE"\n'
                 'sed -i "s|<uuid>[^<]*</uuid>|<uuid>' + str(uuid.uuid4()) + '</uuid>|" '
                 '"$_hook_domxml"\n', "", ["invalid output", "uuid"]),
    "new_name": ('echo $$ > "$PIDFILE"\n'
                 'sed -i "s|<name>[^<]*</name>|<name>hvtest-renamed</name>|" "$_hook_domxml"\n',
                 "", ["invalid output", "name"]),
    "new_root": ('echo $$ > "$PIDFILE"\necho "<network/>" > "$_hook_domxml"\n', "",
                 ["invalid output", "root"]),
    "exit2_with_reason": ('echo $$ > "$PIDFILE"\necho "no hugepages left" >&2\nexit 2\n', "",
                          ["rc=2", "no hugepages left"]),
}


def _alive(pid: int) -> bool:
    """Alive and not a zombie waiting for PID 1 to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize("case", sorted(BAD_HOOKS))
def test_bad_hook_vetoes_with_its_cause_and_leaves_nothing(
    case: str, dirs: Any, inproc_agent: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, manifest, expected = BAD_HOOKS[case]
    pidfile = tmp_path / "pid"
    # The hook inherits the agent's environment: that is how it learns where to write.
    monkeypatch.setenv("PIDFILE", str(pidfile))
    script = f"50_{case}"
    dirs.hook("before_vm_start", script, body)
    if manifest:
        (dirs.hooks / "before_vm_start" / f"{script}.toml").write_text(manifest)
    # A later script must not run once the chain is stopped (rc 2, timeout,
    # signal, invalid output).
    marker = tmp_path / "later-ran"
    dirs.hook("before_vm_start", "60_later", f'touch "{marker}"\n')
    agent = inproc_agent()
    vm_id = str(uuid.uuid4())

    reply = agent.api.create({"vmId": vm_id, "vmName": f"hvtest-bad-{case}", "memSize": 64})

    assert reply["status"]["code"] == 78, reply
    message = reply["status"]["message"]
    assert script in message
    for word in expected:
        assert word.lower() in message.lower(), message
    assert not marker.exists()
    assert not domain_exists(vm_id)
    assert agent.api.list(True, [vm_id])["vmList"] == []
    assert dirs.leftover_files() == []
    assert pidfile.exists(), "the hook never ran"
    assert not _alive(int(pidfile.read_text())), "the hook's process survived"
    runs = agent.api.getHookRuns({"vmId": vm_id})["hookRuns"]
    assert [r["script"] for r in runs] == [script]
    assert runs[0]["outcome"] != "ok"

    # The agent goes on: with the bad hook gone, the same VM starts.
    (dirs.hooks / "before_vm_start" / script).unlink()
    reply = agent.api.create({"vmId": vm_id, "vmName": f"hvtest-bad-{case}", "memSize": 64})
    assert reply["status"]["code"] == 0, reply
    assert domain_exists(vm_id)
    assert agent.api.destroy(vm_id)["status"]["code"] == 0


def test_bad_device_hook_output_vetoes(dirs: Any, inproc_agent: Any) -> None:
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}}")
    dirs.hook("before_device_create", "50_swap_root",
              'echo "<disk type=\\"file\\"/>" > "$_hook_domxml"\n')
    agent = inproc_agent()
    vm_id = str(uuid.uuid4())
    nic = {"type": "interface", "device": "bridge", "network": "br0",
           "macAddr": "52:54:00:00:00:b1", "custom": {"speed": "100"}}
    reply = agent.api.create({"vmId": vm_id, "vmName": "hvtest-bad-device", "memSize": 64,
                              "devices": [nic]})
    assert reply["status"]["code"] == 78, reply
    assert "50_swap_root" in reply["status"]["message"]
    assert not domain_exists(vm_id)
    assert dirs.leftover_files() == []
