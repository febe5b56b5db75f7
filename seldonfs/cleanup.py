"""Carrying out the janitor's plans (janitor.py), offline and in a mount.

`execute()` acts on a store's data/ with every path opened component by
component without following a symlink (store.walk), so nothing outside
data/ is reached. An archive is a gzip of the plaintext written through the
content layer (encrypted like any file) with a `.meta.json` beside it, and
only then is the original removed.

`MountJanitor` is the janitor inside a mount: it plans in worker threads a
batch (`[janitor] batch`) at a time and acts on the request loop's thread
a few dozen actions at a time, yielding between them, so file operations
keep being answered and memory does not grow with the tree. A file some
handle has open, or one with a flock/fcntl lock, is skipped and retried on
the next run. It runs each folder's rules on their `schedule`, checks the
disk every `[janitor] check_every`, and past `emergency` cleans (janitor.
emergency_plan) until usage is back under `warning`.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import posixpath
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import _libc
from .alerts import Alerts
from .config import Config, parse_duration
from .janitor import TEMP, XATTR_CREATOR, Action, crash_plan, emergency_plan, inventory, plan, proc_stat
from .store import walk

log = logging.getLogger(__name__)

STEP = 64  # actions between two yields to the request loop (a few ms)
KEEP_SKIPPED = 100  # skipped actions kept for the report of a run (all are audited)
CONTROL_XATTR = b"user.seldon.janitor"  # on the mount root: set to run, read for the last run


@dataclass
class Outcome:
    done: int = 0
    skipped: int = 0
    freed: int = 0  # bytes deleted or archived
    by_kind: dict[str, int] = field(default_factory=dict)
    skipped_sample: list[tuple[str, str]] = field(default_factory=list)

    def add_done(self, a: Action) -> None:
        self.done += 1
        self.by_kind[a.kind] = self.by_kind.get(a.kind, 0) + 1
        if a.kind in ("delete", "archive"):
            self.freed += a.size

    def add_skipped(self, a: Action, why: str) -> None:
        self.skipped += 1
        if len(self.skipped_sample) < KEEP_SKIPPED:
            self.skipped_sample.append((a.rel, why))

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.by_kind.items())) or "nothing"
        return f"{kinds}; {self.freed:,} bytes freed; {self.skipped} skipped"


def execute(data: Path, actions: list[Action], content, now_ns: int) -> tuple[list[Action], list[tuple[Action, str]]]:
    """Carry out `actions`; returns what was done and what was skipped, why."""
    root = os.open(data, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    done: list[Action] = []
    skipped: list[tuple[Action, str]] = []
    try:
        for a in actions:
            d, name = posixpath.split(a.rel)
            try:
                dfd = walk(root, d)
            except OSError as e:
                skipped.append((a, f"cannot reach its folder: {e.strerror}"))
                continue
            try:
                if a.kind == "rmdir":
                    os.rmdir(name, dir_fd=dfd)
                elif a.kind == "delete":
                    os.unlink(name, dir_fd=dfd)
                elif a.kind == "move":
                    tfd = walk(root, posixpath.join(a.dest, d), create=True)
                    try:
                        _libc.renameat2(dfd, os.fsencode(name), tfd, os.fsencode(name), _libc.RENAME_NOREPLACE)
                    finally:
                        os.close(tfd)
                elif a.kind == "archive":
                    _archive(root, dfd, a, content, now_ns)
                done.append(a)
            except OSError as e:
                skipped.append((a, e.strerror or str(e)))
            finally:
                os.close(dfd)
    finally:
        os.close(root)
    return done, skipped


def _archive(root: int, dfd: int, a: Action, content, now_ns: int) -> None:
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
        for field_ in line.split():
            if field_.startswith(dev):
                out.add(int(field_[len(dev):]))
    return out


def disk_usage(path: Path) -> tuple[float, int, int]:
    """(percent used as df shows it, bytes used, bytes used + available)."""
    v = os.statvfs(path)
    used = (v.f_blocks - v.f_bfree) * v.f_frsize
    total = used + v.f_bavail * v.f_frsize
    return (100.0 * used / total if total else 0.0), used, total


def bytes_over(path: Path, percent: int) -> int:
    """How many bytes must go for usage to drop to `percent`."""
    _, used, total = disk_usage(path)
    return max(0, used - total * percent // 100)


def next_time(schedule: str, now: float) -> float:
    from croniter import croniter

    if croniter.is_valid(schedule):
        return croniter(schedule, now).get_next(float)
    return now + max(1.0, parse_duration(schedule, "schedule", "value"))


#: Tools that make a folder and exit: the folder is their parent process's.
HANDS_ON = frozenset({"mkdir", "install", "cp", "mv", "rsync", "tar", "unzip"})


def creator_record(pid: int) -> bytes | None:
    """What XATTR_CREATOR holds for a folder made by process `pid`: that
    process, or for a tool in HANDS_ON the process that ran it."""
    from .policy import job_from_environ

    job = job_from_environ(pid) or ""
    for _ in range(2):
        ps = proc_stat(pid)
        if ps is None:
            return None
        comm, fields = ps
        if comm not in HANDS_ON:
            break
        pid = int(fields[1])  # ppid
    rec = {"pid": pid, "start": int(fields[19]), "comm": comm, "job": job}
    return json.dumps(rec, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Request:
    """One run asked for: by the schedule, a command or the disk check."""
    trigger: str  # schedule, request, emergency, crash
    rules: frozenset[str] | None = None  # only these folder tables (None: all)
    later: float = 0.0  # plan as if this much time had passed
    folder: str = ""  # only under this folder
    crash: str = ""  # job id: crash cleanup instead of the rules
    emergency: bool = False  # then clean down to the warning level
    orphans: bool = False  # only orphan sessions

    @classmethod
    def parse(cls, value: bytes) -> "Request":
        """The JSON a command writes into CONTROL_XATTR."""
        try:
            d = json.loads(value) if value.strip() else {}
            rule = d.get("rule")
            return cls(
                "crash" if d.get("crash") else "emergency" if d.get("emergency") else "request",
                frozenset([str(rule)]) if rule else None,
                float(d.get("older_than", 0)), str(d.get("folder", "")).strip("/"),
                str(d.get("crash") or ""), bool(d.get("emergency", False)),
            )
        except (ValueError, AttributeError, TypeError):
            raise OSError(errno.EINVAL, "not a janitor request") from None

    def wants(self, a: Action) -> bool:
        if self.orphans and not a.reason.startswith("orphan session"):
            return False
        return (self.rules is None or a.rule in self.rules) and (
            not self.folder or (a.rel + "/").startswith(self.folder + "/")
        )


class MountJanitor:
    def __init__(self, core, cfg: Config, data: Path, mountpoint: str, content, audit, catalog,
                 notify_gone: Callable[[int, bytes], None], alerts: Alerts) -> None:
        self.core, self.cfg, self.data, self.mountpoint = core, cfg, data, mountpoint
        self.content, self.audit, self.catalog = content, audit, catalog
        self.notify_gone, self.alerts = notify_gone, alerts
        self.running = False
        self.runs = 0  # finished runs, so a caller can tell its run from earlier ones
        self.last: dict = {}
        self.now: dict = {}  # the running run so far: planned, done, skipped
        self.disk_level = "ok"  # ok, warning, emergency
        self.totals = {"runs": 0, "done": 0, "skipped": 0, "freed": 0}

    # --------------------------------------------------------- creators

    def on_mkdir(self, proc_path: str, rel: str, pid: int) -> None:
        """Record who made a folder under temp/ (orphan and crash cleanup)."""
        if rel.split("/")[0] != TEMP or pid <= 0:
            return
        rec = creator_record(pid)
        if rec is not None:
            try:
                os.setxattr(proc_path, XATTR_CREATOR, rec)
            except OSError as e:  # e.g. a backing filesystem without user xattrs
                log.debug("cannot record the creator of %s: %s", rel, e)

    # --------------------------------------------------------- when

    async def loop(self) -> None:
        """Runs each folder table on its schedule; checks the disk."""
        import trio

        by_schedule: dict[str, set[str]] = {}
        for r in self.cfg.folders:
            by_schedule.setdefault(r.schedule or self.cfg.janitor.schedule, set()).add(r.path)
        now = time.time()
        due = {s: next_time(s, now) for s in by_schedule}
        check = now
        while True:
            await trio.sleep(max(0.0, min(min(due.values()), check) - time.time()))
            now = time.time()
            if now >= check:
                check = now + self.cfg.janitor.check_every
                await self.check_disk()
            fired = [s for s, t in due.items() if t <= now]
            if fired:
                for s in fired:
                    due[s] = next_time(s, now)
                rules = frozenset(itertools.chain.from_iterable(by_schedule[s] for s in fired))
                await self.run(Request("schedule", rules))

    async def check_disk(self) -> None:
        pct, _, _ = disk_usage(self.data)
        j = self.cfg.janitor
        level = "emergency" if pct >= j.emergency else "warning" if pct >= j.warning else "ok"
        if level != self.disk_level:
            self.disk_level = level
            for kind in ("disk-warning", "disk-emergency"):
                if kind != f"disk-{level}":
                    self.alerts.clear(kind)
            if level != "ok":
                self.alerts.raise_(f"disk-{level}", "critical" if level == "emergency" else "warning",
                                   f"store disk {pct:.1f} % full (warning {j.warning} %, emergency {j.emergency} %)")
        if level == "emergency":
            await self.run(Request("emergency", emergency=True))

    # --------------------------------------------------------- what

    async def request(self, value: bytes, nursery) -> None:
        """A run asked for through CONTROL_XATTR; runs beside the requests."""
        nursery.start_soon(self.run, Request.parse(value))

    async def run(self, req: Request = Request("request")) -> dict:
        if self.running:
            return self.last
        self.running = True
        t0 = time.time()
        out = Outcome()
        planned = 0
        self.now = {"planned": 0, "done": 0, "skipped": 0}
        try:
            now = t0 + req.later
            plain = self.content.plain_size
            if req.crash:
                planned += await self._carry_out(crash_plan(self.cfg, inventory(self.data, plain), req.crash), req, out)
            else:
                usage: dict = {}
                planned += await self._carry_out(plan(now, self.cfg, inventory(self.data, plain), usage), req, out)
                self._check_caps(usage)
            used0 = disk_usage(self.data)[1] if req.emergency else 0
            freed0 = out.freed
            for _ in range(3 if req.emergency else 0):  # a pass, then usage again
                # A deleted file's space comes back only when the kernel
                # forgets it (the mount pins every inode it knows): what was
                # deleted but has not shown yet counts as free already.
                _, used, total = disk_usage(self.data)
                pinned = max(0, out.freed - freed0 - (used0 - used))
                need = max(0, used - pinned - total * self.cfg.janitor.warning // 100)
                if need == 0:
                    break
                n = await self._carry_out(emergency_plan(self.cfg, inventory(self.data, plain), need), req, out)
                planned += n
                if n == 0:
                    self.alerts.raise_("emergency-stuck", "critical", "emergency cleanup found nothing more to "
                                       f"delete; {need:,} bytes over the warning level")
                    break
            self.last = {
                "started": t0, "seconds": round(time.time() - t0, 3), "trigger": req.trigger,
                "planned": planned, "summary": out.summary(), "skipped": out.skipped_sample,
            }
            self.catalog.add_janitor_run({
                "started_ns": int(t0 * 1e9), "seconds": self.last["seconds"], "trigger": req.trigger,
                "rules": ",".join(sorted(req.rules)) if req.rules else "*", "planned": planned,
                "done": out.done, "skipped": out.skipped, "freed": out.freed, "summary": out.summary(),
            })
            for k in ("done", "skipped", "freed"):
                self.totals[k] += getattr(out, k)
            self.totals["runs"] += 1
            return self.last
        except Exception as e:  # a failed run must not take the mount down with it
            log.exception("janitor run failed")
            self.alerts.raise_("janitor-failed", "critical", f"janitor run failed: {e}")
            self.last = {"started": t0, "seconds": round(time.time() - t0, 3), "trigger": req.trigger,
                         "planned": planned, "summary": f"failed: {e}", "error": str(e),
                         "skipped": out.skipped_sample}
            return self.last
        finally:
            self.running = False
            self.runs += 1

    def _check_caps(self, usage: dict) -> None:
        """Alert when a capped folder is `warn_percent` full (before eviction)."""
        for folder, (total, _, rule) in sorted(usage.items()):
            if rule.warn_percent and rule.max_total and total * 100 >= rule.max_total * rule.warn_percent:
                self.alerts.raise_("folder-full", "warning", f"{folder}/ holds {total:,} bytes, "
                                   f"{100 * total // rule.max_total} % of its {rule.max_total:,}-byte cap", about=folder)

    async def _carry_out(self, actions: Iterator[Action], req: Request, out: Outcome) -> int:
        """Pull a batch from the planner in a worker thread, act on it a STEP
        at a time; returns how many actions were planned."""
        import trio

        from .mount import mount_device  # mount.py imports this module

        batch = self.cfg.janitor.batch

        def take() -> list[Action]:
            return [a for a in itertools.islice(actions, batch) if req.wants(a)]

        planned = 0
        while True:
            part = await trio.to_thread.run_sync(take)
            if not part:
                return planned
            planned += len(part)
            self.now["planned"] = self.now.get("planned", 0) + len(part)
            locked = locked_inodes(mount_device(self.mountpoint))
            for i in range(0, len(part), STEP):  # a few ms each, then requests go first
                open_inos = {h.ino for h in self.core.handles.values()}  # as of now: files open meanwhile count
                todo = []
                for a in part[i:i + STEP]:
                    why = self._busy(a, open_inos, locked)
                    if why:
                        out.add_skipped(a, why)
                        self._record(a, "SKIPPED", why)
                    else:
                        todo.append(a)
                done, skipped = execute(self.data, todo, self.content, time.time_ns())
                self.core.renames += 1  # paths changed behind the core's back (see Core.renames)
                for a in done:
                    out.add_done(a)
                    self._after(a)
                for a, why in skipped:
                    out.add_skipped(a, why)
                    self._record(a, "SKIPPED", why)
                self.now.update(done=out.done, skipped=out.skipped)
                await trio.sleep(0)

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
