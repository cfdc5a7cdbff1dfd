"""Discovery: which files run, in which order, and their checksums (SPEC §1)."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookvisor.hooks import discovery
from hookvisor.hooks.discovery import ChecksumCache, installed, list_scripts

from .util import sh, write_hook

EV = "before_vm_start"
NOOP = sh("exit 0\n")


@pytest.mark.parametrize("order", list(itertools.permutations(["10_c", "20_a", "30_b"])))
def test_order_for_every_creation_order(hooks_dir: Path, order: tuple[str, ...]) -> None:
    for name in order:
        write_hook(hooks_dir, EV, name, NOOP)
    assert [s.name for s in list_scripts(hooks_dir, EV)] == ["10_c", "20_a", "30_b"]


def test_order_is_bytewise_not_natural_or_locale(hooks_dir: Path) -> None:
    names = ["9_x", "10_x", "B", "a", "_u", "Z", "é", "e"]
    for name in names:
        write_hook(hooks_dir, EV, name, NOOP)
    expected = sorted(names, key=os.fsencode)
    assert [s.name for s in list_scripts(hooks_dir, EV)] == expected
    assert expected.index("10_x") < expected.index("9_x")
    assert expected.index("B") < expected.index("a")


def test_skips_non_executables_dirs_dotfiles_manifests(hooks_dir: Path) -> None:
    write_hook(hooks_dir, EV, "10_run", NOOP)
    write_hook(hooks_dir, EV, "20_not_executable", NOOP, mode=0o644)
    write_hook(hooks_dir, EV, ".30_hidden", NOOP)
    write_hook(hooks_dir, EV, "40_manifest.toml", "timeout = 1\n", mode=0o755)
    (hooks_dir / EV / "50_dir").mkdir()
    (hooks_dir / EV / "60_exec_dir").mkdir(mode=0o755)
    write_hook(hooks_dir / EV, "60_exec_dir", "inner", NOOP)
    os.mkfifo(hooks_dir / EV / "70_fifo")
    (hooks_dir / EV / "70_fifo").chmod(0o755)
    assert [s.name for s in list_scripts(hooks_dir, EV)] == ["10_run"]


def test_symlinks_followed(hooks_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(NOOP)
    target.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text(NOOP)
    (hooks_dir / EV).mkdir()
    (hooks_dir / EV / "10_link").symlink_to(target)
    (hooks_dir / EV / "20_dangling").symlink_to(tmp_path / "missing")
    (hooks_dir / EV / "30_to_dir").symlink_to(tmp_path)
    (hooks_dir / EV / "40_to_non_exec").symlink_to(plain)
    scripts = list_scripts(hooks_dir, EV)
    assert [s.name for s in scripts] == ["10_link"]
    assert scripts[0].ino == target.stat().st_ino


def test_reread_on_every_call(hooks_dir: Path) -> None:
    assert list_scripts(hooks_dir, EV) == []
    write_hook(hooks_dir, EV, "10_a", NOOP)
    assert [s.name for s in list_scripts(hooks_dir, EV)] == ["10_a"]
    (hooks_dir / EV / "10_a").chmod(0o644)
    assert list_scripts(hooks_dir, EV) == []


@pytest.mark.parametrize("name", ["../before_vm_start", "/tmp", "nope", "before_vm_start/.."])
def test_bad_event_refused(hooks_dir: Path, name: str) -> None:
    with pytest.raises(ValueError):
        list_scripts(hooks_dir, name)


def test_checksum_cached_until_the_file_changes(
    hooks_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_hook(hooks_dir, EV, "10_a", NOOP)
    calls = []
    real = hashlib.sha256

    def counting() -> object:
        calls.append(1)
        return real()

    monkeypatch.setattr(discovery.hashlib, "sha256", counting)
    cache = ChecksumCache()
    first = cache.checksum(list_scripts(hooks_dir, EV)[0])
    assert first == real(NOOP.encode()).hexdigest()
    cache.checksum(list_scripts(hooks_dir, EV)[0])
    assert len(calls) == 1
    path.write_text(NOOP + "# changed, longer\n")
    second = cache.checksum(list_scripts(hooks_dir, EV)[0])
    assert len(calls) == 2
    assert second == real(path.read_bytes()).hexdigest() != first


def test_installed_map(hooks_dir: Path) -> None:
    write_hook(hooks_dir, "before_vm_start", "50_numa", NOOP)
    write_hook(hooks_dir, "after_vm_destroy", "10_clean", sh("echo x\n"))
    write_hook(hooks_dir, "before_vm_start", "60_off", NOOP, mode=0o644)
    write_hook(hooks_dir, "not_an_event", "10_x", NOOP)
    assert installed(hooks_dir) == {
        "before_vm_start": {"50_numa": {"checksum": hashlib.sha256(NOOP.encode()).hexdigest()}},
        "after_vm_destroy": {
            "10_clean": {"checksum": hashlib.sha256(sh("echo x\n").encode()).hexdigest()}
        },
    }
    assert installed(hooks_dir / "missing") == {}


def test_manifest_found_in_listing(hooks_dir: Path) -> None:
    write_hook(hooks_dir, EV, "10_a", NOOP)
    write_hook(hooks_dir, EV, "10_a.toml", "timeout = 1\n", mode=0o644)
    write_hook(hooks_dir, EV, "20_b.py", NOOP)
    write_hook(hooks_dir, EV, "20_b.toml", "timeout = 1\n", mode=0o644)
    write_hook(hooks_dir, EV, "30_c", NOOP)
    scripts = {s.name: s.manifest for s in list_scripts(hooks_dir, EV)}
    assert scripts == {
        "10_a": hooks_dir / EV / "10_a.toml",
        "20_b.py": hooks_dir / EV / "20_b.toml",
        "30_c": None,
    }


_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1, max_size=12,
).filter(lambda n: not n.startswith(".") and not n.endswith(".toml") and n not in ("..",))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.sets(_names, min_size=1, max_size=8), data=st.data())
def test_property_order_is_bytewise_whatever_the_names(
    tmp_path_factory: pytest.TempPathFactory, names: set[str], data: st.DataObject
) -> None:
    hooks_dir = tmp_path_factory.mktemp("hooks")
    executable = data.draw(st.sets(st.sampled_from(sorted(names))))
    for name in data.draw(st.permutations(sorted(names))):
        try:
            write_hook(hooks_dir, EV, name, NOOP, mode=0o755 if name in executable else 0o644)
        except OSError:  # a name this file system refuses (too long in bytes)
            executable.discard(name)
    got = [s.name for s in list_scripts(hooks_dir, EV)]
    assert got == sorted(executable, key=os.fsencode)
