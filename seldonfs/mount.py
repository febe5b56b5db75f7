"""Running a mount: checks, the store lock, pyfuse3 and the trio loop, signals,
and an orderly close (unmount, catalog closed, lock released).

`prepare()` checks and unlocks in the foreground process; `serve()` is the
whole life of one mount in the calling process: its resources are opened
in order on an ExitStack (lock, catalog, core, audit, engine, control,
the FUSE session) and closed in reverse, also when one fails to open;
`run_daemon()` forks it into the background and returns once the mount is
ready or has failed, with the failure's one-line message and exit code.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import logging.handlers
import os
import resource
import signal
import stat as stat_m
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from . import _libc, anchor, audit, config, fuseloop, janitor, journal, keys, offline, sdnotify, segments, uring
from .alerts import Alerts, Failures, send_head, verify_audit, watch
from .audit import AuditLog
from .catalog import Catalog
from .cleanup import MountJanitor
from .config import Config
from .content import ContentLayer, PlainContent
from .control import Control, ensure_token
from .core import Core
from .engine import Engine
from .errors import MountPointError, SeldonError, UsageError
from .fuse_ops import SeldonOperations
from .host import find_mount
from .inodes import PROBED_XATTRS
from .keys import KeySource
from .metrics import Sources, registry, snapshot
from .policy import Policy
from .refusals import Refusals
from .rules import Rules
from .store import MOUNTED_NAME, Store, StoreLock, mark, unmark
from .virtual import REFUSALS_NAME, STATS_NAME, VIRTUAL_BASE, Virtual, VirtualFile

log = logging.getLogger(__name__)

# Options mount(8) and fstab pass that mean nothing to FUSE (libfuse would
# refuse them as unknown).
FSTAB_ONLY = {"defaults", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "owner"}
# How long a SIGTERM waits for the kernel's cached writes of open files
# (within `docker stop`'s 10 s before its SIGKILL).
WRITE_BACK_S = 8
# Blocks up to this size come from the heap, and up to this much free
# memory stays at its top (_libc.keep_freed_memory): a few requests' worth.
MALLOC_MMAP_THRESHOLD = 8 << 20
MALLOC_TRIM_THRESHOLD = 32 << 20


def fuse_options(opts: list[str], store: Store) -> set[str]:
    out = set(pyfuse3.default_options)
    for o in opts:
        if o in FSTAB_ONLY or o.startswith(("x-", "comment=")):
            continue
        out.add(o)
    if not out & {"allow_other", "allow_root"} and "default_permissions" not in opts:
        # Only processes of the mounting user may enter (the kernel's rule
        # without allow_other), and the daemon acts on the store as that
        # user: the store's own permission checks are the same checks. The
        # kernel's copy of them would re-read a directory's attributes after
        # every create and unlink in it (a GETATTR each), as gocryptfs also
        # avoids by mounting without it.
        out.discard("default_permissions")
    out.add(f"fsname={store.root}")
    out.add("subtype=seldonfs")
    return out


def check_mountpoint(mountpoint: Path) -> None:
    try:
        st = os.stat(mountpoint)
        # listing asks a FUSE daemon even when the kernel cached the stat
        entries = os.listdir(mountpoint) if stat_m.S_ISDIR(st.st_mode) else []
    except FileNotFoundError:
        raise MountPointError(f"{mountpoint}: mount point does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountPointError(
                f"{mountpoint}: a dead FUSE mount (its daemon is gone); "
                f"clear it with: fusermount3 -uz {mountpoint}"
            ) from None
        raise MountPointError(f"{mountpoint}: {e.strerror}") from None
    if not stat_m.S_ISDIR(st.st_mode):
        raise MountPointError(f"{mountpoint}: mount point is not a directory")
    if find_mount(mountpoint) is not None or os.path.ismount(mountpoint):
        raise MountPointError(f"{mountpoint}: already mounted")
    if entries:
        raise MountPointError(f"{mountpoint}: mount point is not empty")


def _raise_nofile_limit() -> None:
    # One O_PATH descriptor per inode the kernel holds (see core.py).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
            resource.setrlimit(resource.RLIMIT_NOFILE, (nr_open, nr_open))
            return
        except (OSError, ValueError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def setup_logging(store: Store, foreground: bool, debug: bool, level: int | None = None) -> None:
    """The daemon's handlers replace the CLI's (each line written once):
    STORE/seldonfs.log, and in the foreground stderr too; under systemd
    (journal.under_systemd) the journal, with structured fields, instead
    of stderr. `level`: --log-level (default INFO; -d is DEBUG)."""
    root = logging.getLogger()
    for h in root.handlers[:]:
        root.removeHandler(h)
    level = logging.DEBUG if debug else level or logging.INFO
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    fh = LogFile(store.log_path, stderr_too=not foreground)
    fh.setFormatter(fmt)
    root.addHandler(fh)
    if journal.under_systemd():
        jh = journal.JournalHandler(str(store.root))
        jh.setFormatter(logging.Formatter("%(name)s: %(message)s"))  # the journal keeps time, pid and level
        root.addHandler(jh)
    elif foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
        root.addHandler(sh)
    logging.getLogger("pyfuse3").addFilter(_hint_failures_are_debug)


class LogFile(logging.handlers.RotatingFileHandler):
    """STORE/seldonfs.log: rotated at 10 MiB (3 kept), mode 0600 for its
    whole life (it names every user's files; the daemon's umask is 0), a
    name that is not UTF-8 written with its bytes as \\xNN. `stderr_too`
    (the daemon): file descriptor 2, where libfuse and a dying interpreter
    write, follows the current file across rotations."""

    def __init__(self, path: Path, stderr_too: bool = False, max_bytes: int = 10 << 20) -> None:
        self.stderr_too = stderr_too
        super().__init__(path, maxBytes=max_bytes, backupCount=3, errors="backslashreplace")

    def _open(self):  # type: ignore[override]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # also a file made before, or by a looser umask
        if self.stderr_too:
            os.dup2(fd, 2, inheritable=True)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def _hint_failures_are_debug(record: logging.LogRecord) -> bool:
    """An entry invalidation is a hint to the kernel's cache (a moved file,
    the inode budget); pyfuse3 logs one that failed, e.g. because the
    kernel has already dropped the entry or the mount is going away, as an
    error with a traceback. Keep it, as DEBUG without the traceback. An
    answer to a request the kernel has given up on is INFO, not an error."""
    if record.getMessage().startswith("Failed to submit invalidate_entry"):
        exc = record.exc_info[1] if record.exc_info else None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args, record.exc_info, record.exc_text = f"{record.getMessage()}: {exc}", None, None, None
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    if "fuse_reply_* failed with No such file or directory" in record.getMessage():
        # The kernel no longer waits for that answer: the request was
        # interrupted (its caller gone), or the mount is being torn down
        # (a release answered after `fusermount3 -u -z`). Nothing is lost.
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


@dataclass
class Prepared:
    """Everything a mount needs, checked and unlocked before it starts (in
    the foreground process, so errors and the passphrase prompt are the
    user's, and a wrong key fails at once)."""

    store: Store
    cfg: Config
    mountpoint: Path
    fuse_opts: set[str]
    content: ContentLayer


def prepare(store_root: Path, mountpoint: Path, opts: list[str], source: KeySource) -> Prepared:
    store = Store(store_root.resolve())
    ident = store.identity()
    cfg = store.load_config()
    mountpoint = Path(os.path.abspath(mountpoint))
    check_mountpoint(mountpoint)
    StoreLock(store).ensure_free()
    fuse_opts, source = take_key_options(opts, source)
    return Prepared(store, cfg, mountpoint, fuse_options(fuse_opts, store), open_content(ident, source))


def take_key_options(opts: list[str], source: KeySource) -> tuple[list[str], KeySource]:
    """Take our own -o options (keyfile=, passphrase_file=: for fstab and
    mount(8)) out of the FUSE ones."""
    fuse: list[str] = []
    for o in opts:
        key, _, value = o.partition("=")
        if key == "keyfile" and value:
            source = KeySource(keyfile=Path(value), mount_options=source.mount_options)
        elif key == "passphrase_file" and value:
            source = KeySource(passphrase_file=Path(value), mount_options=source.mount_options)
        else:
            fuse.append(o)
    return fuse, source


def open_content(ident: dict, source: KeySource) -> ContentLayer:
    block = ident.get("encryption")
    if block is None:
        return PlainContent()
    from .blockformat import EncryptedContent

    return EncryptedContent(keys.unlock(block, source), block["current_key_id"], block["block_size"])


def check_chain(store: Store, content: ContentLayer) -> None:
    """Refuse the mount (exit 26) while the audit chain does not match its
    anchors: a lost, emptied or rebuilt catalog, a cut chain (anchor.py).
    Before the catalog is opened, which would make a missing one anew."""
    key = None
    if (store.root / audit.KEY_NAME).exists():
        key = audit.load_key(store.root, getattr(content, "keys", None))
    anchor.refuse_broken(store, key)


def open_audit(store: Store, cfg: Config, content: ContentLayer, lock_fd: int) -> AuditLog | None:
    """The audit chain's writer (None when `[audit] enabled = false`); makes
    the audit key at the first mount of a store."""
    if not cfg.audit.enabled:
        return None
    keys_ = getattr(content, "keys", None)
    kid = getattr(content, "current_key_id", None)
    if not (store.root / audit.KEY_NAME).exists():
        audit.create_key(store.root, keys_, kid)
    key = audit.load_key(store.root, keys_)
    file_keys = None if keys_ is None else (keys_, kid, content.block_size)  # type: ignore[attr-defined]
    a = cfg.audit
    seal = None if a.segment is None else segments.Spec(
        a.segment, a.segments_to, *(file_keys or (None, 0, 4096)))
    return audit.AuditLog(store.root, store.catalog_path, key, reads=a.reads, lock_fd=lock_fd, seal=seal,
                          sealed=segments.Reader(store.data, file_keys), retain_s=a.retain,
                          forward=a.forward)


def virtual_files(store: Store, mountpoint: Path, sources: Sources, auditlog: AuditLog | None, metrics_url: str | None,
                  refusals: Refusals | None = None) -> Virtual:
    """The numbers at MOUNT/.seldonfs-stats.json (every mount, every profile;
    left out of listings) and, for a tree that has those folders,
    system/monitoring/stats.json and system/logs/audit.jsonl; the last
    refusals at MOUNT/.seldonfs-refusals.json, made per reader: root and
    the mount's owner read every refusal, anyone else their own (virtual.py)."""

    def stats() -> Iterator[bytes]:
        doc = {"store": str(store.root), "mountpoint": str(mountpoint), "pid": os.getpid(),
               "metrics_url": metrics_url, **snapshot(sources)}
        yield json.dumps(doc, indent=2).encode() + b"\n"

    files = [VirtualFile(VIRTUAL_BASE + 3, "", STATS_NAME, stats, listed=False),
             VirtualFile(VIRTUAL_BASE + 2, "system/monitoring", b"stats.json", stats)]
    if refusals is not None:
        def of_reader(uid: int) -> Iterator[bytes]:
            return refusals.document(None if uid in (0, os.geteuid()) else uid)

        files.append(VirtualFile(VIRTUAL_BASE + 4, "", REFUSALS_NAME, lambda: iter(()), listed=False,
                                 for_reader=of_reader))
    if auditlog is not None:
        files.append(VirtualFile(VIRTUAL_BASE + 1, "system/logs", b"audit.jsonl", auditlog.jsonl))
    return Virtual(files)


def serve(prep: Prepared, ready: Callable[[], None], foreground: bool = True, debug: bool = False,
          log_level: int | None = None) -> None:
    """The whole life of one mount, in this process."""
    store, cfg, mountpoint = prep.store, prep.cfg, prep.mountpoint
    # Again: unlocking took up to a second, and a daemon starts later still;
    # pyfuse3 would mount on top of a mount made meanwhile.
    check_mountpoint(mountpoint)
    with contextlib.ExitStack() as stack:
        lock = StoreLock(store)
        lock.acquire()
        stack.callback(lock.release)
        setup_logging(store, foreground, debug, log_level)
        _finish_rekey_copy(store, prep.content)
        block = _date_key(store)
        _raise_nofile_limit()
        # A write request's data and its sealed blocks are a megabyte each.
        # Left to its own thresholds, glibc could give that memory back to
        # the kernel at every free and fault it in again at the next request
        # (it did once the stats file had been read): 480 page faults a
        # request, 40 % of the daemon's CPU time for a 256 MiB copy
        # (docs/design.md).
        _libc.keep_freed_memory(MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD)
        # Modes arrive already masked by the caller's umask; ours must not
        # mask them again.
        os.umask(0)
        check_chain(store, prep.content)
        catalog = Catalog(store.catalog_path)
        stack.callback(catalog.close)
        catalog.migrate()
        writeback = cfg.mount.writeback_cache
        if writeback is None:  # auto: measured, see docs/design.md
            writeback = prep.content.needs_read_to_write
        core = Core(store.data, prep.content, writeback=writeback)
        stack.callback(core.close)
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        core.max_inodes = cfg.mount.max_inodes or max(100, limit * 7 // 10)
        log.info("descriptor limit %d: at most %d inodes known at once", limit, core.max_inodes)
        auditlog = open_audit(store, cfg, prep.content, lock.fd)
        if auditlog is not None:
            stack.callback(auditlog.close)
        unclean = _mark_mounted(store)
        life: list[str] = []  # "serving", then "ended" once the request loop ended normally
        rules = Rules(cfg)
        refusals = Refusals()  # the last ones, for seldonfs why and stats.json
        failures = Failures()  # background work that failed: logged, counted, alerted; the mount goes on
        engine = None
        if rules.any_policy:
            keys_ = getattr(prep.content, "keys", None)
            ckey = audit.checksum_key(store.root, keys_, getattr(prep.content, "current_key_id", None))
            engine = Engine(core, Policy(rules), catalog, writeback, auditlog, failures, ckey, refusals)
        stack.callback(_unmark_mounted, store, engine, unclean, life)  # after the engine's last file records
        if engine is not None:
            stack.callback(engine.close)  # its last file records
            if unclean:
                engine.recover_from = str(store.data)
        served = _side_tasks(store, cfg, mountpoint, core, engine, catalog, auditlog, prep.content, failures, refusals)
        if block is not None:
            served.sources.key_created = keys.when(block, keys.KEY_CREATED)
            served.sources.secret_changed = keys.when(block, keys.SECRET_CHANGED)
        stack.callback(served.control.close)
        ops = SeldonOperations(core, cfg.mount, writeback, auditlog, cfg.monitoring.metrics, refusals)
        served.sources.ops = ops.stats
        ring, why = uring.choose(cfg.mount.io_uring)  # FUSE over io_uring, or None: /dev/fuse
        served.sources.transport = ring.describe if ring is not None else lambda: uring.over_dev_fuse(why)
        _fuse_init(ops, mountpoint, prep.fuse_opts, foreground, store)
        stack.callback(_unmount, mountpoint, auditlog)
        if ring is not None:
            if not ops.debug:  # mount -d logs every request from its handler
                core.share_absent = ring.answer_absent(tuple(PROBED_XATTRS))
                if ops.stats is not None:
                    ops.stats.outside = ring.absent_answers
            ring.install()
        stack.callback(ops.record_open_writes)  # before the unmount record
        log.info("mounted %s at %s", store.root, mountpoint)
        if auditlog is not None:
            auditlog.record("mount", os.getuid(), os.getgid(), os.getpid(), "", detail=str(mountpoint))
        ready()
        sdnotify.notify("READY=1")
        if ring is None:
            fuseloop.install(cfg.mount.spin_us)
        else:  # only FORGETs come that way: gathered, not spun for
            fuseloop.install(0, ring.settle)
        stack.callback(fuseloop.uninstall)
        life.append("serving")
        if ring is None:
            trio.run(_serve, engine, served)
        else:
            stack.callback(ring.stop)  # first, before Core is touched outside trio
            trio.run(_serve, engine, served, instruments=ring.instruments())
        life.append("ended")


def _mark_mounted(store: Store) -> bool:
    """Leave STORE/mounted for this mount's life; True when the last mount
    left it: it did not end cleanly, and its files cut off before their
    close are committed now (Engine.recover)."""
    path = store.root / MOUNTED_NAME
    try:
        return mark(path)
    except OSError as e:  # a later kill would go unnoticed: fsck still reports such files
        log.error("cannot write %s: files a kill cuts off before their close will not be committed: %s", path, e)
        return path.exists()


def _unmark_mounted(store: Store, engine: Engine | None, unclean: bool, life: list[str]) -> None:
    """At the end of a mount that left nothing uncommitted; or of one that
    never served, unless an earlier mount's files still wait."""
    if "serving" in life:
        clean = "ended" in life and (engine is None or engine.ended_clean())
    else:
        clean = not unclean
    if clean:
        try:
            unmark(store.root / MOUNTED_NAME)
        except OSError as e:  # the next mount only looks again
            log.error("cannot remove %s: %s", store.root / MOUNTED_NAME, e)


def _side_tasks(store: Store, cfg: Config, mountpoint: Path, core: Core, engine: Engine | None, catalog: Catalog,
                auditlog: AuditLog | None, content: ContentLayer, failures: Failures,
                refusals: Refusals | None = None) -> Served:
    """The janitor, alerts, the numbers, the virtual files and the control
    API (bound here, so a busy port fails the mount before it mounts)."""
    alerts = failures.alerts = Alerts(cfg.alerts, store.data, content, str(mountpoint), core.invalidate)
    janitor_ = None
    if janitor.has_retention(cfg):
        janitor_ = MountJanitor(core, cfg, str(mountpoint), auditlog, catalog, alerts, failures)
    sources = Sources(None, store.data, store.catalog_path, core, auditlog, janitor_, alerts, content, cfg.janitor,
                      engine.counts if engine is not None else None)
    sources.failures = failures
    sources.refusals = refusals
    sources.cfg = cfg
    port = cfg.monitoring.port
    url = metrics_url(cfg.monitoring.address, port) if port else None
    core.virtual = virtual_files(store, mountpoint, sources, auditlog, url, refusals)
    served = Served(store, cfg, sources, alerts, auditlog, janitor_, mountpoint=mountpoint)
    served.control = Control(
        store.root, ensure_token(store.root), sources, registry(sources), janitor_, auditlog,
        functools.partial(_reload, served),
    )
    try:
        served.control.bind(port, cfg.monitoring.address)
    except BaseException:
        served.control.close()
        raise
    if port and not config.is_loopback(cfg.monitoring.address):
        log.info("metrics at http://%s/metrics for anyone who reaches that address; the control API only on %s "
                 "and loopback", _host_port(cfg.monitoring.address, port), store.root / "control.sock")
    return served


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def metrics_url(address: str, port: int) -> str:
    """Where this machine scrapes the mount: an unspecified address
    (0.0.0.0, ::) as the loopback one it includes, IPv6 in brackets."""
    local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    return f"http://{_host_port(local, port)}/metrics"


def _finish_rekey_copy(store: Store, content: ContentLayer) -> None:
    """A rekey killed while it overwrote a file (STORE/rekey.json) left the
    file's new copy as the truth: finish it before anything can write the
    file, or a later `seldonfs rekey` would put the stale copy back over
    what this mount wrote."""
    block = store.identity().get("encryption")
    keys_ = getattr(content, "keys", None)
    if block is not None and keys_ is not None and (store.root / offline.REKEY_JOURNAL).exists():
        log.info("an interrupted rekey's copy is finished first; run seldonfs rekey %s to complete it", store.root)
        offline.Rekey(store, keys_, block).finish_interrupted()


def _date_key(store: Store) -> dict | None:
    """The encryption block (None: a plain store), with the dates of its
    master key and secret written into store.json if it has none (a store
    made before they were kept: its key counts as made now; said once)."""
    ident = store.identity()
    block = ident.get("encryption")
    if block is None:
        return None
    new = keys.dated(block)
    if new is None:
        return block
    try:
        store.write_identity(dict(ident, encryption=new))
    except OSError as e:
        log.info("cannot write the master key's date into store.json (%s): counted from this mount", e)
        return new
    log.info("store.json kept no date for the master key: it counts as made now (%s); "
             "[encryption] rotate_after counts from then", new[keys.KEY_CREATED])
    return new


def _fuse_init(ops: SeldonOperations, mountpoint: Path, fuse_opts: set[str], foreground: bool, store: Store) -> None:
    with _stderr_caught() as said:
        try:
            pyfuse3.init(ops, str(mountpoint), fuse_opts)
            failed = None
        except RuntimeError as e:
            failed = e
    if failed is None:
        return
    reason = _libfuse_reason(said())
    where = "above" if foreground else f"in {store.log_path}"
    if "session_new" in str(failed):  # libfuse refused an option
        raise UsageError(f"FUSE refused the mount options: {reason or f'see {where}'}") from None
    raise MountPointError(f"{mountpoint}: cannot mount: {failed}" + (f": {reason}" if reason else f" (see {where})")) from None


@contextlib.contextmanager
def _stderr_caught() -> Iterator[Callable[[], str]]:
    """What is written to file descriptor 2 meanwhile (libfuse says why it
    refuses there, in C), passed on to it afterwards all the same."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        text = ""
        try:
            yield lambda: text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            if data:
                os.write(2, data)
            text = data.decode(errors="replace")


def _libfuse_reason(text: str) -> str:
    """libfuse's last line, e.g. "unknown option(s): `-o frobnicate'"."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix("fuse: ") if lines else ""


def _unmount(mountpoint: Path, auditlog: AuditLog | None) -> None:
    sdnotify.notify("STOPPING=1")
    pyfuse3.close(unmount=True)
    log.info("unmounted %s", mountpoint)
    if auditlog is not None:
        auditlog.record("unmount", os.getuid(), os.getgid(), os.getpid(), "", detail=str(mountpoint))


@dataclass
class Served:
    """What the request loop's side tasks need (control API, watchers)."""
    store: Store
    cfg: Config
    sources: Sources
    alerts: Alerts
    auditlog: AuditLog | None
    janitor: MountJanitor | None = None
    control: Control = None  # type: ignore[assignment]
    mountpoint: Path = Path()


def _reload(served: Served) -> dict:
    """Re-read seldonfs.toml in a running mount: the janitor (retention,
    thresholds) and alerts take it now; the policy's naming and validation
    rules, mount options, audit and monitoring settings at the next mount.
    A broken file raises ConfigError and the running settings stay."""
    old, new = served.cfg, config.load(served.store.config_path)
    if served.janitor is not None:
        served.janitor.cfg = new
    served.alerts.cfg = new.alerts
    served.sources.janitor_cfg = new.janitor
    served.sources.cfg = new
    served.cfg = new
    later = [k for k in ("folders", "policy", "mount", "audit", "monitoring") if getattr(old, k) != getattr(new, k)]
    return {"reloaded": True, "applied": ["janitor", "alerts"], "at_next_mount": later}


async def _serve(engine: Engine | None, served: Served) -> None:
    if engine is not None:  # the trio thread holds the request lock until its first wait
        engine.recover()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, served)
        if served.janitor is not None:
            await nursery.start(served.janitor.run_forever)  # each folder's schedule; disk checks
        if engine is not None:
            await nursery.start(engine.run)  # content checks of large files; catalog batches
        nursery.start_soon(watch, served.alerts, served.sources)
        nursery.start_soon(_keep_inode_budget, served.sources.core)
        if served.auditlog is not None:
            nursery.start_soon(send_head, served.auditlog, served.alerts, served.sources)
        if served.auditlog is not None and served.cfg.audit.verify_every:
            nursery.start_soon(verify_audit, served.auditlog, served.cfg.audit.verify_every, served.alerts, served.sources)
        served.control.serve(trio.lowlevel.current_trio_token(), nursery)
        try:
            # One worker: no handler awaits, so a second worker would only add a
            # lock hand-off per request (see fuseloop.py). Work that must wait
            # (large content checks) runs in tasks of its own.
            await pyfuse3.main(min_tasks=1, max_tasks=1)
        finally:
            served.control.close()  # before the loop goes: its threads hand work to it
        # Unmounted from outside (fusermount3 -u, umount): stop the rest.
        nursery.cancel_scope.cancel()


async def _keep_inode_budget(core: Core) -> None:
    """Past the descriptor budget with no lookups coming (the ones that
    ask the kernel to forget), ask again every few seconds."""
    while True:
        await trio.sleep(5)
        if core.over_budget():
            core.relieve()


async def _on_signals(served: Served) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload_on_hup(served)
                continue
            log.info("signal %d: unmounting", signum)
            await _write_back(served.mountpoint)
            pyfuse3.terminate()
            return


async def _write_back(mountpoint: Path) -> None:
    """Before a SIGTERM's unmount: have the kernel send the writes it still
    holds for files that are open (the writeback cache keeps a write(2)'s
    bytes in its pages until close, fsync or its own flush), while the loop
    serves them. Without this they went with the mount, though each
    write(2) had been told its bytes were taken. A mount that does not
    answer within WRITE_BACK_S is unmounted anyway, with a warning."""

    def sync() -> None:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _libc.syncfs(fd)
        finally:
            os.close(fd)

    with trio.move_on_after(WRITE_BACK_S) as scope:
        try:
            await trio.to_thread.run_sync(sync, abandon_on_cancel=True)
        except OSError as e:
            log.warning("unmounting: the writes the kernel still held could not all be sent: %s", e)
    if scope.cancelled_caught:
        log.warning("unmounting: the kernel's cached writes took over %d s; not all of them may be stored",
                    WRITE_BACK_S)


def _reload_on_hup(served: Served) -> None:
    """SIGHUP: what `seldonfs ctl MNT reload` does; a broken file keeps the
    running settings, as there."""
    sdnotify.notify(*sdnotify.reloading())
    try:
        done = _reload(served)
        log.info("SIGHUP: %s reloaded; applied now: %s; at the next mount: %s", served.store.config_path,
                 ", ".join(done["applied"]), ", ".join(done["at_next_mount"]) or "nothing")
    except SeldonError as e:
        log.warning("SIGHUP: the configuration was not reloaded, the running one stays: %s", e)
    sdnotify.notify("READY=1")


def run_daemon(prep: Prepared, debug: bool = False, log_level: int | None = None) -> None:
    """Fork the mount into the background; return once it is ready.

    The child reports over a pipe: "ok", or the exit code and message of the
    error that stopped it. EOF without a report means it died."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:
            os.setsid()
            os.chdir("/")  # keep no directory busy
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.close(devnull)
            # what libfuse itself prints goes to the store's log
            log_fd = os.open(prep.store.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(log_fd, 2)
            os.close(log_fd)

            def ready() -> None:
                os.write(w, b"ok\n")
                os.close(w)

            serve(prep, ready, foreground=False, debug=debug, log_level=log_level)
        except SeldonError as e:
            _report(w, e.exit_code, str(e))
            code = e.exit_code
        except BaseException as e:  # noqa: BLE001 - the parent must hear of it
            log.exception("mount daemon failed")
            _report(w, 1, f"mount daemon failed: {e}")
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    if msg.startswith("ok"):
        return
    if msg:
        code, _, text = msg.partition(" ")
        raise SeldonError(text.strip(), int(code))
    os.waitpid(pid, 0)
    raise SeldonError(f"mount daemon exited during start-up; see {prep.store.log_path}")


def _report(w: int, code: int, msg: str) -> None:
    try:
        os.write(w, f"{code} {msg}\n".encode())
        os.close(w)
    except OSError:
        pass  # already reported ready, or the parent is gone
