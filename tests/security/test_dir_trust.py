"""The run and state dirs hold what the agent later reads and acts on as root.

In the run dir: the hook process-group files (at start the agent SIGKILLs the
groups they name), the socket, the hooks' chain directories. In the state dir:
the records and property definitions. A run dir anyone can write (run_dir =
/tmp/x, mode 0777) let a local user plant a group file naming any process
group: the next agent start killed it. So the agent refuses to start on a run
or state dir that anyone but root (or its own user) can write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("which", ["run", "state"])
def test_a_dir_others_can_write_stops_the_start(dirs: Any, which: str) -> None:
    target = dirs.run if which == "run" else dirs.state
    target.chmod(0o777)
    argv = [sys.executable, "-m", "hookvisor.cli.main", "serve", "--listen", "",
            "--hooks-dir", str(dirs.hooks), "--state-dir", str(dirs.state),
            "--run-dir", str(dirs.run)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HOOKVISOR_CONFIG", None)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"{which} dir {target}" in proc.stderr and "other-writable" in proc.stderr
    assert f"chmod go-w {target}" in proc.stderr
    assert not (dirs.run / "hookvisor.sock").exists()


def test_a_socket_in_a_dir_others_can_write_stops_the_start(dirs: Any, tmp_path: Path) -> None:
    # Another user could bind that name first (clients then talk to it), or make
    # the agent think another agent serves there.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    argv = [sys.executable, "-m", "hookvisor.cli.main", "serve", "--listen", "",
            "--hooks-dir", str(dirs.hooks), "--state-dir", str(dirs.state),
            "--run-dir", str(dirs.run), "--socket", str(shared / "hv.sock")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HOOKVISOR_CONFIG", None)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"socket dir {shared}" in proc.stderr and "other-writable" in proc.stderr
    assert not (shared / "hv.sock").exists()
