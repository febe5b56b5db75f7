"""The audit chain: one record per change, each MAC'd over the one before.

Records live in the catalog's `audit` table (schema in catalog.py). Each
has a gapless sequence number and

    mac = HMAC-SHA256(audit key, previous mac || canonical(record))

with 32 zero bytes before the first record, so `verify` finds any edited,
deleted, inserted or reordered record; `STORE/audit.head` (the last
sequence number and MAC, with a tag of its own) finds a cut tail. The
threat model and the file formats are in docs/audit.md.

Writers never wait for the disk: `record()` appends a tuple to a list on
the caller's thread; every `BATCH_S` seconds the list goes to a writer
process that MACs it and inserts it in one transaction (`AuditLog`).
`sync()` does the same at once and waits until it is durable (fsync),
before a data fsync is answered.
"""

from __future__ import annotations

import errno
import fnmatch
import hmac
import json
import logging
import os
import pickle
import secrets
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import crypto, faults
from .errors import SeldonError

log = logging.getLogger(__name__)

KEY_NAME = "audit.key"
HEAD_NAME = "audit.head"
BATCH_S = 0.1  # the most a kill -9 of the daemon can lose
ZERO_MAC = bytes(32)
FIELDS = ("seq", "ns", "uid", "gid", "pid", "proc", "op", "path", "path2", "result", "bytes", "detail")
_WRAP_LABEL = b"seldonfs audit key"


# ---------------------------------------------------------------- the key


def create_key(root: Path, keys: dict[int, bytes] | None, key_id: int | None) -> None:
    """A new random audit key in STORE/audit.key (0600): wrapped by the
    master key when the store is encrypted, as is for a plain store."""
    write_key(root, secrets.token_bytes(32), keys, key_id)


def write_key(root: Path, key: bytes, keys: dict[int, bytes] | None, key_id: int | None) -> None:
    if keys is None or key_id is None:
        doc = {"key": key.hex()}
    else:
        doc = {"key_id": key_id, "wrapped": crypto.wrap_key(keys[key_id], key, _WRAP_LABEL).hex()}
    tmp = root / (KEY_NAME + ".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc).encode())
        faults.fsync(fd)
    finally:
        os.close(fd)
    faults.replace(tmp, root / KEY_NAME)


def checksum_key(root: Path, keys: dict[int, bytes] | None, key_id: int | None) -> bytes | None:
    """The key of the catalog's checksums of an encrypted store (None for a
    plain one, whose checksums are plain SHA-256): a subkey of the audit
    key, which rekey and passwd carry over, made here if the store has none
    yet (e.g. auditing is off)."""
    if keys is None:
        return None
    if not (root / KEY_NAME).exists():
        create_key(root, keys, key_id)
    return crypto.subkey(load_key(root, keys), b"checksum")


def load_key(root: Path, keys: dict[int, bytes] | None) -> bytes:
    """The audit key; `keys` (the unlocked master keys) for an encrypted store."""
    try:
        doc = json.loads((root / KEY_NAME).read_text())
    except FileNotFoundError:
        raise SeldonError(f"{root / KEY_NAME}: missing: the audit chain cannot be verified") from None
    except (OSError, ValueError) as e:
        raise SeldonError(f"{root / KEY_NAME}: unreadable: {e}") from None
    try:
        if "key" in doc:
            key = bytes.fromhex(doc["key"])
            if len(key) != 32:
                raise ValueError("not 32 bytes")
            return key
        if keys is None or int(doc["key_id"]) not in keys:
            raise SeldonError(f"{root / KEY_NAME}: wrapped by a key this store no longer has")
        return crypto.unwrap_key(keys[int(doc["key_id"])], bytes.fromhex(doc["wrapped"]), _WRAP_LABEL)
    except (KeyError, ValueError, crypto.WrongKey):
        raise SeldonError(f"{root / KEY_NAME}: damaged: the audit key does not unwrap") from None


# ---------------------------------------------------------------- records


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def canonical(row: tuple) -> bytes:
    """The bytes a record's MAC covers: its fields (FIELDS order) as a JSON
    array without spaces, UTF-8."""
    return _JSON(row).encode()


def mac_of(key: bytes, prev: bytes, row: tuple) -> bytes:
    return hmac.digest(key, prev + canonical(row), "sha256")


def head_tag(key: bytes, seq: int, mac: bytes) -> str:
    return hmac.digest(key, b"head\0%d\0" % seq + mac, "sha256").hex()


class ChainWriter:
    """MACs records and stores them: one per store at a time (the daemon's
    writer process, or an offline command holding the store lock)."""

    def __init__(self, root: Path, catalog_path: Path, key: bytes) -> None:
        self.root = root
        self.key = key
        self.conn = sqlite3.connect(catalog_path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        row = self.conn.execute("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self.seq, self.mac = (row[0], row[1]) if row else (0, ZERO_MAC)

    def write(self, items: list[tuple], durable: bool) -> None:
        """Store `items` (records without seq) in one transaction; `durable`:
        synced to disk, the head too."""
        if not items and not durable:
            return
        rows = []
        seq, mac = self.seq, self.mac
        for item in items:
            seq += 1
            row = (seq, *item)
            mac = mac_of(self.key, mac, row)
            rows.append((*row, mac))
        if durable:
            self.conn.execute("PRAGMA synchronous=FULL")
        try:
            self.conn.execute("BEGIN")
            self.conn.executemany(_INSERT, rows)
            self.conn.execute("COMMIT")
        finally:
            if durable:
                self.conn.execute("PRAGMA synchronous=NORMAL")
        self.seq, self.mac = seq, mac
        self._write_head(durable)

    def _write_head(self, durable: bool) -> None:
        doc = {"seq": self.seq, "mac": self.mac.hex(), "tag": head_tag(self.key, self.seq, self.mac)}
        tmp = self.root / (HEAD_NAME + ".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(doc).encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.root / HEAD_NAME)

    def close(self) -> None:
        self.conn.close()


_INSERT = f"INSERT INTO audit ({', '.join(FIELDS)}, mac) VALUES ({', '.join('?' * (len(FIELDS) + 1))})"


class AuditLog:
    """The daemon's side of the chain.

    `record()` appends a tuple to a list (about a microsecond). A thread
    hands the list every `BATCH_S` seconds, pickled, through a pipe to a
    writer process (`python -m seldonfs.audit`), which MACs and stores it.
    MACs and SQLite thus run beside the request loop, not under its GIL; and
    what reached the pipe is written even if this process is killed."""

    def __init__(
        self, root: Path, catalog_path: Path, key: bytes, reads: bool = False, lock_fd: int | None = None
    ) -> None:
        self.root = root
        self.catalog_path = catalog_path
        self.key = key
        self.reads = reads
        self.queue: list[tuple] = []
        self.sent = ChainWriter(root, catalog_path, key).seq  # records handed on so far
        self._qlock = threading.Lock()  # the queue
        self._plock = threading.Lock()  # the pipes
        self._procs: dict[int, tuple[str, float]] = {}
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        # The writer inherits the store lock (`lock_fd`): after a kill -9 of
        # the daemon the store stays locked until it has stored the rest.
        keep = (to_child, from_child) + ((lock_fd,) if lock_fd is not None else ())
        self.child = subprocess.Popen(
            [sys.executable, "-m", "seldonfs.audit", str(root), str(catalog_path), str(to_child), str(from_child)],
            pass_fds=keep, stdin=subprocess.DEVNULL, close_fds=True,
        )
        os.close(to_child)
        os.close(from_child)
        self._send(key)  # the key goes by the pipe, never by argv
        self._dead = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
        self._thread.start()

    def record(
        self, op: str, uid: int, gid: int, pid: int, path: str, path2: str = "",
        result: str = "OK", nbytes: int = 0, detail: str = "",
    ) -> None:
        item = (
            time.time_ns(), uid, gid, pid, self._proc(pid), op, _text(path), _text(path2), result, nbytes,
            _text(detail),
        )
        with self._qlock:
            self.queue.append(item)

    def _proc(self, pid: int) -> str:
        now = time.monotonic()
        hit = self._procs.get(pid)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                name = f.read().rstrip(b"\n").decode("utf-8", "replace")
        except OSError:
            name = ""
        if len(self._procs) > 4096:
            self._procs.clear()
        self._procs[pid] = (name, now + 2.0)
        return name

    def _run(self) -> None:
        while not self._stop.wait(BATCH_S):
            self.flush(durable=False)

    def _send(self, obj: object) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(self._out, struct.pack("<I", len(data)) + data)

    def flush(self, durable: bool) -> None:
        """Hand on what is queued; `durable`: wait until the writer has it on disk."""
        with self._plock:
            if self._dead:
                return
            with self._qlock:
                items, self.queue = self.queue, []
            if not items and not durable:
                return
            try:
                self._send((items, durable))
                self.sent += len(items)
                if durable and os.read(self._in, 1) != b"k":
                    raise OSError(errno.EPIPE, "writer gone")
            except OSError as e:
                self._dead = True
                log.error("audit writer process gone (%s): records from now on are lost", e)

    def sync(self) -> None:
        """Every queued record on disk, durably: before a data fsync is answered."""
        self.flush(durable=True)

    def jsonl(self) -> Iterator[bytes]:
        """The chain as JSON lines (system/logs/audit.jsonl), up to now."""
        self.flush(durable=True)
        conn = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True)
        try:
            for r in conn.execute(f"SELECT {', '.join(FIELDS)}, mac FROM audit ORDER BY seq"):
                rec = dict(zip(FIELDS, r[:-1]), mac=bytes(r[-1]).hex())
                yield _JSON(rec).encode() + b"\n"
        finally:
            conn.close()

    def verify_stored(self) -> tuple[int, Break | None]:
        """Check the chain as stored so far, beside the writer (any thread):
        the head is read first, so every record it names is already in the
        table."""
        head = read_head(self.root)
        conn = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True, timeout=10)
        try:
            return verify(conn, self.key, head)
        finally:
            conn.close()

    @property
    def count(self) -> int:
        return self.sent + len(self.queue)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush(durable=True)
        os.close(self._out)  # end of input: the writer exits
        os.close(self._in)
        try:
            self.child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log.error("audit writer did not exit; killing it")
            self.child.kill()


def _text(s: str) -> str:
    """Valid UTF-8 text for the record: a name that is not UTF-8 (its bytes
    came in as surrogates, see os.fsdecode) shows them as \\xNN."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def writer_main(root: Path, catalog_path: Path, fd_in: int, fd_out: int) -> None:
    """The writer process: (items, durable) messages until end of input.
    It ignores SIGINT/SIGTERM: the daemon's unmount ends it (end of input),
    and a killed daemon still gets everything it had handed on stored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def message() -> object:
        head = _read_exact(fd_in, 4)
        if head is None:
            return None
        data = _read_exact(fd_in, struct.unpack("<I", head)[0])
        return None if data is None else pickle.loads(data)

    key = message()
    if not isinstance(key, bytes):
        return
    w = ChainWriter(root, catalog_path, key)
    try:
        while (msg := message()) is not None:
            items, durable = msg  # type: ignore[misc]
            try:
                w.write(items, durable)
            except Exception as e:  # keep the chain going; the log says what was lost
                print(f"seldonfs: ERROR audit writer: {len(items)} records lost: {e!r}", file=sys.stderr)
                if w.conn.in_transaction:
                    w.conn.rollback()
            if durable:
                os.write(fd_out, b"k")
    finally:
        w.write([], durable=True)
        w.close()


def append_offline(root: Path, catalog_path: Path, key: bytes, op: str, detail: str) -> None:
    """One record from an offline command (passwd, rekey), with the store locked."""
    append_offline_many(root, catalog_path, key, [(op, "", "", "OK", 0, detail)])


def append_offline_many(
    root: Path, catalog_path: Path, key: bytes, records: list[tuple[str, str, str, str, int, str]]
) -> None:
    """Records (op, path, path2, result, bytes, detail) of an offline command
    (passwd, rekey, janitor), with the store locked."""
    from .catalog import Catalog

    cat = Catalog(catalog_path)
    cat.migrate()  # a store not mounted since an upgrade
    cat.close()
    w = ChainWriter(root, catalog_path, key)
    try:
        who = (os.getuid(), os.getgid(), os.getpid(), "seldonfs")
        now = time.time_ns()
        w.write([(now, *who, op, _text(p), _text(p2), res, n, _text(det)) for op, p, p2, res, n, det in records],
                durable=True)
    finally:
        w.close()


# ---------------------------------------------------------------- reading


@dataclass
class Break:
    seq: int
    kind: str  # edited, deleted, inserted, reordered, truncated
    detail: str


def rows(conn: sqlite3.Connection) -> Iterator[tuple]:
    """Records in the order they were stored."""
    yield from conn.execute(f"SELECT {', '.join(FIELDS)}, mac FROM audit ORDER BY id")


def verify(conn: sqlite3.Connection, key: bytes, head: dict[str, Any] | None) -> tuple[int, Break | None]:
    """Walk the chain in storage order. Returns (records checked, first break).

    The kind of a break: a record whose MAC fails while the next one chains
    on from it was *edited*; one the chain skips over, or one with a number
    already passed that does not authenticate, was *inserted*; a missing
    number is *deleted* if no record carries it, *reordered* if one later
    does; records the head names but the table lacks were *truncated*."""
    h_seq = _head_seq(key, head)
    if isinstance(h_seq, Break):
        return 0, h_seq
    prev_mac, prev_seq, n = ZERO_MAC, 0, 0
    pending: tuple | None = None  # (row, mac) that failed, held to see what follows
    for r in rows(conn):
        row, mac = tuple(r[:-1]), bytes(r[-1])
        seq = row[0]
        n += 1
        if pending is not None:
            p_row, p_mac = pending
            if mac_of(key, prev_mac, row) == mac:
                return n, Break(p_row[0], "inserted", f"record {p_row[0]} was not written by the filesystem")
            return n, Break(p_row[0], "edited", f"record {p_row[0]} was changed after it was written")
        if seq > prev_seq + 1:
            kind = "reordered" if _mac_at(conn, prev_seq + 1) is not None else "deleted"
            what = (
                f"record {prev_seq + 1} is stored after record {seq}" if kind == "reordered"
                else f"record {prev_seq + 1}" + (f"..{seq - 1}" if seq - 1 > prev_seq + 1 else "") + " missing"
            )
            return n, Break(prev_seq + 1, kind, what)
        if seq <= prev_seq:
            return n, Break(seq, "inserted", f"a second record {seq} after record {prev_seq}")
        if mac_of(key, prev_mac, row) != mac:
            pending = (row, mac)
            continue
        prev_mac, prev_seq = mac, seq
    if pending is not None:
        p_seq = pending[0][0]
        if h_seq is not None and p_seq > h_seq:
            return n, Break(p_seq, "inserted", f"record {p_seq} was not written by the filesystem")
        return n, Break(p_seq, "edited", f"the last record {p_seq} was changed after it was written")
    if head is None and n:
        return n, Break(prev_seq, "truncated", f"{HEAD_NAME} is missing: the end of the chain cannot be checked")
    if h_seq is not None and h_seq > prev_seq:
        return n, Break(prev_seq + 1, "truncated", f"records {prev_seq + 1}..{h_seq} are missing at the end")
    if h_seq and _mac_at(conn, h_seq) != bytes.fromhex(head["mac"]):  # type: ignore[index]
        return n, Break(h_seq, "edited", f"record {h_seq} is not the one {HEAD_NAME} names")
    return n, None


def _head_seq(key: bytes, head: dict[str, Any] | None) -> int | None | Break:
    if head is None:
        return None
    try:
        seq, mac, tag = int(head["seq"]), bytes.fromhex(head["mac"]), str(head["tag"])
    except (KeyError, ValueError, TypeError):
        return Break(0, "edited", f"{HEAD_NAME} is damaged")
    if not hmac.compare_digest(tag, head_tag(key, seq, mac)):
        return Break(seq, "edited", f"{HEAD_NAME} does not authenticate")
    return seq


def _mac_at(conn: sqlite3.Connection, seq: int) -> bytes | None:
    row = conn.execute("SELECT mac FROM audit WHERE seq = ?", (seq,)).fetchone()
    return bytes(row[0]) if row else None


def read_head(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / HEAD_NAME).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"seq": 0, "mac": "", "tag": ""}  # fails its tag check: reported


def query(
    conn: sqlite3.Connection, since_ns: int | None = None, until_ns: int | None = None,
    path: str | None = None, uid: int | None = None, op: str | None = None,
) -> Iterator[dict[str, Any]]:
    where, args = [], []
    for clause, value in (("ns >= ?", since_ns), ("ns < ?", until_ns), ("uid = ?", uid), ("op = ?", op)):
        if value is not None:
            where.append(clause)
            args.append(value)
    if path is not None and not any(c in path for c in "*?["):
        where.append("(path = ? OR path2 = ?)")  # indexed
        args += [path, path]
    sql = f"SELECT {', '.join(FIELDS)} FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    for r in conn.execute(sql + " ORDER BY seq", args):
        rec = dict(zip(FIELDS, r))
        if path is not None and not (
            fnmatch.fnmatchcase(rec["path"], path) or fnmatch.fnmatchcase(rec["path2"] or "", path)
        ):
            continue
        yield rec


if __name__ == "__main__":  # the writer process of a mount (AuditLog)
    writer_main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
