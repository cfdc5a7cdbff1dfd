"""`hookvisor hooks`: list the installed hooks, try a chain offline, read the run records.

    hookvisor hooks list [--hooks-dir DIR] [--event E] [--json]
    hookvisor hooks run EVENT [--hooks-dir DIR] [--xml FILE | --json FILE]
                        [--prop NAME=VALUE]... [--device-prop NAME=VALUE]...
                        [--extra NAME=VALUE]... [--vm-id UUID] [--timeout S]
                        [--output FILE] [--no-record]
    hookvisor hooks history [--vm ID] [--event E] [--failed] [--limit N] [--json] [-v]

`run` exits 0 if the chain passed, 1 if the event would be vetoed (for an event
that cannot veto: if a script failed), 2 for usage errors. Tables and coloured
diffs on a terminal, plain text when piped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
import sqlite3
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from hookvisor.cli.common import (
    UsageError,
    add_global_options,
    parse_assignment,
    settings_from_args,
    visible,
)
from hookvisor.config import Settings
from hookvisor.hooks.catalogue import EVENTS, Event, Payload, get_event
from hookvisor.hooks.discovery import ChecksumCache, Script, list_scripts
from hookvisor.hooks.launchflags import START_PAUSED, read_flags
from hookvisor.hooks.manifest import ManifestCache, ManifestError
from hookvisor.hooks.records import RECORDS_FILE, RunRecord, RunRecords
from hookvisor.hooks.runner import ChainResult, HookRunner, RunnerConfig, ScriptRun

_OUTCOME_STYLE = {
    "ok": "green",
    "skipped": "dim",
    "failed": "bold red",
    "timeout": "bold red",
    "invalid-output": "bold red",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "hooks", help="list hooks, try a hook chain offline, read hook run records",
        description="The hook engine, for hook authors and operators.",
    )
    sub = parser.add_subparsers(dest="hooks_action", metavar="ACTION", required=True)

    lst = sub.add_parser("list", help="events, scripts in run order, checksums, manifests")
    lst.add_argument("--hooks-dir", type=Path, metavar="DIR",
                     help="hooks dir (default: the settings')")
    lst.add_argument("--event", metavar="E", help="only this event")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    add_global_options(lst)
    lst.set_defaults(func=cmd_list)

    run = sub.add_parser(
        "run", help="run an event's chain exactly as the agent would, on a copy of the data",
        description="Runs EVENT's scripts on a copy of FILE (never touched). Exit 0 if the "
        "chain passed, 1 if the event would be vetoed, 2 for usage errors.",
    )
    run.add_argument("event", metavar="EVENT")
    run.add_argument("--hooks-dir", type=Path, metavar="DIR",
                     help="hooks dir (default: the settings')")
    data = run.add_mutually_exclusive_group()
    data.add_argument("--xml", metavar="FILE", help="domain or device XML ('-': stdin)")
    data.add_argument("--json", metavar="FILE", help="JSON document ('-': stdin)")
    run.add_argument("--prop", action="append", default=[], metavar="NAME=VALUE",
                     help="a VM custom property (repeatable)")
    run.add_argument("--device-prop", action="append", default=[], metavar="NAME=VALUE",
                     help="a device custom property (repeatable; the VM's wins on a clash)")
    run.add_argument("--extra", action="append", default=[], metavar="NAME=VALUE",
                     help="an event extra, e.g. FROM_SNAPSHOT=True for *_vm_dehibernate")
    run.add_argument("--vm-id", metavar="UUID",
                     help="vmId (default: the domain XML's <uuid>, if any)")
    run.add_argument("--timeout", type=float, metavar="S",
                     help="timeout per script, seconds (a script's manifest still wins)")
    run.add_argument("--output", metavar="FILE",
                     help="write the final data to FILE ('-': stdout; the report then "
                     "goes to stderr)")
    run.add_argument("--no-record", action="store_true",
                     help="do not add these runs to the state dir's hook records")
    add_global_options(run)
    run.set_defaults(func=cmd_run)

    hist = sub.add_parser("history", help="the records of past hook runs, newest first")
    hist.add_argument("--vm", metavar="ID", help="only runs for this vmId")
    hist.add_argument("--event", metavar="E", help="only runs of this event")
    hist.add_argument("--chain", metavar="ID", help="only the runs of this chain")
    hist.add_argument("--failed", action="store_true",
                      help="only failed, timed-out and invalid-output runs")
    hist.add_argument("--limit", type=int, default=50, metavar="N",
                      help="at most N runs (default 50)")
    hist.add_argument("--json", action="store_true", help="machine-readable output")
    hist.add_argument("-v", "--verbose", action="store_true",
                      help="also print each run's stdout, stderr and diff")
    add_global_options(hist)
    hist.set_defaults(func=cmd_history)


# --- output helpers ----------------------------------------------------------


class _Out:
    """rich on a terminal, plain text otherwise (pipes, files, tests)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.rich = stream.isatty()
        self.console: Any = None
        if self.rich:
            from rich.console import Console

            self.console = Console(file=stream, highlight=False)

    def line(self, text: str = "", style: str | None = None) -> None:
        text = visible(text)
        if self.rich:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""))
        else:
            print(text, file=self.stream)

    def table(self, title: str | None, columns: Sequence[str], rows: list[list[str]],
              styles: list[str | None] | None = None) -> None:
        rows = [[visible(cell) for cell in row] for row in rows]
        if self.rich:
            from rich.table import Table

            table = Table(title=title, title_justify="left", show_lines=False)
            for column in columns:
                table.add_column(column, overflow="fold")
            for i, row in enumerate(rows):
                table.add_row(*row, style=(styles[i] if styles else None))
            self.console.print(table)
            return
        if title:
            print(title, file=self.stream)
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        for row in [list(columns), *rows]:
            cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
            print("  ".join(cells).rstrip(), file=self.stream)

    def block(self, label: str, text: str, diff: bool = False) -> None:
        if not text:
            return
        text = visible(text, newlines=True)
        if self.rich:
            from rich.syntax import Syntax
            from rich.text import Text

            self.console.print(Text(f"  {label}:", style="bold"))
            if diff:
                self.console.print(Syntax(text.rstrip("\n"), "diff", theme="ansi_dark",
                                          background_color="default"))
            else:
                self.console.print(Text(_indent(text)))
            return
        print(f"  {label}:", file=self.stream)
        print(_indent(text), file=self.stream)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


def _event(name: str) -> Event:
    try:
        return get_event(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return settings_from_args(args, **overrides)


# --- list ----------------------------------------------------------------------


def _script_info(script: Script, checksums: ChecksumCache,
                 manifests: ManifestCache) -> dict[str, Any]:
    info: dict[str, Any] = {"script": script.name, "checksum": checksums.checksum(script),
                            "manifest": None, "manifest_error": None,
                            "refused": script.refused}
    if script.manifest is not None:
        try:
            info["manifest"] = manifests.load(script.manifest).settings()
        except ManifestError as e:
            info["manifest_error"] = str(e)
    return info


def _unknown_dirs(hooks_dir: Path) -> list[str]:
    """Directories that look like events but are not (a typo runs nothing, silently)."""
    try:
        names = sorted(p.name for p in hooks_dir.iterdir() if p.is_dir())
    except OSError:
        return []
    return [n for n in names if n not in EVENTS and not n.startswith(".")]


def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings(args, hooks_dir=args.hooks_dir)
    hooks_dir = settings.hooks_dir
    events = [_event(args.event).name] if args.event else list(EVENTS)
    checksums, manifests = ChecksumCache(), ManifestCache()
    listing: dict[str, list[dict[str, Any]]] = {}
    for name in events:
        scripts = list_scripts(hooks_dir, name)
        if scripts or args.event:
            listing[name] = [_script_info(s, checksums, manifests) for s in scripts]
    unknown = _unknown_dirs(hooks_dir) if not args.event else []
    if args.json:
        json.dump({"hooks_dir": str(hooks_dir), "events": listing,
                   "unknown_event_dirs": unknown}, sys.stdout, indent=2)
        print()
        return 0
    out = _Out(sys.stdout)
    if not listing:
        out.line(f"no hooks installed in {hooks_dir}")
    for name, infos in listing.items():
        ev = EVENTS[name]
        traits = [ev.payload.value + " payload"]
        traits += ["may modify"] if ev.modifies else []
        traits += ["may veto"] if ev.vetoes else []
        rows: list[list[str]] = []
        styles: list[str | None] = []
        for info in infos:
            if info["manifest_error"]:
                manifest, style = f"BAD: {info['manifest_error']}", "bold red"
            elif info["manifest"]:
                m = dict(info["manifest"])
                m.pop("file")
                manifest = " ".join(
                    f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in m.items()
                )
                style = None
            else:
                manifest, style = "-", None
            if info["refused"]:
                # It fails every run of the event: say so where the admin looks.
                state, style = "REFUSED", "bold red"
            else:
                state = "ok"
            rows.append([info["script"], state, info["checksum"][:16], manifest])
            styles.append(style)
        title = f"{name} ({', '.join(traits)})"
        if rows:
            out.table(title, ["script", "state", "sha256", "manifest"], rows, styles)
            for info in infos:
                if info["refused"]:
                    out.line(f"  {info['script']}: {info['refused']}", style="bold red")
        else:
            out.line(f"{title}: no scripts in {hooks_dir / name}")
    for name in unknown:
        out.line(f"warning: {hooks_dir / name} is not a known event; its scripts never run",
                 style="yellow")
    return 0


# --- run -----------------------------------------------------------------------


def _read_input(path: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8") from None


def _input_data(ev: Event, args: argparse.Namespace) -> str:
    payload = ev.payload
    if payload is Payload.NONE:
        if args.xml or args.json:
            raise UsageError(f"{ev.name} takes no data: drop --xml/--json")
        return ""
    if payload is Payload.JSON:
        if args.xml:
            raise UsageError(f"{ev.name} takes JSON: use --json FILE, not --xml")
        if not args.json:
            raise UsageError(f"{ev.name} needs its data: --json FILE")
        return _read_input(args.json)
    if args.json:
        raise UsageError(f"{ev.name} takes {payload.value} XML: use --xml FILE, not --json")
    if not args.xml:
        raise UsageError(f"{ev.name} needs its {payload.value} XML: --xml FILE")
    return _read_input(args.xml)


def _domain_uuid(data: str) -> str | None:
    try:
        uuid = ET.fromstring(data).findtext("uuid")
    except ET.ParseError:
        return None
    return uuid.strip() if uuid else None


def _assignments(values: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in values:
        name, value = parse_assignment(text, option)
        out[name] = value
    return out


def _open_records(settings: Settings, err: _Out) -> RunRecords | None:
    records = RunRecords(settings.state_dir / RECORDS_FILE, limit=settings.hook_history_limit)
    try:
        records.count()  # opens (and creates) it now, so a read-only state dir shows here
    except (sqlite3.Error, OSError) as e:
        records.close()
        err.line(f"note: runs not recorded ({settings.state_dir / RECORDS_FILE}: {e})",
                 style="yellow")
        return None
    return records


@contextmanager
def _temp_run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hookvisor-run-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _quiet_engine_log() -> Iterator[None]:
    """The engine logs failures for the agent's log; here the report shows them."""
    logger = logging.getLogger("hookvisor.hooks.runner")
    saved = logger.propagate
    logger.propagate = False
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


def _report_run(out: _Out, run: ScriptRun) -> None:
    rc = "-" if run.rc is None else str(run.rc)
    extra = " (on_failure=ignore)" if run.ignored and run.failed else ""
    out.line(f"{run.script}: {run.outcome}{extra}  rc={rc}  {run.duration * 1000:.1f} ms",
             style=_OUTCOME_STYLE.get(run.outcome))
    if run.message:
        out.line(f"  {run.message}")
    out.block("stderr" + (" (cut at 64 KiB)" if run.stderr_truncated else ""), run.stderr)
    out.block("stdout" + (" (cut at 64 KiB)" if run.stdout_truncated else ""), run.stdout)
    label = "diff (discarded)" if run.failed else "diff"
    out.block(label, run.diff, diff=True)


def _report_chain(out: _Out, result: ChainResult, scripts: int, flags: int) -> None:
    ev = result.event
    for problem in result.refused:
        out.line(f"warning: {problem}", style="yellow")
    if not result.runs:
        out.line(f"{ev.name}: no scripts to run")
    for run in result.runs:
        _report_run(out, run)
    if len(result.runs) < scripts:
        out.line(f"({scripts - len(result.runs)} later script(s) not run: the chain stopped)")
    if flags:
        what = " (start paused)" if flags & START_PAUSED else ""
        out.line(f"launch flags set by the hooks: {flags}{what}")
    if result.vetoed:
        out.line(f"VETOED: {ev.name} would not be carried out: {result.message()}",
                 style="bold red")
    elif result.failures:
        why = "ignored (on_failure=ignore)" if ev.vetoes else f"{ev.name} cannot veto"
        out.line(f"FAILED: {result.message()} ({why})", style="bold red")
    else:
        out.line("chain passed", style="bold green")


def cmd_run(args: argparse.Namespace) -> int:
    ev = _event(args.event)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    data = _input_data(ev, args)
    vm_props = _assignments(args.prop, "--prop")
    device_props = _assignments(args.device_prop, "--device-prop")
    extras = _assignments(args.extra, "--extra")
    for name in extras:
        if name not in ev.extras:
            allowed = ", ".join(ev.extras) or "none"
            raise UsageError(f"--extra {name}: {ev.name} takes no such extra (takes: {allowed})")
    vm_id = args.vm_id
    if vm_id is None and ev.payload is Payload.DOMAIN:
        vm_id = _domain_uuid(data)
    settings = _settings(args, hooks_dir=args.hooks_dir)
    to_stdout = args.output == "-"
    out = _Out(sys.stderr if to_stdout else sys.stdout)
    err = _Out(sys.stderr)
    records = None if args.no_record else _open_records(settings, err)
    try:
        with _temp_run_dir() as run_dir, _quiet_engine_log():
            config = replace(RunnerConfig.from_settings(settings), run_dir=run_dir,
                             launchflags_dir=None)
            if args.timeout is not None:
                config = replace(config, default_timeout=args.timeout, event_timeouts={},
                                 script_timeouts={})
            runner = HookRunner(config, records)
            scripts = len(runner.scripts(ev.name))
            result = runner.run(ev.name, data, vm_id=vm_id, vm_props=vm_props,
                                device_props=device_props, extra_env=extras)
            flags = read_flags(run_dir, vm_id) if vm_id and "/" not in vm_id else 0
    finally:
        if records is not None:
            records.close()
    _report_chain(out, result, scripts, flags)
    if args.output:
        final = result.data
        if to_stdout:
            sys.stdout.write(final)
            sys.stdout.flush()
        else:
            try:
                Path(args.output).write_text(final, encoding="utf-8")
            except OSError as e:
                err.line(f"hookvisor: cannot write {args.output}: {e.strerror}")
                return 1
    if result.vetoed:
        return 1
    return 1 if any(not r.ignored for r in result.failures) else 0


# --- history -------------------------------------------------------------------


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _summary(record: RunRecord) -> str:
    text = record.message or record.stderr.strip()
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= 80 else first[:77] + "..."


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit <= 0:
        raise UsageError(f"--limit: expected a positive integer, got {args.limit}")
    if args.event:
        _event(args.event)
    settings = _settings(args)
    path = settings.state_dir / RECORDS_FILE
    if not path.exists():
        if args.json:
            print("[]")
        else:
            print(f"no hook runs recorded in {path}")
        return 0
    records = RunRecords(path, limit=settings.hook_history_limit)
    try:
        runs = records.query(vm_id=args.vm, event=args.event, failed=args.failed,
                             chain_id=args.chain, limit=args.limit)
    except sqlite3.Error as e:
        print(f"hookvisor: cannot read hook records {path}: {e}", file=sys.stderr)
        return 1
    finally:
        records.close()
    if args.json:
        json.dump([r.to_dict() for r in runs], sys.stdout, indent=2)
        print()
        return 0
    out = _Out(sys.stdout)
    if not runs:
        out.line("no matching hook runs")
        return 0
    rows = [
        [_when(r.time), r.event, r.vm_id or "-", r.script, r.outcome,
         "-" if r.rc is None else str(r.rc), f"{r.duration * 1000:.1f}", r.chain_id[:8],
         _summary(r)]
        for r in runs
    ]
    styles: list[str | None] = [_OUTCOME_STYLE.get(r.outcome) for r in runs]
    out.table(None, ["time", "event", "vm", "script", "outcome", "rc", "ms", "chain", "detail"],
              rows, styles)
    if args.verbose:
        for r in runs:
            out.line()
            out.line(f"{_when(r.time)} {r.event} {r.script} ({r.outcome}, chain {r.chain_id}, "
                     f"sha256 {r.checksum[:16]})", style=_OUTCOME_STYLE.get(r.outcome))
            if r.message:
                out.line(f"  {r.message}")
            cut = " (cut at 64 KiB)"
            out.block("stderr" + (cut if r.stderr_truncated else ""), r.stderr)
            out.block("stdout" + (cut if r.stdout_truncated else ""), r.stdout)
            out.block("diff", r.diff, diff=True)
    return 0
