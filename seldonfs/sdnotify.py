"""systemd's readiness protocol (sd_notify(3)) in the standard library: one
datagram to $NOTIFY_SOCKET per state change; nothing without it.

The mount sends READY=1 once it serves, RELOADING=1 (then READY=1) around
a SIGHUP reload and STOPPING=1 when it unmounts, which is what a unit of
Type=notify with ExecReload waits for (contrib/systemd/seldonfs@.service).
Called from the request loop's thread; each call opens its own socket.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*states: str) -> None:
    """Send `states` (e.g. "READY=1") as one message; a socket that fails is
    logged, never raised: the mount serves without a supervisor too."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(states).encode())
    except OSError as e:
        log.warning("NOTIFY_SOCKET %s: cannot tell systemd %s: %s", addr, states, e.strerror or e)


def reloading() -> tuple[str, str]:
    """RELOADING=1 with the CLOCK_MONOTONIC time systemd wants beside it."""
    return "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}"
