"""`hookvisor hooks history` and `hookvisor hooks replay`.

    hookvisor hooks history [--vm VM] [--event E] [--chain ID] [--failed]
                            [--since T] [--until T] [--origin agent|offline|all]
                            [--limit N] [--json] [-v] [--local] [--agent HOST:PORT]
    hookvisor hooks replay RUN [--hooks-dir DIR] [--prop NAME=VALUE]... [--output FILE]

History asks the running agent (getHookRuns, page by page) when one is
reachable and reads the state dir's records otherwise, and says which on
stderr; runs of `hookvisor hooks run` (offline, kept in their own store) are
shown beside the agent's, marked. Replay runs a recorded chain again, offline,
on the input it had, against the hooks as they are now, and shows what differs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from hookvisor.cli.common import UsageError, add_global_options, settings_from_args
from hookvisor.cli.output import OUTCOME_STYLE, Out
from hookvisor.cli.vm_cmd import _guard, is_vm_id, vm_named
from hookvisor.config import Settings
from hookvisor.hooks.catalogue import get_event
from hookvisor.hooks.records import (
    OFFLINE_RECORDS_FILE,
    RECORDS_FILE,
    REDACTED,
    ChainInput,
    RunRecord,
    RunRecords,
)
from hookvisor.hooks.runner import ChainResult
from hookvisor.rpc.client import AgentClient, AgentError, address_for

_AGENT_PAGE = 100  # runs asked per getHookRuns call (the agent's default page)
_RECORD_FIELDS = {f.name for f in fields(RunRecord)}


def register(sub: Any, add_client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    hist = sub.add_parser(
        "history", help="the records of past hook runs, newest first",
        description="Asks the running agent when one is reachable, else reads the state "
        "dir's records (stderr says which). Offline runs (`hooks run`) are shown too, marked.")
    hist.add_argument("--vm", metavar="VM", help="only runs for this VM: its vmId, or the name "
                      "of one of the running agent's VMs")
    hist.add_argument("--event", metavar="E", help="only runs of this event")
    hist.add_argument("--chain", metavar="ID",
                      help="only the runs of this chain (its first characters will do)")
    hist.add_argument("--failed", action="store_true",
                      help="only failed, timed-out and invalid-output runs")
    hist.add_argument("--since", metavar="TIME", type=_time_arg,
                      help="only runs started at or after TIME: 2026-11-22, "
                      "'2026-11-22 03:00', or an age: 90s, 10m, 2h, 3d")
    hist.add_argument("--until", metavar="TIME", type=_time_arg,
                      help="only runs started before TIME (same forms as --since)")
    hist.add_argument("--origin", choices=("all", "agent", "offline"), default="all",
                      help="the agent's runs, offline ones (`hooks run`), or both")
    hist.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs")
    hist.add_argument("--json", action="store_true", help="machine-readable output")
    hist.add_argument("-v", "--verbose", action="store_true",
                      help="also print each run's stdout, stderr and diff")
    hist.add_argument("--raw", action="store_true",
                      help="with -v: also the diff of the bytes as the hook wrote them")
    hist.add_argument("--local", action="store_true",
                      help="read the state dir's records, do not ask the agent")
    add_client_options(hist)
    # AgentError only: a closed pipe (an OSError) stays main's to handle, quietly; local
    # record files that cannot be read already come as AgentError.
    hist.set_defaults(func=_guard(cmd_history, (AgentError,)))

    rep = sub.add_parser(
        "replay", help="run a recorded chain again, offline, and show what differs",
        description="Runs the chain of RUN (a chain id or its first characters, as "
        "`history` shows, or a run's numeric id) again on the data and custom properties it "
        "had, against the hooks as they are now, in this shell's environment (the agent's "
        "is never recorded). Reads the state dir's records. Exit 0 if the chain passes now, "
        "1 if it would be vetoed, 2 for usage errors.")
    rep.add_argument("run", metavar="RUN", help="chain id (prefix) or run id")
    rep.add_argument("--hooks-dir", type=Path, metavar="DIR",
                     help="hooks dir (default: the settings' hooks_dir)")
    rep.add_argument("--prop", action="append", default=[], metavar="NAME=VALUE",
                     help="set a VM custom property (e.g. one recorded as redacted)")
    rep.add_argument("--timeout", type=float, metavar="S",
                     help="timeout per script, seconds (default: the settings')")
    rep.add_argument("--output", metavar="FILE", help="write the final data to FILE ('-': "
                     "stdout; the report then goes to stderr)")
    add_global_options(rep)
    rep.set_defaults(func=cmd_replay)


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _time_arg(text: str) -> float:
    m = _AGE.match(text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return datetime.datetime.now().timestamp() - seconds
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a date and time (2026-11-22 03:00) or an age (10m, 2h, 3d)"
        ) from None


# --- where the runs come from --------------------------------------------------


def _client_settings(args: argparse.Namespace) -> Settings:
    return settings_from_args(args, unix_socket=args.socket, pki_dir=args.pki_dir,
                              host_cert=args.cert, host_key=args.key)


def agent_client(args: argparse.Namespace) -> tuple[AgentClient | None, str]:
    """A client of the agent to ask, or (None, why not) to read local files instead."""
    if getattr(args, "local", False):
        return None, "--local"
    settings = _client_settings(args)
    address = address_for(settings, args.agent, args.insecure)
    if address.socket is not None and not address.socket.exists():
        return None, f"no agent listening on {address.socket}"
    try:
        return AgentClient(address, settings, timeout=60.0), ""
    except AgentError as e:
        return None, fallback(args, e)


def fallback(args: argparse.Namespace, error: AgentError) -> str:
    """Why local files are read; an agent named explicitly must answer (AgentError)."""
    if args.agent or _client_settings(args).agent:
        raise error
    return f"the agent did not answer: {error}"


def _vm_by_name(args: argparse.Namespace) -> tuple[str, str | None]:
    """(the vmId of the agent's VM named `--vm`, None), or (`--vm` as it is, why not).

    The records keep vmIds only. One not of the agent's may be anything (`hooks run
    --vm-id`), so a name the agent does not know is taken as such a vmId.
    """
    name = args.vm
    client, why = agent_client(args)
    if client is None:
        return name, f"not a vmId, and no agent was asked for VM names ({why})"
    try:
        vms = client.call("list", True).get("vmList", [])
    except AgentError as e:
        return name, f"not a vmId, and VM names were not found: {fallback(args, e)}"
    try:
        return vm_named(vms, name), None
    except AgentError:
        return name, f"no VM of that name on the agent at {client.address}"


def _from_agent(client: AgentClient, args: argparse.Namespace) -> Iterator[RunRecord]:
    filters: dict[str, Any] = {"limit": min(_AGENT_PAGE, args.limit)}
    for key, value in (("vmId", args.vm), ("event", args.event), ("chainId", args.chain)):
        if value:
            filters[key] = value
    if args.failed:
        filters["failed"] = True
    while True:
        reply = client.call("getHookRuns", filters)
        for run in reply.get("hookRuns") or []:
            values = {k: v for k, v in run.items() if k in _RECORD_FIELDS}
            values.setdefault("raw_diff", "")
            yield RunRecord(**{**values, "origin": "agent"})
        cursor = reply.get("next")
        if cursor is None:
            return
        filters["before"] = cursor


def _from_file(path: Path, origin: str, settings: Settings,
               args: argparse.Namespace) -> Iterator[RunRecord]:
    if not path.exists():
        return
    records = RunRecords(path, limit=settings.hook_history_limit, origin=origin)
    try:
        yield from records.iter_query(vm_id=args.vm, event=args.event, failed=args.failed,
                                      chain_id=args.chain, chunk=64)
    except sqlite3.Error as e:
        raise AgentError(f"cannot read hook records {path}: {e}") from None
    finally:
        records.close()


def _window(runs: Iterator[RunRecord], args: argparse.Namespace) -> Iterator[RunRecord]:
    """The runs inside --since/--until, newest first; stops at the first one too old."""
    for run in runs:
        if args.until is not None and run.time >= args.until:
            continue
        if args.since is not None and run.time < args.since:
            return
        yield run


def _take(runs: Iterator[RunRecord], n: int) -> list[RunRecord]:
    out = []
    for run in runs:
        out.append(run)
        if len(out) >= n:
            break
    return out


def collect(args: argparse.Namespace) -> tuple[list[RunRecord], str]:
    """The runs to show, newest first, and where they came from."""
    settings = settings_from_args(args)
    runs: list[RunRecord] = []
    sources = []
    if args.origin in ("all", "agent"):
        client, why = agent_client(args)
        agent_runs: list[RunRecord] | None = None
        if client is not None:
            try:
                agent_runs = _take(_window(_from_agent(client, args), args), args.limit)
                sources.append(f"the agent at {client.address}")
            except AgentError as e:
                why = fallback(args, e)
        if agent_runs is None:
            path = settings.state_dir / RECORDS_FILE
            agent_runs = _take(_window(_from_file(path, "agent", settings, args), args),
                               args.limit)
            sources.append(f"{path} ({why})")
        runs += agent_runs
    if args.origin in ("all", "offline"):
        path = settings.state_dir / OFFLINE_RECORDS_FILE
        runs += _take(_window(_from_file(path, "offline", settings, args), args), args.limit)
        sources.append(f"{path} (offline runs)")
    runs.sort(key=lambda r: r.time, reverse=True)
    return runs[:args.limit], "; ".join(sources)


# --- history -------------------------------------------------------------------


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _short_when(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts)
    if moment.date() == datetime.date.today():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M")


def _summary(record: RunRecord, whole: bool) -> str:
    text = record.message or record.stderr.strip()
    first = text.splitlines()[0] if text else ""
    return first if whole or len(first) <= 80 else first[:77] + "..."


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit <= 0:
        raise UsageError(f"--limit: expected a positive integer, got {args.limit}")
    if args.event:
        try:
            get_event(args.event)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.chain:
        args.chain = args.chain.lower()  # chain ids are lower-case hex
    unknown = None
    if args.vm and not is_vm_id(args.vm):
        args.vm, unknown = _vm_by_name(args)
    runs, source = collect(args)
    if unknown and not runs:
        # A VM that is gone is known by its vmId only: its name says nothing now.
        raise AgentError(f"--vm {args.vm!r}: {unknown}, and no runs have it as their vmId "
                         f"(in {source})")
    if args.json:
        json.dump([r.to_dict() for r in runs], sys.stdout, indent=2)
        print()
        return 0
    Out(sys.stderr).line(f"hookvisor: hook runs from {source}")
    out = Out(sys.stdout)
    if not runs:
        out.line("no matching hook runs")
        return 0
    # A terminal gets short times and vmIds (as the chain's) and no duration, so
    # that a row fits 80 columns; a pipe gets every value whole.
    tty = out.rich
    rows = [
        [(_short_when if tty else _when)(r.time), r.origin, r.event,
         (r.vm_id or "-")[:8] if tty else r.vm_id or "-", r.script, r.outcome,
         "-" if r.rc is None else str(r.rc), f"{r.duration * 1000:.1f}", r.chain_id[:8],
         _summary(r, not tty)]
        for r in runs
    ]
    columns = ["time", "origin", "event", "vm", "script", "outcome", "rc", "ms", "chain",
               "detail"]
    if tty:
        rows = [row[:7] + row[8:] for row in rows]
        columns.remove("ms")
    styles: list[str | None] = [OUTCOME_STYLE.get(r.outcome) for r in runs]
    out.table(None, columns, rows, styles,
              keep=("time", "origin", "vm", "outcome", "rc", "chain"))
    if args.verbose:
        for r in runs:
            out.line()
            out.line(f"{_when(r.time)} {r.event} {r.script} ({r.outcome}, {r.origin}, "
                     f"chain {r.chain_id}, sha256 {r.checksum[:16]})",
                     style=OUTCOME_STYLE.get(r.outcome))
            if r.message:
                out.line(f"  {r.message}")
            cut = " (cut at 64 KiB)"
            out.block("stderr" + (cut if r.stderr_truncated else ""), r.stderr)
            out.block("stdout" + (cut if r.stdout_truncated else ""), r.stdout)
            out.block("diff", r.diff, diff=True)
            if r.raw_diff and not r.diff:
                out.line("  diff: formatting only: no change once canonicalised")
            if args.raw:
                out.block("raw diff (the bytes as written)", r.raw_diff, diff=True)
    return 0


# --- replay --------------------------------------------------------------------


def _find_chain(settings: Settings, ref: str) -> tuple[list[RunRecord], ChainInput | None, Path]:
    """The chain's runs in run order and its input, from the agent's or the offline store."""
    for name, origin in ((RECORDS_FILE, "agent"), (OFFLINE_RECORDS_FILE, "offline")):
        path = settings.state_dir / name
        if not path.exists():
            continue
        store = RunRecords(path, origin=origin)
        try:
            hit = store.query(chain_id=ref, limit=None)
            if not hit and ref.isdigit():
                # A run's id (as --json shows it): its chain.
                near = next(store.iter_query(before=int(ref) + 1, chunk=1), None)
                hit = [near] if near is not None and near.id == int(ref) else []
            chains = {r.chain_id for r in hit}
            if len(chains) > 1:
                raise UsageError(f"{ref!r} names {len(chains)} chains in {path}: give more of "
                                 "the chain id")
            if chains:
                chain_id = chains.pop()
                runs = sorted(store.query(chain_id=chain_id, limit=None),
                              key=lambda r: r.id or 0)
                return runs, store.chain_input(chain_id), path
        except sqlite3.Error as e:
            raise UsageError(f"cannot read {path}: {e}") from None
        finally:
            store.close()
    raise UsageError(f"no recorded chain {ref!r} in {settings.state_dir} (see hooks history)")


def cmd_replay(args: argparse.Namespace) -> int:
    from hookvisor.cli import hooks_cmd

    if not args.run or not re.fullmatch(r"[0-9a-fA-F]+", args.run):
        raise UsageError(f"RUN: expected a chain id (hex) or a run id, got {args.run!r}")
    settings = settings_from_args(args, hooks_dir=args.hooks_dir)
    then, given, path = _find_chain(settings, args.run.lower())
    first = then[0]
    if given is None:
        raise UsageError(f"chain {first.chain_id}: its input is not kept any more (only the "
                         "newest chains keep theirs), it cannot be replayed")
    if given.data_truncated:
        raise UsageError(f"chain {first.chain_id}: its input was bigger than hook_input_cap "
                         "and was kept cut: it cannot be replayed exactly")
    problem = hooks_cmd.hooks_dir_problem(settings, args.hooks_dir is not None)
    if problem:
        raise UsageError(problem)
    ev = get_event(first.event)
    to_stdout = args.output == "-"
    out = Out(sys.stderr if to_stdout else sys.stdout)
    err = Out(sys.stderr)
    vm_props = dict(given.vm_props)
    for text in args.prop:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise UsageError(f"--prop: expected NAME=VALUE, got {text!r}")
        vm_props[name] = value
    missing = sorted(k for k, v in vm_props.items() if v == REDACTED)
    device_props = {k: v for k, v in given.device_props.items() if v != REDACTED}
    for name in missing:
        out.line(f"warning: property {name} was not recorded (its name says secret): unset "
                 "for this replay; give it with --prop NAME=VALUE", style="yellow")
        del vm_props[name]
    out.line(f"replaying chain {first.chain_id} ({ev.name}, vm {first.vm_id or '-'}, "
             f"{first.origin} run of {_when(first.time)}, from {path}) against "
             f"{settings.hooks_dir}")
    status, result = hooks_cmd.run_chain(args, settings, ev, given.data, first.vm_id,
                                         vm_props, device_props, dict(given.extras), out, err,
                                         records=None)
    _compare(out, then, result)
    return status


def _compare(out: Out, then: list[RunRecord], result: ChainResult) -> None:
    now = {r.script: r for r in result.runs}
    recorded = {r.script: r for r in then}
    rows: list[list[str]] = []
    styles: list[str | None] = []
    same = True
    for script in list(dict.fromkeys([*recorded, *now])):
        a, b = recorded.get(script), now.get(script)
        what: list[str] = []
        if a is None:
            what.append("did not run then")
        elif b is None:
            what.append("did not run now")
        else:
            if a.checksum and b.checksum and a.checksum != b.checksum:
                what.append("script changed since")
            if (a.outcome, a.rc) != (b.outcome, b.rc):
                what.append("outcome differs")
            if a.diff != b.diff:
                what.append("its edit differs")
        same = same and not what
        rows.append([script, _outcome(a), _outcome(b), ", ".join(what) or "same"])
        styles.append("yellow" if what else None)
    out.line()
    out.table("then (recorded) and now:", ["script", "then", "now", "difference"], rows, styles,
              keep=("script", "then", "now"))
    then_vetoed = any(r.failed for r in then) and get_event(then[0].event).vetoes
    verdict = ("the same outcome as recorded" if same else
               f"a different outcome: then {'vetoed' if then_vetoed else 'passed'}, now "
               f"{'vetoed' if result.vetoed else 'passed'}")
    out.line(f"replay: {verdict}", style="bold green" if same else "bold yellow")


def _outcome(run: Any) -> str:
    if run is None:
        return "-"
    return f"{run.outcome} rc={'-' if run.rc is None else run.rc}"
