"""`hookvisor hooks history` shows what hooks wrote without driving the terminal.

A hook's stdout and stderr (which may carry a client's custom property) were
printed as is: an OSC sequence retitled the operator's terminal, `\\r` hid
what came before it on the line, NUL and BEL went through. Both the plain
output and rich's (a terminal) now show control characters as `\\xNN`.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hookvisor.cli.main import main
from hookvisor.hooks.records import RunRecord, RunRecords

REPO = Path(__file__).resolve().parents[2]
NASTY = "a\x1b]0;pwned\x07b\x1b[2Jc\rd\x00e\x9bf"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("HOOKVISOR_STATE_DIR", str(path))
    monkeypatch.setenv("HOOKVISOR_CONFIG", str(tmp_path / "hookvisor.toml"))
    (tmp_path / "hookvisor.toml").write_text("")
    records = RunRecords(path / "hookruns.sqlite")
    records.add([RunRecord("c" * 32, 1.0, "before_vm_start", None, "10_x", "ab" * 32,
                           "failed", 1, 0.01, "out " + NASTY, False, "err " + NASTY, False,
                           "+<name>" + NASTY + "</name>\n", "msg " + NASTY)])
    records.close()
    return path


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _clean(text: str) -> None:
    for c in ("\x1b", "\x07", "\r", "\x00", "\x9b"):
        assert c not in text, (c, text)
    assert "\\x1b]0;pwned\\x07" in text


@pytest.mark.parametrize("tty", [False, True])
def test_history_shows_control_characters_as_escapes(state: Path, tty: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _Tty() if tty else io.StringIO()
    monkeypatch.setattr("sys.stdout", stream)
    if tty:
        # rich's own styling may use escapes; only the records' text is checked.
        monkeypatch.setenv("NO_COLOR", "1")
        monkeypatch.setenv("TERM", "dumb")
    assert main(["hooks", "history", "-v"]) == 0
    _clean(stream.getvalue())


def test_vm_client_shows_a_hooks_veto_without_obeying_it(dirs: Any, serve_process: Any) -> None:
    # C1 CSI (\x9b) is valid XML: the reply carries it; the operator's terminal must not.
    dirs.hook("before_vm_start", "10_veto",
              "printf 'no \\302\\2332J\\302\\233?1049h' >&2\nexit 2\n")
    agent = serve_process()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "hookvisor", "vm", "--socket", str(agent.socket),
                          "create", "--name", "hvtest-veto", "--mem", "64"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 1, out
    assert "10_veto" in out.stderr and "\x9b" not in out.stderr and "\\x9b2J" in out.stderr
