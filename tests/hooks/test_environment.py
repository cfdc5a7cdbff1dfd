"""The environment a script gets: properties, precedence, reserved names (SPEC §1, §3)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hookvisor.hooks.catalogue import get_event
from hookvisor.hooks.environment import HELPERS_DIR, LAUNCHFLAGS_VAR, build_environment
from hookvisor.names import RESERVED_NAMES, RESERVED_PREFIXES, reserved_reason

BASE = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "AGENT_VAR": "1",
        "PYTHONPATH": "/opt/lib"}


def env_for(event: str = "before_device_create", **kw: object) -> dict[str, str]:
    return build_environment(get_event(event), base_env=BASE, **kw).env  # type: ignore[arg-type]


def test_agent_environment_props_vmid_data_and_pythonpath() -> None:
    env = env_for("before_vm_start", vm_id="u1", vm_props={"numa": "strict:1"},
                  data_path="/run/x.xml", launchflags_dir="/run/lf")
    assert env["AGENT_VAR"] == "1"
    assert env["numa"] == "strict:1"
    assert env["vmId"] == "u1"
    assert env["_hook_domxml"] == "/run/x.xml"
    assert "_hook_json" not in env
    assert env[LAUNCHFLAGS_VAR] == "/run/lf"
    assert env["PYTHONPATH"] == f"/opt/lib{os.pathsep}{HELPERS_DIR}"


def test_json_event_uses_hook_json() -> None:
    env = env_for("before_network_setup", data_path="/run/x.json")
    assert env["_hook_json"] == "/run/x.json"
    assert "_hook_domxml" not in env


def test_vm_property_wins_over_device_property() -> None:
    env = env_for(vm_props={"speed": "vm", "a": "1"}, device_props={"speed": "dev", "b": "2"})
    assert (env["speed"], env["a"], env["b"]) == ("vm", "1", "2")


def test_non_ascii_values() -> None:
    env = env_for(vm_props={"label": "žluťoučký kůň — 日本"})
    assert env["label"] == "žluťoučký kůň — 日本"


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "_hook_domxml",
                                  "_hook_json", "vmId", "PYTHONPATH", "FROM_SNAPSHOT", "IFS",
                                  "1abc", "a-b", ""])
def test_reserved_and_invalid_names_refused_here_too(name: str) -> None:
    result = build_environment(get_event("before_vm_start"), base_env=BASE, vm_id="u1",
                               vm_props={name: "/evil"}, device_props={name: "/evil"},
                               data_path="/run/x.xml")
    assert len(result.refused) == 2 and all(repr(name) in r for r in result.refused)
    assert result.env.get(name) != "/evil"
    assert result.env["PATH"] == BASE["PATH"] and result.env["vmId"] == "u1"


def test_stale_hook_variables_of_the_agent_do_not_leak() -> None:
    base = dict(BASE, _hook_domxml="/stale", vmId="stale", FROM_SNAPSHOT="True")
    env = build_environment(get_event("before_vm_pause"), base_env=base).env
    assert "_hook_domxml" not in env and "vmId" not in env and "FROM_SNAPSHOT" not in env


def test_extras_only_those_of_the_event() -> None:
    env = env_for("before_vm_dehibernate", extra_env={"FROM_SNAPSHOT": "True"})
    assert env["FROM_SNAPSHOT"] == "True"
    with pytest.raises(ValueError):
        env_for("before_vm_start", extra_env={"FROM_SNAPSHOT": "True"})


def test_vdsm_start_gets_a_clean_environment() -> None:
    env = build_environment(get_event("before_vdsm_start"), base_env=BASE,
                            data_path="/run/x").env
    assert env["PATH"] == BASE["PATH"] and env["HOME"] == "/root" and env["LANG"] == "C.UTF-8"
    assert "AGENT_VAR" not in env
    assert env["PYTHONPATH"] == str(HELPERS_DIR)
    assert set(env) <= {"PATH", "HOME", "LANG", "PYTHONPATH", "_hook_domxml", LAUNCHFLAGS_VAR}


_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_value = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                 max_size=20)


@given(vm=st.dictionaries(_name, _value, max_size=6), dev=st.dictionaries(_name, _value,
                                                                          max_size=6))
def test_property_environment(vm: dict[str, str], dev: dict[str, str]) -> None:
    result = build_environment(get_event("before_nic_hotplug"), base_env=BASE, vm_id="u1",
                               vm_props=vm, device_props=dev, data_path="/run/d.xml")
    env = result.env
    for name in set(vm) | set(dev):
        if reserved_reason(name) is None:
            assert env[name] == (vm[name] if name in vm else dev[name])
        else:
            assert any(repr(name) in r for r in result.refused)
    # The runner's own variables are never overridden by a property.
    assert env["vmId"] == "u1" and env["_hook_domxml"] == "/run/d.xml"
    assert env["PATH"] == BASE["PATH"] and env["PYTHONPATH"].endswith(str(HELPERS_DIR))
    for name in env:
        if name.startswith(RESERVED_PREFIXES) or name in RESERVED_NAMES:
            assert name in ("PATH", "HOME", "PYTHONPATH", "vmId", "_hook_domxml",
                            LAUNCHFLAGS_VAR)


def test_ticket_params_become_variables_checked_as_properties() -> None:
    from hookvisor.hooks.catalogue import get_event
    from hookvisor.hooks.environment import build_environment

    env = build_environment(get_event("before_vm_set_ticket"), base_env={"PATH": "/bin"},
                            vm_id="v", vm_props={"userName": "vm-wins"},
                            extra_env={"userName": "alice", "userId": "7",
                                       "LD_PRELOAD": "/x.so", "PATH": "/evil"})
    assert env.env["userId"] == "7"
    assert env.env["userName"] == "vm-wins"  # VDSM: the VM's custom properties last
    assert env.env["PATH"] == "/bin" and "LD_PRELOAD" not in env.env
    assert len(env.refused) == 2


def test_closed_events_still_refuse_unknown_extras() -> None:
    import pytest

    from hookvisor.hooks.catalogue import get_event
    from hookvisor.hooks.environment import build_environment

    with pytest.raises(ValueError):
        build_environment(get_event("before_vm_start"), base_env={}, extra_env={"X": "1"})
