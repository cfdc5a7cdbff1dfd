"""`hookvisor config`: custom-property definitions, in engine-config's own form.

    hookvisor config -s UserDefinedVMProperties='memory=^[0-9]+$' --cver=4.0
    hookvisor config -g UserDefinedVMProperties [--cver=4.0]
    hookvisor config -l | -a
    hookvisor config check [--cver=4.0] [--vm-prop N=V]... [--device-prop TYPE:N=V]...
                           [--network-prop N=V]...

Exit 0 done, 1 refused (a bad definition, a value that fails its check, an
unreadable store), 2 usage error. Every error is one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys

from hookvisor.cli.common import (
    OneLineParser,
    add_global_options,
    parse_assignment,
    settings_from_args,
)
from hookvisor.cli.main import UsageError
from hookvisor.config import ConfigError
from hookvisor.props.errors import PropertyError
from hookvisor.props.registry import DB_FILE_NAME, PropertyRegistry, version_sort_key
from hookvisor.props.syntax import (
    KEYS,
    DeviceGroup,
    Kind,
    PropertyDef,
    format_devices,
    format_properties,
    parse_devices,
    parse_properties,
)

_OneLineParser = OneLineParser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # add_parser has no parser_class argument; swap the factory for this one call.
    saved = subparsers._parser_class
    subparsers._parser_class = _OneLineParser
    try:
        parser = subparsers.add_parser(
            "config",
            help="define custom properties (engine-config syntax) and check values",
            description="Custom-property definitions per cluster version, engine-config style. "
            f"Keys: {', '.join(KEYS)}.",
            usage="%(prog)s (-s KEY=VALUE --cver VERSION | -g KEY [--cver VERSION] | -l | -a)\n"
            "       %(prog)s (--add KEY=DEFINITION | --remove KEY=NAME) --cver VERSION\n"
            "       %(prog)s check [--cver VERSION] [--vm-prop NAME=VALUE]... "
            "[--device-prop TYPE:NAME=VALUE]...",
        )
    finally:
        subparsers._parser_class = saved
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("-s", "--set", metavar="KEY=VALUE",
                         help="replace KEY's whole value for --cver")
    actions.add_argument("--add", metavar="KEY=DEFINITION",
                         help="add or replace one property of KEY for --cver, the others "
                         "kept: UserDefinedVMProperties=NAME=REGEX, or "
                         "CustomDeviceProperties={type=TYPE;prop={NAME=REGEX}}")
    actions.add_argument("--remove", metavar="KEY=NAME",
                         help="remove one property of KEY for --cver (device keys: "
                         "KEY=TYPE:NAME)")
    actions.add_argument("-g", "--get", metavar="KEY",
                         help="print KEY's value, for --cver or for every version")
    actions.add_argument("-l", "--list", action="store_true", help="list the keys")
    actions.add_argument("-a", "--all", action="store_true",
                         help="print every key's value for every version")
    parser.add_argument("--cver", metavar="VERSION", help="cluster version, e.g. 4.8 "
                        "(default: none; -s, --add and --remove need it, -g shows every "
                        "version)")
    parser.add_argument("--if-missing", action="store_true",
                        help="with --add: leave a property already defined as it is")
    add_global_options(parser)
    parser.set_defaults(func=run_config, config_action=None)

    # prog: else the custom usage above would become the prefix of check's name.
    sub = parser.add_subparsers(dest="config_action", metavar="check", prog=parser.prog)
    check = sub.add_parser(
        "check", help="check property values against the definitions",
        description="Exit 0 if every value is defined and matches, 1 with every problem.",
    )
    # SUPPRESS: `config --cver X check` must keep X.
    check.add_argument("--cver", metavar="VERSION", default=argparse.SUPPRESS,
                       help="cluster version (default: the agent's, from its settings)")
    check.add_argument("--vm-prop", action="append", default=[], metavar="NAME=VALUE",
                       help="a VM custom property (repeatable)")
    check.add_argument("--device-prop", action="append", default=[], metavar="TYPE:NAME=VALUE",
                       help="a device custom property, e.g. interface:speed=1000 (repeatable)")
    check.add_argument("--network-prop", action="append", default=[], metavar="NAME=VALUE",
                       help="a host network custom property (repeatable)")
    add_global_options(check)
    check.set_defaults(func=run_check)


def _registry(args: argparse.Namespace) -> PropertyRegistry:
    cver = getattr(args, "cver", None)
    if cver is not None and (not cver or cver.strip() != cver):
        raise UsageError(f"--cver: {cver!r} is not a cluster version")
    settings = settings_from_args(args)
    try:
        return PropertyRegistry(settings.state_dir / DB_FILE_NAME, settings.cluster_version)
    except PropertyError as e:
        raise ConfigError(f"setting cluster_version: {e}") from None


def _known_key(key: str) -> str:
    if key not in KEYS:
        raise UsageError(f"unknown key {key!r}; keys: {', '.join(KEYS)} (see -l)")
    return key


def _fail(messages: list[str]) -> int:
    for message in messages:
        print(f"hookvisor: {message}", file=sys.stderr)
    return 1


def run_config(args: argparse.Namespace) -> int:
    if args.list:
        for info in KEYS.values():
            print(f"{info.name}: {info.description}")
        return 0
    if args.set is None and args.get is None and not args.all and args.add is None \
            and args.remove is None:
        raise UsageError("config: give one of -s KEY=VALUE, --add, --remove, -g KEY, -l, -a "
                         "or the check command")
    if args.if_missing and args.add is None:
        raise UsageError("--if-missing goes with --add")
    reg = _registry(args)
    try:
        if args.set is not None:
            return _set(reg, args.set, args.cver)
        if args.add is not None:
            return _edit(reg, args.add, args.cver, add=True, keep=args.if_missing)
        if args.remove is not None:
            return _edit(reg, args.remove, args.cver, add=False)
        keys = list(KEYS) if args.all else [_known_key(args.get)]
        for key in keys:
            _print_values(reg, key, args.cver)
        return 0
    except sqlite3.Error as e:
        return _fail([f"property store {reg.store.path}: {e}"])
    finally:
        reg.close()


def _set(reg: PropertyRegistry, assignment: str, cver: str | None) -> int:
    key, value = parse_assignment(assignment, "-s", "KEY=VALUE")
    _known_key(key)
    if cver is None:
        # As engine-config: a versioned key needs its version said out loud,
        # rather than silently landing on whatever the settings say.
        raise UsageError(f"-s {key} needs --cver=VERSION (this agent serves cluster "
                         f"version {reg.cluster_version})")
    return _store(reg, key, value, cver)


def _store(reg: PropertyRegistry, key: str, value: str, cver: str) -> int:
    """Store KEY's new whole value; print the old and the new one (a set is never silent)."""
    old = reg.get(key, cver)
    try:
        new = reg.set(key, value, version=cver)
    except PropertyError as e:
        return _fail([*e.problems, f"{key} for version {cver} left unchanged"])
    print(f"{key} version {cver} (store {reg.store.path}):")
    print(f"  old: {old or '(none)'}")
    print(f"  new: {new or '(none)'}")
    return 0


def _edit(reg: PropertyRegistry, text: str, cver: str | None, add: bool,
          keep: bool = False) -> int:
    """--add / --remove: one property changed, the rest of KEY's value kept."""
    option = "--add" if add else "--remove"
    key, value = parse_assignment(text, option, "KEY=DEFINITION" if add else "KEY=NAME")
    info = KEYS[_known_key(key)]
    if cver is None:
        raise UsageError(f"{option} {key} needs --cver=VERSION (this agent serves cluster "
                         f"version {reg.cluster_version})")
    old = reg.get(key, cver)
    try:
        if info.kind is Kind.DEVICE:
            new = _edit_devices(old, value, key, add, keep)
        else:
            new = _edit_properties(old, value, key, add, keep)
    except PropertyError as e:
        return _fail([*e.problems, f"{key} for version {cver} left unchanged"])
    if new == old:
        print(f"{key} version {cver}: unchanged: {old or '(none)'}")
        return 0
    return _store(reg, key, new, cver)


def _put(defs: list[PropertyDef], new_def: PropertyDef, keep: bool) -> bool:
    """Replace the definition of the same name where it stands, or append it; False, and
    nothing changed, when there is one and `keep`."""
    at = [i for i, d in enumerate(defs) if d.name == new_def.name]
    if at and keep:
        return False
    if at:
        defs[at[0]] = new_def
    else:
        defs.append(new_def)
    return True


def _edit_properties(old: str, value: str, key: str, add: bool, keep: bool) -> str:
    defs = list(parse_properties(old, key))
    if add:
        (new_def, *more) = parse_properties(value, key) or (None,)
        if new_def is None or more:
            raise UsageError(f"--add {key}=NAME=REGEX: one property, got {value!r}")
        if not _put(defs, new_def, keep):
            return old
    else:
        if not any(d.name == value for d in defs):
            raise UsageError(f"--remove {key}={value}: no such property (defined: "
                             f"{', '.join(d.name for d in defs) or 'none'})")
        defs = [d for d in defs if d.name != value]
    return format_properties(defs)


def _edit_devices(old: str, value: str, key: str, add: bool, keep: bool) -> str:
    groups = {g.type: list(g.props) for g in parse_devices(old, key)}
    if add:
        added = parse_devices(value, key)
        if len(added) != 1 or len(added[0].props) != 1:
            raise UsageError(f"--add {key}={{type=TYPE;prop={{NAME=REGEX}}}}: one property, "
                             f"got {value!r}")
        dev_type, new_def = added[0].type, added[0].props[0]
        props = groups.setdefault(dev_type, [])
        if not _put(props, new_def, keep):
            return old
    else:
        dev_type, colon, name = value.partition(":")
        props = groups.get(dev_type, [])
        if not colon or not any(d.name == name for d in props):
            raise UsageError(f"--remove {key}={value}: no such TYPE:NAME (defined: "
                             + (", ".join(f"{t}:{d.name}" for t, ps in groups.items()
                                          for d in ps) or "none") + ")")
        groups[dev_type] = [d for d in props if d.name != name]
    return format_devices([DeviceGroup(t, tuple(ps)) for t, ps in groups.items() if ps])


def _print_values(reg: PropertyRegistry, key: str, cver: str | None) -> None:
    if cver is not None:
        versions = {cver: reg.get(key, cver)}
    else:
        versions = {v.version: v.value for v in reg.stored(key)}
        # The version the agent serves is always shown, empty if undefined,
        # so that `-g` on a fresh host says something.
        versions.setdefault(reg.cluster_version, "")
    for version in sorted(versions, key=version_sort_key):
        print(f"{key}: {versions[version]} version: {version}")


def _assignments(texts: list[str], option: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for text in texts:
        name, value = parse_assignment(text, option)
        if name in out:
            raise UsageError(f"{option}: {name!r} given twice")
        out[name] = value
    return out


def run_check(args: argparse.Namespace) -> int:
    if args.set is not None or args.get is not None or args.list or args.all \
            or args.add is not None or args.remove is not None:
        raise UsageError("config check: does not combine with -s, -g, -l or -a")
    vm = _assignments(args.vm_prop, "--vm-prop")
    network = _assignments(args.network_prop, "--network-prop")
    devices: dict[str, dict[str, object]] = {}
    for text in args.device_prop:
        dev_type, colon, assignment = text.partition(":")
        if not colon or not dev_type:
            raise UsageError(f"--device-prop: expected TYPE:NAME=VALUE, got {text!r}")
        name, value = parse_assignment(assignment, "--device-prop")
        props = devices.setdefault(dev_type, {})
        if name in props:
            raise UsageError(f"--device-prop: {dev_type}:{name} given twice")
        props[name] = value
    reg = _registry(args)
    version = getattr(args, "cver", None) or reg.cluster_version
    try:
        problems = reg.problems(vm=vm, devices=list(devices.items()),
                                networks=[network] if network else [], version=version)
    except sqlite3.Error as e:
        return _fail([f"property store {reg.store.path}: {e}"])
    finally:
        reg.close()
    if problems:
        return _fail(problems)
    count = len(vm) + len(network) + sum(len(p) for p in devices.values())
    print(f"ok: {count} propert{'y' if count == 1 else 'ies'} valid for cluster version {version}")
    return 0
