"""The audit chain: one record per change, each MAC'd over the one before.

Records live in the catalog's `audit` table (schema in catalog.py). Each
has a gapless sequence number and

    mac = HMAC-SHA256(audit key, previous mac || canonical(record))

with 32 zero bytes before the first record, so `verify` finds any edited,
deleted, inserted or reordered record; the anchors outside the catalog
(anchor.py: the head, and the first record of the epoch in store.json)
find a cut tail and a lost, emptied or rebuilt catalog. `reset` starts a
new epoch after such a break, `gap` records count records lost. The
threat model and the file formats are in docs/audit.md.

Writers never wait for the disk: `record()` appends a tuple to a list on
the caller's thread; every `BATCH_S` seconds the list goes to a writer
process that MACs it and inserts it in one transaction (`AuditLog`).
`sync()` does the same at once and waits until it is durable (fsync),
before a data fsync is answered.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import pickle
import secrets
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _libc, anchor, crypto, faults, segments, synclog
from .records import FIELDS, JSON, ZERO_MAC, mac_of, text
from .anchor import HEAD_NAME, head_tag, read_head
from .errors import SeldonError
from .reserve import Reserve
from .store import mark, sync_dir, unmark
from .synclog import SyncLog, pwrite_all, usable

log = logging.getLogger(__name__)

KEY_NAME = "audit.key"
LOST_NAME = "audit.lost"  # records a writer could not store before it ended, for the next one's gap record
OPEN_NAME = "audit.open"  # there while a mount's writer runs: found by the next one, the last did not end
UNCLEAN = ("records stored in the last second before it may be lost: the previous audit writer did not end "
           "(a power loss, or killed together with the daemon)")
DAEMON_GONE = ("records of its last 0.1 s, and the writes and reads of descriptors it still had open, may be "
               "missing: the mount's daemon ended without unmounting (killed, or crashed)")
RECOVERED = ("records of the last mount that its audit writer had not stored (the daemon or the machine stopped "
             "first), taken from the sync log: they follow")
WRITER_DIED = ("records the audit writer process had been handed and had not stored when it died, taken from the "
               "sync log: they follow")
END = "end"  # the daemon's last message to its writer: without it, end of input means the daemon died
BATCH_S = 0.1  # the most a kill -9 of the daemon can lose (a gap record says so)
RETRY_S = 1.0  # how often a writer tries again while records wait
SETTLE_S = 1.0  # the most a stored record waits to be synced and named by the head (see ChainWriter)
MAX_WAITING = 100_000  # records kept while the catalog refuses them (about 30 MB); more are lost, and counted
CLOSE_TRIES = 30  # seconds an ending writer keeps trying to store what waits
RESET_OP, GAP_OP, RECOVERED_OP = "reset", "gap", "recovered"
EXPIRED = "expired"  # an Event: a segment removed after [audit] retain
_WRAP_LABEL = b"seldonfs audit key"


def _say(line: str) -> None:
    """A line for the log (the writer's stderr is the daemon's, the store's
    log file): when the disk is full it cannot be written, and that must not
    end the writer, whose records are waiting for that same space."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


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


def gap_record(detail: str) -> tuple:
    """A `gap` record (records lost: how many and why), by this process."""
    return (time.time_ns(), 0, 0, os.getpid(), "seldonfs", GAP_OP, "", "", "OK", 0, detail)


def unstored(conn: sqlite3.Connection, log_: SyncLog, waiting: list[tuple] | None = None,
             why: str = "") -> list[tuple]:
    """The records of a sync log that the writer never stored, after a
    record saying why (`RECOVERED`: the daemon or the machine stopped
    first); [] when there are none. The writer stores in order, so they
    are the ones after the last that the catalog has (a record is told
    apart by all its fields, the time in nanoseconds among them), less
    those still `waiting` to be stored. A `reset` since the log began ends
    its claim: what was stored and then cut off is not brought back."""
    base, items = log_.read()
    if not items:
        return []
    rows = conn.execute(f"SELECT {', '.join(FIELDS[1:])} FROM audit WHERE seq > ?", (base,)).fetchall()
    op = FIELDS.index("op") - 1
    if any(r[op] == RESET_OP for r in rows):
        return []
    stored = set(rows)
    i = len(items)
    while i and items[i - 1] not in stored:
        i -= 1
    left = Counter(waiting or [])
    missing = []
    for item in items[i:]:
        if left[item]:
            left[item] -= 1
        else:
            missing.append(item)
    if not missing:
        return []
    why = why or RECOVERED
    note = (time.time_ns(), 0, 0, os.getpid(), "seldonfs", RECOVERED_OP, "", "", "OK", len(missing), why)
    return [note, *missing]


class ChainWriter:
    """MACs records and stores them: one per store at a time (the daemon's
    writer process, or an offline command holding the store lock).

    A batch the catalog cannot take (a full disk) is kept and tried again
    with the next one; `reserve` (the mount's writer) is given up first so
    the retry can succeed. Only past `MAX_WAITING` kept records, or records
    a dead writer never stored (`LOST_NAME`), are lost, and a `gap` record
    says how many and why as soon as a batch is stored again.

    The head and the anchor name only records that are on disk for good.
    A batch is committed without a sync. A power cut can take it back, so
    the head is not rewritten for it. The batch is *settled* with the next
    durable one, or at the latest `SETTLE_S` later: one fdatasync of the
    WAL, then the head and its fdatasync. A head written ahead of the WAL
    could outlive the records it names, and `audit verify` and the mount
    would then report a truncation that nobody made. An fsync through the
    mount needs its records on disk, not named: `sync()` is the WAL's
    fdatasync alone, and the settle follows as due."""

    def __init__(
        self, root: Path, catalog_path: Path, key: bytes, reserve: Reserve | None = None,
        seal: segments.Spec | None = None, forward: Callable[[list[tuple]], None] | None = None,
    ) -> None:
        self.root = root
        self.key = key
        self.reserve = reserve
        self.seal = seal  # [audit] segment: old records go to sealed segment files
        self.seal_error = ""  # why the last sealing failed, until one succeeds
        self.seal_next: tuple[int, int] | None = None  # no segment is due before (seq, ns); None: ask the table
        self.forward = forward  # the rows stored, to the journal or syslog (audit_forward.py)
        self.conn = sqlite3.connect(catalog_path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # synced when settled
        self.wal = Path(f"{catalog_path}-wal")
        row = self.conn.execute("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self.seq, self.mac = (row[0], bytes(row[1])) if row else (0, ZERO_MAC)
        # When what is stored unsynced must be settled: at once for what a
        # writer before this one may have left unsettled.
        self.settle_at: float | None = time.monotonic() if self.seq else None
        self.named = -1  # the record the head was last settled at
        self.synced = -1 if self.seq else 0  # the last record the WAL is synced to
        self.sync_failed = False  # the last fdatasync of the WAL failed: write it again first
        self.anchored = anchor.read_anchor(root) is not None
        self.waiting: list[tuple] = []  # records the catalog has not taken yet
        self.failing = ""  # why, while records wait
        self.anchor_error = ""  # why the head or the anchor could not be written, until they can
        self.lost, self.lost_why = _read_lost(root)  # records gone for good, for the next gap record

    def write(self, items: list[tuple], durable: bool, chores: bool = True) -> bool:
        """Store what waits and `items` (records without seq) in one
        transaction; `durable`: settled (synced, named by the head) before
        it returns. False when the catalog refused them: they wait for the
        next call. `chores` False: the caller runs `chores()` itself, later
        (the writer answers an fsync first)."""
        room = MAX_WAITING - len(self.waiting)
        if len(items) > room:
            self._lose(len(items) - room, f"more than {MAX_WAITING} records waited for the catalog")
            items = items[:room]
        self.waiting += items
        if not self.waiting and not self.lost and not durable:
            return True
        batch = self.waiting + ([self._gap()] if self.lost else [])
        try:
            self._commit(batch)
        except (sqlite3.Error, OSError) as e:  # OSError: a new chain's first head
            if not (_full(e) and self.reserve is not None and self.reserve.release()):
                return self._refused(e)
            try:  # the reserve's room is the catalog's now
                self._commit(batch)
            except (sqlite3.Error, OSError) as e2:
                return self._refused(e2)
        if self.failing:
            _say(f"seldonfs: audit writer: the catalog takes records again ({len(batch)} stored)")
            self.failing = ""
        if self.lost:
            self.lost, self.lost_why = 0, ""
            (self.root / LOST_NAME).unlink(missing_ok=True)
        self.waiting = []
        if chores:
            self.chores(durable)
        return True

    def chores(self, durable: bool = False) -> None:
        """After a stored batch: settle when asked or due, make the reserve
        if it is missing, seal the segments due."""
        self._after_commit(durable)
        if self.seal is not None:
            self._seal_due()

    def _seal_due(self) -> None:
        """Move the records due into segment files; a failure (a full
        disk) leaves them in the table, tried again after the next batch.
        Between segments the table is not asked at every batch: only once
        the oldest record's segment can be due (`segments.due_from`)."""
        assert self.seal is not None
        if self.seal_next is not None and (self.seq < self.seal_next[0] or time.time_ns() < self.seal_next[1]):
            return
        try:
            while (due := segments.next_range(self.conn, self.seal.every, time.time_ns())) is not None:
                s = segments.seal(self.conn, self.root / "data", self.seal, self.key, *due)
                _say(f"seldonfs: audit writer: records {s.first_seq}..{s.last_seq} sealed in {s.name}")
            self.seal_next = segments.due_from(self.conn, self.seal.every)
            if self.seal_error:
                self.seal_error = ""
        except (OSError, sqlite3.Error) as e:
            if not self.seal_error:
                _say(f"seldonfs: ERROR audit writer: cannot seal a segment (tried again with every batch): {e}")
            self.seal_error = str(e)

    def _commit(self, batch: list[tuple]) -> None:
        """Store `batch`, unsynced: due to be settled."""
        if not batch:
            return
        if self.seq == 0 and not self.anchored:
            self._begin_chain()
        rows = []
        seq, mac = self.seq, self.mac
        for item in batch:
            seq += 1
            row = (seq, *item)
            mac = mac_of(self.key, mac, row)
            rows.append((*row, mac))
        try:
            self.conn.execute("BEGIN")
            self.conn.executemany(_INSERT, rows)
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise
        self.seq, self.mac = seq, mac
        if self.settle_at is None:
            # A chain not anchored yet is settled at once: records with no
            # head at all would read as a chain cut short.
            self.settle_at = time.monotonic() + (SETTLE_S if self.anchored else 0.0)
        if self.forward is not None:
            try:
                self.forward(rows)
            except Exception as e:  # noqa: BLE001 - a copy elsewhere must never cost the chain
                _say(f"seldonfs: ERROR audit writer: forwarding records failed: {e}")

    def _begin_chain(self) -> None:
        """A new chain's head names record 0, on disk before its first
        record is: a kill or a power loss before the first settle then
        leaves records past the head, which the next writer settles, not
        records with no head at all, which the mount must refuse (the head
        deleted, or never written?)."""
        if anchor.read_head(self.root) is None:
            anchor.write_head(self.root, self.key, 0, ZERO_MAC, durable=True)
            sync_dir(self.root)

    def _after_commit(self, durable: bool) -> None:
        """Settle when asked or due; the reserve."""
        if durable or self.due() == 0:
            self.settle()
        if self.reserve is not None:
            self.reserve.ensure()

    def due(self) -> float | None:
        """Seconds until what is stored unsynced must be settled (None:
        nothing is)."""
        return None if self.settle_at is None else max(self.settle_at - time.monotonic(), 0.0)

    def settle(self) -> None:
        """Sync what is stored, then name it in the head (and anchor a
        chain that has no anchor yet); tried again with the next batch, or
        `RETRY_S` later, when it fails now."""
        if self.settle_at is None and self.named == self.seq:
            return  # settled already (an fsync with nothing new)
        try:
            self.sync(quiet=False)  # nothing to do when the WAL is synced already
            anchor.write_head(self.root, self.key, self.seq, self.mac, durable=True)
            if not self.anchored and self.seq:
                epoch, seq, mac = self._epoch_start()
                anchor.write_anchor(self.root, self.key, epoch, seq, mac)
                self.anchored = True
        except OSError as e:
            self._failed(e)
            self.settle_at = time.monotonic() + RETRY_S
        else:
            self.anchor_error = ""
            self.settle_at, self.named = None, self.seq

    def _failed(self, e: Exception) -> None:
        if not self.anchor_error:
            _say(f"seldonfs: ERROR audit writer: cannot sync the records or write the chain's anchors (tried "
                 f"again with every batch): {e}")
        self.anchor_error = str(e)

    def sync(self, quiet: bool = True) -> bool:
        """Every committed transaction on disk, named by the head at the
        next settle: what synchronous=FULL would have synced at each
        commit, in one fdatasync. `quiet`: a failure is logged and False
        returned (the settle tries again); else it is raised.

        A failed fdatasync may have left the failed pages clean in memory,
        so the next one would succeed with them still not on disk
        ("fsyncgate"). After a failure the WAL is therefore written again
        from what the kernel holds before it is synced."""
        if self.synced == self.seq and not self.sync_failed:
            return True
        try:
            if self.sync_failed:
                self._rewrite_wal()
            fd = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC)
            try:
                faults.walsync(fd)
            finally:
                os.close(fd)
        except (OSError, sqlite3.Error) as e:
            self.sync_failed = True
            if not quiet:
                raise OSError(getattr(e, "errno", None) or errno.EIO, str(e)) from e
            self._failed(e)
            return False
        if self.sync_failed:
            _say("seldonfs: audit writer: the WAL was written again and synced after the failure")
            self.sync_failed = False
        self.synced = self.seq
        return True

    def _rewrite_wal(self) -> None:
        """Write the WAL's bytes back in place (dirty again), holding the
        catalog's write lock so no other connection appends or restarts it
        meanwhile."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            fd = os.open(self.wal, os.O_RDWR | os.O_CLOEXEC)
            try:
                off = 0
                while chunk := os.pread(fd, 1 << 20, off):
                    pwrite_all(fd, chunk, off)
                    off += len(chunk)
            finally:
                os.close(fd)
        finally:
            self.conn.execute("ROLLBACK")

    def _epoch_start(self) -> tuple[int, int, bytes]:
        """(epoch, seq, mac) of the current epoch's first record: the last
        reset record, else the first record."""
        n = self.conn.execute("SELECT count(*) FROM audit WHERE op = ?", (RESET_OP,)).fetchone()[0]
        row = self.conn.execute(
            "SELECT seq, mac FROM audit WHERE op = ? ORDER BY seq DESC LIMIT 1", (RESET_OP,)
        ).fetchone() or self.conn.execute("SELECT seq, mac FROM audit ORDER BY seq LIMIT 1").fetchone()
        return n + 1, row[0], bytes(row[1])

    def begin_epoch(self, item: tuple, seq: int) -> int:
        """Store `item` (a reset record) as record `seq`, chained on from
        the last stored record, and anchor the new epoch; returns it. The
        anchor goes first and the head last: a reset stopped before its
        head leaves the head older than the anchor (or missing), which the
        mount refuses and a new reset mends, never an anchor of an epoch
        before this one beside a head that passes."""
        epoch = max(anchor.epoch_of(anchor.read_anchor(self.root)), self._epoch_start()[0] if self.seq else 1) + 1
        self.seq = seq - 1  # the numbers a lost chain used are not used again
        self._commit([item])
        self.sync(quiet=False)
        self.settle_at, self.named = None, self.seq
        anchor.write_anchor(self.root, self.key, epoch, self.seq, self.mac)
        anchor.write_head(self.root, self.key, self.seq, self.mac, durable=True)
        return epoch

    def _refused(self, e: sqlite3.Error | OSError) -> bool:
        if not self.failing:
            _say(f"seldonfs: ERROR audit writer: {len(self.waiting)} records wait: {e}; retrying")
        self.failing = str(e)
        return False

    def _lose(self, n: int, why: str) -> None:
        self.lost += n
        self.lost_why = why
        _say(f"seldonfs: ERROR audit writer: {n} records lost: {why}")

    def _gap(self) -> tuple:
        return gap_record(f"{self.lost} records lost: {self.lost_why}")

    def close(self) -> None:
        """What still waits is lost: counted in `LOST_NAME` for the next
        writer's gap record."""
        if self.waiting or self.lost:
            n, why = len(self.waiting) + self.lost, self.failing or self.lost_why
            try:
                (self.root / LOST_NAME).write_text(json.dumps({"records": n, "why": why}))
            except OSError as e:
                _say(f"seldonfs: ERROR audit writer: {n} records lost ({why}), not noted: {e}")
            else:
                _say(f"seldonfs: ERROR audit writer: {n} records lost: {why}")
        self.conn.close()


def _full(e: sqlite3.Error | OSError) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(e)


def _read_lost(root: Path) -> tuple[int, str]:
    try:
        doc = json.loads((root / LOST_NAME).read_text())
        return int(doc["records"]), str(doc["why"])
    except FileNotFoundError:
        return 0, ""
    except (OSError, ValueError, KeyError, TypeError):
        return 1, f"{LOST_NAME} unreadable: at least one record"


@contextlib.contextmanager
def _read_only(catalog_path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the catalog, closed after use."""
    conn = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def stored_seq(catalog_path: Path) -> int:
    """The last record number in the catalog (0: none)."""
    with _read_only(catalog_path) as conn:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()[0]


def _stored_since(catalog_path: Path, seq: int, writer_pid: int) -> int:
    """Records past `seq` that a writer process stored for its daemon (not
    the gap records it made itself)."""
    with _read_only(catalog_path) as conn:
        return conn.execute("SELECT count(*) FROM audit WHERE seq > ? AND NOT (op = ? AND pid = ?)",
                            (seq, GAP_OP, writer_pid)).fetchone()[0]


_FIND = f"SELECT 1 FROM audit WHERE {' AND '.join(f'{f} = ?' for f in FIELDS[1:])} LIMIT 1"
_INSERT = f"INSERT INTO audit ({', '.join(FIELDS)}, mac) VALUES ({', '.join('?' * (len(FIELDS) + 1))})"


class AuditLog:
    """The daemon's side of the chain.

    `record()` appends a tuple to a list (about a microsecond). A thread
    hands the list every `BATCH_S` seconds, pickled, through a pipe to a
    writer process (`python -m seldonfs.audit`), which MACs and stores it.
    MACs and SQLite thus run beside the request loop, not under its GIL; and
    what reached the pipe is written even if this process is killed. Each
    batch handed on, and an fsync's records, also go into the sync log
    (synclog.py), which makes an fsync's records durable without the writer
    and keeps what a dead writer or a power loss took from it."""

    def __init__(
        self, root: Path, catalog_path: Path, key: bytes, reads: bool = False, lock_fd: int | None = None,
        seal: segments.Spec | None = None, sealed: segments.Reader | None = None, retain_s: float | None = None,
        forward: str = "none",
    ) -> None:
        self.root = root
        self.forward = forward  # [audit] forward: what the writer process ships each stored record to
        self.catalog_path = catalog_path
        self.key = key
        self.reads = reads
        self.seal = seal  # when to seal segments ([audit] segment), for the writer
        self.sealed = sealed or segments.Reader(root / "data", None)  # how to read them (the store's keys)
        self.retain_s = retain_s
        self.lock_fd = lock_fd
        self.queue: list[tuple] = []
        self.sent = stored_seq(catalog_path)  # records handed on so far
        self._qlock = threading.Lock()  # the queue
        self._plock = threading.Lock()  # the pipes, the writer
        self._procs: dict[int, tuple[str, float]] = {}
        self._lost = 0  # records a dead writer took with it, for the next gap record
        self._restart_at = 0.0
        self._base = self.sent  # the last record number when the writer started
        self._handed = 0  # records handed to it since
        self._unsynced = True  # handed since the last durable answer: a sync has to ask for one
        self._logged: list[tuple] = []  # in the sync log, not handed to the writer yet
        self._log_full = False  # the sync log starts afresh once the writer has stored and synced it all
        self._last_logged: tuple | None = None  # the last record added to the sync log
        self.synclog = self._open_synclog()
        recovered = self._unstored(RECOVERED)
        self._spawn()
        self._dead = False
        if self.synclog is not None:
            self._begin_log(recovered)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        # The writer inherits the store lock (`lock_fd`): after a kill -9 of
        # the daemon the store stays locked until it has stored the rest.
        keep = (to_child, from_child) + ((self.lock_fd,) if self.lock_fd is not None else ())
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "seldonfs.audit", str(self.root), str(self.catalog_path), str(to_child),
                 str(from_child), self.forward],
                pass_fds=keep, stdin=subprocess.DEVNULL, close_fds=True,
            )
        finally:
            os.close(to_child)
            os.close(from_child)
        self._send(self.key)  # the key goes by the pipe, never by argv
        self._send(self.seal)  # and so do the store's keys, which seal segments

    def _open_synclog(self) -> SyncLog | None:
        if not usable(self.root):
            return None  # an fsync asks the writer to sync its records
        try:
            return SyncLog(self.root, self.key)
        except OSError as e:
            log.error("audit: %s: %s: an fsync waits for the audit writer to sync its records instead",
                      self.root / synclog.NAME, e)
            return None

    def _begin_log(self, recovered: list[tuple]) -> None:
        """Store what the last mount's log held and the catalog lacks, then
        start the log afresh. While the writer cannot store and sync them,
        fsyncs ask the writer, and the log is kept for the next mount."""
        assert self.synclog is not None
        ours, self.synclog = self.synclog, None  # the flush below must not add to the old log
        if recovered:
            log.info("audit: %d records were only in %s (the last mount ended before its audit writer had "
                     "them): stored now", len(recovered) - 1, synclog.NAME)
            with self._qlock:
                self.queue += recovered
            self.flush(durable=True)
            if not self._stored(recovered[-1]):
                log.error("audit: the records recovered from %s are not synced yet: it is kept for the next "
                          "mount, and fsyncs wait for the audit writer", synclog.NAME)
                ours.close()
                return
        self.synclog = ours
        self._restart_log()

    def _unstored(self, why: str) -> list[tuple]:
        """What the sync log holds that the writer never stored and that
        is not waiting in `_logged` to be handed on, after a record saying
        `why`."""
        if self.synclog is None:
            return []
        with _read_only(self.catalog_path) as conn:
            return unstored(conn, self.synclog, self._logged, why)

    def _stored(self, item: tuple) -> bool:
        """The writer has stored `item` and synced it (after a durable answer)."""
        if self._dead or self._unsynced:
            return False
        with _read_only(self.catalog_path) as conn:
            return conn.execute(_FIND, item).fetchone() is not None

    def _restart_log(self) -> None:
        """A new sync log over the old one, all of whose records are stored
        and synced."""
        assert self.synclog is not None
        try:
            self.synclog.start(stored_seq(self.catalog_path))
        except (OSError, sqlite3.Error) as e:
            log.error("audit: cannot start %s (%s): fsyncs wait for the audit writer", synclog.NAME, e)
            self.synclog.close()
            self.synclog = None
            return
        self._log_full = False
        self._last_logged = None

    def record(
        self, op: str, uid: int, gid: int, pid: int, path: str, path2: str = "",
        result: str = "OK", nbytes: int = 0, detail: str = "",
    ) -> None:
        item = (
            time.time_ns(), uid, gid, pid, self._proc(pid), op, text(path), text(path2), result, nbytes,
            text(detail),
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

    def flush(
        self, durable: bool, meanwhile: Callable[[], None] | None = None, data_fd: int | None = None
    ) -> None:
        """Hand on what is queued; `durable`: wait until the writer has it on
        disk. `meanwhile` (the data's own fsync) runs while the writer
        syncs, so the two disk waits overlap; its exception is raised after
        the wait, and so is EIO when the writer could not sync the records
        (an fsync is a promise for both). With the data's descriptor, the
        sync log makes the records durable instead (synclog.py)."""
        with self._plock:
            if data_fd is not None and meanwhile is not None and self._log_sync(data_fd, meanwhile):
                return
            waiting = self._hand_on(durable)
            failed = None
            if meanwhile is not None:
                try:
                    meanwhile()
                except BaseException as e:  # noqa: BLE001 - raised below, once the writer has answered
                    failed = e
            if waiting:
                try:
                    answer = os.read(self._in, 1)
                    if answer not in (b"k", b"e"):
                        raise OSError(errno.EPIPE, "writer gone")
                    if answer == b"e" and meanwhile is not None and failed is None:
                        failed = OSError(errno.EIO, "the audit records of this change could not be synced")
                    self._unsynced = answer == b"e"
                    if self._log_full and self._last_logged is not None and self._stored(self._last_logged):
                        self._restart_log()
                except OSError as e:
                    self._gone(e)
            if failed is not None:
                raise failed

    def _hand_on(self, durable: bool) -> bool:
        """Send the queue (under `_plock`); True: a durable batch went, and
        the writer's answer is to be read."""
        if self._dead and not self._restart():
            with self._qlock:
                if len(self.queue) > MAX_WAITING:  # the rest waits for the next writer
                    self._lost += len(self.queue) - MAX_WAITING
                    del self.queue[MAX_WAITING:]
            return False
        with self._qlock:
            fresh, self.queue = self.queue, []
        items = self._logged + fresh
        lost = self._lost
        if lost:
            items.insert(0, gap_record(f"{lost} records lost: the audit writer process died"))
        if not items and (not durable or not self._unsynced):
            return False  # nothing new since the last sync (fsx: most fsyncs) costs no round trip
        if fresh and self._log(fresh):
            self._logged += fresh
            fresh = []
        if self._log_full:
            durable = True  # the writer stores and syncs all, then the log starts afresh
        try:
            self._send((items, durable))
        except OSError as e:
            self._gone(e)
            with self._qlock:  # a dead reader got none of it: kept, in order, for the next writer
                self.queue[:0] = fresh
            return False
        self._logged = []
        self.sent += len(items)
        self._handed += len(items)
        self._lost = 0
        self._unsynced = True
        return durable

    def _log(self, items: list[tuple]) -> bool:
        """Add `items` to the sync log; False: there is none, or it is full."""
        if self.synclog is None or self._log_full:
            return False
        if not self.synclog.append(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)):
            self._log_full = True
            return False
        self._last_logged = items[-1]
        return True

    def _log_sync(self, data_fd: int, meanwhile: Callable[[], None]) -> bool:
        """An fsync (`meanwhile`, of `data_fd`) whose records the sync log
        makes durable: what is queued joins the log, the log's new frames
        are written out beside the data's writeback, and the data's
        fdatasync flushes the disk's cache over both. False: the writer is
        to sync them (no log, a full one, or one that cannot be written
        out, which is given up for this mount)."""
        if self.synclog is None or self._log_full:
            return False
        with self._qlock:
            fresh, self.queue = self.queue, []
        if fresh:
            if not self._log(fresh):  # it is full now
                with self._qlock:
                    self.queue[:0] = fresh
                return False
            self._logged += fresh
        if self.synclog.pending:
            _libc.write_behind(data_fd)
            try:
                self.synclog.write_out()
            except OSError as e:
                log.error("audit: cannot write out %s (%s): fsyncs wait for the audit writer from now on",
                          synclog.NAME, e)
                self.synclog.close()
                self.synclog = None
                return False
        meanwhile()
        return True

    def _gone(self, e: OSError) -> None:
        log.error("audit writer process gone (%s): starting another; a gap record will count what it "
                  "took with it", e)
        self._dead = True

    def _restart(self) -> bool:
        """A new writer process after the last one died (at most one try a
        second). What the dead one had been handed and had not stored (the
        catalog tells how far it got) is handed to the next one from the
        sync log, after a record that says so; what the log lacks (it was
        full, or there is none) is counted lost."""
        now = time.monotonic()
        if now < self._restart_at:
            return False
        self._restart_at = now + 1.0
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.child.poll() is None:
            self.child.kill()  # alive but deaf: it is ours
        self.child.wait()
        try:
            gone = max(0, self._handed - _stored_since(self.catalog_path, self._base, self.child.pid))
            again = self._unstored(WRITER_DIED) if gone else []
            self._logged[:0] = again  # in the log already: handed first, in order
            self._lost += max(0, gone - max(0, len(again) - 1))
            self._base, self._handed = stored_seq(self.catalog_path), 0
            with contextlib.suppress(OSError):  # counted: the next writer need not guess
                (self.root / OPEN_NAME).unlink(missing_ok=True)
            self._spawn()
        except (OSError, sqlite3.Error) as e:
            log.error("cannot start another audit writer: %s", e)
            return False
        self._dead = False
        log.warning("audit writer restarted")
        return True

    def sync(self, meanwhile: Callable[[], None] | None = None, data_fd: int | None = None) -> None:
        """Every queued record on disk, durably, before a data fsync
        (`meanwhile`, of `data_fd` when it is a file's) is answered."""
        self.flush(True, meanwhile, data_fd)

    def jsonl(self) -> Iterator[bytes]:
        """The chain as JSON lines (system/logs/audit.jsonl), up to now:
        the records of the table (sealed segments are files of their own)."""
        self.flush(durable=True)
        conn = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True)
        try:
            for r in conn.execute(f"SELECT {', '.join(FIELDS)}, mac FROM audit ORDER BY seq"):
                rec = dict(zip(FIELDS, r[:-1]), mac=bytes(r[-1]).hex())
                yield JSON(rec).encode() + b"\n"
        finally:
            conn.close()

    def verify_stored(self) -> tuple[int, Break | None]:
        """Check the chain as stored so far, and its anchors, beside the
        writer (any thread): the head is read first, so every record it
        names is already in the table."""
        from .store import Store

        head = read_head(self.root)
        conn = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True, timeout=10)
        try:
            n, brk = verify(conn, self.key, head, sealed=self.sealed, retain_s=self.retain_s)
        finally:
            conn.close()
        problem = anchor.judge(anchor.look(Store(self.root), self.key)) if brk is None else None
        return n, brk if problem is None else Break(0, "anchor", problem)

    def head(self) -> dict[str, Any]:
        """The head as `seldonfs audit head` prints it, with every record
        queued so far stored (any thread)."""
        from .store import Store

        self.sync()
        head = anchor.current_head(Store(self.root))
        if head is None:
            raise SeldonError(f"{self.root / HEAD_NAME}: missing")
        return head

    @property
    def count(self) -> int:
        return self.sent + len(self.queue)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush(durable=True)
        with contextlib.suppress(OSError):
            self._send(END)  # a clean end: no gap record
        os.close(self._out)  # end of input: the writer exits
        os.close(self._in)
        if self.synclog is not None:
            self.synclog.close()
        try:
            self.child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log.error("audit writer did not exit; killing it")
            self.child.kill()


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


def writer_main(root: Path, catalog_path: Path, fd_in: int, fd_out: int, forward: str = "none") -> None:
    """The writer process: (items, durable) messages until `END` or end of
    input; each stored batch also goes to `forward` (audit_forward.py).
    It ignores SIGINT/SIGTERM: the daemon's unmount ends it (`END`), and a
    killed daemon still gets everything it had handed on stored, and a gap
    record for what it had not."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def message() -> object:
        head = _read_exact(fd_in, 4)
        if head is None:
            return None
        data = _read_exact(fd_in, struct.unpack("<I", head)[0])
        return None if data is None else pickle.loads(data)

    key = message()
    seal = message()
    if not isinstance(key, bytes) or not (seal is None or isinstance(seal, segments.Spec)):
        return
    reserve = Reserve(root)
    reserve.ensure()
    from .audit_forward import make

    unclean = _mark_open(root)
    if unclean:
        _say(f"seldonfs: WARNING audit writer: {UNCLEAN}")
    w = ChainWriter(root, catalog_path, key, reserve, seal, make(forward, root))
    # The gap records of what a previous writer could not store, or may
    # have lost unsettled.
    w.write([gap_record(UNCLEAN)] if unclean else [], durable=False)
    ended = False
    try:
        while True:
            waits = [t for t in (RETRY_S if w.waiting else None, w.due()) if t is not None]
            if waits and not select.select([fd_in], [], [], min(waits))[0]:
                if w.waiting:
                    w.write([], durable=False)  # the disk may have room again
                if w.due() == 0:
                    w.settle()  # needs no new space: an fdatasync, the head rewritten in place
                continue
            msg = message()
            if msg is None or msg == END:
                ended = msg == END
                break
            items, durable = msg  # type: ignore[misc]
            # A refused batch waits in `w` (a full disk reads as waiting
            # records, not as a failed fsync: the data's own fsync reports it).
            w.write(items, durable=False, chores=not durable)
            if durable:
                # an fsync: the records on disk (the head names them when the
                # settle is due); "e": they could not be, the fsync fails.
                # The chores (a settle due, the reserve, a segment) wait
                # until it has its answer.
                os.write(fd_out, b"k" if w.sync() else b"e")
                w.chores()
        if not ended:  # end of input without the daemon's goodbye
            _say(f"seldonfs: WARNING audit writer: {DAEMON_GONE}")
            w.write([gap_record(DAEMON_GONE)], durable=False, chores=False)  # no segment sealed in between
            _store_unstored(w)
    finally:
        for _ in range(CLOSE_TRIES):  # unmounted while the disk is full: some time to get room
            if w.write([], durable=True):
                break
            time.sleep(RETRY_S)
        w.close()
        _mark_closed(root)


def _store_unstored(w: ChainWriter) -> None:
    """The records a dead daemon had put in its sync log and its writer had
    not stored (an fsync's, at most 0.1 s old; more after a power loss):
    stored by its writer before it ends, or by an offline command first."""
    if not usable(w.root):
        return
    try:
        items = _unstored_in(w.root, w.key, w.conn, w.waiting)
    except (OSError, sqlite3.Error) as e:  # the next mount tries again
        _say(f"seldonfs: ERROR audit writer: cannot read {synclog.NAME}: {e}")
        return
    if items:
        _say(f"seldonfs: audit: {len(items) - 1} records stored from {synclog.NAME}")
        w.write(items, durable=False)


def _unstored_in(root: Path, key: bytes, conn: sqlite3.Connection, waiting: list[tuple] | None = None
                 ) -> list[tuple]:
    """`unstored` of the store's sync log as it is, read only; [] when
    there is none."""
    try:
        log_ = SyncLog(root, key, readonly=True)
    except FileNotFoundError:
        return []
    try:
        return unstored(conn, log_, waiting)
    finally:
        log_.close()


def waiting_in_log(root: Path, conn: sqlite3.Connection, key: bytes) -> int:
    """How many records the sync log holds that the writer never stored
    (0: none, or no log to read)."""
    try:
        return max(0, len(_unstored_in(root, key, conn)) - 1)
    except OSError:
        return 0


def _mark_open(root: Path) -> bool:
    """Leave `OPEN_NAME` for as long as this writer runs; True when the
    last writer left it there. A writer that ends removes it; the daemon
    removes it for a writer it saw die, whose loss it counts itself."""
    path = root / OPEN_NAME
    try:
        return mark(path)
    except OSError as e:
        _say(f"seldonfs: ERROR audit writer: cannot write {path} (a power loss would leave no gap record): {e}")
        return path.exists()


def _mark_closed(root: Path) -> None:
    try:
        unmark(root / OPEN_NAME)
    except OSError as e:
        _say(f"seldonfs: ERROR audit writer: cannot remove {root / OPEN_NAME} (the next mount will record a gap "
             f"that did not happen): {e}")


def append_offline(root: Path, catalog_path: Path, key: bytes, op: str, detail: str) -> None:
    """One record from an offline command (passwd, rekey), with the store locked."""
    append_offline_many(root, catalog_path, key, [(op, "", "", "OK", 0, detail)])


def append_offline_many(
    root: Path, catalog_path: Path, key: bytes, records: list[tuple[str, str, str, str, int, str]]
) -> None:
    """Records (op, path, path2, result, bytes, detail) of an offline command
    (passwd, rekey, janitor), with the store locked. A chain that lost its
    anchoring gets no records (they would overwrite the evidence): exit 26."""
    from .catalog import Catalog
    from .store import Store

    anchor.refuse_broken(Store(root), key)
    cat = Catalog(catalog_path)
    cat.migrate()  # a store not mounted since an upgrade
    cat.close()
    w = ChainWriter(root, catalog_path, key)
    try:
        _store_unstored(w)  # a crashed mount's records go before this command's
        who = (os.getuid(), os.getgid(), os.getpid(), "seldonfs")
        now = time.time_ns()
        if not w.write([(now, *who, op, text(p), text(p2), res, n, text(det))
                        for op, p, p2, res, n, det in records], durable=True):
            raise SeldonError(f"{catalog_path}: the audit records of this command were not stored: {w.failing}")
    finally:
        w.close()


def reset(root: Path, catalog_path: Path, key: bytes, reason: str, found: anchor.Found, problem: str) -> tuple[int, int]:
    """Start a new epoch after a break the mount refuses (`problem`, judged
    from `found`): its first record, op `reset`, names the reason, what was
    found and the old head; it chains on from the last record still stored
    and takes the number after every one the old chain is known to have
    used. The caller holds the store lock. Returns (epoch, seq)."""
    from .catalog import Catalog

    if not catalog_path.exists():
        Catalog.create(catalog_path).close()
    cat = Catalog(catalog_path)
    cat.migrate()
    cat.close()
    old = anchor.sealed_head(found)
    detail = (f"reason: {reason}; found: {problem}; old head: "
              + (f"seq {old[0]} mac {old[1].hex()}" if old is not None else "none that authenticates"))
    w = ChainWriter(root, catalog_path, key)
    try:
        item = (time.time_ns(), os.getuid(), os.getgid(), os.getpid(), "seldonfs", RESET_OP, "", "", "OK", 0,
                text(detail))
        epoch = w.begin_epoch(item, anchor.next_seq(found, w.seq))
        return epoch, w.seq
    finally:
        w.close()


# ---------------------------------------------------------------- reading


@dataclass
class Break:
    seq: int
    kind: str  # edited, deleted, inserted, reordered, truncated
    detail: str


@dataclass
class Event:
    """A reset (a new epoch after a break) or a gap (records lost), as the
    chain records them: not breaks, but reported by every verify."""

    seq: int
    op: str
    detail: str
    epoch: int


def rows(conn: sqlite3.Connection) -> Iterator[tuple]:
    """Records in the order they were stored."""
    yield from conn.execute(f"SELECT {', '.join(FIELDS)}, mac FROM audit ORDER BY id")


def verify(
    conn: sqlite3.Connection, key: bytes, head: dict[str, Any] | None, events: list[Event] | None = None,
    sealed: segments.Reader | None = None, retain_s: float | None = None,
) -> tuple[int, Break | None]:
    """Walk the chain in storage order: the sealed segments (segments.py,
    read with `sealed`), then the table. Returns (records checked, first
    break); resets, gaps and expired segments met on the way go to `events`.
    A segment whose file is gone is a break (deleted) until `retain_s`
    seconds have passed since its last record, then an expired part of
    the chain, which goes on from the last MAC its index names.

    The kind of a break: a record whose MAC fails while the next one chains
    on from it was *edited*; one the chain skips over, or one with a number
    already passed that does not authenticate, was *inserted*; a missing
    number is *deleted* if no record carries it, *reordered* if one later
    does; records the head names but the table lacks were *truncated*. A
    reset record may skip numbers (those of the lost chain before it)."""
    h_seq = _head_seq(key, head)
    if isinstance(h_seq, Break):
        return 0, h_seq
    prev_mac, prev_seq, n, epoch = ZERO_MAC, 0, 0, 1
    pending: tuple | None = None  # (row, mac) that failed, held to see what follows

    def step(row: tuple, mac: bytes) -> Break | None:
        nonlocal prev_mac, prev_seq, n, epoch, pending
        seq = row[0]
        n += 1
        if pending is not None:
            p_row, p_mac = pending
            if mac_of(key, prev_mac, row) == mac:
                return Break(p_row[0], "inserted", f"record {p_row[0]} was not written by the filesystem")
            return Break(p_row[0], "edited", f"record {p_row[0]} was changed after it was written")
        if seq > prev_seq + 1 and not (row[6] == RESET_OP and mac_of(key, prev_mac, row) == mac):
            kind = "reordered" if mac_at(conn, prev_seq + 1) is not None else "deleted"
            what = (
                f"record {prev_seq + 1} is stored after record {seq}" if kind == "reordered"
                else f"record {prev_seq + 1}" + (f"..{seq - 1}" if seq - 1 > prev_seq + 1 else "") + " missing"
            )
            return Break(prev_seq + 1, kind, what)
        if seq <= prev_seq:
            return Break(seq, "inserted", f"a second record {seq} after record {prev_seq}")
        if mac_of(key, prev_mac, row) != mac:
            pending = (row, mac)
            return None
        if row[6] in (RESET_OP, GAP_OP) and events is not None:
            epoch += row[6] == RESET_OP
            events.append(Event(seq, row[6], row[11], epoch))
        prev_mac, prev_seq = mac, seq
        return None

    for s in segments.index(conn):
        if not segments.authentic(key, s):
            return n, Break(s.first_seq, "edited", f"the index entry of segment {s.name} does not authenticate")
        body = sealed.body(s) if sealed is not None else None
        if body is None:
            if sealed is not None and retain_s is not None and s.last_ns < time.time_ns() - retain_s * 1e9:
                if events is not None:
                    events.append(Event(s.first_seq, EXPIRED, f"segment {s.name} (records {s.first_seq}.."
                                        f"{s.last_seq}) removed after the retention", epoch))
                if pending is None:
                    prev_mac, prev_seq = s.last_mac, s.last_seq
                continue
            why = "is missing" if sealed is not None else "cannot be read without the store's keys"
            return n, Break(s.first_seq, "deleted", f"segment {s.name} (records {s.first_seq}..{s.last_seq}) {why}")
        try:
            for line in segments.lines(body):
                # the common case without parsing the record: the next
                # number, its MAC right, neither a reset nor a gap
                canon, mac = segments.split_line(line)
                if (pending is None and int(canon[1:canon.index(b",")]) == prev_seq + 1
                        and hmac.digest(key, prev_mac + canon, "sha256") == mac
                        and b'"reset"' not in canon and b'"gap"' not in canon):
                    n += 1
                    prev_mac, prev_seq = mac, prev_seq + 1
                    continue
                brk = step(tuple(json.loads(canon)), mac)
                if brk is not None:
                    return n, brk
        except (OSError, ValueError, KeyError, EOFError) as e:
            return n, Break(s.first_seq, "edited", f"segment {s.name} is damaged: {e}")
        if hashlib.sha256(body).hexdigest() != s.sha256 or (pending is None and prev_mac != s.last_mac):
            return n, Break(s.first_seq, "edited", f"segment {s.name} is not the file its index names")
    for r in rows(conn):
        brk = step(tuple(r[:-1]), bytes(r[-1]))
        if brk is not None:
            return n, brk
    if pending is not None:
        p_seq = pending[0][0]
        if h_seq is not None and p_seq > h_seq:
            return n, Break(p_seq, "inserted", f"record {p_seq} was not written by the filesystem")
        return n, Break(p_seq, "edited", f"the last record {p_seq} was changed after it was written")
    if head is None and n:
        return n, Break(prev_seq, "truncated", f"{HEAD_NAME} is missing: the end of the chain cannot be checked")
    if h_seq is not None and h_seq > prev_seq:
        return n, Break(prev_seq + 1, "truncated", f"records {prev_seq + 1}..{h_seq} are missing at the end")
    if h_seq and mac_at(conn, h_seq) != bytes.fromhex(head["mac"]):  # type: ignore[index]
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


def mac_at(conn: sqlite3.Connection, seq: int) -> bytes | None:
    row = conn.execute("SELECT mac FROM audit WHERE seq = ?", (seq,)).fetchone()
    return bytes(row[0]) if row else None


def sealed_in(conn: sqlite3.Connection, since_ns: int | None, until_ns: int | None) -> list[segments.Segment]:
    """The segments that hold records of the time range, oldest first."""
    return [s for s in segments.index(conn)
            if (since_ns is None or s.last_ns >= since_ns) and (until_ns is None or s.first_ns < until_ns)]


def query(
    conn: sqlite3.Connection, since_ns: int | None = None, until_ns: int | None = None,
    path: str | None = None, uid: int | None = None, op: str | None = None, newest_first: bool = False,
    sealed: segments.Reader | None = None,
) -> Iterator[dict[str, Any]]:
    """Records that match, oldest first (or newest first); with `sealed`,
    those in sealed segments too (OSError: a segment's file is gone)."""
    live = _query_table(conn, since_ns, until_ns, path, uid, op, newest_first)
    if sealed is None:
        yield from live
        return
    want = _matcher(since_ns, until_ns, path, uid, op)
    # a plain path is looked for in the line before the line is parsed
    needle = JSON(path).encode() if path is not None and not any(c in path for c in "*?[") else b""
    segs = sealed_in(conn, since_ns, until_ns)
    if newest_first:
        yield from live
    for s in reversed(segs) if newest_first else segs:
        body = sealed.body(s)
        if body is None:
            raise FileNotFoundError(errno.ENOENT, f"segment {s.name} (records {s.first_seq}..{s.last_seq}) is missing")
        recs = [rec for rec in (dict(zip(FIELDS, segments.parse_line(line)[0])) for line in segments.lines(body)
                                if needle in line) if want(rec)]
        yield from reversed(recs) if newest_first else recs
    if not newest_first:
        yield from live


def _matcher(since_ns: int | None, until_ns: int | None, path: str | None, uid: int | None, op: str | None):
    def want(rec: dict[str, Any]) -> bool:
        return ((since_ns is None or rec["ns"] >= since_ns) and (until_ns is None or rec["ns"] < until_ns)
                and (uid is None or rec["uid"] == uid) and (op is None or rec["op"] == op)
                and (path is None or fnmatch.fnmatchcase(rec["path"], path)
                     or fnmatch.fnmatchcase(rec["path2"] or "", path)))
    return want


def _query_table(
    conn: sqlite3.Connection, since_ns: int | None, until_ns: int | None,
    path: str | None, uid: int | None, op: str | None, newest_first: bool,
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
    for r in conn.execute(sql + (" ORDER BY seq DESC" if newest_first else " ORDER BY seq"), args):
        rec = dict(zip(FIELDS, r))
        if path is not None and not (
            fnmatch.fnmatchcase(rec["path"], path) or fnmatch.fnmatchcase(rec["path2"] or "", path)
        ):
            continue
        yield rec


if __name__ == "__main__":  # the writer process of a mount (AuditLog)
    writer_main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:6])
