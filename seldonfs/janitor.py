"""Retention planning: which files the folder rules let go, and why.

`plan(now, cfg, entries)` is a pure function of the time, the rules and an
inventory of the store; it decides and never touches anything, so it is
tested without FUSE or a clock. Rules (docs/configuration.md, "retention"):
`patterns` (name globs with their own max age), `max_age` with `action`,
`archive_after` (archive before `max_age` deletes), `max_total` and
`max_files` caps enforced `evict = "oldest"` (mtime) or `"lru"` (atime)
first, `remove_empty_dirs`. A file follows its deepest folder's table, as
everywhere; caps count the files under each folder a table governs.

`execute()` carries a plan out on an unmounted store. Not yet: running
inside the mount (open and locked files skipped, schedules, batches),
orphan and crash cleanup, emergency cleanup; see the issue notes.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat as stat_m
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import Config, FolderRule
from .policy import PRIVATE_DIR
from .rules import Rules


@dataclass(frozen=True)
class Entry:
    rel: str  # relative to the mount root
    size: int  # bytes (plaintext)
    mtime: float
    atime: float
    is_dir: bool = False


@dataclass(frozen=True)
class Action:
    kind: str  # delete, archive, move, rmdir
    rel: str
    reason: str
    rule: str  # the folder table that asked for it
    size: int = 0
    dest: str = ""  # archive or move destination folder


def human_age(seconds: float) -> str:
    for unit, s in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= s and seconds % s == 0:
            return f"{int(seconds // s)}{unit}"
    return f"{int(seconds)}s"


def _act(rule: FolderRule, e: Entry, reason: str, kind: str | None = None) -> Action:
    kind = kind or rule.action
    dest = rule.archive_to if kind == "archive" else rule.move_to if kind == "move" else None
    if kind in ("archive", "move") and not dest:
        kind, reason = "delete", reason + f" ({rule.action} has no destination: deleted)"
    return Action(kind, e.rel, reason, rule.path, e.size, dest or "")


def _governed(rule: FolderRule, rel: str) -> str:
    """The concrete folder a (possibly glob) table governs `rel` through."""
    depth = len(rule.path.split("/"))
    return "/".join(rel.split("/")[:depth])


def plan(now: float, cfg: Config, entries: Iterable[Entry]) -> list[Action]:
    rules = Rules(cfg)
    actions: list[Action] = []
    kept: dict[str, list[tuple[FolderRule, Entry]]] = {}  # governed folder -> files left
    dirs: list[tuple[FolderRule, Entry]] = []
    children: dict[str, int] = {}
    for e in entries:
        if e.rel.split("/")[0] == PRIVATE_DIR:
            continue
        parent = posixpath.dirname(e.rel)
        children[parent] = children.get(parent, 0) + 1
        rule = rules.for_dir(parent if not e.is_dir else e.rel)
        if rule is None:
            continue
        if e.is_dir:
            if rule.remove_empty_dirs and e.rel != _governed(rule, e.rel):
                dirs.append((rule, e))
            continue
        age = now - (e.atime if rule.age_by == "atime" else e.mtime)
        name = posixpath.basename(e.rel)
        pattern = next(((g, a) for g, a in rule.patterns if fnmatch.fnmatchcase(name, g)), None)
        if pattern is not None and age > pattern[1]:
            actions.append(_act(rule, e, f"matches {pattern[0]}, older than {human_age(pattern[1])}", "delete"))
        elif rule.max_age is not None and age > rule.max_age:
            actions.append(_act(rule, e, f"older than {human_age(rule.max_age)} ({rule.age_by})"))
        elif rule.archive_after is not None and age > rule.archive_after:
            actions.append(_act(rule, e, f"older than {human_age(rule.archive_after)}: archived", "archive"))
        elif rule.max_total is not None or rule.max_files is not None:
            kept.setdefault(_governed(rule, e.rel), []).append((rule, e))
    for folder, files in sorted(kept.items()):
        rule = files[0][0]
        order = sorted(files, key=lambda re_: re_[1].atime if rule.evict == "lru" else re_[1].mtime)
        total, count = sum(e.size for _, e in files), len(files)
        for r, e in order:
            over_size = r.max_total is not None and total > r.max_total
            over_count = r.max_files is not None and count > r.max_files
            if not (over_size or over_count):
                break
            why = f"{folder}/ over its {'size' if over_size else 'file-count'} cap, {rule.evict} first"
            actions.append(_act(r, e, why))
            total -= e.size
            count -= 1
    removed = {a.rel for a in actions}
    for parent in (posixpath.dirname(r) for r in removed):
        children[parent] -= 1
    for rule, e in sorted(dirs, key=lambda re_: -re_[1].rel.count("/")):  # deepest first
        if children.get(e.rel, 0) == 0:
            actions.append(Action("rmdir", e.rel, "empty", rule.path))
            children[posixpath.dirname(e.rel)] -= 1
    return actions


def inventory(data: Path, plain_size=lambda n: n) -> Iterator[Entry]:
    """The store's files and directories, without following a symlink."""
    root = os.fspath(data)
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as it:
                for d in it:
                    r = f"{rel}/{d.name}" if rel else d.name
                    st = d.stat(follow_symlinks=False)
                    if stat_m.S_ISDIR(st.st_mode):
                        stack.append(r)
                        yield Entry(r, 0, st.st_mtime, st.st_atime, is_dir=True)
                    elif stat_m.S_ISREG(st.st_mode):
                        yield Entry(r, plain_size(st.st_size), st.st_mtime, st.st_atime)
        except FileNotFoundError:
            continue


@dataclass
class Outcome:
    done: list[Action]
    skipped: list[tuple[Action, str]]

    def summary(self) -> str:
        by_kind: dict[str, int] = {}
        for a in self.done:
            by_kind[a.kind] = by_kind.get(a.kind, 0) + 1
        freed = sum(a.size for a in self.done if a.kind in ("delete", "archive"))
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())) or "nothing"
        return f"{kinds}; {freed:,} bytes freed; {len(self.skipped)} skipped"


def execute(data: Path, actions: list[Action], content, now_ns: int) -> Outcome:
    """Carry out `actions` on an unmounted store (the caller holds its lock).

    Every path is opened component by component without following a
    symlink (store.walk), so nothing outside data/ is reached. An archive
    is a gzip of the plaintext written through the content layer (encrypted
    like any file) with a `.meta.json` beside it, and only then is the
    original removed."""
    from .store import walk

    root = os.open(data, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    out = Outcome([], [])
    try:
        for a in actions:
            d, name = posixpath.split(a.rel)
            try:
                dfd = walk(root, d)
            except OSError as e:
                out.skipped.append((a, f"cannot reach its folder: {e.strerror}"))
                continue
            try:
                if a.kind == "rmdir":
                    os.rmdir(name, dir_fd=dfd)
                elif a.kind == "delete":
                    os.unlink(name, dir_fd=dfd)
                elif a.kind == "move":
                    tfd = walk(root, posixpath.join(a.dest, d), create=True)
                    try:
                        _rename_noreplace(dfd, name, tfd, name)
                    finally:
                        os.close(tfd)
                elif a.kind == "archive":
                    _archive(root, dfd, a, content, now_ns)
                out.done.append(a)
            except OSError as e:
                out.skipped.append((a, e.strerror or str(e)))
            finally:
                os.close(dfd)
    finally:
        os.close(root)
    return out


def _rename_noreplace(sfd: int, sname: str, tfd: int, tname: str) -> None:
    from . import _libc

    _libc.renameat2(sfd, os.fsencode(sname), tfd, os.fsencode(tname), _libc.RENAME_NOREPLACE)


def _archive(root: int, dfd: int, a: Action, content, now_ns: int) -> None:
    import hashlib
    import json
    import zlib

    from .store import walk

    d, name = posixpath.split(a.rel)
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    try:
        st = os.fstat(src)
        reader = content.attach(src)
        size = content.plain_size(st.st_size)
        tfd = walk(root, posixpath.join(a.dest, d), create=True)
        try:
            dst = os.open(name + ".gz", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=tfd)
            try:
                writer = content.attach(dst)
                z = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip container
                digest = hashlib.sha256()
                off = woff = 0
                while off < size:
                    chunk = reader.read(off, min(1 << 20, size - off))
                    if not chunk:
                        break
                    digest.update(chunk)
                    off += len(chunk)
                    packed = z.compress(chunk)
                    woff += writer.write(woff, packed) if packed else 0
                writer.write(woff, z.flush())
                os.fsync(dst)
            finally:
                os.close(dst)
            meta = {
                "original": a.rel, "size": size, "sha256": digest.hexdigest(), "mtime": st.st_mtime,
                "archived_ns": now_ns, "rule": a.rule, "reason": a.reason, "codec": "gzip",
            }
            mfd = os.open(name + ".gz.meta.json", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=tfd)
            try:
                content.attach(mfd).write(0, json.dumps(meta, indent=2).encode() + b"\n")
                os.fsync(mfd)
            finally:
                os.close(mfd)
        finally:
            os.close(tfd)
    finally:
        os.close(src)
    os.unlink(name, dir_fd=dfd)  # only now: the archive is on disk


def locked_inodes(device: str | None) -> set[int]:
    """Inodes of the mount with a flock or fcntl lock, from /proc/locks
    (the kernel keeps the locks of a FUSE mount that does not handle them)."""
    if device is None:
        return set()
    major, minor = (int(x) for x in device.split(":"))
    dev = f"{major:02x}:{minor:02x}:"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    out = set()
    for line in lines:
        for field in line.split():
            if field.startswith(dev):
                out.add(int(field[len(dev):]))
    return out


STEP = 64  # actions between two yields to the request loop (a few ms)
CONTROL_XATTR = b"user.seldon.janitor"  # on the mount root: set to run, read for the last run


def has_retention(cfg: Config) -> bool:
    return any(
        r.max_age or r.patterns or r.archive_after or r.max_total or r.max_files or r.remove_empty_dirs
        for r in cfg.folders
    )


class MountJanitor:
    """The janitor inside a mount: plans in a worker thread, acts on the
    request loop's thread in batches (`[janitor] batch`), yielding between
    them so file operations keep being answered. A file some handle has
    open, or one with a flock/fcntl lock, is skipped and retried next run.
    """

    def __init__(self, core, cfg: Config, data: Path, mountpoint: str, content, audit, notify_gone) -> None:
        self.core, self.cfg, self.data, self.mountpoint = core, cfg, data, mountpoint
        self.content, self.audit, self.notify_gone = content, audit, notify_gone
        self.running = False
        self.runs = 0  # finished runs, so a caller can tell its run from earlier ones
        self.last: dict = {}

    async def loop(self) -> None:
        import trio
        from croniter import croniter

        sched = self.cfg.janitor.schedule
        while True:
            if croniter.is_valid(sched):
                wait = croniter(sched, time.time()).get_next(float) - time.time()
            else:
                from .config import parse_duration

                wait = parse_duration(sched, "[janitor]", "schedule")
            await trio.sleep(max(1.0, wait))
            await self.run()

    async def run(self, later: float = 0.0) -> dict:
        import trio

        from .mount import mount_device  # mount.py imports this module

        if self.running:
            return self.last
        self.running = True
        t0 = time.time()
        try:
            plain = self.content.plain_size
            actions = await trio.to_thread.run_sync(
                lambda: plan(time.time() + later, self.cfg, inventory(self.data, plain))
            )
            done: list[Action] = []
            skipped: list[tuple[Action, str]] = []
            batch = self.cfg.janitor.batch
            for start in range(0, len(actions), batch):
                open_inos = {h.ino for h in self.core.handles.values()}
                locked = locked_inodes(mount_device(self.mountpoint))
                part = []
                for a in actions[start:start + batch]:
                    why = self._busy(a, open_inos, locked)
                    if why:
                        skipped.append((a, why))
                    else:
                        part.append(a)
                for i in range(0, len(part), STEP):  # a few ms each, then requests go first
                    out = execute(self.data, part[i:i + STEP], self.content, time.time_ns())
                    done += out.done
                    skipped += out.skipped
                    for a in out.done:
                        self._after(a)
                    await trio.sleep(0)
            for a, why in skipped:
                self._record(a, "SKIPPED", why)
            self.last = {
                "started": t0, "seconds": round(time.time() - t0, 3), "planned": len(actions),
                "summary": Outcome(done, skipped).summary(),
                "skipped": [[a.rel, why] for a, why in skipped],
            }
            return self.last
        finally:
            self.running = False
            self.runs += 1

    def _busy(self, a: Action, open_inos: set[int], locked: set[int]) -> str | None:
        if a.kind == "rmdir":
            return None
        try:
            st = os.stat(self.data / a.rel, follow_symlinks=False)
        except OSError:
            return "gone"
        ino = self.core.ino_of(st.st_ino)
        if ino in open_inos:
            return "open"
        if ino in locked:
            return "locked"
        return None

    def _after(self, a: Action) -> None:
        self._record(a, "OK", f"{a.reason}; rule {a.rule}")
        parent = self.core.ino_of_dir(posixpath.dirname(a.rel))
        if parent is not None:
            self.notify_gone(parent, os.fsencode(posixpath.basename(a.rel)))

    def _record(self, a: Action, result: str, detail: str) -> None:
        if self.audit is not None:
            self.audit.record("janitor-" + a.kind, 0, 0, os.getpid(), a.rel, a.dest, result,
                              a.size if result == "OK" else 0, detail)
