"""Helpers for the hook engine tests: writing hooks, checking processes and run dirs."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

# A Python the hook user can run (see tests/conftest.py).
PY = ("/usr/bin/python3" if os.geteuid() == 0 and os.path.exists("/usr/bin/python3")
      else sys.executable)
UUID = "6f1c9a4e-2d0b-4c55-9d1e-0a8f3b7c5e21"
DOMAIN = (
    "<domain type='kvm'><name>vm1</name><uuid>" + UUID + "</uuid>"
    "<memory unit='MiB'>512</memory><devices><disk type='file'/></devices></domain>"
)
DEVICE = "<interface type='bridge'><source bridge='br0'/></interface>"


def write_hook(hooks_dir: Path, event: str, name: str, body: str, mode: int = 0o755) -> Path:
    directory = hooks_dir / event
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(mode)
    return path


def sh(body: str) -> str:
    return "#!/bin/sh\n" + textwrap.dedent(body).lstrip()


def py(body: str) -> str:
    return f"#!{PY}\n" + textwrap.dedent(body).lstrip()


def group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            return True
    return False


def leftovers(run_dir: Path) -> list[str]:
    """What a chain may not leave in the run dir (launch flags are the agent's)."""
    if not run_dir.exists():
        return []
    names = sorted(p.name for p in run_dir.iterdir()
                   if p.name not in ("launchflags", "hookgroups"))
    # A chain's process-group file stays while a leftover of its hooks runs
    # (and until a later chain sees it gone): only one naming no group is junk.
    # test_runner checks that a chain without leftovers leaves none.
    groups = run_dir / "hookgroups"
    if groups.exists():
        for p in sorted(groups.iterdir()):
            if len(p.read_text().splitlines()) < 2:
                names.append(f"hookgroups/{p.name}")
    return names


