"""The backing store: its layout, creation, identity check, lock, and the one
way into STORE/data.

Layout of a store directory::

    store.json       identity: format version, store id, creation time
    seldonfs.toml    the rules (config.py)
    catalog.sqlite   the catalog (catalog.py)
    data/            the visible tree, mirrored
    lock             flock()ed by whoever owns the store (a mount)
    seldonfs.log     the mount daemon's log
    init.unfinished  only while `init` runs (one killed leaves it: the next
                     init clears what it made)
    data/.seldon/    the filesystem's own files, hidden from the mount
                     (versions/: kept versions of files)

No policy lives here. Every access below data/ goes through `walk()` or a
``dir_fd=`` call on a descriptor it returned, with O_NOFOLLOW, so no symlink
inside the tree can lead outside it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat as stat_m
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import FORMAT_VERSION, _libc, config, faults, rules
from .catalog import CATALOG_NAME, Catalog
from .errors import NotAStoreError, SeldonError, StoreLockedError
from .naming import shown

IDENTITY_NAME = "store.json"
DATA_NAME = "data"
LOCK_NAME = "lock"
MOUNTED_NAME = "mounted"  # there while a mount runs, and after one that did not end cleanly (engine.recover)
LOG_NAME = "seldonfs.log"
#: Made first by `init` and removed once store.json is in place: what
#: stands beside it is an unfinished init's own, and the next init clears it.
INIT_MARK = "init.unfinished"
#: Hidden top-level folder of data/ for the filesystem's own files.
PRIVATE_DIR = ".seldon"
VERSIONS_DIR = PRIVATE_DIR + "/versions"


@dataclass(frozen=True)
class Store:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / DATA_NAME

    @property
    def config_path(self) -> Path:
        return self.root / config.CONFIG_NAME

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_NAME

    @property
    def log_path(self) -> Path:
        return self.root / LOG_NAME

    def identity(self) -> dict:
        """Read store.json; NotAStoreError (exit 14) if missing, broken or of another version."""
        p = self.root / IDENTITY_NAME
        if not self.root.is_dir():
            raise NotAStoreError(f"{self.root}: no such directory")
        try:
            ident = json.loads(p.read_text())
        except FileNotFoundError:
            if (self.root / INIT_MARK).exists():
                raise NotAStoreError(f"{self.root}: its `seldonfs init` did not finish (no {IDENTITY_NAME}); "
                                     "run `seldonfs init` again") from None
            raise NotAStoreError(f"{self.root}: not a SeldonFS store (no {IDENTITY_NAME})") from None
        except (OSError, ValueError) as e:
            raise NotAStoreError(f"{p}: unreadable: {e}") from None
        have = ident.get("format_version") if isinstance(ident, dict) else None
        if have != FORMAT_VERSION:
            raise NotAStoreError(
                f"{p}: unsupported store format version (want={FORMAT_VERSION} have={have})"
            )
        if not self.data.is_dir():
            raise NotAStoreError(f"{self.root}: store has no {DATA_NAME}/ directory")
        return ident

    def write_identity(self, ident: dict[str, Any]) -> None:
        """Replace store.json atomically; 0600, since it holds wrapped keys."""
        tmp = self.root / (IDENTITY_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(ident, indent=2) + "\n")
            f.flush()
            faults.fsync(f.fileno())
        faults.replace(tmp, self.root / IDENTITY_NAME)
        sync_dir(self.root)  # the rename too: a power loss must not bring the old one back

    def load_config(self) -> config.Config:
        return config.load(self.config_path)


def sync_dir(path: Path) -> None:
    """fsync a directory: the names made, renamed or removed in it are on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark(path: Path) -> bool:
    """Leave the empty file `path`, its name on disk; True when it was
    there already (whoever made it did not get to `unmark`). Empty: no
    data block to find on a full disk. OSError when it cannot be made."""
    was = path.exists()
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    sync_dir(path.parent)
    return was


def unmark(path: Path) -> None:
    path.unlink(missing_ok=True)
    sync_dir(path.parent)


def check_init_target(root: Path) -> bool:
    """A store is created only in a missing or empty directory, or over
    what an init that did not finish left there (True: `init_store`
    clears that first)."""
    if root.exists():
        if not root.is_dir():
            raise SeldonError(f"{root}: exists and is not a directory", 1)
        if (root / IDENTITY_NAME).exists():
            raise SeldonError(f"{root}: is already a SeldonFS store", 1)
        if (root / INIT_MARK).exists():
            return True
        if any(root.iterdir()):
            raise SeldonError(f"{root}: directory is not empty; refusing to create a store in it", 1)
    return False


_INIT_MADE = {INIT_MARK, IDENTITY_NAME + ".tmp", config.CONFIG_NAME, DATA_NAME,
              *(CATALOG_NAME + end for end in ("", "-wal", "-shm", "-journal"))}


def unfinished_init(root: Path) -> list[Path]:
    """What an unfinished init made in `root`, in the order to remove it:
    its files, then data/'s directories, the deepest first. SeldonError
    when anything else is there (a file in data/, a symlink, a name init
    does not make): then none of it is init's to remove."""
    names = set(os.listdir(root))
    data = root / DATA_NAME
    dirs: list[str] = []
    other = sorted(names - _INIT_MADE)
    other += [n for n in sorted(names & (_INIT_MADE - {DATA_NAME})) if not stat_m.S_ISREG(os.lstat(root / n).st_mode)]
    if DATA_NAME in names:
        if data.is_symlink() or not data.is_dir():
            other.append(DATA_NAME)
        else:
            for d, subdirs, files in os.walk(data):  # a symlink to a directory is listed there, not followed
                dirs.append(d)
                links = [x for x in subdirs if os.path.islink(os.path.join(d, x))]
                other += [os.path.join(d, x) for x in files + links]
    if other:
        raise SeldonError(f"{root}: holds an unfinished init and more (first: {shown(other[0])}); "
                          "refusing to create a store in it", 1)
    return [root / n for n in sorted(names - {DATA_NAME, INIT_MARK})] + [Path(d) for d in reversed(dirs)]


def init_store(root: Path, profile: str, encryption: dict[str, Any] | None) -> Store:
    """Create a store in `root` (missing or empty) from a shipped profile.
    `encryption` is the block keys.new_block() made, None for a plain store."""
    text = config.with_default_tables(config.profile_text(profile))
    cfg = config.parse(tomllib.loads(text), f"profile {profile}")
    if check_init_target(root):
        for p in unfinished_init(root):
            (os.rmdir if p.is_dir() else os.unlink)(p)
    root.mkdir(parents=True, exist_ok=True)
    store = Store(root.resolve())
    # kill -9, a power loss or a full disk before store.json is in place
    # leaves this mark: the next init clears what it finds and starts anew
    (root / INIT_MARK).touch()
    sync_dir(root)
    store.data.mkdir(mode=0o755)
    root_fd = os.open(store.data, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for rule in cfg.folders:
            if rules.is_glob(rule.path):
                continue  # a pattern names folders made later, not one to make
            fd = walk(root_fd, rule.path, create=True)
            try:
                if rule.mode is not None:
                    os.chmod(f"/proc/self/fd/{fd}", rule.mode)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    store.config_path.write_text(text)
    Catalog.create(store.catalog_path).close()
    ident = {
        "format_version": FORMAT_VERSION,
        "store_id": str(uuid.uuid4()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": profile,
        "encryption": encryption,
    }
    # Written last: a store is a store once its identity exists.
    store.write_identity(ident)
    (root / INIT_MARK).unlink()
    sync_dir(root)
    return store


def walk(root_fd: int, relpath: str, create: bool = False) -> int:
    """Open directory `relpath` below `root_fd` as O_PATH, never following a
    symlink; with `create`, make missing components (mode 0755)."""
    fd = os.dup(root_fd)
    try:
        for part in relpath.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise OSError(errno.EACCES, "'..' in store path", relpath)
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


class Dirs:
    """Directories of the tree opened by path (with `walk`), each opened
    once per scope: the outermost `with dirs:` closes them.

    A policy action walks the same few folders several times (check, move,
    set attributes, move the version); a scope opens each one once. A
    descriptor the caller owns (the core's pin of a directory) can be
    `lend`-ed to the scope instead. `moved` is called before every rename
    here, so whoever caches paths knows they may be stale. Trio thread only;
    a plain class, cheaper than contextlib on every commit.
    """

    __slots__ = ("root_fd", "moved", "_fds", "_lent", "_depth")

    def __init__(self, root_fd: int, moved=lambda: None) -> None:
        self.root_fd = root_fd
        self.moved = moved
        self._fds: dict[str, int] = {}
        self._lent: set[str] = set()
        self._depth = 0

    def __enter__(self) -> Dirs:
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fds:
            for d, fd in self._fds.items():
                if d not in self._lent:
                    os.close(fd)
            self._fds.clear()
            self._lent.clear()

    def get(self, d: str, create: bool = False) -> int:
        """An O_PATH descriptor of directory `d`, kept until the scope ends."""
        assert self._depth > 0, "store access outside a scope"
        fd = self._fds.get(d)
        if fd is None:
            fd = self._fds[d] = walk(self.root_fd, d, create=create)
        return fd

    def lend(self, d: str, fd: int) -> None:
        """Use the caller's descriptor of `d` for this scope (not closed here)."""
        if d not in self._fds:
            self._fds[d] = fd
            self._lent.add(d)

    def open(self, rel: str, flags: int, mode: int = 0o777) -> int:
        d, name = os.path.split(rel)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.get(d))

    def lstat(self, rel: str) -> os.stat_result:
        """The attributes of `rel` itself (a symlink's own, not its target's)."""
        d, name = os.path.split(rel)
        return os.stat(name, dir_fd=self.get(d), follow_symlinks=False)

    def setxattr(self, rel: str, key: bytes, value: bytes) -> None:
        fd = self.open(rel, os.O_RDONLY)
        try:
            os.setxattr(fd, key, value)
        finally:
            os.close(fd)

    def rename(self, rel: str, target: str, create_dirs: bool, replace: bool = False) -> None:
        """Move `rel` to `target`; never over an existing entry unless
        `replace` (FileExistsError)."""
        sd, sn = os.path.split(rel)
        td, tn = os.path.split(target)
        self.moved()
        faults.renameat2(
            self.get(sd), os.fsencode(sn), self.get(td, create=create_dirs), os.fsencode(tn),
            0 if replace else _libc.RENAME_NOREPLACE,
        )


def copy_sparse(src: int, dst: int) -> None:
    """Copy the file `src` into the empty file `dst`, its holes kept as
    holes: only the ranges SEEK_DATA reports are copied (copy_file_range
    alone fills holes on filesystems without reflinks), and a hole in an
    encrypted file's block that turned into stored zeros reads as damage
    (docs/file-format.md, "Holes")."""
    size = os.fstat(src).st_size
    off = 0
    while off < size:
        try:
            off = os.lseek(src, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: only a hole is left
                raise
            break
        end = os.lseek(src, off, os.SEEK_HOLE)
        while off < end:
            n = faults.copy_file_range(src, dst, end - off, off, off)
            if n == 0:
                break
            off += n
    faults.ftruncate(dst, size)


def tree(data: str | os.PathLike, skip: str = "") -> Iterator[tuple[str, os.DirEntry, os.stat_result]]:
    """(path relative to `data`, entry, its lstat) of everything under
    `data`, never following a symlink; a directory is listed whole before
    its entries are handed out, so the caller may change the tree meanwhile
    (a running mount). A directory that cannot be listed is skipped, as is
    an entry gone before its stat; so is what is under `skip` (a path
    relative to `data`)."""
    root = os.fspath(data)
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as it:
                entries = list(it)
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            continue
        for d in entries:
            r = f"{rel}/{d.name}" if rel else d.name
            try:
                st = d.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat_m.S_ISDIR(st.st_mode) and r != skip:
                stack.append(r)
            yield r, d, st


class StoreLock:
    """An exclusive flock on STORE/lock: held by the mount for its whole life.
    The kernel drops it when the holder dies, so kill -9 never leaves it stale."""

    def __init__(self, store: Store) -> None:
        self.path = store.root / LOCK_NAME
        self.fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._in_use() from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1

    def _in_use(self) -> StoreLockedError:
        try:
            holder = self.path.read_text().strip()
        except OSError:
            holder = ""
        return StoreLockedError(
            f"{self.path.parent}: store is in use (mounted or locked by pid {holder or '?'})"
        )

    def ensure_free(self) -> None:
        """StoreLockedError (exit 11) if someone holds the lock now."""
        if self.is_held_elsewhere():
            raise self._in_use()

    def is_held_elsewhere(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
