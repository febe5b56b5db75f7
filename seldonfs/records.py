"""An audit record's format, shared by the chain (audit.py), its sealed
segments (segments.py), forwarding (audit_forward.py) and refusals: the
fields in order, the bytes a record's MAC covers, and how names that are
not UTF-8 are written."""

from __future__ import annotations

import hmac
import json

FIELDS = ("seq", "ns", "uid", "gid", "pid", "proc", "op", "path", "path2", "result", "bytes", "detail")
ZERO_MAC = bytes(32)  # what the first record is MAC'd over

JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def canonical(row: tuple) -> bytes:
    """The bytes a record's MAC covers: its fields (FIELDS order) as a JSON
    array without spaces, UTF-8."""
    return JSON(row).encode()


def mac_of(key: bytes, prev: bytes, row: tuple) -> bytes:
    return hmac.digest(key, prev + canonical(row), "sha256")


def text(s: str) -> str:
    """Valid UTF-8 text for the record: a name that is not UTF-8 (its bytes
    came in as surrogates, see os.fsdecode) shows them as \\xNN."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
