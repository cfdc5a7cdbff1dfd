"""The XML-RPC adapter: VDSM's verb names and response envelope over the Agent.

Every verb is wrapped once, generically: success is `{'status': {'code': 0,
'message': 'Done'}, <payload key>: payload}`; a VdsmError is its code and
message; a verb of SPEC §4 not built yet (or unknown) is `noimpl`; anything
unexpected is `unexpected` with a message, logged with its traceback here. A
client never gets an XML-RPC Fault. The HTTP side (TLS, the Unix socket,
bounds) is rpc/server.py; parsing and marshalling untrusted XML is rpc/wire.py.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any

from hookvisor.agent.core import Agent
from hookvisor.config import Settings
from hookvisor.errors import CODE_NAMES, Code, VdsmError
from hookvisor.rpc.server import AgentServer, parse_listen
from hookvisor.rpc.verbs import NOT_BUILT, verb_table
from hookvisor.rpc.wire import status

__all__ = ["Dispatcher", "make_server", "parse_listen", "status", "xmlrpc_safe"]

log = logging.getLogger("hookvisor.rpc")

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def xmlrpc_safe(value: Any) -> Any:
    """XML-RPC ints are 32-bit and struct keys strings: larger numbers travel as strings."""
    # Exact type checks: this walks every stats reply, and isinstance chains cost.
    kind = type(value)
    if kind is str or kind is bool or kind is float or value is None:
        return value
    if kind is int:
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if kind is dict:
        # Most values of a stats reply are strings already: no call for them.
        return {k if type(k) is str else str(k): v if type(v) is str else xmlrpc_safe(v)
                for k, v in value.items()}
    if kind is list or kind is tuple:
        return [xmlrpc_safe(v) for v in value]
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return xmlrpc_safe(int(value))
    if isinstance(value, dict):
        return xmlrpc_safe(dict(value))
    if isinstance(value, list | tuple):
        return [xmlrpc_safe(v) for v in value]
    return str(value)


def _log_call(level: int, method: str, code: int, took: float) -> None:
    log.log(level, "rpc %s -> %s %d (%.3fs)", method, CODE_NAMES.get(Code(code), code),
            code, took)


def _arity(sig: inspect.Signature) -> tuple[int, int]:
    """(fewest, most) positional arguments `sig` binds."""
    low = high = 0
    for param in sig.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            return low, 2**31
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            high += 1
            if param.default is param.empty:
                low = high
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            return 1, 0  # cannot be called by position at all: always ask bind
    return low, high


class Dispatcher:
    """Verb name and arguments -> the reply envelope, each call logged.

    With `defer_log`, a call's log line is written by `flush_log()` on the same
    thread (the server calls it once the reply is sent): the client does not
    wait for the write. Its text, time included, is the same.
    """

    def __init__(self, agent: Agent, defer_log: bool = False) -> None:
        self._agent = agent
        self._defer = defer_log
        self._pending = threading.local()
        self._verbs = verb_table(agent)
        self._signatures = {name: inspect.signature(verb.handler)
                            for name, verb in self._verbs.items()}
        # XML-RPC passes arguments by position only, so a count in range always
        # binds: the signature is only asked when it does not, for its message.
        self._arity = {name: _arity(sig) for name, sig in self._signatures.items()}

    def dispatch(self, method: str, params: tuple[Any, ...]) -> dict[str, Any]:
        started = time.monotonic()
        reply = self._call(method, params)
        code = reply["status"]["code"]
        # Changes at info, reports (polled often) at debug.
        verb = self._verbs.get(method)
        level = logging.INFO if (verb is not None and verb.changes) or code else logging.DEBUG
        if log.isEnabledFor(level):
            line = (level, method, code, time.monotonic() - started)
            if self._defer:
                self.flush_log()  # one left by a reply that was never sent
                self._pending.line = line
            else:
                _log_call(*line)
        return reply

    def flush_log(self) -> None:
        """Write the log line of this thread's last call, if it is not written yet."""
        line = getattr(self._pending, "line", None)
        if line is not None:
            self._pending.line = None
            _log_call(*line)

    def _call(self, method: str, params: tuple[Any, ...]) -> dict[str, Any]:
        if method not in self._verbs:
            what = "not implemented yet" if method in NOT_BUILT else "unknown verb"
            return status(Code.NOIMPL, f"{method}: {what}")
        verb = self._verbs[method]
        self._agent.touch()  # any call is the sign a connectivity check waits for
        low, high = self._arity[method]
        if not low <= len(params) <= high:
            try:
                self._signatures[method].bind(*params)
            except TypeError as e:
                return status(Code.GENERAL, f"{method}: bad arguments: {e}")
        try:
            if verb.gated:
                self._agent.check_ready()
            payload = verb.handler(*params)
        except VdsmError as e:
            if e.code in (Code.HOOK_ERROR, Code.CREATE_ERR, Code.DESTROY_ERR):
                log.warning("rpc %s: %s", method, e)
            return status(e.code, e.message)
        except Exception as e:
            log.exception("rpc %s failed unexpectedly", method)
            return status(Code.UNEXPECTED, f"{method}: unexpected error: "
                          f"{type(e).__name__}: {e}")
        reply = status(Code.DONE, "Done")
        if verb.reply_key is not None:
            reply[verb.reply_key] = xmlrpc_safe(payload)
            # A paged payload's cursor travels beside it (getHookRuns' `next`).
            reply.update(xmlrpc_safe(getattr(payload, "reply_extra", None) or {}))
        return reply


def make_server(agent: Agent, settings: Settings) -> AgentServer:
    """The agent's server (TLS or insecure TCP, and the Unix socket), not started yet."""
    dispatcher = Dispatcher(agent, defer_log=True)
    return AgentServer(settings, dispatcher.dispatch, after_reply=dispatcher.flush_log)
