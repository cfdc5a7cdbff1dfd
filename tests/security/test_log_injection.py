"""What a hook (or, through a hook, a client's custom property) writes cannot forge log lines.

The agent logs to stderr, one line per record (journald splits on newlines):
a failing hook's stderr used to go into the log as is, so a second line
looking like the agent's own, a terminal escape or a NUL reached the log.
"""

from __future__ import annotations

import uuid
from typing import Any

FORGED = "2026-01-01 00:00:00,000 CRITICAL hookvisor.serve: forged"


def test_hook_stderr_cannot_forge_log_lines(dirs: Any, serve_process: Any) -> None:
    dirs.hook("before_vm_start", "10_noisy",
              f"printf 'ok\\n{FORGED}\\n\\033]0;title\\007 \\033[2J nul:\\000:\\n' >&2\n")
    dirs.hook("before_vm_start", "20_veto",
              f"printf 'no\\n{FORGED}\\r{FORGED}\\033[31m\\n' >&2\nexit 2\n")
    agent = serve_process()
    vm_id = str(uuid.uuid4())
    reply = agent.api.create({"vmId": vm_id, "vmName": "hvtest-log", "memSize": 64})
    assert reply["status"]["code"] == 78, reply
    agent.stop()
    log = agent.log_path.read_bytes()
    lines = log.split(b"\n")
    assert all(not line.startswith(FORGED.encode()) for line in lines), log
    assert b"\r" not in log and b"\x1b" not in log and b"\x00" not in log and b"\x07" not in log
    # The text is still there, made visible.
    assert b"forged" in log and b"\\x1b" in log
