"""The example hooks of examples/hooks, run through the hook engine as the agent runs them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hookvisor.hooks.manifest import parse_manifest
from hookvisor.hooks.runner import ChainResult, HookRunner, RunnerConfig
from hookvisor.props.registry import DEVICE_KEY, VM_KEY, PropertyRegistry

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"
HOOKS = EXAMPLES / "hooks"
DOMAIN = (EXAMPLES / "domain.xml").read_text()
VM_ID = "8c9f3b4e-2f4c-4f5e-9a53-0d7f1f2e6a11"
NIC = """<interface type='bridge'>
  <mac address='00:1a:4a:16:01:51'/>
  <source bridge='ovirtmgmt'/>
  <model type='virtio'/>
</interface>"""

SCRIPTS = [
    "before_vm_start/50_numa",
    "before_vm_start/50_pincpu",
    "before_vm_migrate_source/50_cantmigrate",
    "before_device_create/50_extnet",
]


@pytest.fixture
def runner(tmp_path: Path) -> HookRunner:
    return HookRunner(RunnerConfig(hooks_dir=HOOKS, run_dir=tmp_path / "run",
                                   default_timeout=30.0), records=None)


def outcomes(result: ChainResult) -> dict[str, str]:
    return {r.script: r.outcome for r in result.runs}


def start(runner: HookRunner, **props: str) -> ChainResult:
    return runner.run("before_vm_start", data=DOMAIN, vm_id=VM_ID, vm_props=props)


# --- layout -----------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_python3_with_a_manifest(script: str) -> None:
    path = HOOKS / script
    assert path.stat().st_mode & stat.S_IXUSR
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env python3\n")
    assert "import hooking" in text
    manifest = parse_manifest(path.with_name(path.name + ".toml"),
                              path.with_name(path.name + ".toml").read_text())
    assert manifest.timeout == 10
    assert manifest.when_property == (path.name.removeprefix("50_"),)


def test_installed_lists_the_examples(runner: HookRunner) -> None:
    installed = runner.installed()
    assert set(installed["before_vm_start"]) == {"50_numa", "50_pincpu"}
    assert set(installed["before_vm_migrate_source"]) == {"50_cantmigrate"}
    assert set(installed["before_device_create"]) == {"50_extnet"}
    assert set(installed["before_nic_hotplug"]) == {"50_extnet"}


# --- numa -------------------------------------------------------------------

@pytest.mark.parametrize("value, mode, nodeset", [
    ("strict:0-1", "strict", "0-1"),
    ("interleave:0,2", "interleave", "0,2"),
    ("preferred:1-4,^3,6", "preferred", "1-4,^3,6"),
    ("strict:0", "strict", "0"),
])
def test_numa_adds_numatune(runner: HookRunner, value: str, mode: str, nodeset: str) -> None:
    result = start(runner, numa=value)
    assert not result.vetoed, result.message()
    assert outcomes(result) == {"50_numa": "ok", "50_pincpu": "skipped"}
    domain = ET.fromstring(result.data)
    memory = domain.find("numatune/memory")
    assert memory is not None
    assert (memory.get("mode"), memory.get("nodeset")) == (mode, nodeset)
    assert domain.findtext("uuid") == VM_ID


@pytest.mark.parametrize("value", [
    "strict", "lazy:0", "strict:", "strict:a", "strict:3-1", "strict:^3", "strict:0;1",
    "strict:0,", ":0", "Strict:0",
])
def test_numa_bad_value_vetoes_with_message(runner: HookRunner, value: str) -> None:
    result = start(runner, numa=value)
    assert result.vetoed
    assert "50_numa" in result.message()
    assert "numa: bad value" in result.message()
    assert result.data == DOMAIN


def test_numa_refuses_a_domain_that_has_numatune(runner: HookRunner) -> None:
    domain = DOMAIN.replace("</domain>", "<numatune><memory mode='strict' nodeset='1'/>"
                            "</numatune></domain>")
    result = runner.run("before_vm_start", data=domain, vm_id=VM_ID,
                        vm_props={"numa": "strict:0"})
    assert result.vetoed and "already has a <numatune>" in result.message()


# --- pincpu -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "1-4", "0-7,^3", "1-4,^3,6"])
def test_pincpu_sets_cpuset(runner: HookRunner, value: str) -> None:
    result = start(runner, pincpu=value)
    assert not result.vetoed, result.message()
    assert outcomes(result) == {"50_numa": "skipped", "50_pincpu": "ok"}
    vcpu = ET.fromstring(result.data).find("vcpu")
    assert vcpu is not None and vcpu.get("cpuset") == value and vcpu.text == "2"


@pytest.mark.parametrize("value", ["", "x", "4-1", "^3", "^1,^2", "1,,2", "1 ", "-1", "٣"])
def test_pincpu_bad_value_vetoes_with_message(runner: HookRunner, value: str) -> None:
    result = start(runner, pincpu=value)
    assert result.vetoed
    assert "50_pincpu" in result.message() and "pincpu: bad value" in result.message()


def test_pincpu_leaves_an_existing_cpuset(runner: HookRunner) -> None:
    domain = DOMAIN.replace("<vcpu>2</vcpu>", "<vcpu cpuset='5'>2</vcpu>")
    result = runner.run("before_vm_start", data=domain, vm_id=VM_ID, vm_props={"pincpu": "0"})
    assert not result.vetoed
    assert result.data == domain
    assert "already has cpuset" in result.runs[-1].stderr


def test_numa_and_pincpu_together(runner: HookRunner) -> None:
    result = start(runner, numa="interleave:0-1", pincpu="0-1")
    assert outcomes(result) == {"50_numa": "ok", "50_pincpu": "ok"}
    domain = ET.fromstring(result.data)
    assert domain.find("numatune/memory") is not None
    assert domain.find("vcpu").get("cpuset") == "0-1"  # type: ignore[union-attr]


def test_vm_start_without_properties_skips_both(runner: HookRunner) -> None:
    result = start(runner)
    assert outcomes(result) == {"50_numa": "skipped", "50_pincpu": "skipped"}
    assert not result.vetoed and result.data == DOMAIN


# --- cantmigrate ------------------------------------------------------------

def migrate(runner: HookRunner, **props: str) -> ChainResult:
    return runner.run("before_vm_migrate_source", data=DOMAIN, vm_id=VM_ID, vm_props=props)


@pytest.mark.parametrize("value", ["true", "True"])
def test_cantmigrate_true_vetoes(runner: HookRunner, value: str) -> None:
    result = migrate(runner, cantmigrate=value)
    assert result.vetoed
    assert result.runs[0].rc == 2
    assert "50_cantmigrate" in result.message()
    assert f"{VM_ID} may not migrate" in result.message()


def test_cantmigrate_false_lets_it_go(runner: HookRunner) -> None:
    result = migrate(runner, cantmigrate="false")
    assert not result.vetoed and outcomes(result) == {"50_cantmigrate": "ok"}


@pytest.mark.parametrize("value", ["", "maybe", "1"])
def test_cantmigrate_bad_value_vetoes_with_message(runner: HookRunner, value: str) -> None:
    result = migrate(runner, cantmigrate=value)
    assert result.vetoed and "cantmigrate: bad value" in result.message()


def test_cantmigrate_absent_skipped(runner: HookRunner) -> None:
    result = migrate(runner, numa="strict:0")
    assert not result.vetoed and outcomes(result) == {"50_cantmigrate": "skipped"}


# --- extnet -----------------------------------------------------------------

@pytest.mark.parametrize("event", ["before_device_create", "before_nic_hotplug"])
def test_extnet_moves_the_nic_to_a_libvirt_network(runner: HookRunner, event: str) -> None:
    result = runner.run(event, data=NIC, vm_id=VM_ID, device_props={"extnet": "glitter"})
    assert not result.vetoed, result.message()
    nic = ET.fromstring(result.data)
    assert nic.get("type") == "network"
    sources = nic.findall("source")
    assert [s.attrib for s in sources] == [{"network": "glitter"}]
    # The rest of the device is untouched, and in its order.
    assert [child.tag for child in nic] == ["mac", "source", "model"]
    assert nic.find("mac").get("address") == "00:1a:4a:16:01:51"  # type: ignore[union-attr]


def test_extnet_adds_a_source_when_there_was_none(runner: HookRunner) -> None:
    nic = "<interface type='bridge'><model type='virtio'/></interface>"
    result = runner.run("before_device_create", data=nic, vm_id=VM_ID,
                        device_props={"extnet": "ovs-net"})
    assert ET.fromstring(result.data).find("source").get("network") == "ovs-net"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["", "a/b", "..", "glitter'/>", "x" * 65, "net work"])
def test_extnet_bad_value_vetoes_with_message(runner: HookRunner, value: str) -> None:
    result = runner.run("before_device_create", data=NIC, vm_id=VM_ID,
                        device_props={"extnet": value})
    assert result.vetoed and "extnet: bad network name" in result.message()
    assert result.data == NIC


def test_extnet_refuses_a_device_that_is_not_a_nic(runner: HookRunner) -> None:
    disk = "<disk type='file' device='disk'><source file='/x.img'/></disk>"
    result = runner.run("before_device_create", data=disk, vm_id=VM_ID,
                        device_props={"extnet": "glitter"})
    assert result.vetoed and "expected an <interface>" in result.message()


def test_extnet_absent_skipped(runner: HookRunner) -> None:
    result = runner.run("before_device_create", data=NIC, vm_id=VM_ID,
                        device_props={"speed": "1000"})
    assert not result.vetoed and result.data == NIC
    assert outcomes(result) == {"50_extnet": "skipped"}


# --- the definitions of examples/properties.sh -----------------------------

def test_properties_script_defines_what_the_hooks_read(tmp_path: Path) -> None:
    # This checkout's CLI, whatever `hookvisor` is installed (or not) beside the
    # interpreter: the script runs with the code it ships with.
    hookvisor = tmp_path / "hookvisor"
    hookvisor.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m hookvisor "$@"\n')
    hookvisor.chmod(0o755)
    state = tmp_path / "state"
    env = {**os.environ, "HOOKVISOR": str(hookvisor), "HOOKVISOR_CONFIG": "/dev/null",
           "HOOKVISOR_STATE_DIR": str(state)}
    own = subprocess.run([str(hookvisor), "config", "--cver=4.8", "-s",
                          "UserDefinedVMProperties=mine=^[a-z]+$;pincpu=^0$"],
                         env=env, capture_output=True, text=True)
    assert own.returncode == 0, own.stderr
    p = subprocess.run([str(EXAMPLES / "properties.sh"), "4.8"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "UserDefinedVMProperties: mine=" in p.stdout and ";numa=" in p.stdout, p.stdout
    reg = PropertyRegistry(state / "properties.sqlite", "4.8")
    reg.check(vm={"numa": "strict:0-1", "pincpu": "1-4,^3,6", "cantmigrate": "true",
                  "mine": "kept"},
              devices=[("interface", {"extnet": "glitter"})])
    # A definition of the operator's own is kept; one of the same name replaced.
    assert set(reg.definitions()["vm"]) == {"mine", "numa", "pincpu", "cantmigrate"}
    assert reg.get(DEVICE_KEY) and reg.get(VM_KEY)
    reg.close()
