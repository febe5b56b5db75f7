"""Audit shipping: each record the mount stores, also to the journal or syslog.

`[audit] forward = "journal"` sends every record, once the chain has
stored it (with its seq and MAC), as one journal entry of fields
(journal.py's native protocol): MESSAGE (one readable line),
PRIORITY (5 notice for result OK, 4 warning for a refusal or an error),
SYSLOG_IDENTIFIER=seldonfs-audit, MESSAGE_ID=MESSAGE_ID below, and
SELDONFS_SEQ, _NS, _UID, _GID, _PID, _PROC, _OP, _PATH, _PATH2, _RESULT,
_BYTES, _DETAIL, _MAC, _STORE.

`forward = "syslog"` sends each as one datagram to /dev/log (or
$SELDONFS_SYSLOG_SOCKET) in the form syslog(3) uses,
`<PRI>Mmm dd hh:mm:ss seldonfs-audit[PID]: JSON`, facility authpriv (the
records name every user's files), severity as above, the record as one
JSON object with the fields of system/logs/audit.jsonl (the MAC in hex)
and `store`.

Sent by the audit writer process after each stored batch, so a record
reaches the collector only if the chain has it, and the request loop
never waits for it. A socket that is missing or full loses the forwarded
copy, never the record: one line in the log says so (again only after a
send has worked meanwhile). The chain stays the authority: `seldonfs
audit verify` checks it, a collector's copy can be compared by seq and
MAC.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import journal
from .records import FIELDS

KINDS = ("none", "journal", "syslog")
MESSAGE_ID = "395df4b653a1436aa705dd8fc75f5e4d"  # journalctl MESSAGE_ID=... selects the audit records
SYSLOG_SOCKET = "/dev/log"
AUTHPRIV = 10


def severity(result: str) -> int:
    return 5 if result == "OK" else 4  # notice, warning


class Forwarder:
    """Called by audit.ChainWriter with the rows it stored:
    (seq, ns, uid, gid, pid, proc, op, path, path2, result, bytes, detail, mac)."""

    def __init__(self, kind: str, store: Path) -> None:
        self.kind, self.store = kind, str(store)
        path = journal.socket_path() if kind == "journal" else os.environ.get("SELDONFS_SYSLOG_SOCKET") or SYSLOG_SOCKET
        self.sender = journal.Sender(path, f"audit forward to {kind}")

    def __call__(self, rows: list[tuple]) -> None:
        for row in rows:
            rec = dict(zip(FIELDS, row[:12]))
            mac = bytes(row[12]).hex()
            if self.kind == "journal":
                self.sender.send(self._fields(rec, mac))
            else:
                self.sender.send_bytes(self._syslog(rec, mac))

    def _fields(self, rec: dict, mac: str) -> dict[str, object]:
        what = " ".join(p for p in (rec["path"], rec["path2"] and f"-> {rec['path2']}") if p)
        detail = f": {rec['detail']}" if rec["detail"] else ""
        fields: dict[str, object] = {
            "MESSAGE": f"audit {rec['seq']}: {rec['op']} {what} {rec['result']}{detail} (uid {rec['uid']})",
            "PRIORITY": severity(rec["result"]),
            "SYSLOG_IDENTIFIER": "seldonfs-audit",
            "MESSAGE_ID": MESSAGE_ID,
        }
        for k, v in rec.items():
            fields[f"SELDONFS_{k.upper()}"] = v
        fields["SELDONFS_MAC"] = mac
        fields["SELDONFS_STORE"] = self.store
        return fields

    def _syslog(self, rec: dict, mac: str) -> bytes:
        pri = AUTHPRIV * 8 + severity(rec["result"])
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(rec["ns"] / 1e9))
        body = json.dumps({**rec, "mac": mac, "store": self.store}, separators=(",", ":"))
        return f"<{pri}>{stamp} seldonfs-audit[{os.getpid()}]: {body}".encode()

    def close(self) -> None:
        self.sender.close()


def make(kind: str, store: Path) -> Forwarder | None:
    return None if kind in ("", "none") else Forwarder(kind, store)
