"""`hookvisor serve`: the agent daemon.

Settings: defaults < /etc/hookvisor/hookvisor.toml (or --config) < HOOKVISOR_*
environment < flags. Logs go to stderr, one line per record. SIGTERM and
SIGINT stop it cleanly: no new requests, requests in flight finish, then
after_vdsm_stop runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookvisor.cli.common import (
    UsageError,
    add_global_options,
    parse_assignment,
    settings_from_args,
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
    p.add_argument("--run-dir", type=Path, help="run dir for hook temp files and launch flags")
    p.add_argument("--cluster-version", help="custom property definitions to check against")
    p.add_argument("--domain-type", choices=("auto", "kvm", "qemu"),
                   help="domain type for params-built VMs (default auto)")
    p.add_argument("--hook-timeout", type=float, metavar="SECONDS",
                   help="default timeout of one hook script")
    p.add_argument("--hook-grace", type=float, metavar="SECONDS",
                   help="between SIGTERM and SIGKILL for a hook past its timeout")
    p.add_argument("--event-timeout", action="append", default=[], metavar="EVENT=SECONDS",
                   help="timeout for one event's scripts (repeatable)")
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


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format=LOG_FORMAT)
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
                             limit=settings.hook_history_limit)
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


def _request_stop(stop: threading.Event, signum: int) -> None:
    log.info("%s received", signal.Signals(signum).name)
    stop.set()
