"""`hookvisor hooks`: list the installed hooks, try a chain offline, read the run records.

    hookvisor hooks list [--hooks-dir DIR] [--event E] [--json]
    hookvisor hooks run EVENT [--hooks-dir DIR] [--xml FILE | --json FILE]
                        [--prop NAME=VALUE]... [--device-prop NAME=VALUE]...
                        [--extra NAME=VALUE]... [--vm-id UUID] [--timeout S]
                        [--output FILE] [--no-record]
    hookvisor hooks history [--vm VM] [--event E] [--failed] [--limit N] [--json] [-v]

`run` exits 0 if the chain passed, 1 if the event would be vetoed (for an event
that cannot veto: if a script failed), 2 for usage errors. Tables and coloured
diffs on a terminal, plain text when piped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from hookvisor.cli.common import (
    UsageError,
    add_global_options,
    parse_assignment,
    settings_from_args,
)
from hookvisor.cli.output import OUTCOME_STYLE, Out, is_terminal
from hookvisor.config import Settings
from hookvisor.hooks.catalogue import EVENTS, Event, Payload, get_event
from hookvisor.hooks.discovery import ChecksumCache, Script, list_scripts
from hookvisor.hooks.launchflags import START_PAUSED, read_flags
from hookvisor.hooks.manifest import MANIFEST_SUFFIX, ManifestCache, ManifestError
from hookvisor.hooks.records import OFFLINE_RECORDS_FILE, RunRecords
from hookvisor.hooks.runner import ChainResult, HookRunner, RunnerConfig, ScriptRun
from hookvisor.rpc.client import AgentError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from hookvisor.cli import hooks_history
    from hookvisor.cli.vm_cmd import add_client_options

    parser = subparsers.add_parser(
        "hooks", help="list hooks, try a hook chain offline, read and replay hook run records",
        description="The hook engine, for hook authors and operators.",
    )
    sub = parser.add_subparsers(dest="hooks_action", metavar="ACTION", required=True)

    lst = sub.add_parser("list", help="events, scripts in run order, checksums, manifests",
                         description="What the running agent reports (getVdsCapabilities) "
                         "when one is reachable, else the hooks dir's files; says which.")
    lst.add_argument("--hooks-dir", type=Path, metavar="DIR",
                     help="list this dir's files (default: ask the agent, else the "
                     "settings' hooks_dir)")
    lst.add_argument("--event", metavar="E", help="only this event")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument("--local", action="store_true", help="the files only, not the agent")
    add_client_options(lst)
    lst.set_defaults(func=cmd_list)

    run = sub.add_parser(
        "run", help="run an event's chain exactly as the agent would, on a copy of the data",
        description="Runs EVENT's scripts on a copy of FILE (never touched), custom "
        "properties checked against the definitions first, as the agent does. Exit 0 if the "
        "chain passed, 1 if the event would be vetoed or the properties refused, 2 for usage "
        "errors. Runs are recorded apart from the agent's (offline).",
    )
    run.add_argument("event", metavar="EVENT")
    run.add_argument("--hooks-dir", type=Path, metavar="DIR",
                     help="hooks dir (default: the settings' hooks_dir)")
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
    run.add_argument("--cver", metavar="VERSION", help="check the properties against this "
                     "cluster version's definitions (default: the settings' cluster_version)")
    run.add_argument("--no-prop-check", action="store_true",
                     help="run without checking the properties against the definitions")
    run.add_argument("--timeout", type=float, metavar="S",
                     help="timeout per script, seconds (default: the settings'; a script's "
                     "manifest still wins)")
    run.add_argument("--output", metavar="FILE",
                     help="write the final data to FILE ('-': stdout; the report then "
                     "goes to stderr)")
    run.add_argument("--no-record", action="store_true",
                     help="do not record these runs (default: recorded as offline runs in "
                     f"<state dir>/{OFFLINE_RECORDS_FILE})")
    add_global_options(run)
    run.set_defaults(func=cmd_run)

    hooks_history.register(sub, add_client_options)


_Out = Out


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


NOT_EXECUTABLE = "present but not executable: it never runs (chmod +x to run it)"


def not_executable(hooks_dir: Path, event: str) -> list[str]:
    """Regular files of the event's dir that discovery skips for want of an x bit."""
    directory = hooks_dir / event
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(MANIFEST_SUFFIX):
            continue
        try:
            if entry.is_file() and not os.access(entry.path, os.X_OK):
                out.append(entry.name)
        except OSError:
            continue
    return sorted(out, key=os.fsencode)


def _agent_hooks(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    """The agent's hooks report and where it came from; (None, why) if not asked or not reached."""
    from hookvisor.cli import hooks_history

    client, why = hooks_history.agent_client(args)
    if client is None:
        return None, why
    try:
        info = client.call("getVdsCapabilities").get("info", {})
    except AgentError as e:
        return None, hooks_history.fallback(args, e)
    hooks = info.get("hooks")
    return (hooks if isinstance(hooks, dict) else {}), f"the agent at {client.address}"


def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings(args, hooks_dir=args.hooks_dir)
    hooks_dir = settings.hooks_dir
    events = [_event(args.event).name] if args.event else list(EVENTS)
    agent: dict[str, Any] | None = None
    source = f"the files in {hooks_dir}"
    if args.hooks_dir is None and not args.local:
        agent, where = _agent_hooks(args)
        source = where if agent is not None else f"the files in {hooks_dir} ({where})"
    checksums, manifests = ChecksumCache(), ManifestCache()
    listing: dict[str, list[dict[str, Any]]] = {}
    for name in events:
        local = {s.name: _script_info(s, checksums, manifests)
                 for s in list_scripts(hooks_dir, name)}
        if agent is not None:
            # The agent's word on what runs; the files add manifests and refusals.
            reported = agent.get(name) or {}
            infos = []
            for script in sorted(reported, key=os.fsencode):
                info = dict(local.get(script) or {"script": script, "manifest": None,
                                                  "manifest_error": None, "refused": None})
                info["checksum"] = str((reported[script] or {}).get("checksum", ""))
                infos.append(info)
        else:
            infos = list(local.values())
        for script in not_executable(hooks_dir, name):
            infos.append({"script": script, "checksum": "", "manifest": None,
                          "manifest_error": None, "refused": None,
                          "not_executable": NOT_EXECUTABLE})
        if infos or args.event:
            listing[name] = infos
    unknown = _unknown_dirs(hooks_dir) if not args.event else []
    if args.json:
        json.dump({"hooks_dir": str(hooks_dir), "source": source, "events": listing,
                   "unknown_event_dirs": unknown}, sys.stdout, indent=2)
        print()
        return 0
    _Out(sys.stderr).line(f"hookvisor: hooks as reported by {source}")
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
            elif info.get("not_executable"):
                state, style = "NOT EXECUTABLE", "yellow"
            else:
                state = "ok"
            rows.append([info["script"], state, info["checksum"][:16] or "-", manifest])
            styles.append(style)
        title = f"{name} ({', '.join(traits)})"
        if rows:
            out.table(title, ["script", "state", "sha256", "manifest"], rows, styles,
                      keep=("script", "state", "sha256"))
            for info in infos:
                if info["refused"]:
                    out.line(f"  {info['script']}: {info['refused']}", style="bold red")
                if info.get("not_executable"):
                    out.line(f"  {info['script']}: {info['not_executable']}", style="yellow")
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
        return _data_file(ev.name, args, "json", "JSON", "its data")
    return _data_file(ev.name, args, "xml", f"{payload.value} XML", f"its {payload.value} XML")


# How each data flag's file is checked, and what a bad one raises.
_PARSERS: dict[str, tuple[Callable[[str], object], type[Exception]]] = {
    "json": (json.loads, ValueError),
    "xml": (ET.fromstring, ET.ParseError),
}


def _data_file(event: str, args: argparse.Namespace, flag: str, takes: str, needs: str) -> str:
    """The event's data, given as --`flag` ("json" or "xml") and not as the other one: the
    file's text, once it parses."""
    other = "xml" if flag == "json" else "json"
    if getattr(args, other):
        raise UsageError(f"{event} takes {takes}: use --{flag} FILE, not --{other}")
    path = getattr(args, flag)
    if not path:
        raise UsageError(f"{event} needs {needs}: --{flag} FILE")
    text = _read_input(path)
    parse, error = _PARSERS[flag]
    # Refused before any hook runs: a hook would only fail on it, less clearly.
    try:
        parse(text)
    except error as e:
        raise UsageError(f"--{flag} {path}: not {flag.upper()}: {e}") from None
    return text


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
    """The offline store: apart from the agent's runs, so history tells them apart."""
    path = settings.state_dir / OFFLINE_RECORDS_FILE
    records = RunRecords(path, limit=settings.hook_history_limit, origin="offline",
                         inputs_kept=settings.hook_inputs_kept)
    try:
        records.count()  # opens (and creates) it now, so a read-only state dir shows here
    except (sqlite3.Error, OSError) as e:
        records.close()
        err.line(f"note: runs not recorded ({path}: {e})", style="yellow")
        return None
    return records


def check_props(settings: Settings, ev: Event, data: str, vm_props: dict[str, str],
                device_props: dict[str, str], cver: str | None) -> tuple[list[str], str]:
    """What the agent would refuse in these properties, and which store said so."""
    from hookvisor.props.errors import PropertyError
    from hookvisor.props.registry import DB_FILE_NAME, PropertyRegistry

    path = settings.state_dir / DB_FILE_NAME
    version = cver or settings.cluster_version
    where = f"{path}, cluster version {version}"
    if not vm_props and not device_props:
        return [], where
    devices: list[tuple[str, dict[str, str]]] = []
    if device_props and ev.payload is Payload.DEVICE:
        # A device event's data is the device: its element names the type
        # (interface, disk...) the definitions are per.
        with suppress(ET.ParseError):
            devices.append((ET.fromstring(data).tag, device_props))
    elif device_props:
        where += "; --device-prop not checked: a domain event names no device type"
    try:
        reg = PropertyRegistry(path, version)
    except PropertyError as e:
        raise UsageError(f"--cver: {e}") from None
    try:
        return reg.problems(vm=vm_props, devices=devices, version=version), where
    except sqlite3.Error as e:
        return [f"cannot read the definitions: {e}"], where
    finally:
        reg.close()


class _Shown(HookRunner):
    """A runner that names the script it starts on a spinner (a terminal's stderr)."""

    status: Any = None

    def _run_one(self, ev: Event, script: Script, *args: Any, **kwargs: Any) -> Any:
        if self.status is not None:
            self.status.update(f"{ev.name}: running {script.name}")
        return super()._run_one(ev, script, *args, **kwargs)


@contextmanager
def _spinner(runner: _Shown, ev: Event) -> Iterator[None]:
    if not is_terminal(sys.stderr):
        yield
        return
    from rich.console import Console

    with Console(file=sys.stderr).status(f"{ev.name}: starting") as status:
        runner.status = status
        try:
            yield
        finally:
            runner.status = None


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
             style=OUTCOME_STYLE.get(run.outcome))
    if run.message:
        out.line(f"  {run.message}")
    out.block("stderr" + (" (cut at 64 KiB)" if run.stderr_truncated else ""), run.stderr)
    out.block("stdout" + (" (cut at 64 KiB)" if run.stdout_truncated else ""), run.stdout)
    label = "diff (discarded)" if run.failed else "diff"
    out.block(label, run.diff, diff=True)
    if run.raw_diff and not run.diff:
        out.line(f"  {label}: formatting only: no change once canonicalised")


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


def hooks_dir_problem(settings: Settings, given: bool) -> str | None:
    where = "--hooks-dir" if given else "hooks_dir (from the settings)"
    if not settings.hooks_dir.exists():
        return f"{where} {settings.hooks_dir}: does not exist"
    if not settings.hooks_dir.is_dir():
        return f"{where} {settings.hooks_dir}: not a directory"
    return None


def cmd_run(args: argparse.Namespace) -> int:
    ev = _event(args.event)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    settings = _settings(args, hooks_dir=args.hooks_dir)
    problem = hooks_dir_problem(settings, args.hooks_dir is not None)
    if problem:
        raise UsageError(problem)
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
    to_stdout = args.output == "-"
    out = _Out(sys.stderr if to_stdout else sys.stdout)
    err = _Out(sys.stderr)
    if not args.no_prop_check and (vm_props or device_props):
        problems, where = check_props(settings, ev, data, vm_props, device_props, args.cver)
        out.line(f"custom properties checked against {where}")
        if problems:
            for p in problems:
                out.line(f"REFUSED: {p}", style="bold red")
            out.line("the agent would refuse these properties before any hook runs "
                     "(define them: hookvisor config --add; or --no-prop-check)",
                     style="bold red")
            return 1
    status, _ = run_chain(args, settings, ev, data, vm_id, vm_props, device_props, extras,
                          out, err,
                          records=None if args.no_record else _open_records(settings, err))
    return status


def run_chain(args: argparse.Namespace, settings: Settings, ev: Event, data: str,
              vm_id: str | None, vm_props: dict[str, str], device_props: dict[str, str],
              extras: dict[str, str], out: Out, err: Out,
              records: RunRecords | None) -> tuple[int, ChainResult]:
    """Run the chain offline and report it; `hooks run` and `hooks replay` share it.

    The exit status (0 passed, 1 vetoed or failed) and the chain's result.
    """
    for name in not_executable(settings.hooks_dir, ev.name):
        out.line(f"warning: {name}: {NOT_EXECUTABLE}", style="yellow")
    try:
        with _temp_run_dir() as run_dir, _quiet_engine_log():
            # One chain, then exit: a zygote's start-up would cost more than it saves.
            config = replace(RunnerConfig.from_settings(settings), run_dir=run_dir,
                             launchflags_dir=None, warm_hooks=False)
            if args.timeout is not None:
                config = replace(config, default_timeout=args.timeout, event_timeouts={},
                                 script_timeouts={})
            runner = _Shown(config, records)
            scripts = len(runner.scripts(ev.name))
            with _spinner(runner, ev):
                result = runner.run(ev.name, data, vm_id=vm_id, vm_props=vm_props,
                                    device_props=device_props, extra_env=extras)
            flags = read_flags(run_dir, vm_id) if vm_id and "/" not in vm_id else 0
    finally:
        if records is not None:
            records.close()
    _report_chain(out, result, scripts, flags)
    if records is not None and result.runs:
        out.line(f"recorded as offline runs in {records.path} (chain {result.chain_id[:8]})",
                 style="dim")
    if args.output:
        final = result.data
        if args.output == "-":
            sys.stdout.write(final if final.endswith("\n") or not final else final + "\n")
            sys.stdout.flush()
        else:
            try:
                Path(args.output).write_text(final, encoding="utf-8")
            except OSError as e:
                err.line(f"hookvisor: cannot write {args.output}: {e.strerror}")
                return 1, result
    if result.vetoed:
        return 1, result
    return (1 if any(not r.ignored for r in result.failures) else 0), result


