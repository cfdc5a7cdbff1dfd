"""A hook (as the hook user) gets stdin, stdout and stderr, and no other descriptor.

Python opens everything close-on-exec, but descriptors the agent inherited
from whatever started it (a wrapper script's log file, a shell's pipe) are
not: a hook running as the hook user got them too, root's files open for it.
"""

from __future__ import annotations

import os
from typing import Any

LIST_FDS = """
import os
out = []
for name in sorted(os.listdir("/proc/self/fd"), key=int):
    try:
        out.append(name + " " + os.readlink("/proc/self/fd/" + name))
    except OSError:
        pass
open({out!r}, "w").write("\\n".join(out) + "\\n")
"""


def test_a_hook_inherits_no_descriptor_of_the_agent(dirs: Any, inproc_agent: Any) -> None:
    secret = dirs.root / "root-only.log"
    secret.write_text("")
    secret.chmod(0o600)
    stray = os.open(secret, os.O_WRONLY | os.O_APPEND)  # as a wrapper's `>>log` would leave it
    os.set_inheritable(stray, True)
    out = dirs.root / "fds.txt"
    try:
        dirs.hook("before_vm_start", "10_fds", LIST_FDS.format(out=str(out)), python=True)
        agent = inproc_agent()
        vm_id = "11111111-2222-3333-4444-555555555555"
        reply = agent.api.create({"vmId": vm_id, "vmName": "hvtest-fds", "memSize": 64})
        assert reply["status"]["code"] == 0, reply
        assert agent.api.destroy(vm_id)["status"]["code"] == 0
    finally:
        os.close(stray)
    listed = out.read_text()
    assert str(secret) not in listed, listed
    fds = {int(line.split()[0]) for line in listed.splitlines() if line}
    assert fds <= {0, 1, 2, 3}, listed  # 3: the listing's own /proc/self/fd
