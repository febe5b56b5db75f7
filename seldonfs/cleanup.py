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
emergency_plan) until usage is back under `warning`. It serves the
`user.seldon.janitor` attribute of the mount root (a run asked for, its
state) and records who made each folder under temp/ (orphan cleanup).
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from . import _libc, distributions, faults, uring, xattrs
from .alerts import Alerts, Failures, check_caps
from .audit import AuditLog
from .catalog import Catalog
from .config import Config
from .content import reader
from .core import ROOT_INODE, Core
from .host import disk_usage, job_from_environ, locked_inodes, mount_device, proc_stat
from .janitor import (
    JOBS, TEMP, Action, Request, chunk_plan, crash_plan, emergency_plan, inventory, next_time, older_plan, plan,
)
from .naming import NAME_MAX, fit
from .policy import NAME_TRIES
from .store import walk

log = logging.getLogger(__name__)

STEP = 64  # actions between two yields to the request loop (a few ms)
KEEP_SKIPPED = 100  # skipped actions kept for the report of a run (all are audited)


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
                        faults.renameat2(dfd, os.fsencode(name), tfd, os.fsencode(name), _libc.RENAME_NOREPLACE)
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


META_SUFFIX = ".meta.json"


def archive_names(name: str) -> tuple[str, str]:
    """The archive of file `name` and its metadata record, both within
    NAME_MAX (a long name is shortened; "original" in the record keeps it)."""
    gz = fit(name + ".gz", NAME_MAX - len(META_SUFFIX))
    return gz, gz + META_SUFFIX


def archive_dir(dest: str, now_ns: int) -> str:
    """Where an archive made at `now_ns` goes: DEST/YYYY/MM/DD (UTC, seed 000 §3.2)."""
    return posixpath.join(dest, time.strftime("%Y/%m/%d", time.gmtime(now_ns / 1e9)))


def unique_names(name: str) -> Iterator[tuple[str, str]]:
    """The archive names tried for file `name`, in order: its own, then
    with -1, -2... before its extension (policy.candidates' scheme)."""
    for n in range(NAME_TRIES):
        if n == 0:
            yield archive_names(name)
        else:
            stem, dot, ext = name.rpartition(".")
            yield archive_names(f"{stem}-{n}{dot}{ext}" if stem else f"{name}-{n}")


def _archive(root: int, dfd: int, a: Action, content, now_ns: int) -> None:
    """Compress `a.rel` into a.dest/YYYY/MM/DD/ through the content layer,
    with its metadata record, then remove the original. Both are written
    under hidden part names (`.NAME.part`), synced, and only then renamed
    to theirs, the record first: killed anywhere, what is left is parts
    (made anew next time), a record of this file without its archive (an
    attempt cut short: removed and made again), or both beside the original
    (finished but for the removal, which the next run does once the record
    and the archive's content match the original). The original carries
    the folder of its attempt (xattrs.ARCHIVING), so an attempt resumed on
    a later day finishes where it began. A name taken by another file's
    archive (or by anything not ours) is passed over for the next unique
    one. A failure on the way removes what this call made."""
    d, name = posixpath.split(a.rel)
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    try:
        st = os.fstat(src)
        read = reader(content.attach(src))  # damage: content.Unreadable, an OSError: skipped
        size = content.plain_size(st.st_size)
        folder = _attempt_of(src, a.dest)
        if folder is None:
            folder = archive_dir(a.dest, now_ns)
            _mark_attempt(src, folder)  # before the folder is made: a resumed attempt goes there
        tfd = walk(root, folder, create=True)
        made: list[str] = []
        try:
            gz, meta_name, whole = _choose(tfd, a.rel, name, read, size, content)
            if not whole:
                digest, packed = _compress(read, size, content, tfd, _part(gz), made)
                meta = {
                    "original": a.rel, "size": size, "compressed_size": packed,
                    "compression_ratio": round(packed / size, 4) if size else None, "sha256": digest,
                    "mtime": st.st_mtime, "archived_ns": now_ns,
                    "archive_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ns / 1e9)),
                    "rule": a.rule, "reason": a.reason, "codec": "gzip",
                }
                _write_new(content, tfd, _part(meta_name), json.dumps(meta, indent=2).encode() + b"\n", made)
                for part, final in ((_part(meta_name), meta_name), (_part(gz), gz)):
                    faults.renameat2(tfd, os.fsencode(part), tfd, os.fsencode(final), _libc.RENAME_NOREPLACE)
                    made[made.index(part)] = final
                _sync_dir(tfd)  # the names are durable before the original goes
        except BaseException:
            for n in made:
                try:
                    os.unlink(n, dir_fd=tfd)
                except OSError:
                    pass
            raise
        finally:
            os.close(tfd)
    finally:
        os.close(src)
    os.unlink(name, dir_fd=dfd)  # only now: the archive is on disk


def _attempt_of(src: int, dest: str) -> str | None:
    """The folder an earlier attempt to archive this file began in (under `dest`)."""
    try:
        folder = os.fsdecode(os.getxattr(src, xattrs.ARCHIVING))
    except OSError:
        return None
    ok = folder.startswith(dest + "/") and ".." not in folder.split("/")
    return folder if ok else None


def _mark_attempt(src: int, folder: str) -> None:
    try:
        os.setxattr(src, xattrs.ARCHIVING, os.fsencode(folder))
    except OSError as e:  # e.g. no user xattrs: an attempt resumed another day is made anew there
        log.debug("cannot mark the archive attempt: %s", e)


def _choose(tfd: int, rel: str, name: str, read, size: int, content) -> tuple[str, str, bool]:
    """The archive and record names for `rel` in the target folder, and
    whether an earlier attempt left them whole (only the removal is left):
    the first unique name that is free or holds our own earlier attempt."""
    for gz, meta_name in unique_names(name):
        state = _earlier_attempt(tfd, gz, meta_name, rel, read, size, content)
        if state == "whole":
            return gz, meta_name, True
        if state == "free":
            return gz, meta_name, False
    raise OSError(errno.EEXIST, f"no free archive name for {name} after {NAME_TRIES} tries")


def _part(name: str) -> str:
    return fit(f".{name}.part", NAME_MAX)


def _earlier_attempt(tfd: int, gz: str, meta_name: str, rel: str, read, size: int, content) -> str:
    """What the target folder holds under these names for `rel`: "free"
    (nothing; a record of `rel` without its archive, left by an attempt
    cut short, is removed), "whole" (an earlier attempt's record and
    archive, both matching the original: the record's path, size and
    sha256, the archive's unpacked sha256) or "taken" (anything else: an
    archive alone was never left by us, and is never removed)."""
    meta = _read_meta(tfd, meta_name, content)
    if meta is None or meta.get("original") != rel:
        return "taken" if meta is not None or _exists(tfd, meta_name) or _exists(tfd, gz) else "free"
    if not _exists(tfd, gz):
        os.unlink(meta_name, dir_fd=tfd)
        return "free"
    if meta.get("size") != size:
        return "taken"
    want = meta.get("sha256")
    whole = _sha256_of(read, size) == want and _unpacked_sha256(tfd, gz, content) == want
    return "whole" if whole else "taken"


def _read_meta(tfd: int, name: str, content) -> dict | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=tfd)
    except FileNotFoundError:
        return None
    try:
        meta = json.loads(content.attach(fd).read(0, content.plain_size(os.fstat(fd).st_size)))
    except (ValueError, OSError, RecursionError):  # RecursionError: nested past json.loads's stack
        return None
    finally:
        os.close(fd)
    return meta if isinstance(meta, dict) else None


def _chunks(read, size: int) -> Iterator[bytes]:
    """The `size` plaintext bytes `read(off, n)` gives, 1 MiB at a time
    (fewer if the file ends first)."""
    off = 0
    while off < size:
        chunk = read(off, min(1 << 20, size - off))
        if not chunk:
            return
        yield chunk
        off += len(chunk)


def _sha256_of(read, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(read, size):
        digest.update(chunk)
    return digest.hexdigest()


def _unpacked_sha256(tfd: int, gz: str, content) -> str | None:
    """The sha256 of what archive `gz` unpacks to; None if it is not whole."""
    fd = os.open(gz, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=tfd)
    try:
        z, digest = zlib.decompressobj(31), hashlib.sha256()
        for chunk in _chunks(reader(content.attach(fd)), content.plain_size(os.fstat(fd).st_size)):
            digest.update(z.decompress(chunk))
        digest.update(z.flush())
        return digest.hexdigest() if z.eof else None
    except (OSError, zlib.error):
        return None
    finally:
        os.close(fd)


def _sync_dir(path_fd: int) -> None:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=path_fd)
    try:
        faults.fsync(fd)
    finally:
        os.close(fd)


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _open_new(tfd: int, name: str, made: list[str]) -> int:
    """A new part file; one left by a killed run is removed first (never
    written through: the name could be a link planted there)."""
    try:
        os.unlink(name, dir_fd=tfd)
    except FileNotFoundError:
        pass
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=tfd)
    made.append(name)
    return fd


def _compress(read, size: int, content, tfd: int, gz: str, made: list[str]) -> tuple[str, int]:
    """Write the gzip of `size` plaintext bytes from `read` as `gz`; the
    sha256 of the plaintext and the gzip's size."""
    dst = _open_new(tfd, gz, made)
    try:
        writer = content.attach(dst)
        z = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip container
        digest = hashlib.sha256()
        woff = 0
        for chunk in _chunks(read, size):
            digest.update(chunk)
            packed = z.compress(chunk)
            woff += writer.write(woff, packed) if packed else 0
        tail = z.flush()
        woff += writer.write(woff, tail)
        faults.fsync(dst)
    finally:
        os.close(dst)
    return digest.hexdigest(), woff


def _write_new(content, tfd: int, name: str, data: bytes, made: list[str]) -> None:
    fd = _open_new(tfd, name, made)
    try:
        content.attach(fd).write(0, data)
        faults.fsync(fd)
    finally:
        os.close(fd)


#: Tools that make a folder and exit: the folder is their parent process's.
HANDS_ON = frozenset({"mkdir", "install", "cp", "mv", "rsync", "tar", "unzip"})


def creator_record(pid: int) -> bytes | None:
    """What XATTR_CREATOR holds for a folder made by process `pid`: that
    process, or for a tool in HANDS_ON the process that ran it."""
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


class MountJanitor:
    """Made by the mount when some folder retains; attaches itself to `core`
    (folder creators, the control attribute). `run_forever` in the mount's
    nursery, `stop` at unmount."""

    def __init__(self, core: Core, cfg: Config, mountpoint: str, audit: AuditLog | None, catalog: Catalog,
                 alerts: Alerts, failed: Failures | None = None) -> None:
        self.core, self.cfg, self.mountpoint = core, cfg, mountpoint
        self.failed = failed or Failures(alerts)
        self.data, self.content = Path(core.data_root), core.content
        self.audit, self.catalog, self.alerts = audit, catalog, alerts
        self.nursery: trio.Nursery | None = None  # runs asked for go here; set by run_forever
        self.token: trio.lowlevel.TrioToken | None = None  # how a request thread reaches it (uring.py)
        self.running = False
        self.runs = 0  # finished runs, so a caller can tell its run from earlier ones
        self.last: dict = {}
        self.now: dict = {}  # the running run so far: planned, done, skipped
        self.disk_level = "ok"  # ok, warning, emergency
        self.totals = {"runs": 0, "done": 0, "skipped": 0, "freed": 0, "deleted": 0}
        core.on_mkdir = self.on_mkdir
        core.attrs.serve(xattrs.JANITOR, get=self._state_attr, set=self._request_attr)

    # --------------------------------------------------------- creators

    def on_mkdir(self, proc_path: str, rel: str, pid: int) -> None:
        """Record who made a folder under temp/ (orphan and crash cleanup)."""
        if rel.split("/")[0] != TEMP or pid <= 0:
            return
        rec = creator_record(pid)
        if rec is not None:
            try:
                os.setxattr(proc_path, xattrs.CREATOR, rec)
            except OSError as e:  # e.g. a backing filesystem without user xattrs
                log.debug("cannot record the creator of %s: %s", rel, e)

    # --------------------------------------------------------- when

    async def run_forever(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Runs each folder table on its schedule, checks the disk, and
        carries out the runs asked for, until `stop`."""
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as self.nursery:
            self.nursery.start_soon(self._schedule)
            task_status.started()

    def stop(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _schedule(self) -> None:
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
                try:
                    await self.check_disk()
                except Exception as e:  # e.g. statvfs failed: the next check tries again
                    self.failed("janitor disk check", e)
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

    def _request_attr(self, ino: int, value: bytes, uid: int, pid: int) -> None:
        """A run asked for through xattrs.JANITOR on the mount root; runs
        beside the requests."""
        if ino != ROOT_INODE or self.nursery is None or self.token is None:
            raise OSError(errno.EPERM, "reserved attribute prefix")
        uring.start_soon(self.token, self.nursery, self.run, Request.parse(value))

    def _state_attr(self, ino: int) -> bytes | None:
        if ino != ROOT_INODE:
            return None
        return json.dumps({"running": self.running, "runs": self.runs, "last": self.last, "now": self.now}).encode()

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
            if req.chunk:
                job, chunk = req.chunk
                entries = inventory(self.data, plain, f"{JOBS}/{job}/{chunk}")
                planned += await self._carry_out(chunk_plan(entries, job, chunk), req, out)
            elif req.crash:
                planned += await self._carry_out(crash_plan(self.cfg, inventory(self.data, plain), req.crash), req, out)
            elif req.older_than:
                everywhere = bool(req.folder or req.rules)
                found = older_plan(now, self.cfg, inventory(self.data, plain), req.older_than, everywhere,
                                   held_now=t0)  # write-once: its own retention, real time
                planned += await self._carry_out(found, req, out)
            else:
                usage: dict = {}
                actions = plan(now, self.cfg, inventory(self.data, plain), usage, held_now=t0)  # write-once: real time
                planned += await self._carry_out(actions, req, out)
                self._check_caps(usage)
                planned += await self._expire_distributions(now, req, out)
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
                "done": out.done, "deleted": out.by_kind.get("delete", 0), "freed": out.freed,
                "skipped_count": out.skipped,
            }
            self.catalog.add_janitor_run({
                "started_ns": int(t0 * 1e9), "seconds": self.last["seconds"], "trigger": req.trigger,
                "rules": ",".join(sorted(req.rules)) if req.rules else "*", "planned": planned,
                "done": out.done, "skipped": out.skipped, "freed": out.freed, "summary": out.summary(),
            })
            for k in ("done", "skipped", "freed"):
                self.totals[k] += getattr(out, k)
            self.totals["deleted"] += out.by_kind.get("delete", 0)
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

    async def _expire_distributions(self, now: float, req: Request, out: Outcome) -> int:
        """Distribution records past their expiry, and the files left
        without an open record (distributions.py)."""
        if req.orphans:
            return 0
        stat = distributions.backing_stat(self.data, self.content.plain_size)
        exp = distributions.expiry_plan(self.cfg, self.catalog.expired_files(int(now * 1e9)), stat)
        self.catalog.expire_distributions(int(now * 1e9), time.time_ns())
        planned = await self._carry_out(iter(exp.actions), req, out)
        distributions.settle(self.catalog, exp, stat)
        return planned

    def _check_caps(self, usage: dict) -> None:
        """Alert when a capped folder is `warn_percent` full (before eviction);
        the mount's alert watch checks the same between runs."""
        check_caps(self.alerts, usage)

    async def _carry_out(self, actions: Iterator[Action], req: Request, out: Outcome) -> int:
        """Pull a batch from the planner in a worker thread, act on it a STEP
        at a time; returns how many actions were planned."""
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
                self.core.moved()  # paths changed behind the core's back
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
        self.core.invalidate(a.rel)

    def _record(self, a: Action, result: str, detail: str) -> None:
        if self.audit is not None:
            self.audit.record("janitor-" + a.kind, 0, 0, os.getpid(), a.rel, a.dest, result,
                              a.size if result == "OK" else 0, detail)
