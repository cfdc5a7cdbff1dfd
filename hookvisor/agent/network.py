"""setupNetworks and setSafeNetworkConfig: the network hooks around hookvisor.net.

One setup at a time: a second waits for the first up to `lock_wait` seconds,
then is refused. The order for one call:

1. parse and check the request (nothing reaches a hook malformed), and the
   networks' custom properties against UserDefinedNetworkCustomProperties;
2. before_network_setup with `{"request": {networks, bondings, options}}`; its
   final JSON is the request, parsed and checked again;
3. plan against the kernel (checks the host), apply with a journal; any
   failure is rolled back inside `hookvisor.net.apply`;
4. with options.connectivityCheck, wait for any client call (`touch()`) for
   connectivityTimeout seconds, else undo the whole setup;
5. after_network_setup, or after_network_setup_fail on any failure after step 2.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hookvisor.agent.context import PropertyChecker
from hookvisor.agent.hookcalls import HookCalls, family
from hookvisor.errors import Code, VdsmError
from hookvisor.net.apply import ApplyError, PlanError, Step, execute, plan, rollback
from hookvisor.net.model import Config, Request, RequestError, parse_request
from hookvisor.net.netlink import Netlink, NetlinkFailure
from hookvisor.net.persist import NetStore, StoreError, restore_request
from hookvisor.net.report import capabilities
from hookvisor.props.errors import PropertyError

NETWORK_SETUP = family("network_setup", fail=True)

log = logging.getLogger("hookvisor.net")


class NetworkService:
    def __init__(self, hooks: HookCalls, props: PropertyChecker, store: NetStore,
                 netns: str | None = None, lock_wait: float = 30.0) -> None:
        self.hooks = hooks
        self.props = props
        self.store = store
        # None: the host's own namespace; tests and benchmarks give their own.
        self.netns = netns
        self.lock_wait = lock_wait
        self._lock = threading.Lock()
        self._touched = threading.Event()

    def netlink(self) -> Netlink:
        return Netlink(self.netns)

    # --- connectivity check ---------------------------------------------------

    def touch(self) -> None:
        """A client reached the agent: what a pending connectivity check waits for."""
        # Every call passes here: set() takes the event's lock even when it is set.
        if not self._touched.is_set():
            self._touched.set()

    # --- verbs ----------------------------------------------------------------

    def setup(self, networks: Any, bondings: Any, options: Any) -> None:
        request = self._parse(networks, bondings, options, "setupNetworks")
        with self._locked("setupNetworks"):
            self._setup(request, networks, bondings, options)

    def set_safe(self) -> None:
        with self._locked("setSafeNetworkConfig"):
            try:
                self.store.save_safe(self.store.running())
            except (OSError, StoreError) as e:
                raise VdsmError(Code.GENERAL, f"setSafeNetworkConfig: {e}") from e

    def restore(self) -> None:
        """At agent start: back to the safe setup (rolls back an unconfirmed one)."""
        with self._locked("restore"):
            running = self.store.running()
            safe = self.store.safe() or Config()
            if safe == running == Config():
                return
            with self.netlink() as nl:
                p = plan(nl.state(), running, restore_request(running, safe))
                if p.steps:
                    log.info("network: restoring the safe setup (%d step(s))", len(p.steps))
                execute(nl, p.steps)
            self.store.save_running(safe)

    def capabilities(self) -> dict[str, Any]:
        """nics, bridges, vlans, bondings, networks: read from netlink on every call."""
        try:
            with self.netlink() as nl:
                state = nl.state()
            return capabilities(state, self.store.running())
        except (NetlinkFailure, StoreError) as e:
            log.warning("network: capabilities without networks: %s", e)
            return {}

    # --- the work -------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, what: str) -> Iterator[None]:
        if not self._lock.acquire(timeout=self.lock_wait):
            raise VdsmError(Code.GENERAL, f"{what}: a network setup is in progress "
                            f"(waited {self.lock_wait:g}s); retry later")
        try:
            yield
        finally:
            self._lock.release()

    def _parse(self, networks: Any, bondings: Any, options: Any, where: str) -> Request:
        try:
            request = parse_request(networks, bondings, options)
        except RequestError as e:
            raise VdsmError(Code.GENERAL, f"{where}: {e}") from e
        problems: list[str] = []
        for name, net in sorted(request.networks.items()):
            if not net.custom:
                continue
            try:
                self.props.check(networks=[net.custom])
            except PropertyError as e:
                problems.append(f"network {name}: {e}")
        if problems:
            raise VdsmError(Code.GENERAL, f"{where}: " + "; ".join(problems))
        return request

    def _setup(self, request: Request, networks: Any, bondings: Any, options: Any) -> None:
        payload = {"request": {"networks": networks or {}, "bondings": bondings or {},
                               "options": options or {}}}
        final = self.hooks.run_json(NETWORK_SETUP.before, payload)
        if final is not payload:
            request, payload = self._from_hook(final)
        try:
            self._apply(request)
        except VdsmError:
            self.hooks.run_json(NETWORK_SETUP.after_fail, payload)
            raise
        self.hooks.run_json(NETWORK_SETUP.after, payload)

    def _from_hook(self, final: Any) -> tuple[Request, dict[str, Any]]:
        where = "setupNetworks (as before_network_setup left it)"
        inner = final.get("request") if isinstance(final, Mapping) else None
        if not isinstance(inner, Mapping):
            raise VdsmError(Code.HOOK_ERROR, f"{where}: expected {{\"request\": {{networks, "
                            "bondings, options}}}}")
        request = self._parse(inner.get("networks"), inner.get("bondings"),
                              inner.get("options"), where)
        return request, {"request": dict(inner)}

    def _apply(self, request: Request) -> None:
        try:
            old = self.store.running()
        except StoreError as e:
            raise VdsmError(Code.GENERAL, f"setupNetworks: {e}") from e
        try:
            with self.netlink() as nl:
                p = plan(nl.state(), old, request)
                execute(nl, p.steps)
                try:
                    self.store.save_running(p.config)
                except OSError as e:
                    undone = rollback(nl, p.steps)
                    raise VdsmError(Code.GENERAL, f"setupNetworks: cannot record the setup: "
                                    f"{e}; rolled back" + _incomplete(undone)) from e
                if request.options.connectivity_check:
                    self._check_connectivity(nl, request, old, p.steps)
        except PlanError as e:
            raise VdsmError(Code.GENERAL, f"setupNetworks: {e}") from e
        except ApplyError as e:
            raise VdsmError(Code.GENERAL, f"setupNetworks: {e}") from e
        except NetlinkFailure as e:  # reading the state failed: nothing was changed
            raise VdsmError(Code.GENERAL, f"setupNetworks: {e}") from e
        if request.options.commit_on_success:
            self.store.save_safe(self.store.running())

    def _check_connectivity(self, nl: Netlink, request: Request, old: Config,
                            steps: Sequence[Step]) -> None:
        timeout = request.options.connectivity_timeout
        self._touched.clear()
        if self._touched.wait(timeout):
            return
        log.warning("network: no client within %ss of the setup: rolling it back", timeout)
        undone = rollback(nl, steps)
        self.store.save_running(old)
        raise VdsmError(Code.GENERAL, f"setupNetworks: connectivity check failed: no client "
                        f"reached the agent within {timeout}s; rolled back"
                        + _incomplete(undone))


def _incomplete(undone: list[str]) -> str:
    return f" (incomplete: {'; '.join(undone)})" if undone else ""
