"""`hookvisor config` in engine-config's form: the seeds' commands and output exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hookvisor.cli.main import main

SEED_VM = "memory=^[0-9]+$;smartcard=^(true|false)$"
SEED_DEVICE = "{type=interface;prop={speed=^([0-9]{1,5})$;duplex=^(full|half)$}}"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "hookvisor.toml"
    config.write_text('cluster_version = "4.8"\n')
    monkeypatch.setenv("HOOKVISOR_CONFIG", str(config))
    monkeypatch.setenv("HOOKVISOR_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(["config", *argv])
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_seed_vm_walkthrough(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "-s", "UserDefinedVMProperties=memory=^[0-9]+$", "--cver=3.6")[0] == 0
    assert run(capsys, "-s", "UserDefinedVMProperties=memory=^[0-9]+$", "--cver=4.0")[0] == 0
    rc, out, _ = run(capsys, "-g", "UserDefinedVMProperties")
    assert rc == 0
    assert out.splitlines() == [
        "UserDefinedVMProperties: memory=^[0-9]+$ version: 3.6",
        "UserDefinedVMProperties: memory=^[0-9]+$ version: 4.0",
        "UserDefinedVMProperties:  version: 4.8",  # the served version, empty
    ]
    rc, out, err = run(capsys, "-s", f"UserDefinedVMProperties={SEED_VM}", "--cver=4.0")
    # -s replaces the whole value (engine-config's semantics) and says what it replaced.
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("UserDefinedVMProperties version 4.0 (store ")
    assert lines[1:] == ["  old: memory=^[0-9]+$",
                         "  new: memory=^[0-9]+$;smartcard=^(true|false)$"]
    rc, out, _ = run(capsys, "-g", "UserDefinedVMProperties", "--cver=4.0")
    assert out == "UserDefinedVMProperties: memory=^[0-9]+$;smartcard=^(true|false)$ version: 4.0\n"
    rc, out, _ = run(capsys, "-g", "UserDefinedVMProperties", "--cver=3.6")
    assert out == "UserDefinedVMProperties: memory=^[0-9]+$ version: 3.6\n"


def test_seed_device_walkthrough(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "-g", "CustomDeviceProperties", "--cver=4.0")
    assert (rc, out) == (0, "CustomDeviceProperties:  version: 4.0\n")
    assert run(capsys, "-s", f"CustomDeviceProperties={SEED_DEVICE}", "--cver=4.0")[0] == 0
    rc, out, _ = run(capsys, "-g", "CustomDeviceProperties", "--cver=4.0")
    assert out == ("CustomDeviceProperties: {type=interface;prop={speed=^([0-9]{1,5})$;"
                   "duplex=^(full|half)$}} version: 4.0\n")


def test_long_options_and_all(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--set", f"UserDefinedVMProperties={SEED_VM}", "--cver", "4.8")[0] == 0
    _rc, out, _ = run(capsys, "--get", "UserDefinedVMProperties")
    assert out == f"UserDefinedVMProperties: {SEED_VM} version: 4.8\n"
    _rc, out, _ = run(capsys, "-a")
    assert out.splitlines() == [
        f"UserDefinedVMProperties: {SEED_VM} version: 4.8",
        "CustomDeviceProperties:  version: 4.8",
        "UserDefinedNetworkCustomProperties:  version: 4.8",
    ]


def test_list_keys(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "-l")
    assert rc == 0
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "UserDefinedVMProperties", "CustomDeviceProperties", "UserDefinedNetworkCustomProperties"]
    assert all(len(line.split(": ", 1)[1]) > 10 for line in lines)


def test_bad_definition_exit_1_value_unchanged(state: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "-s", f"UserDefinedVMProperties={SEED_VM}", "--cver=4.0")
    rc, out, err = run(capsys, "-s", "UserDefinedVMProperties=LD_PRELOAD=.*;x=(", "--cver=4.0")
    assert rc == 1
    assert "'LD_PRELOAD'" in err and "'x'" in err and "does not compile" in err
    assert "left unchanged" in err
    assert "Traceback" not in err
    rc, out, _ = run(capsys, "-g", "UserDefinedVMProperties", "--cver=4.0")
    assert SEED_VM in out


def test_check(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "-s", f"UserDefinedVMProperties={SEED_VM}", "--cver=4.0")
    run(capsys, "-s", f"CustomDeviceProperties={SEED_DEVICE}", "--cver=4.0")
    rc, out, err = run(capsys, "check", "--cver=4.0", "--vm-prop", "memory=1024",
                       "--vm-prop", "smartcard=true", "--device-prop", "interface:speed=1000",
                       "--device-prop", "interface:duplex=full")
    assert (rc, err) == (0, "")
    assert "4 properties" in out
    rc, out, err = run(capsys, "check", "--cver=4.0", "--vm-prop", "memory=lots",
                       "--vm-prop", "numa=strict:0", "--device-prop", "interface:speed=100000")
    assert rc == 1
    lines = err.splitlines()
    assert len(lines) == 3
    assert "'memory'" in lines[0] and "'lots'" in lines[0] and "^[0-9]+$" in lines[0]
    assert "'numa'" in lines[1] and "not defined" in lines[1]
    assert "'speed'" in lines[2] and "^([0-9]{1,5})$" in lines[2]
    # --cver before the check command works too; without it, the served version.
    assert run(capsys, "--cver=4.0", "check", "--vm-prop", "memory=1")[0] == 0
    assert run(capsys, "check", "--vm-prop", "memory=1")[0] == 1
    assert run(capsys, "check")[0] == 0


def test_check_network_properties(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "-s", "UserDefinedNetworkCustomProperties=bridge_opts=^[a-z_=0-9 ]+$",
        "--cver=4.0")
    assert run(capsys, "check", "--cver=4.0", "--network-prop",
               "bridge_opts=forward_delay=0")[0] == 0
    rc, _out, err = run(capsys, "check", "--cver=4.0", "--network-prop", "bridge_opts=A;B",
                        "--network-prop", "ethtool_opts=x")
    assert rc == 1 and len(err.splitlines()) == 2
    assert "network custom property 'bridge_opts'" in err and "'ethtool_opts'" in err


def test_state_dir_option_after_subcommand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOOKVISOR_CONFIG", "/dev/null")
    monkeypatch.delenv("HOOKVISOR_STATE_DIR", raising=False)
    d = tmp_path / "elsewhere"
    assert run(capsys, "-s", "UserDefinedVMProperties=a=^b$", "--cver=1",
               "--state-dir", str(d))[0] == 0
    assert (d / "properties.sqlite").exists()
    rc = main(["--state-dir", str(d), "config", "-g", "UserDefinedVMProperties", "--cver=1"])
    assert rc == 0
    assert capsys.readouterr().out == "UserDefinedVMProperties: a=^b$ version: 1\n"
    assert run(capsys, "check", "--cver=1", "--vm-prop", "a=b", "--state-dir", str(d))[0] == 0


@pytest.mark.parametrize("argv, fragment", [
    ([], "give one of"),
    (["-s", "UserDefinedVMProperties=a=^b$"], "needs --cver"),
    (["-s", "UserDefinedVMProperties"], "expected KEY=VALUE"),
    (["-s", "NoSuchKey=a", "--cver=4.0"], "unknown key"),
    (["-g", "NoSuchKey"], "unknown key"),
    (["-g"], "expected one argument"),
    (["-g", "UserDefinedVMProperties", "-l"], "not allowed"),
    (["-g", "UserDefinedVMProperties", "--bogus"], "unrecognized arguments"),
    (["-g", "UserDefinedVMProperties", "--cver="], "not a cluster version"),
    (["check", "--vm-prop", "memory"], "expected NAME=VALUE"),
    (["check", "--vm-prop", "a=1", "--vm-prop", "a=2"], "given twice"),
    (["check", "--device-prop", "speed=1"], "TYPE:NAME=VALUE"),
    (["check", "--bogus"], "unrecognized arguments"),
    (["-l", "check"], "does not combine"),
])
def test_usage_errors_exit_2_one_line(state: Path, capsys: pytest.CaptureFixture[str],
                                      argv: list[str], fragment: str) -> None:
    rc, _out, err = run(capsys, *argv)
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert fragment in err


def test_console_script_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "HOOKVISOR_CONFIG": "/dev/null",
           "HOOKVISOR_STATE_DIR": str(tmp_path)}
    # As the console script does (`-m hookvisor.cli.main` would load main twice).
    cmd = [sys.executable, "-c", "import sys; from hookvisor.cli.main import main; "
           "sys.exit(main())", "config"]
    good = subprocess.run([*cmd, "-s", f"UserDefinedVMProperties={SEED_VM}", "--cver=4.0"],
                          env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    for argv, rc in [(["-s", "UserDefinedVMProperties=x=("], 2),
                     (["-s", "UserDefinedVMProperties=x=(", "--cver=4.0"], 1),
                     (["check", "--cver=4.0", "--vm-prop", "memory=x"], 1),
                     (["--nope"], 2)]:
        p = subprocess.run([*cmd, *argv], env=env, capture_output=True, text=True)
        assert p.returncode == rc, (argv, p.stderr)
        assert "Traceback" not in p.stderr
        assert p.stderr.strip()


def test_unreadable_store_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HOOKVISOR_CONFIG", "/dev/null")
    monkeypatch.setenv("HOOKVISOR_STATE_DIR", str(tmp_path))
    (tmp_path / "properties.sqlite").write_text("this is not a database" * 100)
    rc, _out, err = run(capsys, "-g", "UserDefinedVMProperties")
    assert rc == 1
    assert len(err.splitlines()) == 1 and "properties.sqlite" in err


@pytest.mark.parametrize("key, seed, same, other, replaced, appended", [
    ("UserDefinedVMProperties", SEED_VM, "memory=^[0-9]{1,6}$", "numa=^[a-z]+$",
     "memory=^[0-9]{1,6}$;smartcard=^(true|false)$",
     "memory=^[0-9]+$;smartcard=^(true|false)$;numa=^[a-z]+$"),
    ("CustomDeviceProperties", SEED_DEVICE, "{type=interface;prop={speed=^[0-9]+$}}",
     "{type=disk;prop={cache=^none$}}",
     "{type=interface;prop={speed=^[0-9]+$;duplex=^(full|half)$}}",
     SEED_DEVICE + ";{type=disk;prop={cache=^none$}}"),
])
def test_add_replaces_in_place_appends_or_keeps(
        state: Path, capsys: pytest.CaptureFixture[str], key: str, seed: str, same: str,
        other: str, replaced: str, appended: str) -> None:
    def value() -> str:
        rc, out, _ = run(capsys, "-g", key, "--cver=4.8")
        assert rc == 0
        return out.removeprefix(f"{key}: ").removesuffix(" version: 4.8\n")

    assert run(capsys, "-s", f"{key}={seed}", "--cver=4.8")[0] == 0
    # --if-missing leaves a property of that name as it is.
    assert run(capsys, "--add", f"{key}={same}", "--if-missing", "--cver=4.8")[0] == 0
    assert value() == seed
    # Without it, the definition of the same name is replaced where it stands.
    assert run(capsys, "--add", f"{key}={same}", "--cver=4.8")[0] == 0
    assert value() == replaced
    # A new name goes last, with or without --if-missing.
    assert run(capsys, "-s", f"{key}={seed}", "--cver=4.8")[0] == 0
    assert run(capsys, "--add", f"{key}={other}", "--if-missing", "--cver=4.8")[0] == 0
    assert value() == appended
