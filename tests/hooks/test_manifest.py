"""Per-script manifests: timeout, on_failure, when_property, and bad manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookvisor.hooks.manifest import ManifestError, manifest_names, parse_manifest

from .conftest import MakeRunner
from .util import DOMAIN, group_alive, sh, write_hook

EV = "before_vm_start"


def manifest(hooks_dir: Path, script: str, text: str, event: str = EV) -> Path:
    return write_hook(hooks_dir, event, script + ".toml", text, mode=0o644)


def test_when_property_skips_without_a_fork(hooks_dir: Path, make_runner: MakeRunner,
                                           tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write_hook(hooks_dir, EV, "50_numa", sh(f"touch {marker}\n"))
    manifest(hooks_dir, "50_numa", 'when_property = ["numa", "numaset"]\n')
    write_hook(hooks_dir, EV, "60_other", sh("exit 0\n"))
    result = make_runner().run(EV, DOMAIN, vm_props={"memory": "1"})
    assert [(r.script, r.outcome) for r in result.runs] == [("50_numa", "skipped"),
                                                            ("60_other", "ok")]
    assert not marker.exists() and result.runs[0].pgid is None
    assert "numa" in result.runs[0].message
    assert result.ok

    result = make_runner().run(EV, DOMAIN, vm_props={"numaset": "strict:1"})
    assert result.runs[0].outcome == "ok" and marker.exists()


def test_when_property_also_matches_device_properties(hooks_dir: Path,
                                                      make_runner: MakeRunner) -> None:
    ev = "before_nic_hotplug"
    write_hook(hooks_dir, ev, "10_speed", sh("echo ran\n"))
    manifest(hooks_dir, "10_speed", 'when_property = "speed"\n', event=ev)
    result = make_runner().run(ev, "<interface/>", device_props={"speed": "1000"})
    assert result.runs[0].stdout == "ran\n"


def test_on_failure_ignore_does_not_veto(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_optional", sh("""
        echo '<domain/>' > "$_hook_domxml"
        echo 'optional thing failed' >&2
        exit 1
    """))
    manifest(hooks_dir, "10_optional", 'on_failure = "ignore"\n')
    write_hook(hooks_dir, EV, "20_next", sh("exit 0\n"))
    result = make_runner().run(EV, DOMAIN)
    assert result.runs[0].outcome == "failed" and result.runs[0].ignored
    assert result.failures and not result.vetoed
    assert result.data == DOMAIN  # its edits are still discarded
    assert [r.script for r in result.runs] == ["10_optional", "20_next"]


def test_on_failure_veto_is_the_default(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("exit 1\n"))
    manifest(hooks_dir, "10_x", 'on_failure = "veto"\n')
    assert make_runner().run(EV, DOMAIN).vetoed


def test_manifest_timeout_wins(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_slow.sh", sh("exec sleep 600\n"))
    manifest(hooks_dir, "10_slow", "timeout = 0.3\n")
    result = make_runner(default_timeout=600.0, grace=0.2).run(EV, DOMAIN)
    run = result.runs[0]
    assert run.outcome == "timeout" and "0.3s" in run.message
    assert not group_alive(run.pgid or 0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("timeout = ", "not valid TOML"),
        ("timeout = -1\n", "timeout must be a positive number"),
        ("timeout = 'soon'\n", "timeout must be a positive number"),
        ("timeout = true\n", "timeout must be a positive number"),
        ("on_failure = 'maybe'\n", "on_failure must be"),
        ("when_property = []\n", "when_property must be a non-empty list"),
        ("when_property = [1]\n", "when_property must be a non-empty list"),
        ("timout = 5\n", "unknown key(s) timout"),
    ],
)
def test_bad_manifest_fails_its_script_naming_file_and_problem(
    hooks_dir: Path, make_runner: MakeRunner, tmp_path: Path, text: str, problem: str
) -> None:
    marker = tmp_path / "ran"
    write_hook(hooks_dir, EV, "10_x", sh(f"touch {marker}\n"))
    path = manifest(hooks_dir, "10_x", text)
    write_hook(hooks_dir, EV, "20_y", sh("exit 0\n"))
    result = make_runner().run(EV, DOMAIN)
    run = result.runs[0]
    assert run.outcome == "failed" and not marker.exists()
    assert str(path) in run.message and problem in run.message
    assert result.vetoed and str(path) in result.message()
    assert [r.script for r in result.runs] == ["10_x"]


def test_manifest_reparsed_when_changed(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    path = manifest(hooks_dir, "10_x", 'when_property = ["a"]\n')
    runner = make_runner()
    assert runner.run(EV, DOMAIN).runs[0].outcome == "skipped"
    path.write_text('when_property = ["a", "bb"]\n')
    assert runner.run(EV, DOMAIN, vm_props={"bb": "1"}).runs[0].outcome == "ok"


def test_parse_and_names() -> None:
    m = parse_manifest(Path("x.toml"), 'timeout = 5\non_failure = "ignore"\n'
                       'when_property = ["numa"]\n')
    assert (m.timeout, m.on_failure, m.when_property) == (5.0, "ignore", ("numa",))
    assert m.wants({"numa", "x"}) and not m.wants({"x"})
    assert parse_manifest(Path("x.toml"), "").wants(set())
    assert manifest_names("50_numa") == ["50_numa.toml"]
    assert manifest_names("50_numa.py") == ["50_numa.toml", "50_numa.py.toml"]
    with pytest.raises(ManifestError, match=r"x\.toml"):
        parse_manifest(Path("x.toml"), "timeout = 0\n")
