"""The catalog: STORE/catalog.sqlite (SQLite in WAL mode).

`create_tables()` is the canonical schema; every table and column carries a
comment on its meaning. Names are bytes: a path or name is stored as TEXT
when it is UTF-8 and as a BLOB of its raw bytes when it is not (`db_name`,
`name_of`), so every name the kernel accepts is kept losslessly and equal
names compare equal. Thread safety: a `Catalog` belongs to the mount's
request loop, one request at a time: the trio thread, or over io_uring a
queue thread that holds the loop's lock (uring.py).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from . import FORMAT_VERSION

CATALOG_NAME = "catalog.sqlite"

#: Schema version of the catalog; migrations move older catalogs forward.
SCHEMA_VERSION = 6

#: Columns added after a table first shipped: (table, column, type).
ADDED_COLUMNS = (("files", "ino", int), ("files", "ingest_ns", int), ("versions", "ino", int))


class NoSuchRowError(KeyError):
    pass


def _owner_only(path: Path) -> None:
    """The catalog names every user's files, their checks' findings and
    checksums: mode 0600, and so its -wal and -shm (SQLite gives them the
    database's mode when it makes them)."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            pass


def db_name(name: str) -> str | bytes:
    """How a path or name (str, its undecodable bytes as surrogates, as
    os.fsdecode makes them) is stored: text when it is UTF-8, else a BLOB."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name)


def name_of(value: str | bytes | None) -> str:
    """A stored path or name back as str (the inverse of `db_name`)."""
    if value is None:
        return ""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def create_tables(db: sqlite_utils.Database) -> None:
    # meta: one row per store-wide fact.
    #   key   - 'format_version' (the store layout, see seldonfs.FORMAT_VERSION),
    #           'schema_version' (this file's SCHEMA_VERSION), 'created_ns'
    #   value - text; numbers are stored as decimal strings
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    # files: one row per commit of a file by the policy engine.
    #   path          - where the commit put it, relative to the mount root
    #   original_name - the name the writer gave it
    #   job           - job id used for the managed name ('' when not named)
    #   size, sha256  - plaintext size and checksum at commit: SHA-256 in a
    #                   plain store, HMAC-SHA256 under the store's checksum
    #                   key in an encrypted one (validation.checksum_of)
    #   mime          - libmagic's type ('' when the folder checks no contents)
    #   verdict       - 'ok' or 'quarantined'
    #   reason        - why it was quarantined ('' when ok)
    #   committed_ns  - commit time
    #   ino           - inode number (the backing file's; stable while it exists)
    #   ingest_ns     - when the file was created through the mount (0 or NULL:
    #                   unknown, e.g. renamed in, or rebuilt by fsck)
    db["files"].create(
        {"id": int, "path": str, "original_name": str, "job": str, "size": int,
         "sha256": str, "mime": str, "verdict": str, "reason": str, "committed_ns": int,
         "ino": int, "ingest_ns": int},
        pk="id", if_not_exists=True,
    )
    db["files"].create_index(["path"], if_not_exists=True)
    # a commit in a folder with `dedupe` looks for earlier files of its name
    db["files"].create_index(["original_name", "sha256"], if_not_exists=True)
    # sequences: the next free sequence number per job id (managed names).
    #   Numbers are handed out in blocks; `next` is past every number handed
    #   out, so names stay unique across remounts and crashes; a clean
    #   unmount gives the unused rest of a block back (commit.Sequences).
    db["sequences"].create({"job": str, "next": int}, pk="job", if_not_exists=True)
    # quarantine: one row per file moved to a quarantine folder.
    #   path        - where it is now (relative to the mount root)
    #   origin      - the path it was written to
    #   reason      - the failed checks, '; '-separated
    #   at_ns       - when it was quarantined
    #   released_ns - when `quarantine release` moved it back (NULL: still there)
    #   released_to - where the release put it
    #   forced      - 1 when released with --force, overriding the checks
    #   released_by - uid that asked for the release
    db["quarantine"].create(
        {"id": int, "path": str, "origin": str, "reason": str, "at_ns": int,
         "released_ns": int, "released_to": str, "forced": int, "released_by": int},
        pk="id", if_not_exists=True,
    )
    db["quarantine"].create_index(["path"], if_not_exists=True)
    # versions: previous contents of files in folders with `versions = N`.
    #   path     - the file's path when the version was taken
    #   stored   - name of the copy in data/.seldon/versions/ (same block
    #              format as any file, so verify, decrypt and rekey cover it)
    #   saved_ns - when it was taken; size - its plaintext size
    #   cause    - 'truncate', 'overwrite', 'replace' or 'restore'
    #   ino      - the backing inode of the file they belong to: a version
    #              is listed and restored only for that file, never for a
    #              new file at the same path; 0 once the file is deleted;
    #              NULL: from before schema 5
    db["versions"].create(
        {"id": int, "path": str, "stored": str, "saved_ns": int, "size": int, "cause": str, "ino": int},
        pk="id", if_not_exists=True,
    )
    db["versions"].create_index(["path"], if_not_exists=True)
    # audit: the audit chain (audit.py, docs/audit.md). One row per change.
    #   id      - storage order (rowid)
    #   seq     - gapless record number, from 1
    #   ns      - time (ns since the epoch); uid, gid, pid, proc - who
    #   op      - create, mkdir, mknod, symlink, link, rename, unlink, rmdir,
    #             setattr, setxattr, removexattr, write, read, commit,
    #             quarantine, duplicate, release, version, restore, mount, unmount,
    #             passwd, rekey, janitor-delete/-archive/-move/-rmdir, control,
    #             damaged (content that failed authentication, read through the mount),
    #             distribute, download, distribution (distributions.py),
    #             reset (a new epoch after a break: seq may skip the lost chain's
    #             numbers), gap (records lost: how many and why, in detail)
    #   path    - the object, relative to the mount root; path2 - the other
    #             one (rename and link target, commit destination)
    #   result  - 'OK' or the errno name, e.g. 'EACCES'
    #   bytes   - bytes written (write) or read (read)
    #   detail  - what changed (setattr), the attribute (xattrs), the reason
    #   mac     - HMAC-SHA256(audit key, previous mac || record)
    db["audit"].create(
        {"id": int, "seq": int, "ns": int, "uid": int, "gid": int, "pid": int, "proc": str,
         "op": str, "path": str, "path2": str, "result": str, "bytes": int, "detail": str,
         "mac": bytes},
        pk="id", not_null={"seq"}, if_not_exists=True,
    )
    db["audit"].create_index(["seq"], unique=True, if_not_exists=True)
    db["audit"].create_index(["path"], if_not_exists=True)
    db["audit"].create_index(["path2"], if_not_exists=True)
    db["audit"].create_index(["ns"], if_not_exists=True)
    # audit_segments: sealed segments of the audit chain (segments.py), files
    #   under [audit] segments_to holding records first_seq..last_seq, which
    #   have left the audit table. name - the file, relative to data/;
    #   sha256 - of its plaintext; first_mac, last_mac - of its first and
    #   last record; tag - HMAC under the audit key over all of the row.
    db["audit_segments"].create(
        {"first_seq": int, "last_seq": int, "first_ns": int, "last_ns": int, "count": int, "name": str,
         "sha256": str, "first_mac": bytes, "last_mac": bytes, "tag": str},
        pk="first_seq", if_not_exists=True,
    )
    # distributions: one row per recipient a file was given to
    #   (user.seldon.recipient set through the mount; docs/distribution.md).
    #   path        - the file, relative to the mount root (follows renames
    #                 made through the mount)
    #   ino         - its backing inode number; 0 once it is removed
    #   sha256      - its checksum when the recipient was set (as files.sha256)
    #   size        - its plaintext size then
    #   name, address - the recipient (personal data: the catalog is 0600)
    #   sent_ns     - when the recipient was set; set_by - that caller's uid
    #   status      - 'sent', 'delivered', 'failed', 'revoked', 'expired'
    #   status_ns   - when the status last changed
    #   opened_ns   - first open for reading through the mount (NULL: never)
    #   downloads   - opens for reading through the mount while open
    #                 (status sent or delivered)
    #   expires_ns  - sent_ns + the folder's distribution_expiry
    #   expired_ns  - when the janitor marked it expired
    #   modified_ns - first open for writing or truncate after sent_ns
    #   outcome     - what the janitor did with the file at expiry: '' (not
    #                 yet), 'archived', 'deleted', 'kept', 'gone'
    db["distributions"].create(
        {"id": int, "path": str, "ino": int, "sha256": str, "size": int, "name": str, "address": str,
         "sent_ns": int, "set_by": int, "status": str, "status_ns": int, "opened_ns": int, "downloads": int,
         "expires_ns": int, "expired_ns": int, "modified_ns": int, "outcome": str},
        pk="id", defaults={"downloads": 0, "outcome": ""}, if_not_exists=True,
    )
    db["distributions"].create_index(["ino"], if_not_exists=True)
    # janitor_runs: one row per janitor run (in a mount or by the command).
    #   started_ns - when it started; seconds - how long it took
    #   trigger    - 'schedule', 'request' (seldonfs janitor), 'emergency',
    #                'crash', 'offline' (on an unmounted store)
    #   rules      - the folder tables it ran for ('*': all)
    #   planned, done, skipped - actions; freed - bytes deleted or archived
    #   summary    - the one-line summary the command prints
    db["janitor_runs"].create(
        {"id": int, "started_ns": int, "seconds": float, "trigger": str, "rules": str,
         "planned": int, "done": int, "skipped": int, "freed": int, "summary": str},
        pk="id", if_not_exists=True,
    )


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # see above
        _owner_only(path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(self.conn)

    @classmethod
    def create(cls, path: Path) -> "Catalog":
        cat = cls(path)
        create_tables(cat.db)
        cat.db["meta"].insert_all(
            [
                {"key": "format_version", "value": str(FORMAT_VERSION)},
                {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                {"key": "created_ns", "value": str(time.time_ns())},
            ],
            replace=True,
        )
        return cat

    def meta(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NoSuchRowError(key)
        return row[0]

    def migrate(self) -> None:
        """Bring a catalog of an older schema up to this one: missing tables
        are created, missing columns added (schema 2 -> 3: files.ino,
        files.ingest_ns; 3 -> 4: janitor_runs; 4 -> 5: versions.ino; 5 -> 6: distributions). Never
        drops anything."""
        create_tables(self.db)
        for table, column, kind in ADDED_COLUMNS:
            if column not in self.db[table].columns_dict:
                self.db[table].add_column(column, kind)
        self.conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )

    # ------------------------------------------------------------ files, sequences

    def add_files(self, rows: list[tuple]) -> None:
        """File records (the columns of `files` after id, in order), one transaction."""
        rows = [(db_name(r[0]), db_name(r[1]), *r[2:7], db_name(r[7]), *r[8:]) for r in rows]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT INTO files (path, original_name, job, size, sha256, mime, verdict, reason, committed_ns,"
                " ino, ingest_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def reserve_sequence(self, job: str, count: int) -> int:
        """Reserve `count` sequence numbers of `job`; returns the first."""
        row = self.conn.execute("SELECT next FROM sequences WHERE job = ?", (job,)).fetchone()
        first = row[0] if row else 1
        self.conn.execute("INSERT OR REPLACE INTO sequences VALUES (?, ?)", (job, first + count))
        return first

    def give_back_sequence(self, job: str, nxt: int, end: int) -> None:
        """Numbers `nxt`..`end`-1 of `job` were reserved and not used: the
        next reservation starts at `nxt` (unless another one came since)."""
        self.conn.execute("UPDATE sequences SET next = ? WHERE job = ? AND next = ?", (nxt, job, end))

    def same_content(self, original: str, sha256: str, limit: int) -> list[tuple[str, int]]:
        """(path, committed_ns) of the newest `limit` files committed 'ok'
        under the name `original` with checksum `sha256`, newest first."""
        rows = self.conn.execute(
            "SELECT path, committed_ns FROM files WHERE original_name = ? AND sha256 = ? AND verdict = 'ok'"
            " ORDER BY id DESC LIMIT ?", (db_name(original), sha256, limit),
        ).fetchall()
        return [(name_of(p), ns or 0) for p, ns in rows]

    def newest_checksum(self, path: str) -> str | None:
        """The checksum of the newest file record of `path` (None: none)."""
        row = self.conn.execute(
            "SELECT sha256 FROM files WHERE path = ? ORDER BY id DESC LIMIT 1", (db_name(path),)
        ).fetchone()
        return None if row is None else row[0]

    def newest_commit(self, path: str) -> tuple[str, int, int] | None:
        """(verdict, committed_ns, ino) of the newest file record of `path`
        (None: none; ino 0 where the record has none)."""
        row = self.conn.execute(
            "SELECT verdict, committed_ns, ino FROM files WHERE path = ? ORDER BY id DESC LIMIT 1", (db_name(path),)
        ).fetchone()
        return None if row is None else (row[0], row[1] or 0, row[2] or 0)

    # ------------------------------------------------------------ quarantine

    def add_quarantined(self, path: str, origin: str, reason: str, at_ns: int) -> None:
        self.conn.execute(
            "INSERT INTO quarantine (path, origin, reason, at_ns) VALUES (?, ?, ?, ?)",
            (db_name(path), db_name(origin), db_name(reason), at_ns),
        )

    def quarantined(self, path: str) -> tuple[int, str]:
        """(id, origin) of the unreleased quarantine row of `path`."""
        row = self.conn.execute(
            "SELECT id, origin FROM quarantine WHERE path = ? AND released_ns IS NULL", (db_name(path),)
        ).fetchone()
        if row is None:
            raise NoSuchRowError(path)
        return row[0], name_of(row[1])

    def set_quarantine_reason(self, qid: int, reason: str) -> None:
        self.conn.execute("UPDATE quarantine SET reason = ? WHERE id = ?", (db_name(reason), qid))

    def mark_released(self, qid: int, dest: str, forced: bool, uid: int) -> None:
        self.conn.execute(
            "UPDATE quarantine SET released_ns = ?, released_to = ?, forced = ?, released_by = ? WHERE id = ?",
            (time.time_ns(), db_name(dest), int(forced), uid, qid),
        )

    # ------------------------------------------------------------ versions

    def add_version(self, path: str, stored: str, saved_ns: int, size: int, cause: str, ino: int) -> None:
        self.conn.execute(
            "INSERT INTO versions (path, stored, saved_ns, size, cause, ino) VALUES (?, ?, ?, ?, ?, ?)",
            (db_name(path), stored, saved_ns, size, cause, ino),
        )

    def versions(self, path: str, ino: int) -> list[tuple[int, str, int, int, str]]:
        """(id, stored, saved_ns, size, cause) of the versions of the file
        `ino` at `path`, newest first."""
        return self.conn.execute(
            "SELECT id, stored, saved_ns, size, cause FROM versions WHERE path = ? AND (ino = ? OR ino IS NULL)"
            " ORDER BY id DESC", (db_name(path), ino),
        ).fetchall()

    def move_versions(self, path: str, ino: int, new_ino: int) -> None:
        """The versions of file `ino` at `path` now belong to `new_ino` (0:
        the file is gone, no new file may take them)."""
        self.conn.execute(
            "UPDATE versions SET ino = ? WHERE path = ? AND (ino = ? OR ino IS NULL)", (new_ino, db_name(path), ino)
        )

    def delete_version(self, vid: int) -> None:
        self.conn.execute("DELETE FROM versions WHERE id = ?", (vid,))

    # ------------------------------------------------------------ janitor

    def add_janitor_run(self, row: dict) -> None:
        self.db["janitor_runs"].insert(row)

    def janitor_runs(self, limit: int = 10) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM janitor_runs ORDER BY id DESC LIMIT ?", (limit,))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r)) for r in cur]

    # ------------------------------------------------------------ distributions

    def add_distribution(self, row: dict) -> int:
        row = {**row, "path": db_name(row["path"])}
        cols = ", ".join(row)
        cur = self.conn.execute(
            f"INSERT INTO distributions ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
        )
        return cur.lastrowid

    def open_distribution(self, ino: int, address: str, sha256: str) -> int | None:
        """The id of an open record of file `ino` to `address` with checksum `sha256`."""
        row = self.conn.execute(
            "SELECT id FROM distributions WHERE ino = ? AND address = ? AND sha256 = ?"
            " AND status IN ('sent', 'delivered')", (ino, address, sha256),
        ).fetchone()
        return None if row is None else row[0]

    def distributed_files(self) -> list[tuple[int, str]]:
        """(ino, path) of the files with an open record."""
        rows = self.conn.execute(
            "SELECT DISTINCT ino, path FROM distributions WHERE status IN ('sent', 'delivered') AND ino != 0"
        ).fetchall()
        return [(ino, name_of(p)) for ino, p in rows]

    def count_download(self, ino: int, now_ns: int) -> list[int]:
        """An open for reading of file `ino`: counted on each of its open
        records; returns their ids."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in self.conn.execute(
                "SELECT id FROM distributions WHERE ino = ? AND status IN ('sent', 'delivered')", (ino,))]
            self.conn.execute(
                "UPDATE distributions SET downloads = downloads + 1, opened_ns = coalesce(opened_ns, ?)"
                " WHERE ino = ? AND status IN ('sent', 'delivered')", (now_ns, ino),
            )
        return ids

    def distribution_modified(self, ino: int, now_ns: int) -> None:
        self.conn.execute(
            "UPDATE distributions SET modified_ns = ? WHERE ino = ? AND modified_ns IS NULL AND outcome = ''",
            (now_ns, ino),
        )

    def distribution_moved(self, ino: int, path: str) -> None:
        self.conn.execute("UPDATE distributions SET path = ? WHERE ino = ? AND outcome = ''", (db_name(path), ino))

    def distribution_removed(self, ino: int) -> None:
        """The file's last name is gone: its records keep their path and
        counts, belong to no inode, and the janitor has nothing to do."""
        self.conn.execute(
            "UPDATE distributions SET ino = 0, outcome = 'gone' WHERE ino = ? AND outcome = ''", (ino,)
        )

    def set_distribution_status(self, rid: int, status: str, now_ns: int) -> bool:
        cur = self.conn.execute(
            "UPDATE distributions SET status = ?, status_ns = ? WHERE id = ? AND status != 'expired'",
            (status, now_ns, rid),
        )
        return cur.rowcount == 1

    def expire_distributions(self, now_ns: int, stamp_ns: int) -> int:
        """Open records whose expiry is at or before `now_ns` become
        'expired' (stamped `stamp_ns`); returns how many."""
        cur = self.conn.execute(
            "UPDATE distributions SET status = 'expired', status_ns = ?, expired_ns = ?"
            " WHERE status IN ('sent', 'delivered') AND expires_ns <= ?", (stamp_ns, stamp_ns, now_ns),
        )
        return cur.rowcount

    def expired_files(self, now_ns: int) -> list[tuple[str, int, list[int]]]:
        """(path, ino, record ids) of each file the janitor has still to
        deal with at `now_ns`: it has an expired record (or one due to
        expire) and no open one left after `now_ns`."""
        return expired_files(self.conn, now_ns)

    def distribution_outcome(self, ids: list[int], outcome: str) -> None:
        self.conn.executemany("UPDATE distributions SET outcome = ? WHERE id = ?", [(outcome, i) for i in ids])

    def close(self) -> None:
        self.conn.close()


def expired_files(conn: sqlite3.Connection, now_ns: int) -> list[tuple[str, int, list[int]]]:
    """Catalog.expired_files on any connection (the janitor's dry run reads only)."""
    rows = conn.execute(
        "SELECT path, ino, group_concat(id) FROM distributions d WHERE outcome = '' AND ino != 0"
        " AND (status = 'expired' OR status IN ('sent', 'delivered') AND expires_ns <= ?)"
        " AND NOT EXISTS (SELECT 1 FROM distributions o WHERE o.ino = d.ino AND o.outcome = ''"
        " AND o.status IN ('sent', 'delivered') AND o.expires_ns > ?)"
        " GROUP BY ino, path ORDER BY min(id)", (now_ns, now_ns),
    ).fetchall()
    return [(name_of(p), ino, [int(i) for i in str(ids).split(",")]) for p, ino, ids in rows]


def due_distributions(conn: sqlite3.Connection, now_ns: int) -> int:
    """How many open records expire at or before `now_ns`."""
    return conn.execute(
        "SELECT count(*) FROM distributions WHERE status IN ('sent', 'delivered') AND expires_ns <= ?", (now_ns,)
    ).fetchone()[0]


def distribution_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Records by state: open (sent, delivered), expired, closed (failed,
    revoked); and the downloads counted on them. All 0 in a catalog from
    before distributions."""
    counts = {"open": 0, "expired": 0, "closed": 0, "downloads": 0}
    try:
        rows = conn.execute("SELECT status, count(*), sum(downloads) FROM distributions GROUP BY status").fetchall()
    except sqlite3.OperationalError:
        return counts
    for status, n, downloads in rows:
        state = "open" if status in ("sent", "delivered") else "expired" if status == "expired" else "closed"
        counts[state] += n
        counts["downloads"] += downloads or 0
    return counts
