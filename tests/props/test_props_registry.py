"""Definition-time and use-time checks through PropertyRegistry (the agent's API)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookvisor.props import DefinitionError, PropertyError, PropertyRegistry
from hookvisor.props.checks import MAX_VALUE_BYTES
from hookvisor.props.registry import DEVICE_KEY, NETWORK_KEY, VM_KEY, version_sort_key

SEED_VM = "memory=^[0-9]+$;smartcard=^(true|false)$"
SEED_DEVICE = "{type=interface;prop={speed=^([0-9]{1,5})$;duplex=^(full|half)$}}"


@pytest.fixture
def seeded(reg: PropertyRegistry) -> PropertyRegistry:
    reg.set(VM_KEY, SEED_VM)
    reg.set(DEVICE_KEY, SEED_DEVICE)
    return reg


# --- store: replace on set, per version ------------------------------------

def test_nothing_defined_reads_empty_and_creates_nothing(tmp_path: Path) -> None:
    reg = PropertyRegistry(tmp_path / "none" / "properties.sqlite", "4.8")
    assert reg.get(VM_KEY) == ""
    assert reg.definitions() == {"vm": {}, "device": {}, "network": {}}
    reg.check_vm({})
    assert not (tmp_path / "none").exists()


def test_set_replaces_the_whole_value(reg: PropertyRegistry) -> None:
    reg.set(VM_KEY, "memory=^[0-9]+$")
    reg.set(VM_KEY, "smartcard=^(true|false)$")
    assert reg.get(VM_KEY) == "smartcard=^(true|false)$"
    assert reg.definitions()["vm"] == {"smartcard": "^(true|false)$"}
    with pytest.raises(PropertyError, match="'memory'"):
        reg.check_vm({"memory": "1"})


def test_one_value_per_version(reg: PropertyRegistry) -> None:
    reg.set(VM_KEY, "memory=^[0-9]+$", version="3.6")
    reg.set(VM_KEY, SEED_VM, version="4.0")
    reg.set(VM_KEY, "x=^y$", version="4.10-beta")
    assert reg.get(VM_KEY, "3.6") == "memory=^[0-9]+$"
    assert reg.get(VM_KEY) == SEED_VM                  # the served version, 4.0
    assert reg.get(VM_KEY, "4.8") == ""
    assert [v.version for v in reg.stored(VM_KEY)] == ["3.6", "4.0", "4.10-beta"]
    reg.check_vm({"smartcard": "true"})
    reg.check_vm({"x": "y"}, version="4.10-beta")
    with pytest.raises(PropertyError):
        reg.check_vm({"smartcard": "true"}, version="3.6")


def test_value_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    PropertyRegistry(path, "4.0").set(VM_KEY, SEED_VM)
    assert PropertyRegistry(path, "4.0").get(VM_KEY) == SEED_VM


def test_version_sort_is_natural() -> None:
    assert sorted(["4.10", "4.9", "3.6", "4.0"], key=version_sort_key) == [
        "3.6", "4.0", "4.9", "4.10"]


@pytest.mark.parametrize("version", ["", " 4.0", "4.0 "])
def test_bad_versions_refused(reg: PropertyRegistry, version: str) -> None:
    with pytest.raises(DefinitionError):
        reg.set(VM_KEY, SEED_VM, version=version)


def test_unknown_key_refused(reg: PropertyRegistry) -> None:
    with pytest.raises(DefinitionError, match="unknown key"):
        reg.set("UserDefinedVmProperties", SEED_VM)


# --- definition time --------------------------------------------------------

@pytest.mark.parametrize("key, value, fragments", [
    (VM_KEY, "memory=^[0-9+$", ["'memory'", "does not compile"]),
    (VM_KEY, "mem-ory=^[0-9]+$", ["'mem-ory'", "not a valid environment variable name"]),
    (VM_KEY, "1memory=^[0-9]+$", ["'1memory'", "not a valid environment variable name"]),
    (VM_KEY, "=^x$", ["''", "not a valid environment variable name"]),
    (VM_KEY, "PATH=^/.*$", ["'PATH'", "reserved name"]),
    (VM_KEY, "LD_PRELOAD=^.*$", ["'LD_PRELOAD'", "reserved prefix 'LD_'"]),
    (VM_KEY, "_hook_domxml=^.*$", ["'_hook_domxml'", "reserved prefix '_hook_'"]),
    (VM_KEY, "vmId=^.*$", ["'vmId'", "reserved"]),
    (VM_KEY, "FROM_SNAPSHOT=^.*$", ["'FROM_SNAPSHOT'", "reserved"]),
    (VM_KEY, "PYTHONPATH=^.*$", ["'PYTHONPATH'", "reserved"]),
    (VM_KEY, "memory=^1$;memory=^2$", ["'memory'", "defined twice"]),
    (DEVICE_KEY, "{type=;prop={speed=^1$}}", ["empty device type"]),
    (DEVICE_KEY, "{type=inter face;prop={speed=^1$}}", ["'inter face'", "not a valid device"]),
    (DEVICE_KEY, "{type=interface;prop={speed=(}}", ["'speed'", "does not compile"]),
    (DEVICE_KEY, "{type=interface;prop={speed=^1$;speed=^2$}}", ["'speed'", "defined twice"]),
    (DEVICE_KEY, "{type=interface;prop={HOME=^1$}}", ["'HOME'", "reserved"]),
    (DEVICE_KEY, "{type=interface;prop={a=^1$}};{type=interface;prop={b=^1$}}",
     ["'interface'", "defined twice"]),
    (NETWORK_KEY, "IFS=^.*$", ["'IFS'", "reserved"]),
    (VM_KEY, "a=^(x)\\2$", ["'a'", "does not compile"]),
    (VM_KEY, "a=x{99999999999}", ["'a'", "does not compile"]),
    # Java's class intersection: Python would read it as something else.
    (VM_KEY, "a=^[a-z&&[^e]]+$", ["'a'", "ambiguous in Python's re"]),
    (VM_KEY, "a=^[[]$", ["'a'", "ambiguous in Python's re"]),
])
def test_definition_refusals_name_property_and_reason_and_keep_old_value(
    seeded: PropertyRegistry, key: str, value: str, fragments: list[str]
) -> None:
    before = seeded.get(key)
    with pytest.raises(DefinitionError) as e:
        seeded.set(key, value)
    message = str(e.value)
    for fragment in fragments:
        assert fragment in message, message
    assert seeded.get(key) == before


def test_all_definition_problems_reported_together(reg: PropertyRegistry) -> None:
    with pytest.raises(DefinitionError) as e:
        reg.set(VM_KEY, "PATH=x;a=(;a=x;a=y;1b=c;ok=^x$;broken")
    assert len(e.value.problems) == 6, e.value.problems


def test_non_text_value_refused(reg: PropertyRegistry) -> None:
    with pytest.raises(DefinitionError):
        reg.set(VM_KEY, 5)  # type: ignore[arg-type]


# --- use time ---------------------------------------------------------------

def test_seed_values_accepted(seeded: PropertyRegistry) -> None:
    seeded.check_vm({"memory": "1024", "smartcard": "true"})
    seeded.check_device("interface", {"speed": "1000", "duplex": "full"})
    seeded.check_device("interface", {"speed": "0", "duplex": "half"})
    seeded.check_device("disk", {})
    seeded.check(vm={"memory": "1"}, devices=[("interface", {"speed": "99999"})])


def test_definitions_shape(seeded: PropertyRegistry) -> None:
    seeded.set(NETWORK_KEY, "bridge_opts=^[a-z_=0-9 ]+$")
    assert seeded.definitions() == {
        "vm": {"memory": "^[0-9]+$", "smartcard": "^(true|false)$"},
        "device": {"interface": {"speed": "^([0-9]{1,5})$", "duplex": "^(full|half)$"}},
        "network": {"bridge_opts": "^[a-z_=0-9 ]+$"},
    }
    seeded.check_network({"bridge_opts": "forward_delay=0"})


@pytest.mark.parametrize("value", [
    "12a", "", " 1024", "1024 ", "1024\n", "١٢٣",  # Arabic-Indic digits
])
def test_value_must_match_in_full(seeded: PropertyRegistry, value: str) -> None:
    with pytest.raises(PropertyError) as e:
        seeded.check_vm({"memory": value})
    (problem,) = e.value.problems
    assert "'memory'" in problem and repr(value) in problem and "^[0-9]+$" in problem


def test_partial_match_is_not_enough(reg: PropertyRegistry) -> None:
    # Unanchored regexes still need the whole value, like Java's matches().
    reg.set(VM_KEY, "mode=strict|preferred;digits=\\d+")
    reg.check_vm({"mode": "strict", "digits": "42"})
    with pytest.raises(PropertyError):
        reg.check_vm({"mode": "strictly"})
    with pytest.raises(PropertyError):
        reg.check_vm({"digits": "4²"})


def test_unknown_vm_property(seeded: PropertyRegistry) -> None:
    with pytest.raises(PropertyError) as e:
        seeded.check_vm({"hugepages": "true"})
    (problem,) = e.value.problems
    assert "'hugepages'" in problem and "'true'" in problem and "not defined" in problem
    assert "memory, smartcard" in problem


def test_unknown_device_property_and_type(seeded: PropertyRegistry) -> None:
    with pytest.raises(PropertyError) as e:
        seeded.check_device("interface", {"mtu": "9000"})
    assert "'mtu'" in str(e.value) and "speed, duplex" in str(e.value)
    with pytest.raises(PropertyError) as e:
        seeded.check_device("disk", {"speed": "1000"})
    assert "disk device" in str(e.value) and "'speed'" in str(e.value)


def test_non_matching_device_value(seeded: PropertyRegistry) -> None:
    with pytest.raises(PropertyError) as e:
        seeded.check_device("interface", {"speed": "100000", "duplex": "both"})
    assert len(e.value.problems) == 2
    assert "'100000'" in e.value.problems[0] and "^([0-9]{1,5})$" in e.value.problems[0]
    assert "'both'" in e.value.problems[1] and "^(full|half)$" in e.value.problems[1]


def test_value_longer_than_4_kib(reg: PropertyRegistry) -> None:
    reg.set(VM_KEY, "blob=^.*$;wide=^.*$")
    reg.check_vm({"blob": "x" * MAX_VALUE_BYTES})
    with pytest.raises(PropertyError) as e:
        reg.check_vm({"blob": "x" * (MAX_VALUE_BYTES + 1)})
    (problem,) = e.value.problems
    assert "'blob'" in problem and "4097 bytes" in problem and "^.*$" in problem
    assert len(problem) < 300  # the value is shortened
    # Counted in bytes: 2049 two-byte characters are over the limit.
    with pytest.raises(PropertyError, match="4098 bytes"):
        reg.check_vm({"wide": "é" * 2049})


@pytest.mark.parametrize("value", [1024, 1.5, True, None, b"1024", ["1"], {"a": 1}])
def test_non_string_values(seeded: PropertyRegistry, value: object) -> None:
    with pytest.raises(PropertyError) as e:
        seeded.check_vm({"memory": value})
    (problem,) = e.value.problems
    assert "'memory'" in problem and "not a string" in problem and "^[0-9]+$" in problem


def test_values_an_environment_cannot_hold(reg: PropertyRegistry) -> None:
    reg.set(VM_KEY, "any=(?s:.*)")
    with pytest.raises(PropertyError, match="NUL"):
        reg.check_vm({"any": "a\0b"})
    with pytest.raises(PropertyError, match="surrogate"):
        reg.check_vm({"any": "a\udc80"})


def test_non_mapping_and_non_string_names(seeded: PropertyRegistry) -> None:
    with pytest.raises(PropertyError, match="mapping"):
        seeded.check_vm(["memory"])  # type: ignore[arg-type]
    with pytest.raises(PropertyError, match="not a string"):
        seeded.check_vm({1: "1"})  # type: ignore[dict-item]


def test_all_problems_of_one_request_together(seeded: PropertyRegistry) -> None:
    with pytest.raises(PropertyError) as e:
        seeded.check(
            vm={"memory": "lots", "smartcard": "yes", "memory2": "1"},
            devices=[("interface", {"speed": "fast"}), ("disk", {"x": "y"})],
        )
    assert len(e.value.problems) == 5
    assert str(e.value) == "; ".join(e.value.problems)
    assert e.value.problems == seeded.problems(
        vm={"memory": "lots", "smartcard": "yes", "memory2": "1"},
        devices=[("interface", {"speed": "fast"}), ("disk", {"x": "y"})],
    )


def test_long_hostile_names_and_values_are_shortened(seeded: PropertyRegistry) -> None:
    with pytest.raises(PropertyError) as e:
        seeded.check_vm({"n" * 10_000: "v\n" * 10_000})
    assert len(str(e.value)) < 500
    assert "\n" not in str(e.value)


def test_stored_value_that_no_longer_compiles_refuses_its_kind_only(tmp_path: Path) -> None:
    reg = PropertyRegistry(tmp_path / "p.sqlite", "4.0")
    reg.set(DEVICE_KEY, SEED_DEVICE)
    reg.store.set(VM_KEY, "4.0", "PATH=x")  # as if written by hand
    with pytest.raises(PropertyError, match="stored UserDefinedVMProperties"):
        reg.check_vm({"memory": "1"})
    reg.check_device("interface", {"speed": "1"})
    assert reg.definitions()["vm"] == {}
