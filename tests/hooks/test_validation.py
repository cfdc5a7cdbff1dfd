"""Output validation of modifying events, pinned on the script that broke it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hookvisor.hooks import validation
from hookvisor.hooks.catalogue import Payload

from .conftest import MakeRunner
from .util import DEVICE, DOMAIN, UUID, sh, write_hook

EV = "before_vm_start"
GOOD_EDIT = sh("""sed -i 's#</devices>#<rng model="virtio"/></devices>#' "$_hook_domxml"\n""")


def _chain(hooks_dir: Path, bad: str) -> None:
    write_hook(hooks_dir, EV, "10_good", GOOD_EDIT)
    write_hook(hooks_dir, EV, "20_bad", bad)
    write_hook(hooks_dir, EV, "30_after", sh("exit 0\n"))


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (sh("""echo '<domain><unclosed>' > "$_hook_domxml"\n"""), "not well-formed XML"),
        (sh("""printf 'garbage' > "$_hook_domxml"\n"""), "not well-formed XML"),
        (sh(""": > "$_hook_domxml"\n"""), "not well-formed XML"),
        (sh("""sed -i 's#<uuid>[^<]*</uuid>#<uuid>00000000-0000-0000-0000-000000000000</uuid>#' \\
               "$_hook_domxml"\n"""), "changed the domain <uuid>"),
        (sh("""sed -i 's#<uuid>[^<]*</uuid>##' "$_hook_domxml"\n"""), "changed the domain <uuid>"),
        (sh("""sed -i 's#<name>vm1</name>#<name>vm2</name>#' "$_hook_domxml"\n"""),
         "changed the domain <name>"),
        (sh("""sed -i 's#<domain #<dom #; s#</domain>#</dom>#' "$_hook_domxml"\n"""),
         "changed the root element from <domain> to <dom>"),
        (sh("""rm "$_hook_domxml"\n"""), "removed the data file"),
        (sh("""printf '\\377\\376<domain/>' > "$_hook_domxml"\n"""), "not UTF-8"),
    ],
)
def test_bad_output_rejected_and_pinned(hooks_dir: Path, make_runner: MakeRunner, bad: str,
                                        expected: str) -> None:
    _chain(hooks_dir, bad)
    result = make_runner().run(EV, DOMAIN, vm_id=UUID)
    outcomes = [(r.script, r.outcome) for r in result.runs]
    assert outcomes == [("10_good", "ok"), ("20_bad", "invalid-output")]  # stops the chain
    assert expected in result.runs[1].message
    assert result.vetoed
    assert "20_bad" in result.message() and expected in result.message()
    assert "10_good" not in result.message()
    # 20_bad's edits discarded, 10_good's kept.
    assert result.data == DOMAIN.replace("</devices>", '<rng model="virtio"/></devices>')


def test_same_uuid_other_spelling_accepted(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", sh(f"""
        sed -i 's#{UUID}#{UUID.upper()}#' "$_hook_domxml"
    """))
    assert make_runner().run(EV, DOMAIN).ok


def test_device_root_must_stay(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "before_nic_hotplug", "10_ok", sh("""
        sed -i 's#br0#br1#' "$_hook_domxml"
    """))
    write_hook(hooks_dir, "before_nic_hotplug", "20_bad", sh("""
        echo '<disk type="file"/>' > "$_hook_domxml"
    """))
    result = make_runner().run("before_nic_hotplug", DEVICE)
    assert [r.outcome for r in result.runs] == ["ok", "invalid-output"]
    assert "root element from <interface> to <disk>" in result.runs[1].message
    assert result.data == DEVICE.replace("br0", "br1")


def test_bad_json_rejected(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "after_get_stats", "10_bad", sh("""
        echo '{"cpu": ' > "$_hook_json"
    """))
    data = json.dumps({"cpu": 1})
    result = make_runner().run("after_get_stats", data)
    assert result.runs[0].outcome == "invalid-output" and "not valid JSON" in result.message()
    assert result.data == data and not result.vetoed  # after_ cannot veto; data kept


def test_non_modifying_events_are_not_validated(hooks_dir: Path,
                                                 make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "after_vm_start", "10_x", sh("""echo junk > "$_hook_domxml"\n"""))
    result = make_runner().run("after_vm_start", DOMAIN)
    assert result.ok and result.data == DOMAIN


def test_unparseable_input_only_checks_that_output_parses() -> None:
    assert validation.baseline(Payload.DOMAIN, b"not xml") is None
    assert validation.check(Payload.DOMAIN, None, b"<anything/>") is None
    assert validation.check(Payload.DOMAIN, None, b"<anything") is not None


def test_namespaced_root() -> None:
    base = validation.baseline(Payload.DEVICE, b"<a:x xmlns:a='urn:a'/>")
    assert validation.check(Payload.DEVICE, base, b"<b:x xmlns:b='urn:a'/>") is None
    assert validation.check(Payload.DEVICE, base, b"<x/>") is not None
