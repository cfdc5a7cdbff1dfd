"""`hookvisor vm mem-add|cpus|ticket`: VDSM's hotplugMemory, setNumberOfCpus, setTicket.

Registered into `hookvisor vm` by vm_cmd.register, after the live-VM verbs.
A ticket's password is read from stdin (or a prompt), never from the command
line, where `ps` would show it to every local user.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from hookvisor.cli.common import UsageError, parse_assignment
from hookvisor.cli.vm_cmd import _guard, _print_json, call


def _done(args: argparse.Namespace, reply: dict[str, Any], what: str) -> int:
    if getattr(args, "json", False):
        _print_json(reply.get("vmList", {}))
    else:
        print(f"{args.vm_id}: {reply['status'].get('message', 'Done')} ({what})")
    return 0


def cmd_mem_add(args: argparse.Namespace) -> int:
    reply = call(args, "hotplugMemory", {"vmId": args.vm_id,
                                         "memory": {"size": args.size, "node": args.node}})
    mem = reply.get("vmList", {}).get("memSize")
    return _done(args, reply, f"memory now {mem} MiB" if mem else f"+{args.size} MiB")


def cmd_cpus(args: argparse.Namespace) -> int:
    reply = call(args, "setNumberOfCpus", args.vm_id, args.count)
    return _done(args, reply, f"{args.count} vCPUs")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        text = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        text = getpass.getpass("console password: ")
    else:
        raise UsageError("ticket: give --password-stdin (the password is never an argument)")
    if not text:
        raise UsageError("ticket: an empty password")
    return text


def cmd_ticket(args: argparse.Namespace) -> int:
    params = dict(parse_assignment(p, "--param") for p in args.param)
    reply = call(args, "setTicket", args.vm_id, _password(args), args.ttl, args.conn_action,
                 params)
    return _done(args, reply, f"ticket valid {args.ttl}s" if args.ttl > 0 else "ticket set")


def register(verbs: Any) -> None:
    p = verbs.add_parser("mem-add", help="hot-plug memory (a DIMM) into a running VM")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("size", type=int, metavar="MIB", help="the DIMM's size in MiB")
    p.add_argument("--node", type=int, default=0, help="guest NUMA node (default 0)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_mem_add))

    p = verbs.add_parser("cpus", help="set a running VM's vCPU count (up to its maximum)")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("count", type=int, metavar="N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_cpus))

    p = verbs.add_parser("ticket", help="set the console (VNC/SPICE) password and its expiry")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("--ttl", type=int, default=120,
                   help="seconds the password is valid (default 120; 0: no expiry)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin")
    p.add_argument("--conn-action", default="disconnect", choices=("disconnect", "keep", "fail"),
                   help="SPICE: what happens to a connected client (default disconnect)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a ticket parameter, given to the hooks as a variable (repeatable)")
    p.set_defaults(func=_guard(cmd_ticket))
