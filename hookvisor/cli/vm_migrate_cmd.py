"""`hookvisor vm migrate VM --to HOST:PORT [--wait]`, `vm migrate-status VM`,
`vm migrate-cancel VM`.

The source agent (the one this client talks to) calls the destination agent
itself; `--to` is the destination agent's API address. `--wait` follows
migrateStatus with a progress bar until the migration is over, and exits 1
unless it succeeded.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from hookvisor.cli.vm_cmd import _guard, _print_json, call

_POLL = 0.2
_OVER = ("done", "failed", "canceled", "vetoed", "none")


def _mib(value: Any) -> str:
    try:
        return f"{int(value) / 2**20:.1f} MiB"
    except (TypeError, ValueError):
        return "?"


def describe(stats: dict[str, Any]) -> str:
    """One line: state, progress, data, and the outcome's message."""
    text = f"{stats.get('state', '?')} {stats.get('progress', 0)}%"
    if stats.get("dataTotal"):
        text += (f", {_mib(stats.get('dataProcessed'))} sent, "
                 f"{_mib(stats.get('dataRemaining'))} left of {_mib(stats.get('dataTotal'))}")
    if stats.get("downtime") is not None and stats.get("state") == "done":
        text += f", downtime {stats['downtime']} ms"
    if stats.get("elapsed") is not None:
        text += f", {stats['elapsed']}s"
    if stats.get("message"):
        text += f": {stats['message']}"
    return text


def _status(args: argparse.Namespace) -> dict[str, Any]:
    stats: dict[str, Any] = call(args, "migrateStatus", args.vm_id).get("migrationStats", {})
    return stats


def _follow(args: argparse.Namespace) -> dict[str, Any]:
    """Poll migrateStatus under a rich progress bar until the migration is over."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[data]}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(f"{args.vm_id[:8]} -> {args.to}", total=100, data="")
        while True:
            stats = _status(args)
            data = ""
            if stats.get("dataTotal"):
                data = f"{_mib(stats.get('dataRemaining'))} left"
            bar.update(task, completed=int(stats.get("progress", 0)), data=data)
            if stats.get("state") in _OVER:
                return stats
            time.sleep(_POLL)


def cmd_migrate(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"vmId": args.vm_id, "dst": args.to, "method": "online"}
    if args.max_bandwidth:
        params["maxBandwidth"] = args.max_bandwidth
    if args.tunneled:
        params["tunneled"] = True
    call(args, "migrate", params)
    if not args.wait:
        print(f"{args.vm_id}: migrating to {args.to} (hookvisor vm migrate-status "
              f"{args.vm_id})")
        return 0
    stats = _follow(args) if sys.stdout.isatty() or args.progress else _wait_quietly(args)
    if args.json:
        _print_json(stats)
    else:
        print(f"{args.vm_id}: {describe(stats)}")
    return 0 if stats.get("state") == "done" else 1


def _wait_quietly(args: argparse.Namespace) -> dict[str, Any]:
    while True:
        stats = _status(args)
        if stats.get("state") in _OVER:
            return stats
        time.sleep(_POLL)


def cmd_migrate_status(args: argparse.Namespace) -> int:
    stats = _status(args)
    if args.json:
        _print_json(stats)
    else:
        print(f"{args.vm_id}: {describe(stats)}")
    return 0


def cmd_migrate_cancel(args: argparse.Namespace) -> int:
    reply = call(args, "migrateCancel", args.vm_id)
    print(f"{args.vm_id}: {reply['status'].get('message', 'Done')} (cancel asked)")
    return 0


def register(verbs: Any) -> None:
    """Add the migration subcommands to `hookvisor vm`'s subparsers."""
    p = verbs.add_parser("migrate", help="live-migrate a VM to another host's agent")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("--to", required=True, metavar="HOST:PORT",
                   help="the destination agent's API address (mutual TLS)")
    p.add_argument("--wait", action="store_true",
                   help="follow it to the end (progress bar on a terminal); exit 1 unless done")
    p.add_argument("--progress", action="store_true",
                   help="with --wait: the progress bar even when not on a terminal")
    p.add_argument("--max-bandwidth", type=int, metavar="MIB_S",
                   help="cap the migration's bandwidth, MiB/s")
    p.add_argument("--tunneled", action="store_true",
                   help="memory through libvirtd's connection instead of QEMU's own")
    p.add_argument("--json", action="store_true", help="with --wait: the outcome as JSON")
    p.set_defaults(func=_guard(cmd_migrate))

    p = verbs.add_parser("migrate-status", help="a VM's migration: progress, or its outcome")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_migrate_status))

    p = verbs.add_parser("migrate-cancel", help="abort a VM's outgoing migration")
    p.add_argument("vm_id", metavar="VMID")
    p.set_defaults(func=_guard(cmd_migrate_cancel))
