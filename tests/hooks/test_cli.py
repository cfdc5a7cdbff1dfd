"""`hookvisor hooks list|run|history`, in-process and (for exit statuses) as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hookvisor.cli.main import main

from .util import DOMAIN, UUID, py, sh, write_hook

EV = "before_vm_start"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("HOOKVISOR_STATE_DIR", str(path))
    monkeypatch.setenv("HOOKVISOR_CONFIG", str(tmp_path / "hookvisor.toml"))
    (tmp_path / "hookvisor.toml").write_text("hook_timeout = 5.0\nhook_grace = 0.2\n")
    # `hooks run` checks custom properties against the definitions, as the agent does.
    assert main(["config", "--add", "UserDefinedVMProperties=numa=^[a-z]+:[0-9]+$",
                 "--cver", "4.8"]) == 0
    return path


@pytest.fixture
def domain_file(tmp_path: Path) -> Path:
    path = tmp_path / "domain.xml"
    path.write_text(DOMAIN)
    return path


def _hooks(hooks_dir: Path) -> None:
    write_hook(hooks_dir, EV, "10_mem", sh("""
        echo "mem for $vmId numa=$numa" >&2
        sed -i 's#>512<#>1024<#' "$_hook_domxml"
    """))
    write_hook(hooks_dir, EV, "20_py", py("""
        import hooking
        doc = hooking.read_domxml()
        doc.getElementsByTagName('domain')[0].setAttribute('hooked', 'yes')
        hooking.write_domxml(doc)
    """))
    write_hook(hooks_dir, EV, "20_py.toml", 'timeout = 3\nwhen_property = ["numa"]\n',
               mode=0o644)


def test_list_plain_and_json(hooks_dir: Path, state: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    _hooks(hooks_dir)
    write_hook(hooks_dir, "after_vm_destroy", "10_bad", sh("exit 0\n"))
    write_hook(hooks_dir, "after_vm_destroy", "10_bad.toml", "timeout = -1\n", mode=0o644)
    write_hook(hooks_dir, "before_vm_strat", "10_typo", sh("exit 0\n"))
    assert main(["hooks", "list", "--hooks-dir", str(hooks_dir)]) == 0
    out = capsys.readouterr().out
    assert "before_vm_start (domain payload, may modify, may veto)" in out
    assert out.index("10_mem") < out.index("20_py")
    assert "when_property=numa" in out and "timeout=3" in out
    assert "BAD: manifest" in out and "timeout must be a positive number" in out
    assert "before_vm_strat is not a known event" in out

    assert main(["hooks", "list", "--hooks-dir", str(hooks_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    scripts = data["events"][EV]
    assert [s["script"] for s in scripts] == ["10_mem", "20_py"]
    assert len(scripts[0]["checksum"]) == 64 and scripts[0]["manifest"] is None
    assert scripts[1]["manifest"]["when_property"] == ["numa"]
    assert data["events"]["after_vm_destroy"][0]["manifest_error"]
    assert data["unknown_event_dirs"] == ["before_vm_strat"]

    assert main(["hooks", "list", "--hooks-dir", str(hooks_dir), "--event",
                 "after_vm_start"]) == 0
    assert "no scripts" in capsys.readouterr().out
    assert main(["hooks", "list", "--event", "../etc"]) == 2


def test_run_on_a_copy_prints_and_writes_output(
    hooks_dir: Path, state: Path, domain_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _hooks(hooks_dir)
    out_file = tmp_path / "final.xml"
    status = main(["hooks", "run", EV, "--hooks-dir", str(hooks_dir), "--xml",
                   str(domain_file), "--prop", "numa=strict:1", "--output", str(out_file)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert domain_file.read_text() == DOMAIN  # never touched
    final = out_file.read_text()
    assert ">1024<" in final and 'hooked="yes"' in final
    assert f"mem for {UUID} numa=strict:1" in out  # vmId taken from the domain's <uuid>
    assert "10_mem: ok" in out and "20_py: ok" in out and "chain passed" in out
    assert "+<domain" in out or "+<?xml" in out  # the diff

    # Recorded, so that history shows it.
    assert main(["hooks", "history", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["script"] for r in runs] == ["20_py", "10_mem"]


def test_run_veto_exit_1_and_output_to_stdout(
    hooks_dir: Path, state: Path, domain_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_hook(hooks_dir, EV, "10_ok", sh("""sed -i 's#>512<#>2048<#' "$_hook_domxml"\n"""))
    write_hook(hooks_dir, EV, "20_uuid", sh("""
        sed -i 's#<uuid>[^<]*</uuid>#<uuid>other</uuid>#' "$_hook_domxml"
    """))
    status = main(["hooks", "run", EV, "--hooks-dir", str(hooks_dir), "--xml",
                   str(domain_file), "--output", "-", "--no-record"])
    captured = capsys.readouterr()
    assert status == 1
    # Only the data on stdout, ending in a newline (a shell prompt after it stays clean).
    assert captured.out == DOMAIN.replace(">512<", ">2048<") + "\n"
    assert "VETOED" in captured.err and "20_uuid" in captured.err
    assert "changed the domain <uuid>" in captured.err
    assert not list(state.glob("hookruns*"))  # --no-record


def test_run_hung_hook_times_out(hooks_dir: Path, state: Path, domain_file: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_hook(hooks_dir, EV, "10_hang", sh("exec sleep 600\n"))
    status = main(["hooks", "run", EV, "--hooks-dir", str(hooks_dir), "--xml",
                   str(domain_file), "--timeout", "0.3"])
    assert status == 1
    assert "10_hang: timeout" in capsys.readouterr().out


def test_run_after_event_failure_exit_1(hooks_dir: Path, state: Path, domain_file: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    write_hook(hooks_dir, "after_vm_start", "10_x", sh("exit 1\n"))
    assert main(["hooks", "run", "after_vm_start", "--hooks-dir", str(hooks_dir), "--xml",
                 str(domain_file)]) == 1
    assert "cannot veto" in capsys.readouterr().out


def test_run_json_event_and_extras(hooks_dir: Path, state: Path, tmp_path: Path,
                                   domain_file: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_hook(hooks_dir, "after_get_caps", "10_x", py("""
        import hooking
        caps = hooking.read_json()
        caps['extra'] = 'é'
        hooking.write_json(caps)
    """))
    caps = tmp_path / "caps.json"
    caps.write_text('{"a": 1}')
    assert main(["hooks", "run", "after_get_caps", "--hooks-dir", str(hooks_dir), "--json",
                 str(caps), "--output", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == {"a": 1, "extra": "é"}

    write_hook(hooks_dir, "before_vm_dehibernate", "10_x", sh('echo "snap=$FROM_SNAPSHOT"\n'))
    assert main(["hooks", "run", "before_vm_dehibernate", "--hooks-dir", str(hooks_dir),
                 "--xml", str(domain_file), "--extra", "FROM_SNAPSHOT=True"]) == 0
    assert "snap=True" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["hooks", "run", "before_vm_strat"],
    ["hooks", "run", "/etc/passwd"],
    ["hooks", "run", EV],  # needs --xml
    ["hooks", "run", "after_get_caps", "--xml", "x.xml"],
    ["hooks", "run", "before_vdsm_start", "--xml", "x.xml"],
    ["hooks", "run", EV, "--xml", "/nonexistent/d.xml"],
    ["hooks", "run", EV, "--xml", "DOMAIN", "--prop", "novalue"],
    ["hooks", "run", EV, "--xml", "DOMAIN", "--timeout", "0"],
    ["hooks", "run", EV, "--xml", "DOMAIN", "--extra", "FROM_SNAPSHOT=True"],
    ["hooks", "history", "--limit", "0"],
    ["hooks", "history", "--event", "nope"],
])
def test_usage_errors_exit_2(argv: list[str], state: Path, domain_file: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(domain_file) if a == "DOMAIN" else a for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("hookvisor: ")


def test_run_without_writable_state_dir_still_works(
    hooks_dir: Path, tmp_path: Path, domain_file: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a dir")
    monkeypatch.setenv("HOOKVISOR_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    assert main(["--state-dir", str(blocker / "state"), "hooks", "run", EV, "--hooks-dir",
                 str(hooks_dir), "--xml", str(domain_file)]) == 0
    captured = capsys.readouterr()
    assert "chain passed" in captured.out and "not recorded" in captured.err


def test_history_filters_and_verbose(hooks_dir: Path, state: Path, domain_file: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hooks", "history"]) == 0
    assert "no matching hook runs" in capsys.readouterr().out
    write_hook(hooks_dir, EV, "10_ok", sh("echo fine >&2\n"))
    write_hook(hooks_dir, EV, "20_fail", sh("echo broken thing >&2; exit 1\n"))
    for vm in ("vm-a", "vm-b"):
        main(["hooks", "run", EV, "--hooks-dir", str(hooks_dir), "--xml", str(domain_file),
              "--vm-id", vm])
    capsys.readouterr()

    assert main(["hooks", "history", "--vm", "vm-a", "--failed", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["vm_id"], r["script"], r["outcome"]) for r in runs] == [
        ("vm-a", "20_fail", "failed")]
    # Global options after the subcommand too.
    assert main(["hooks", "history", "--state-dir", str(state), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "20_fail" in out and "vm-b" in out and "broken thing" in out
    assert out.count("\n") == 2  # header + one row

    assert main(["hooks", "history", "--event", EV, "-v", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "stderr:" in out and "fine" in out
    assert main(["hooks", "history", "--event", "after_vm_start"]) == 0
    assert "no matching hook runs" in capsys.readouterr().out


def test_exit_statuses_as_a_process(hooks_dir: Path, tmp_path: Path,
                                    domain_file: Path) -> None:
    env = dict(os.environ, HOOKVISOR_STATE_DIR=str(tmp_path / "state"),
               HOOKVISOR_CONFIG=str(tmp_path / "c.toml"))
    (tmp_path / "c.toml").write_text("")
    cmd = [sys.executable, "-m", "hookvisor.cli.main", "hooks", "run", EV,
           "--hooks-dir", str(hooks_dir), "--xml", str(domain_file)]
    write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "chain passed" in ok.stdout  # plain text when piped
    assert "\x1b[" not in ok.stdout
    write_hook(hooks_dir, EV, "20_y", sh("echo no >&2; exit 2\n"))
    vetoed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert vetoed.returncode == 1 and "VETOED" in vetoed.stdout
    usage = subprocess.run([*cmd[:5], "nope_event"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "unknown hook event" in usage.stderr
    assert "Traceback" not in usage.stderr
