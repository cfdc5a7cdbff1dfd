"""Readers while a value is replaced see the old or the new value, never a mix."""

from __future__ import annotations

import threading
from pathlib import Path

from hookvisor.props.registry import DEVICE_KEY, VM_KEY, PropertyRegistry

NAMES = [f"p{i}" for i in range(40)]
VALUE_A = ";".join(f"{n}=^a$" for n in NAMES)
VALUE_B = ";".join(f"{n}=^b$" for n in NAMES)
DEV_A = "{type=interface;prop={" + ";".join(f"{n}=^a$" for n in NAMES) + "}}"
DEV_B = "{type=interface;prop={" + ";".join(f"{n}=^b$" for n in NAMES) + "}}"


def test_concurrent_readers_never_see_a_mix(tmp_path: Path) -> None:
    path = tmp_path / "properties.sqlite"
    writer = PropertyRegistry(path, "4.0")
    writer.set(VM_KEY, VALUE_A)
    writer.set(DEVICE_KEY, DEV_A)
    shared = PropertyRegistry(path, "4.0")  # one object used by many threads
    stop = threading.Event()
    errors: list[str] = []
    seen: set[str] = set()
    all_a = {n: "a" for n in NAMES}

    def reader(reg: PropertyRegistry) -> None:
        try:
            while not stop.is_set():
                text = reg.get(VM_KEY)
                if text not in (VALUE_A, VALUE_B):
                    errors.append(f"get saw {text[:40]!r}")
                seen.add(text)
                vm = reg.definitions()["vm"]
                if set(vm.values()) not in ({"^a$"}, {"^b$"}) or len(vm) != len(NAMES):
                    errors.append(f"definitions saw a mix: {set(vm.values())}")
                # All 40 properties pass, or all 40 fail: never some of each.
                n_vm = len(reg.problems(vm=all_a))
                n_dev = len(reg.problems(devices=[("interface", all_a)]))
                if n_vm not in (0, len(NAMES)) or n_dev not in (0, len(NAMES)):
                    errors.append(f"check saw a mix: {n_vm} / {n_dev} problems")
        except Exception as e:  # surfaced by the assertion below
            errors.append(repr(e))
        finally:
            reg.close()

    threads = [threading.Thread(target=reader, args=(shared,)) for _ in range(3)]
    threads += [threading.Thread(target=reader, args=(PropertyRegistry(path, "4.0"),))
                for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(150):
            writer.set(VM_KEY, VALUE_B if i % 2 == 0 else VALUE_A)
            writer.set(DEVICE_KEY, DEV_B if i % 2 == 0 else DEV_A)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        writer.close()
    assert not errors, errors[:5]
    assert seen and seen <= {VALUE_A, VALUE_B}


def test_concurrent_writers_serialize(tmp_path: Path) -> None:
    path = tmp_path / "properties.sqlite"
    values = [f"w{i}=^{i}$" for i in range(8)]
    errors: list[str] = []

    def write(value: str) -> None:
        reg = PropertyRegistry(path, "4.0")
        try:
            for _ in range(20):
                reg.set(VM_KEY, value)
        except Exception as e:
            errors.append(repr(e))
        finally:
            reg.close()

    threads = [threading.Thread(target=write, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert PropertyRegistry(path, "4.0").get(VM_KEY) in values
