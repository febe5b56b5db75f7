"""Check the catalog against data/, and rebuild it from data/.

Everything in the catalog but the audit chain can be rebuilt from the
store (SPEC §1): file records from the files under commit rules (checksum
and type from their plaintext), quarantine rows from the files in the
quarantine folders and their `user.seldon.*` attributes, version rows from
the copies in data/.seldon/versions and their `user.seldon.version`
attribute, sequence numbers from the managed names. The audit chain cannot
be rebuilt: a missing or unreadable one is damage fsck reports and cannot
repair. The file records are a history (a row per commit): a rebuild adds
the ones data/ lacks and removes those of files gone behind the mount's
back; the records of files that left through the mount stay, their going
on record in the audit chain (`_gone_on_record`).

The catalog also vouches for the files: `Recorded` compares a file's
plaintext with its newest record (a swapped or replaced file), for fsck
and for `seldonfs verify`. The rule and its limits are in
docs/file-format.md, "What is and is not detected".

Callers hold the store lock (the store is not mounted).
"""

from __future__ import annotations

import json
import os
import posixpath
import sqlite3
import stat as stat_m
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import audit, validation, xattrs
from .catalog import Catalog, db_name, name_of
from .checks import Checks
from .config import Config
from .content import ContentLayer
from .naming import Template, is_temporary
from .policy import commits
from .records import text
from .rules import Rules
from .store import PRIVATE_DIR, VERSIONS_DIR, Store

SWAPPED = "content differs from the catalog record (swapped or replaced)"
#: A file without a record that fails its folder's checks now: a rebuild
#: records no verdict for it (the mount would have quarantined it).
NOT_VOUCHED = "no record, and it fails its folder's checks: none written (remove it or move it into quarantine)"
#: A file changed after its record (mtime past it, other content) that
#: fails its folder's checks: no commit saw the change (behind the mount's
#: back, or a commit cut off by a crash that no mount has redone).
CHANGED_UNCHECKED = "changed since its record, and it fails its folder's checks (remove it or move it into quarantine)"
#: Audit records of a file leaving its path: through the mount, by the
#: policy engine, or by the janitor (a folder's rename moves what is in it).
LEFT = ("unlink", "rename", "quarantine", "duplicate", "janitor-delete", "janitor-archive", "janitor-move")


@dataclass(frozen=True)
class Record:
    size: int
    checksum: str
    committed_ns: int


class Recorded:
    """The newest file record of every path whose newest record says the
    file is there (verdict ok), and the checksum the records use.

    A record vouches for a file only while the file's mtime is not past the
    record's time: every change through the mount ends in a commit and a
    new record, but a change whose record is lost in a crash (the next
    mount commits it again) or a `touch` moves the mtime past the record
    instead. Moving files (mv) keeps their mtimes, so of two swapped files
    at least the older one is compared and found. A file past its record
    is still judged by its checks when its content is not the record's
    (`changed`)."""

    def __init__(self, rows: dict[str, Record], checksum: Callable[[], Any]) -> None:
        self.rows = rows
        self.checksum = checksum

    @classmethod
    def of(cls, conn: sqlite3.Connection, checksum: Callable[[], Any]) -> Recorded:
        rows: dict[str, Record] = {}
        ok: dict[str, bool] = {}
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'").fetchone() is None:
            return cls(rows, checksum)  # a catalog of before its first commit
        for path, size, digest, ns, verdict in conn.execute(
            "SELECT path, size, sha256, committed_ns, verdict FROM files ORDER BY id"
        ):
            rel = name_of(path)
            rows[rel], ok[rel] = Record(size, digest, ns), verdict == "ok"
        return cls({rel: r for rel, r in rows.items() if ok[rel]}, checksum)

    @classmethod
    def of_store(cls, store: Store, keys: dict[int, bytes], key_id: int) -> Recorded:
        """The records of an encrypted store, read-only (none without a catalog)."""
        if not store.catalog_path.exists():
            return cls({}, validation.checksum_of(None))
        conn = sqlite3.connect(store.catalog_path.as_uri() + "?mode=ro", uri=True)
        try:
            return cls.of(conn, validation.checksum_of(audit.checksum_key(store.root, keys, key_id)))
        finally:
            conn.close()

    def applies(self, rel: str, mtime_ns: int) -> Record | None:
        """The record that vouches for data/`rel` with that mtime, if any
        (one without a checksum vouches for nothing: a forced release's; and
        older builds recorded none for a file committed again unchanged)."""
        rec = self.rows.get(rel)
        return rec if rec is not None and rec.checksum and mtime_ns <= rec.committed_ns else None

    def changed(self, rel: str, mtime_ns: int, size: int, checksum: str) -> bool:
        """Whether data/`rel` changed after its record: mtime past it and
        other content (False without a record, or one without a checksum)."""
        rec = self.rows.get(rel)
        return (rec is not None and bool(rec.checksum) and mtime_ns > rec.committed_ns
                and bool(self.differs(rec, size, checksum)))

    @staticmethod
    def differs(rec: Record, size: int, checksum: str) -> str:
        """SWAPPED if the plaintext (`size` bytes, `checksum`) is not what
        `rec` recorded, else ''."""
        return SWAPPED if (size, checksum) != (rec.size, rec.checksum) else ""


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # repairable with --rebuild
    fatal: list[str] = field(default_factory=list)  # not repairable
    rebuilt: dict[str, int] = field(default_factory=dict)


def _walk(data: Path) -> Iterator[str]:
    """Regular files under data/ as paths relative to it (no symlink followed)."""
    for dirpath, dirnames, filenames in os.walk(data, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if stat_m.S_ISREG(os.lstat(p).st_mode):
                yield os.path.relpath(p, data)


def check(
    store: Store, cfg: Config, content: ContentLayer, rebuild: bool,
    progress: Callable[[Iterator[str], int], Iterator[str]] = lambda it, n: it,
) -> Report:
    rep = Report()
    rules = Rules(cfg)
    keys = getattr(content, "keys", None)  # an encrypted store's checksums are keyed (validation.checksum_of)
    key = audit.checksum_key(store.root, keys, getattr(content, "current_key_id", None))
    checks = Checks(content, {}, validation.checksum_of(key))
    qdirs = {cfg.policy.quarantine} | {r.quarantine for r in cfg.folders if r.quarantine}
    templates = {r.naming: Template(r.naming) for r in cfg.folders if r.naming}
    head = audit.read_head(store.root)
    try:
        cat = Catalog(store.catalog_path) if store.catalog_path.exists() else None
        if cat is not None:
            cat.conn.execute("SELECT count(*) FROM meta").fetchone()
    except sqlite3.DatabaseError as e:
        rep.fatal.append(f"catalog.sqlite unreadable: {e}")
        if not rebuild:
            return rep
        store.catalog_path.rename(store.catalog_path.with_suffix(f".broken-{time.time_ns()}"))
        cat = None
    if cat is None:
        if head is not None and int(head.get("seq", 0)) > 0:
            rep.fatal.append(f"the audit chain is gone: {audit.HEAD_NAME} names {head['seq']} records")
        if not rebuild:
            rep.problems.append("catalog.sqlite missing")
            return rep
        cat = Catalog.create(store.catalog_path)
    cat.migrate()
    conn = cat.conn
    recorded = Recorded.of(conn, checks.checksum)
    try:
        files = [p for p in _walk(store.data) if not p.startswith(PRIVATE_DIR + "/")]
        want_files, want_q, seqs = [], [], {}
        for rel in progress(iter(files), len(files)):
            d, name = posixpath.split(rel)
            if d in qdirs:
                want_q.append(_quarantine_row(store, rel))
                continue
            rule = rules.for_dir(d)
            if not commits(rule) or is_temporary(name, cfg.policy.temp_patterns):
                continue
            assert rule is not None
            job, original = "", name
            if rule.naming:
                held = templates[rule.naming].held(name)
                if held is None:
                    rep.problems.append(f"{rel}: under a naming rule but never committed")
                    continue
                job, original, seq = held
                if seq is not None:
                    seqs[job] = max(seqs.get(job, 0), seq)
            v, mtime_ns = _verdict(store, rel, rule, checks)
            rec = recorded.applies(rel, mtime_ns)
            if rec is not None and v.sha256 and (problem := recorded.differs(rec, v.size, v.sha256)):
                rep.fatal.append(f"{rel}: {problem}")  # --rebuild would only hide it
            if rel not in recorded.rows and not v.ok:  # no record vouches for it, and none may say ok
                rep.fatal.append(f"{rel}: {NOT_VOUCHED}: {'; '.join(v.reasons)}")
                continue
            if not v.ok and recorded.changed(rel, mtime_ns, v.size, v.sha256):
                rep.fatal.append(f"{rel}: {CHANGED_UNCHECKED}: {'; '.join(v.reasons)}")
            want_files.append((rel, original, job, (v, mtime_ns)))
        # A path's newest record counts (a committed file rewritten and
        # quarantined is not there); the records of files that left through
        # the mount stay as history.
        want = {r[0] for r in want_files}
        have = set(recorded.rows)  # the paths whose newest record is ok
        gone = have - want
        gone -= _gone_on_record(conn, {p: recorded.rows[p].committed_ns or 0 for p in gone})
        rep.problems += _differences("files", want - have, gone)
        rep.problems += _compare(conn, "quarantine", {r[0] for r in want_q}, "released_ns IS NULL")
        vrows = _version_rows(store, content)
        rep.problems += _compare(conn, "versions", {r[1] for r in vrows}, column="stored")
        for job, top in seqs.items():
            row = conn.execute("SELECT next FROM sequences WHERE job = ?", (job,)).fetchone()
            if row is None or row[0] <= top:
                rep.problems.append(f"sequence of job {job} behind its names (next {row[0] if row else 'none'}, seen {top})")
        if rebuild:
            added = [(db_name(rel), db_name(orig), job, v.size, v.sha256, v.mime, ns)
                     for rel, orig, job, (v, ns) in want_files if rel not in have]
            with conn:
                conn.execute("BEGIN")
                conn.executemany("DELETE FROM files WHERE path = ?", [(db_name(p),) for p in gone])
                conn.executemany(
                    "INSERT INTO files (path, original_name, job, size, sha256, mime, verdict, reason, committed_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'ok', '', ?)", added,
                )
                conn.execute("DELETE FROM quarantine WHERE released_ns IS NULL")
                conn.executemany(
                    "INSERT INTO quarantine (path, origin, reason, at_ns) VALUES (?, ?, ?, ?)",
                    [(db_name(p), db_name(o), db_name(r), ns) for p, o, r, ns in want_q],
                )
                conn.execute("DELETE FROM versions")
                conn.executemany(
                    "INSERT INTO versions (path, stored, saved_ns, size, cause, ino) VALUES (?, ?, ?, ?, ?, ?)",
                    [(db_name(p), *rest) for p, *rest in vrows],
                )
                for job, top in seqs.items():
                    conn.execute(
                        "INSERT INTO sequences VALUES (?, ?) ON CONFLICT(job) DO UPDATE"
                        " SET next = max(next, excluded.next)", (job, top + 1),
                    )
            rep.rebuilt = {"files": len(added), "quarantine": len(want_q), "versions": len(vrows)}
    finally:
        cat.close()
    return rep


def _verdict(store: Store, rel: str, rule, checks: Checks):
    """The commit checks' verdict on data/`rel` (damage: an "unreadable" one), and its mtime."""
    fd = os.open(store.data / rel, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        key = checks.key(fd)
        return checks.run(fd, rel, rule, key), key[0]
    finally:
        os.close(fd)


def _quarantine_row(store: Store, rel: str) -> tuple[str, str, str, int]:
    p = store.data / rel
    def attr(key: bytes) -> str:
        try:
            return os.fsdecode(os.getxattr(p, key, follow_symlinks=False))
        except OSError:
            return ""
    return rel, attr(xattrs.ORIGIN), attr(xattrs.REASON), os.lstat(p).st_mtime_ns


def _version_rows(store: Store, content: ContentLayer) -> list[tuple[str, str, int, int, str, int | None]]:
    vdir = store.data / VERSIONS_DIR
    rows = []
    if not vdir.is_dir():
        return rows
    for p in sorted(vdir.iterdir()):
        try:
            path, saved_ns, cause, *ino = json.loads(os.getxattr(p, xattrs.VERSION_OF, follow_symlinks=False))
        except (OSError, ValueError):
            continue  # a copy from before the attribute: unknown origin
        rows.append((path, p.name, int(saved_ns), content.plain_size(p.stat().st_size), cause, *(ino or [None])))
    return rows


def _compare(conn: sqlite3.Connection, table: str, want: set[str], where: str = "1", column: str = "path") -> list[str]:
    have = {name_of(r[0]) for r in conn.execute(f"SELECT {column} FROM {table} WHERE {where}")}
    return _differences(table, want - have, have - want)


def _differences(table: str, missing: set[str], gone: set[str]) -> list[str]:
    out = [f"{table}: no record for {p}" for p in sorted(missing)[:20]]
    out += [f"{table}: record for {p}, which is gone" for p in sorted(gone)[:20]]
    extra = len(missing) + len(gone) - len(out)
    if extra > 0:
        out.append(f"{table}: {extra} more")
    return out


def _gone_on_record(conn: sqlite3.Connection, gone: dict[str, int]) -> set[str]:
    """The paths of `gone` (committed files no longer there, each with the
    time of its newest commit) whose going the audit table holds: a record
    of LEFT, after that commit, of the path or of a folder above it. A
    commit older than the table's
    first record (sealed into a segment since) counts as explained: what
    happened to it is beyond this check. A file removed behind the mount's
    back has no such record."""
    if not gone:
        return set()
    first = conn.execute("SELECT min(ns) FROM audit").fetchone()[0]
    marks = ",".join("?" * len(LEFT))
    out = set()
    for path, since in gone.items():
        if first is None or since < first:
            out.add(path)
            continue
        parts = text(path).split("/")  # as the chain writes names
        above = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if conn.execute(
            f"SELECT 1 FROM audit WHERE op IN ({marks}) AND path IN ({','.join('?' * len(above))}) AND ns >= ?"
            " LIMIT 1", (*LEFT, *above, since),
        ).fetchone():
            out.add(path)
    return out
