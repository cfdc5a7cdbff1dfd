"""engine-config syntax: the seeds' examples, nested braces, several groups, refusals."""

from __future__ import annotations

import pytest

from hookvisor.props.errors import DefinitionError
from hookvisor.props.syntax import (
    DeviceGroup,
    PropertyDef,
    format_devices,
    format_properties,
    parse_devices,
    parse_properties,
)

SEED_VM = "memory=^[0-9]+$;smartcard=^(true|false)$"
SEED_DEVICE = "{type=interface;prop={speed=^([0-9]{1,5})$;duplex=^(full|half)$}}"
SEED_NUMA = r"numaset=^(interleave|strict|preferred):[\^]?\d+(-\d+)?(,[\^]?\d+(-\d+)?)*$"


def test_seed_vm_properties() -> None:
    assert parse_properties(SEED_VM) == (
        PropertyDef("memory", "^[0-9]+$"),
        PropertyDef("smartcard", "^(true|false)$"),
    )
    assert format_properties(parse_properties(SEED_VM)) == SEED_VM


def test_seed_numa_regex_keeps_backslashes_and_carets() -> None:
    (d,) = parse_properties(SEED_NUMA)
    assert d.name == "numaset"
    assert d.regex == SEED_NUMA.partition("=")[2]


def test_regex_may_contain_equals_sign() -> None:
    assert parse_properties("opt=^a=b$") == (PropertyDef("opt", "^a=b$"),)


def test_seed_device_properties_braces_in_regex() -> None:
    assert parse_devices(SEED_DEVICE) == (
        DeviceGroup("interface", (
            PropertyDef("speed", "^([0-9]{1,5})$"),
            PropertyDef("duplex", "^(full|half)$"),
        )),
    )
    assert format_devices(parse_devices(SEED_DEVICE)) == SEED_DEVICE


def test_several_device_groups() -> None:
    text = SEED_DEVICE + ";{type=disk;prop={iotune=^[0-9]{2,3}$}};{type=video;prop={}}"
    groups = parse_devices(text)
    assert [g.type for g in groups] == ["interface", "disk", "video"]
    assert groups[1].props == (PropertyDef("iotune", "^[0-9]{2,3}$"),)
    assert groups[2].props == ()
    assert format_devices(groups) == text


@pytest.mark.parametrize("regex", [
    "^a{1,5}$",          # braces at the end of the group
    "^(a{2}){3}$",       # nested braces
    "^x}$",              # a lone closing brace (literal in Python's re)
    "^\\{\\}$",          # escaped braces
    "^a{1}}}$",          # closing braces that look like the group's end
    "^[}]{2}$",
])
def test_braces_inside_regexes_do_not_end_the_group(regex: str) -> None:
    groups = (
        DeviceGroup("interface", (PropertyDef("a", regex), PropertyDef("b", regex))),
        DeviceGroup("disk", (PropertyDef("c", regex),)),
    )
    text = format_devices(groups)
    assert parse_devices(text) == groups


def test_empty_values() -> None:
    assert parse_properties("") == ()
    assert parse_devices("") == ()
    assert format_properties(()) == ""
    assert format_devices(()) == ""


@pytest.mark.parametrize("text, fragment", [
    ("memory", "is not NAME=REGEX"),
    ("memory=1;", "definition 2 is empty"),
    (";memory=1", "definition 1 is empty"),
    ("a=1;;b=2", "definition 2 is empty"),
])
def test_malformed_vm_properties(text: str, fragment: str) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_properties(text)
    assert any(fragment in p for p in e.value.problems)


@pytest.mark.parametrize("text, fragment", [
    ("type=interface;prop={a=b}", "expected '{type='"),
    ("{type=interface}", "expected ';prop={'"),
    ("{type=interface;prop={a=b}", "no closing"),
    ("{type=interface;prop={a=b}};", "stray ';'"),
    ("{type=interface;prop={a=b}}x", "no closing"),
    ("{type=interface;prop={a}}", "is not NAME=REGEX"),
])
def test_malformed_device_properties(text: str, fragment: str) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_devices(text)
    assert any(fragment in p for p in e.value.problems), e.value.problems


def test_all_syntax_problems_of_a_value_are_reported() -> None:
    with pytest.raises(DefinitionError) as e:
        parse_properties("a;b;c=1;;d")
    assert len(e.value.problems) == 4


def test_formatter_refuses_what_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        format_properties([PropertyDef("a", "x;y")])
    with pytest.raises(ValueError):
        format_properties([PropertyDef("a=b", "x")])
    with pytest.raises(ValueError):
        format_devices([DeviceGroup("a;b", ())])
    with pytest.raises(ValueError):
        format_devices([DeviceGroup("a", (PropertyDef("x", "}};{type=b"),)),
                        DeviceGroup("c", ())])
