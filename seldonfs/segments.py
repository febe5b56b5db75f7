"""Sealed segments of the audit chain: old records moved out of the
catalog into files of the tree, so the live `audit` table stays small.

`[audit] segment` says when (every N records, or per UTC day, week or
month), `[audit] segments_to` where (a folder of the tree; the seldon
profile keeps them in its compliance archive). A segment is one file

    STORE/data/<segments_to>/audit-<first seq>-<last seq>.jsonl.gz

gzip'd JSON lines, one record per line: a JSON array of its fields in
records.FIELDS order (the bytes its MAC covers), then its MAC in hex;
encrypted like any file of an encrypted store, so it
reads through the mount (`zcat`) and `seldonfs rekey` moves it to a new
key. The catalog's `audit_segments` table indexes them: range, times,
count, file name, the sha256 of the file's plaintext, the MACs of its first
and last record, and a tag under the audit key over all of it. The chain
runs on across segments unchanged (the first live record is MAC'd over
the last sealed one), so `audit.verify` walks segments and the live table
as one chain; a segment missing before `[audit] retain` has passed is a
break, one missing after it has expired.

Sealing is crash-safe: the file is written whole under a hidden name,
synced and renamed, and only then are its records deleted from the
table, in the transaction that adds its index row; a writer killed in
between leaves the records live and seals the same range again. A
segment never holds the last record (audit.head names it), nor starts a
new epoch anywhere but at its first record (store.json anchors it).
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import hmac
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .records import FIELDS, canonical



INDEX = "audit_segments"
COLUMNS = ("first_seq", "last_seq", "first_ns", "last_ns", "count", "name", "sha256", "first_mac", "last_mac", "tag")


@dataclass(frozen=True)
class Spec:
    """`[audit] segment` and `segments_to`, and how files of the store are
    written (`keys` None: a plain store)."""

    every: int | str  # records per segment, or one of config.AUDIT_PERIODS
    folder: str  # relative to the store's data/
    keys: dict[int, bytes] | None = None
    key_id: int = 0
    block_size: int = 4096


@dataclass(frozen=True)
class Segment:
    first_seq: int
    last_seq: int
    first_ns: int
    last_ns: int
    count: int
    name: str
    sha256: str
    first_mac: bytes
    last_mac: bytes
    tag: str


def segment_tag(key: bytes, s: Segment) -> str:
    msg = b"segment\0%d\0%d\0%d\0%d\0%d\0" % (s.first_seq, s.last_seq, s.first_ns, s.last_ns, s.count)
    return hmac.digest(key, msg + s.name.encode() + b"\0" + s.sha256.encode() + s.first_mac + s.last_mac,
                       "sha256").hex()


def authentic(key: bytes, s: Segment) -> bool:
    return hmac.compare_digest(s.tag, segment_tag(key, s))


def period_end_ns(ns: int, every: str) -> int:
    """The first nanosecond after the UTC day, ISO week or month of `ns`."""
    t = time.gmtime(ns // 10**9)
    day0 = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    if every == "daily":
        end = day0 + 86400
    elif every == "weekly":
        end = day0 + (7 - t.tm_wday) * 86400  # next Monday
    else:
        y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        end = calendar.timegm((y, m, 1, 0, 0, 0))
    return end * 10**9


def _oldest(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(seq, ns) of the table's oldest record; None: the table is empty."""
    return conn.execute("SELECT seq, ns FROM audit ORDER BY seq LIMIT 1").fetchone()


def _due_point(first: int, first_ns: int, every: int | str) -> tuple[int, int]:
    """(seq, ns): the segment of the record `first` (of time `first_ns`)
    is not due while the table's last record is older than seq, or the
    time earlier than ns: its `every` records, or its period, not yet
    complete."""
    return (first + every, 0) if isinstance(every, int) else (0, period_end_ns(first_ns, every))


def next_range(conn: sqlite3.Connection, every: int | str, now_ns: int) -> tuple[int, int] | None:
    """The records the next segment takes, or None while none is due."""
    lo = _oldest(conn)
    last = conn.execute("SELECT max(seq) FROM audit").fetchone()[0]
    if lo is None or last is None:
        return None
    first, first_ns = lo
    due_seq, end = _due_point(first, first_ns, every)
    if last < due_seq or now_ns < end:
        return None
    if isinstance(every, int):
        hi = first + every - 1
    else:
        row = conn.execute("SELECT max(seq) FROM audit WHERE ns < ? AND seq < ?", (end, last)).fetchone()
        hi = row[0] if row[0] is not None else first
    hi = min(hi, last - 1)  # the last record stays: audit.head names it
    reset = conn.execute("SELECT min(seq) FROM audit WHERE op = 'reset' AND seq > ? AND seq <= ?",
                         (first, hi)).fetchone()[0]
    if reset is not None:
        hi = reset - 1  # an epoch starts at a segment's first record, or in the table
    return (first, hi) if hi >= first else None


def due_from(conn: sqlite3.Connection, every: int | str) -> tuple[int, int] | None:
    """`next_range`'s due point for the table's oldest record (`_due_point`),
    so the writer need not ask before it; None: the table is empty."""
    lo = _oldest(conn)
    return None if lo is None else _due_point(*lo, every)


def line_of(row: tuple, mac: bytes) -> bytes:
    """A record's line: the bytes its MAC covers (records.canonical, a JSON
    array of its fields), with the MAC in hex as one more element."""
    return canonical(row)[:-1] + b',"' + mac.hex().encode() + b'"]\n'


def split_line(line: bytes) -> tuple[bytes, bytes]:
    """(the bytes the MAC covers, the MAC) of a line, without parsing it."""
    cut = line.rindex(b',"')
    return line[:cut] + b"]", bytes.fromhex(line[cut + 2:-2].decode())


def parse_line(line: bytes) -> tuple[tuple, bytes]:
    canon, mac = split_line(line)
    return tuple(json.loads(canon)), mac


def seal(conn: sqlite3.Connection, data: Path, spec: Spec, key: bytes, first: int, hi: int) -> Segment:
    """Write records first..hi into a segment file, then move them out of
    the table and index the file, in one transaction."""
    rows = conn.execute(f"SELECT {', '.join(FIELDS)}, mac FROM audit WHERE seq BETWEEN ? AND ? ORDER BY seq",
                        (first, hi)).fetchall()
    body = gzip.compress(b"".join(line_of(tuple(r[:-1]), bytes(r[-1])) for r in rows), 6, mtime=0)
    name = f"{spec.folder}/audit-{first:012d}-{rows[-1][0]:012d}.jsonl.gz"  # relative to data/
    folder = data / spec.folder
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_file(folder, os.path.basename(name), body, spec)
    s = Segment(first, rows[-1][0], rows[0][1], rows[-1][1], len(rows), name, hashlib.sha256(body).hexdigest(),
                bytes(rows[0][-1]), bytes(rows[-1][-1]), "")
    s = Segment(**{**s.__dict__, "tag": segment_tag(key, s)})
    conn.execute("BEGIN")
    try:
        conn.execute(f"INSERT OR REPLACE INTO {INDEX} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                     tuple(getattr(s, c) for c in COLUMNS))
        conn.execute("DELETE FROM audit WHERE seq BETWEEN ? AND ?", (first, s.last_seq))
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.rollback()
        raise
    return s


def _write_file(folder: Path, name: str, body: bytes, spec: Spec) -> None:
    from . import faults
    from .blockformat import EncryptedFile
    from .store import sync_dir

    part = folder / f".{name}.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if spec.keys is None:
            faults.pwrite(fd, body, 0)
        else:
            EncryptedFile(fd, spec.keys, spec.key_id, spec.block_size).write(0, body)
        faults.fsync(fd)
    finally:
        os.close(fd)
    os.rename(part, folder / name)
    sync_dir(folder)


def index(conn: sqlite3.Connection) -> list[Segment]:
    try:
        got = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {INDEX} ORDER BY first_seq").fetchall()
    except sqlite3.OperationalError:  # a catalog from before segments
        return []
    return [Segment(*r[:7], bytes(r[7]), bytes(r[8]), r[9]) for r in got]


@dataclass(frozen=True)
class Reader:
    """Reads segment files: the store's data/ and, for an encrypted
    store, its keys (keys, current key id, block size)."""

    data: Path
    keys: tuple[dict[int, bytes], int, int] | None

    def body(self, s: Segment) -> bytes | None:
        """The plaintext of a segment's file; None when it is gone."""
        from .blockformat import EncryptedFile

        try:
            fd = os.open(self.data / s.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if self.keys is None:
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                return b"".join(chunks)
            ef = EncryptedFile(fd, *self.keys)
            return ef.read(0, ef.size())
        finally:
            os.close(fd)



def lines(body: bytes) -> list[bytes]:
    return gzip.decompress(body).splitlines()

