"""Properties: format∘parse is the identity; validation never raises on arbitrary input."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookvisor.props.checks import check_values, compile_value
from hookvisor.props.errors import DefinitionError, PropertyError
from hookvisor.props.registry import DEVICE_KEY, VM_KEY, PropertyRegistry
from hookvisor.props.syntax import (
    DeviceGroup,
    PropertyDef,
    format_devices,
    format_properties,
    parse_devices,
    parse_properties,
)

env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
# Regex-ish text: anything but the separator, weighted towards braces.
regexes = st.text(alphabet=st.sampled_from("^$[]{}(),|.*+?\\0123456789azAZ=-:_ é"), max_size=25)
any_regex_text = st.text(max_size=25).filter(lambda s: ";" not in s)
defs = st.lists(st.builds(PropertyDef, env_names, st.one_of(regexes, any_regex_text)),
                max_size=5)
groups = st.lists(
    st.builds(DeviceGroup, st.from_regex(r"[a-z]{1,10}", fullmatch=True), defs.map(tuple)),
    max_size=4,
)
# Text built from the syntax's own pieces, so that parse succeeds now and then.
fragments = st.lists(st.sampled_from([
    "{type=", ";prop={", "}}", "}", "{", ";", "=", "interface", "speed", "^[0-9]{1,5}$",
    "(full|half)", "$", "x", "{1,5}", "\\}",
]), max_size=14).map("".join)
arbitrary = st.one_of(st.text(max_size=80), fragments)


@given(defs)
def test_parse_format_vm_structure(ds: list[PropertyDef]) -> None:
    assert parse_properties(format_properties(ds)) == tuple(ds)


@given(groups)
def test_parse_format_device_structure(gs: list[DeviceGroup]) -> None:
    try:
        text = format_devices(gs)
    except ValueError:
        # Only a regex holding the group separator cannot be written.
        assert any("}};{type=" in d.regex for g in gs for d in g.props)
        return
    assert parse_devices(text) == tuple(gs)


@given(arbitrary)
def test_format_of_parse_is_identity_on_text(text: str) -> None:
    try:
        parsed = parse_properties(text)
    except DefinitionError:
        pass
    else:
        assert format_properties(parsed) == text
    try:
        groups_ = parse_devices(text)
    except DefinitionError:
        pass
    else:
        assert format_devices(groups_) == text


@given(st.sampled_from([VM_KEY, DEVICE_KEY, "UserDefinedNetworkCustomProperties"]), arbitrary)
def test_definition_check_never_raises_otherwise(key: str, text: str) -> None:
    try:
        compiled = compile_value(key, text)
    except DefinitionError as e:
        assert e.problems and all(isinstance(p, str) for p in e.problems)
    else:
        # What is stored is canonical: compiling it again gives the same text.
        assert compile_value(key, compiled.text).text == compiled.text


values = st.one_of(
    # Short values only reach the regexes (random regexes can backtrack badly
    # on long ones); long ones are over the cap and refused before matching.
    st.text(max_size=20), st.text(min_size=4097, max_size=4200),
    st.integers(), st.none(), st.binary(max_size=8),
    st.floats(), st.lists(st.text(max_size=3), max_size=3),
)
props = st.dictionaries(st.one_of(st.text(max_size=12), env_names, st.integers()), values,
                        max_size=5)


@given(st.lists(st.builds(PropertyDef, env_names, regexes), max_size=4), props)
@settings(max_examples=300)
def test_value_check_never_raises(ds: list[PropertyDef], candidate: dict[object, object]) -> None:
    try:
        compiled = compile_value(VM_KEY, format_properties(ds))
    except DefinitionError:
        return
    problems = check_values(compiled.props, candidate, "VM", "here")
    assert all(isinstance(p, str) and "\n" not in p for p in problems)


@given(arbitrary, props, st.text(max_size=8), props)
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_registry_never_raises_otherwise(
    tmp_path: Path, text: str, vm: dict[object, object], dev_type: str,
    dev: dict[object, object],
) -> None:
    # One store across examples, on purpose: each starts from what the last left.
    reg = PropertyRegistry(tmp_path / "properties.sqlite", "4.0")
    try:
        for key in (VM_KEY, DEVICE_KEY):
            with contextlib.suppress(DefinitionError):
                reg.set(key, text)
        try:
            reg.check(vm=vm, devices=[(dev_type, dev)])  # type: ignore[arg-type, list-item]
        except PropertyError as e:
            assert e.problems
        reg.definitions()
    finally:
        reg.close()
