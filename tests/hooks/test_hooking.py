"""The `hooking` module Python hooks import (SPEC §1), tested in-process and as a hook."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from hookvisor.hooks.environment import HELPERS_DIR

from .util import PY


@pytest.fixture
def hooking(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(HELPERS_DIR))
    for name in ("hooking", "vdsm", "vdsm.hook", "vdsm.hook.hooking"):
        sys.modules.pop(name, None)
    module = importlib.import_module("hooking")
    yield module
    for name in ("hooking", "vdsm", "vdsm.hook", "vdsm.hook.hooking"):
        sys.modules.pop(name, None)


def test_helpers_dir_holds_only_the_shims() -> None:
    files = sorted(str(p.relative_to(HELPERS_DIR)) for p in HELPERS_DIR.rglob("*.py"))
    assert files == ["_hooking_dom.py", "hooking.py", "vdsm/__init__.py",
                     "vdsm/hook/__init__.py", "vdsm/hook/hooking.py"]


def test_both_import_paths_are_one_module(hooking: ModuleType) -> None:
    from vdsm.hook import hooking as vdsm_hooking  # type: ignore[import-not-found]

    assert vdsm_hooking is hooking


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("2", True),
    ("false", False), ("0", False), ("", False), ("yes", False), (None, False),
    (True, True), (False, False), (1, True), (0, False),
])
def test_tobool(hooking: ModuleType, value: object, expected: bool) -> None:
    assert hooking.tobool(value) is expected


def test_domxml_round_trip(hooking: ModuleType, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.xml"
    path.write_text("<domain><name>žluťoučký</name></domain>", encoding="utf-8")
    monkeypatch.setenv("_hook_domxml", str(path))
    doc = hooking.read_domxml()
    doc.getElementsByTagName("domain")[0].setAttribute("x", "é")
    hooking.write_domxml(doc)
    text = path.read_text(encoding="utf-8")
    assert '<domain x="é"><name>žluťoučký</name></domain>' in text


def test_json_round_trip(hooking: ModuleType, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"a": "ü"}), encoding="utf-8")
    monkeypatch.setenv("_hook_json", str(path))
    data = hooking.read_json()
    data["b"] = ["日本", 1]
    hooking.write_json(data)
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "ü", "b": ["日本", 1]}


def test_log_and_exit_hook(hooking: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    hooking.log("to stderr")
    with pytest.raises(SystemExit) as exc:
        hooking.exit_hook("bye")
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        hooking.exit_hook("soft", return_code=1)
    assert exc.value.code == 1
    assert capsys.readouterr().err == "to stderr\nbye\nsoft\n"


def test_execcmd(hooking: ModuleType) -> None:
    rc, out, err = hooking.execCmd(["sh", "-c", "echo a; echo b; echo e >&2; exit 3"])
    assert (rc, out, err) == (3, ["a", "b"], ["e"])
    rc, out, err = hooking.execCmd(["cat"], data="in", raw=True)
    assert (rc, out, err) == (0, b"in", b"")


def test_launch_flags_fallback_dir(hooking: ModuleType, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("_hook_launchflags_dir", raising=False)
    monkeypatch.setenv("HOOKVISOR_RUN_DIR", str(tmp_path))
    hooking.dump_vm_launch_flags_to_file("vm1", 1)
    assert (tmp_path / "launchflags" / "vm1").read_text() == "1"
    assert hooking.load_vm_launch_flags_from_file("vm1") == 1
    assert hooking.load_vm_launch_flags_from_file("vm2") == 0


def test_import_is_light() -> None:
    """`import hooking` must cost a hook next to nothing (SPEC: well under 50 ms).

    Measured without a clock: importing it loads no heavy module and nothing of
    the agent.
    """
    code = (
        "import sys; before = set(sys.modules); import hooking; "
        "from vdsm.hook import hooking as h2; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(HELPERS_DIR)}).stdout.split()
    assert set(out) == {"hooking", "vdsm", "vdsm.hook", "vdsm.hook.hooking"}
