"""systemd's readiness protocol without a dependency: one datagram to $NOTIFY_SOCKET.

sd_notify(3): the variable names a Unix datagram socket, a path or an abstract
name written with a leading '@'. Outside systemd the variable is unset and
every notification is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("hookvisor.serve")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if environ is None:
            # Read once: hooks and other children must not talk to systemd for us.
            os.environ.pop("NOTIFY_SOCKET", None)
        self.address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *assignments: str) -> bool:
        """Send `READY=1`, `STOPPING=1`, `STATUS=...`; False if there is no one to tell."""
        if not self.address:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(message)
        except OSError as e:
            # systemd gone or the socket wrong: the agent works on, the log says it.
            log.warning("sd_notify to %r failed: %s", self.address.replace("\0", "@"), e)
            return False
        return True
