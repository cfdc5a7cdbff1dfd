"""`hookvisor net ...`: host networks on a running agent (setupNetworks over XML-RPC).

    hookvisor net setup FILE.json   # {"networks": {...}, "bondings": {...}, "options": {...}}
    hookvisor net setup --network net1:nic=eth1,vlan=10,ipaddr=10.0.0.2,prefix=24 \\
                        --bond bond0:nics=eth2+eth3,options=mode=4 --remove old
    hookvisor net list [--json]
    hookvisor net save                       # setSafeNetworkConfig

Values stay strings: the agent takes "10" for a VLAN id and "true" for a flag,
and checks every one. `custom.NAME=VALUE` is a network custom property.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hookvisor.cli.common import UsageError
from hookvisor.cli.vm_cmd import _guard, _print_json, _table, add_client_options, call


def _item(text: str, what: str) -> tuple[str, dict[str, Any]]:
    """'NAME:KEY=VAL,KEY=VAL' -> (NAME, {KEY: VAL}); `nics=a+b` is a list."""
    name, sep, rest = text.partition(":")
    if not name:
        raise UsageError(f"{what}: expected NAME:KEY=VALUE,..., got {text!r}")
    attrs: dict[str, Any] = {}
    # A bond's options hold spaces in VDSM ("mode=4 miimon=100"); here `;` stands for them.
    for part in rest.split(",") if sep and rest else []:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise UsageError(f"{what} {name}: expected KEY=VALUE, got {part!r}")
        if key.startswith("custom."):
            attrs.setdefault("custom", {})[key[len("custom."):]] = value
        elif key == "nics":
            attrs[key] = [n for n in value.split("+") if n]
        elif key == "options":
            attrs[key] = value.replace(";", " ")
        else:
            attrs[key] = value
    return name, attrs


def build_request(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any],
                                                       dict[str, Any]]:
    networks: dict[str, Any] = {}
    bondings: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if args.file is not None:
        try:
            data = json.loads(Path(args.file).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{args.file}: {e}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{args.file}: expected a JSON object with networks, bondings, "
                             "options")
        networks.update(data.get("networks") or {})
        bondings.update(data.get("bondings") or {})
        options.update(data.get("options") or {})
    for text in args.network:
        name, attrs = _item(text, "--network")
        networks[name] = attrs
    for text in args.bond:
        name, attrs = _item(text, "--bond")
        bondings[name] = attrs
    for name in args.remove:
        networks[name] = {"remove": True}
    for name in args.remove_bond:
        bondings[name] = {"remove": True}
    if args.check_connectivity is not None:
        options["connectivityCheck"] = True
        options["connectivityTimeout"] = args.check_connectivity
    if args.commit:
        options["commitOnSuccess"] = True
    if not networks and not bondings:
        raise UsageError("net setup: give FILE.json, --network, --bond or --remove")
    return networks, bondings, options


def cmd_setup(args: argparse.Namespace) -> int:
    networks, bondings, options = build_request(args)
    reply = call(args, "setupNetworks", networks, bondings, options)
    print(reply["status"].get("message", "Done"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    info = call(args, "getVdsCapabilities").get("info", {})
    part = {k: info.get(k, {}) for k in ("networks", "bridges", "vlans", "bondings", "nics")}
    if args.json:
        _print_json(part)
        return 0
    rows = [[name, str(n.get("iface", "")), "yes" if n.get("bridged") else "no",
             str(n.get("mtu", "")), ", ".join(n.get("ipv4addrs", []) + n.get("ipv6addrs", [])),
             str(n.get("gateway", "")), ", ".join(n.get("ports", []))]
            for name, n in sorted(part["networks"].items())]
    _table("networks", ["name", "iface", "bridged", "mtu", "addresses", "gateway", "ports"],
           rows)
    rows = [[name, str(n.get("mtu", "")), str(n.get("hwaddr", "")),
             ", ".join(n.get("ipv4addrs", []) + n.get("ipv6addrs", []))]
            for name, n in sorted(part["nics"].items())]
    _table("NICs", ["name", "mtu", "hwaddr", "addresses"], rows)
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    call(args, "setSafeNetworkConfig")
    print("the current setup is the one restored when the agent starts")
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("net", help="host networks on a running agent (setupNetworks)")
    add_client_options(parser)
    verbs = parser.add_subparsers(dest="net_command", metavar="VERB", required=True)

    setup = verbs.add_parser("setup", help="apply networks and bonds (VDSM's setupNetworks)")
    setup.add_argument("file", nargs="?", metavar="FILE.json",
                       help="{networks, bondings, options} as VDSM sends them")
    setup.add_argument("--network", action="append", default=[],
                       metavar="NAME:KEY=VAL,...", help="a network (repeatable); "
                       "custom.NAME=VALUE is a custom property")
    setup.add_argument("--bond", action="append", default=[], metavar="NAME:nics=A+B,...",
                       help="a bond (repeatable); options=mode=4;miimon=100")
    setup.add_argument("--remove", action="append", default=[], metavar="NAME",
                       help="remove a network (repeatable)")
    setup.add_argument("--remove-bond", action="append", default=[], metavar="NAME")
    setup.add_argument("--check-connectivity", type=int, metavar="SECONDS",
                       help="roll back unless a client reaches the agent within SECONDS")
    setup.add_argument("--commit", action="store_true",
                       help="save as the safe setup on success (commitOnSuccess)")
    setup.set_defaults(func=_guard(cmd_setup))

    lst = verbs.add_parser("list", help="networks and NICs as the agent reports them")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_guard(cmd_list))

    save = verbs.add_parser("save", help="make the current setup the safe one "
                            "(setSafeNetworkConfig)")
    save.set_defaults(func=_guard(cmd_save))

    # `hookvisor net list --agent H:P`, as for `vm`.
    for verb_parser in verbs.choices.values():
        add_client_options(verb_parser, after=True)
