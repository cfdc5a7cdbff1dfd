"""`hookvisor serve`: the agent daemon.

Settings: defaults < /etc/hookvisor/hookvisor.toml (or --config) < HOOKVISOR_*
environment < flags. Logs go to stderr, one line per record. SIGTERM and
SIGINT stop it cleanly: no new requests, requests in flight finish, then
after_vdsm_stop runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookvisor.cli.common import (
    UsageError,
    add_global_options,
    parse_assignment,
    settings_from_args,
    visible,
)
from hookvisor.cli.sdnotify import Notifier
from hookvisor.cli.startup import unwritable_dir
from hookvisor.config import Settings

if TYPE_CHECKING:
    from hookvisor.agent.context import PropertyChecker
    from hookvisor.agent.hookcalls import HookCalls
    from hookvisor.agent.network import NetworkService

log = logging.getLogger("hookvisor.serve")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormatter(logging.Formatter):
    """One record, one line: control characters in the message made visible escapes.

    A traceback (exc_info) is appended after this, still on its own lines.
    """

    def __init__(self, fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)
        # (whole second, its text): every record of one second shares it.
        self._stamp: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        # Every changing call logs twice: LOG_FORMAT is built here directly, the
        # same text as logging.Formatter makes of it, at half its cost.
        if (self._fmt != LOG_FORMAT or record.exc_info or record.exc_text
                or record.stack_info):
            return super().format(record)
        record.message = message = visible(record.getMessage())
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = (second, time.strftime(self.default_time_format,
                                           self.converter(record.created)))
            self._stamp = stamp  # one assignment: a thread reads a whole pair
        return f"{stamp[1]},{int(record.msecs):03d} {record.levelname} {record.name}: {message}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        # A hook's stderr (which may carry a client's custom property) must not
        # forge a log line or drive the reader's terminal.
        record.message = visible(record.message)
        return super().formatMessage(record)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """StreamHandler without the second flush: stderr is line-buffered, its write
    of a line has reached the file already."""

    def flush(self) -> None:
        if not getattr(self.stream, "line_buffering", False):
            super().flush()


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the agent: VDSM's XML-RPC API on libvirt, with hooks")
    add_global_options(p)
    p.add_argument("--libvirt-uri", help="libvirt URI (default test:///default)")
    p.add_argument("--listen", metavar="HOST:PORT", help="TCP address of the API, mutual "
                   "TLS unless --insecure (default 127.0.0.1:54321; '' for none)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="plain TCP on --listen, no TLS: whoever reaches it is root here")
    p.add_argument("--pki-dir", type=Path, help="CA, host certificate and key, VDSM's "
                   "layout (default /etc/pki/hookvisor; `hookvisor pki init`)")
    p.add_argument("--socket", type=Path, help="Unix socket for local clients "
                   "(default <run dir>/hookvisor.sock)")
    p.add_argument("--workers", type=int, metavar="N", help="threads serving requests "
                   "(default 16)")
    p.add_argument("--hooks-dir", type=Path, help="hooks dir (default "
                   "/usr/libexec/hookvisor/hooks)")
    p.add_argument("--run-dir", type=Path, help="run dir for hook temp files and launch flags "
                   "(default /run/hookvisor)")
    p.add_argument("--cluster-version", help="custom property definitions to check against "
                   "(default 4.8)")
    p.add_argument("--domain-type", choices=("auto", "kvm", "qemu"),
                   help="domain type for params-built VMs (default auto)")
    p.add_argument("--hook-timeout", type=float, metavar="SECONDS",
                   help="timeout of one hook script (default 60)")
    p.add_argument("--hook-grace", type=float, metavar="SECONDS",
                   help="between SIGTERM and SIGKILL for a hook past its timeout "
                   "(default 2)")
    p.add_argument("--event-timeout", action="append", default=[], metavar="EVENT=SECONDS",
                   help="timeout for one event's scripts (repeatable; default: "
                   "--hook-timeout)")
    p.add_argument("--hook-history-limit", type=int, metavar="N",
                   help="keep the newest N hook run records (default 10000)")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Settings:
    timeouts: dict[str, float] | None = None
    if args.event_timeout:
        timeouts = {}
        for item in args.event_timeout:
            name, value = parse_assignment(item, "--event-timeout", "EVENT=SECONDS")
            try:
                timeouts[name] = float(value)
            except ValueError:
                raise UsageError(f"--event-timeout {item!r}: expected EVENT=SECONDS") from None
            if not timeouts[name] > 0:
                raise UsageError(f"--event-timeout {item!r}: expected a positive number of "
                                 "seconds")
    return settings_from_args(
        args,
        libvirt_uri=args.libvirt_uri,
        listen=args.listen,
        hooks_dir=args.hooks_dir,
        run_dir=args.run_dir,
        cluster_version=args.cluster_version,
        domain_type=args.domain_type,
        hook_timeout=args.hook_timeout,
        hook_grace=args.hook_grace,
        event_timeouts=timeouts,
        hook_history_limit=args.hook_history_limit,
        insecure=args.insecure,
        pki_dir=args.pki_dir,
        unix_socket=args.socket,
        workers=args.workers,
    )


def _check_timeouts(settings: Settings) -> None:
    """An event_timeouts key must name an event (or event/script): a typo would
    leave the intended event on the default timeout without a word."""
    from hookvisor.hooks.catalogue import EVENTS

    for key in settings.event_timeouts:
        event = key.split("/", 1)[0]
        if event not in EVENTS:
            raise UsageError(f"event timeout {key!r}: {event!r} is not a hook event "
                             "(see docs/hooks.md)")


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _check_timeouts(settings)
    if args.hooks_dir is not None and not settings.hooks_dir.is_dir():
        raise UsageError(f"--hooks-dir {settings.hooks_dir}: "
                         + ("not a directory" if settings.hooks_dir.exists()
                            else "does not exist"))
    handler = LineHandler(sys.stderr)
    handler.setFormatter(LogFormatter(LOG_FORMAT))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    # LOG_FORMAT shows no source line, thread or process: gathering them for
    # every record is wasted (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return serve(settings)


def serve(settings: Settings, ready: threading.Event | None = None,
          stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); 0 on a clean stop, 1 if it cannot start."""
    # Imported here so `hookvisor --help` does not load libvirt.
    from hookvisor.agent.core import Agent
    from hookvisor.agent.hookcalls import HookCalls
    from hookvisor.hooks.identity import check as hook_user_problem
    from hookvisor.hooks.records import RunRecords
    from hookvisor.hooks.runner import HookRunner, RunnerConfig
    from hookvisor.props.registry import PropertyRegistry
    from hookvisor.rpc.xmlrpc import make_server
    from hookvisor.virt.host import Host, HostError

    stop = stop or threading.Event()
    _keep_inherited_fds_from_hooks()
    notifier = Notifier()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: _request_stop(stop, signum))
    problem = unwritable_dir(settings)
    if problem is not None:
        log.error("cannot start: %s", problem)
        return 1
    try:
        records = RunRecords(settings.state_dir / "hookruns.sqlite",
                             limit=settings.hook_history_limit,
                             inputs_kept=settings.hook_inputs_kept)
        props = PropertyRegistry(settings.state_dir / "properties.sqlite",
                                 settings.cluster_version)
    except (OSError, ValueError) as e:
        log.error("cannot start: %s", e)
        return 1
    problem = hook_user_problem(settings.hook_user)
    if problem is not None:
        log.error("cannot start: %s", problem)
        return 1
    runner = HookRunner(RunnerConfig.from_settings(settings), records)
    if runner.cleanup_stale():
        log.info("removed hook data, launch flags and hook processes left by an earlier agent")
    runner.prewarm()  # the Python hooks' zygote, in the background
    hooks = HookCalls(runner)
    # VDSM only logs a failing before_vdsm_start; so do we (the engine records it).
    hooks.run("before_vdsm_start")
    try:
        host = Host(settings.libvirt_uri, settings.domain_type, settings.reconnect_min,
                    settings.reconnect_max)
    except HostError as e:
        log.error("cannot start: %s", e)
        hooks.run("after_vdsm_stop")
        return 1
    agent = Agent(host, hooks, props, settings.run_dir, settings.cluster_version, records,
                  settings=settings)
    agent.network = _network(settings, hooks, props)
    from hookvisor.rpc.peer import peer_factory

    # Migration: the source agent calls the destination's migrationCreate itself.
    agent.migrations.connect = peer_factory(settings)
    try:
        server = make_server(agent, settings)
    except (OSError, ValueError) as e:
        log.error("cannot listen (%s, socket %s): %s", settings.listen or "no TCP",
                  settings.socket_path(), e)
        agent.close()
        hooks.run("after_vdsm_stop")
        return 1
    server.start()
    if not settings.hooks_dir.is_dir():
        log.warning("hooks dir %s does not exist: no hook will run until it does",
                    settings.hooks_dir)
    log.info("listening on %s (libvirt %s, domain type %s, hooks %s)", server.describe(),
             settings.libvirt_uri, host.domain_type, settings.hooks_dir)
    adopted = agent.recover()
    log.info("ready: %d VM(s) recovered", adopted)
    notifier.notify("READY=1", f"STATUS=ready, {adopted} VM(s) recovered")
    if ready is not None:
        ready.set()
    while not stop.wait(0.5):
        pass
    notifier.notify("STOPPING=1", "STATUS=stopping: finishing requests in flight")
    log.info("stopping: finishing requests in flight")
    # Half the bound for calls in flight, the rest for after_vdsm_stop and closing.
    server.shutdown(settings.shutdown_timeout / 2)
    agent.close()
    hooks.run("after_vdsm_stop")
    runner.close()
    records.close()
    props.close()
    log.info("stopped")
    return 0


def _network(settings: Settings, hooks: HookCalls, props: PropertyChecker) -> NetworkService:
    """The network service, its safe setup restored (an unconfirmed one rolled back)."""
    from hookvisor.agent.network import NetworkService
    from hookvisor.net.persist import NetStore

    service = NetworkService(hooks, props, NetStore(settings.state_dir / "net"),
                             settings.net_netns or None, settings.net_lock_wait)
    try:
        service.restore()
    except Exception as e:  # the agent still serves VMs; networks are reported as they are
        log.error("network: cannot restore the safe setup: %s", e)
    return service


def _keep_inherited_fds_from_hooks() -> None:
    """Mark close-on-exec every descriptor above stderr this process inherited.

    Python opens its own close-on-exec (PEP 446); what a wrapper or a shell
    left open when it started the agent (a log file, a pipe) is not, and a
    hook, run as the unprivileged hook user, would get root's descriptor.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


def _request_stop(stop: threading.Event, signum: int) -> None:
    log.info("%s received", signal.Signals(signum).name)
    stop.set()
