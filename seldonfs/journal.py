"""systemd's journal, natively, with the standard library.

A mount under systemd ($JOURNAL_STREAM or $NOTIFY_SOCKET set: a unit
started it) logs each record as one datagram of fields to the journal's
socket (systemd.journal-fields(7), the native protocol of sd_journal_send):
MESSAGE, PRIORITY (syslog's 0-7), SYSLOG_IDENTIFIER=seldonfs,
CODE_FILE/CODE_LINE/CODE_FUNC, and the daemon's own SELDONFS_LOGGER and
SELDONFS_STORE, so `journalctl -u seldonfs@NAME -p warning` or
`journalctl SELDONFS_STORE=/var/lib/seldonfs/NAME` select them. The audit
chain's records go the same way with `[audit] forward = "journal"`
(audit_forward.py).

The socket is /run/systemd/journal/socket, or $SELDONFS_JOURNAL_SOCKET
(tests bind their own). A value holding a newline goes in the protocol's
binary form (name, newline, 64-bit little-endian length, value); a
message longer than MAX_MESSAGE is cut, saying so. A datagram the journal
cannot take is not retried: the record still reaches STORE/seldonfs.log.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
import threading

SOCKET = "/run/systemd/journal/socket"
MAX_MESSAGE = 64 << 10  # bytes of one MESSAGE; the journal takes datagrams of some 200 KiB by default



def priority(levelno: int) -> int:
    """syslog's priority of a logging level: CRITICAL 2, ERROR 3, WARNING 4, INFO 6, DEBUG 7."""
    for level, prio in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6)):
        if levelno >= level:
            return prio
    return 7

_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]*")


def under_systemd() -> bool:
    """A unit started this process: its stderr is the journal or it has a notify socket."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("NOTIFY_SOCKET"))


def socket_path() -> str:
    return os.environ.get("SELDONFS_JOURNAL_SOCKET") or SOCKET


def encode(fields: dict[str, object]) -> bytes:
    """One native-protocol datagram: KEY=VALUE lines; a value with a
    newline as KEY\\n<length, u64 LE><value>\\n. Names are upper-case
    letters, digits and underscores, not starting with one (else skipped)."""
    out = bytearray()
    for key, value in fields.items():
        if not _NAME.fullmatch(key):
            continue
        v = value if isinstance(value, bytes) else str(value).encode("utf-8", "backslashreplace")
        if b"\n" in v:
            out += key.encode() + b"\n" + struct.pack("<Q", len(v)) + v + b"\n"
        else:
            out += key.encode() + b"=" + v + b"\n"
    return bytes(out)


def decode(data: bytes) -> dict[str, str]:
    """The fields of a datagram (for tests, and for reading one back)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            fields[k.decode()] = v.decode("utf-8", "replace")
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            fields[line.decode()] = data[nl + 9:nl + 9 + n].decode("utf-8", "replace")
            i = nl + 9 + n + 1
    return fields


class Sender:
    """Datagrams to the journal's socket (or syslog's), from any thread; a failure is
    said once on stderr (which under systemd is the journal's stream too)
    and again only after a send has worked meanwhile."""

    def __init__(self, path: str | None = None, what: str = "journal") -> None:
        self.path, self.what = path or socket_path(), what
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._lock = threading.Lock()
        self._failing = False

    def send(self, fields: dict[str, object]) -> bool:
        return self.send_bytes(encode(fields))

    def send_bytes(self, data: bytes) -> bool:
        try:
            with self._lock:
                self.sock.sendto(data, self.path)
        except OSError as e:
            if not self._failing:
                self._failing = True
                try:
                    print(f"seldonfs: {self.what} {self.path}: cannot send: {e.strerror or e}", file=sys.stderr, flush=True)
                except OSError:
                    pass
            return False
        self._failing = False
        return True

    def close(self) -> None:
        self.sock.close()


class JournalHandler(logging.Handler):
    """The daemon's log records as structured journal entries."""

    def __init__(self, store: str, sender: Sender | None = None) -> None:
        super().__init__()
        self.store = store
        self.sender = sender or Sender()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            raw = msg.encode("utf-8", "backslashreplace")
            if len(raw) > MAX_MESSAGE:
                msg = raw[:MAX_MESSAGE].decode("utf-8", "ignore") + f" ... ({len(raw)} bytes, cut)"
            self.sender.send({
                "MESSAGE": msg,
                "PRIORITY": priority(record.levelno),
                "SYSLOG_IDENTIFIER": "seldonfs",
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,
                "CODE_FUNC": record.funcName,
                "SELDONFS_LOGGER": record.name,
                "SELDONFS_STORE": self.store,
            })
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)

    def close(self) -> None:
        self.sender.close()
        super().close()
