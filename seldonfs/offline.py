"""Work on an unmounted store: walk its files, verify every block, decrypt
them out, move them to a new master key (rekey).

Callers hold the store lock (`StoreLock`), so no mount changes files
underneath. The walk never follows a symlink: only regular files below
STORE/data are visited.
"""

from __future__ import annotations

import json
import logging
import os
import stat as stat_m
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import crypto, faults
from .blockformat import (
    FORMAT_VERSION,
    HEADER_SIZE,
    EncryptedFile,
    FormatError,
    Header,
    parse_header,
)
from .content import ContentDamaged
from .errors import DamageFound, UsageError
from .keys import KEY_CREATED, stamp, with_keys
from .store import Store, copy_sparse, walk

log = logging.getLogger(__name__)

REKEY_JOURNAL = "rekey.json"
REKEY_SCRATCH = "rekey.tmp"


def files(store: Store, paths: list[str] | None = None) -> Iterator[Path]:
    """Regular files under data/ (or under the given relative paths), sorted,
    never through a symlink: a path whose folders include one is refused
    (UsageError), so nothing outside the store is read."""
    roots = [_inside(store, p) for p in paths] if paths else [store.data]
    for root in roots:
        st = os.lstat(root)
        if stat_m.S_ISREG(st.st_mode):
            yield root
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if stat_m.S_ISREG(os.lstat(p).st_mode):
                    yield p


@dataclass
class Damage:
    path: Path
    problems: list[str] = field(default_factory=list)
    digest: str = ""  # of the plaintext, when asked for and the file is whole


def _blocks(ef: EncryptedFile, block_size: int) -> Iterator[tuple[int, bytes | None, str]]:
    """(block number, plaintext or None, problem) for every block of a file."""
    size = ef.size()
    for n in range((size + block_size - 1) // block_size):
        try:
            yield n, ef.read(n * block_size, block_size), ""
        except ContentDamaged as e:
            yield n, None, str(e)


def check_file(
    path: Path, keys: dict[int, bytes], key_id: int, block_size: int,
    checksum: Callable[[], Any] | None = None,
) -> Damage:
    """Open every block of a file; with `checksum` (validation.checksum_of),
    also the digest of its plaintext."""
    damage = Damage(path)
    digest = checksum() if checksum is not None else None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        ef = EncryptedFile(fd, keys, key_id, block_size)
        try:
            for _, data, problem in _blocks(ef, block_size):
                if problem:
                    damage.problems.append(problem)
                elif digest is not None:
                    digest.update(data)
        except ContentDamaged as e:  # the header itself
            damage.problems.append(str(e))
    finally:
        os.close(fd)
    if digest is not None and not damage.problems:
        damage.digest = digest.hexdigest()
    return damage


def _inside(store: Store, rel: str) -> Path:
    """data/`rel`, once every folder on the way is known to be a real folder."""
    d = os.path.dirname(os.path.normpath(rel))
    root = os.open(store.data, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.close(walk(root, d))
    except FileNotFoundError:
        raise
    except OSError:  # ELOOP, ENOTDIR: a symlink where a folder should be
        raise UsageError(f"{rel}: leads through a symlink or a non-folder; not followed out of the store") from None
    finally:
        os.close(root)
    return store.data / rel


def decrypt_file(src: Path, dest: Path, keys: dict[int, bytes], key_id: int, block_size: int) -> Damage:
    """Write the plaintext of `src` to `dest`; a damaged block becomes zeros
    there and is reported."""
    damage = Damage(src)
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        ef = EncryptedFile(fd, keys, key_id, block_size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            try:
                for n, data, problem in _blocks(ef, block_size):
                    if problem:
                        damage.problems.append(problem)
                        out.seek(n * block_size)
                        continue
                    out.seek(n * block_size)
                    out.write(data)
                out.truncate(ef.size())
            except ContentDamaged as e:
                damage.problems.append(str(e))
    finally:
        os.close(fd)
    return damage


def header_of(path: Path) -> Header | None:
    """A file's header; None for an empty (headerless) file."""
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as f:
        head = f.read(HEADER_SIZE)
    if not head:
        return None
    return parse_header(head)


class Rekey:
    """Moves every file to the store's newest key and the newest format
    version (FORMAT_VERSION), one file at a time, in place (the inode, its
    hard links, owner, mode and xattrs stay):

    1. the file's new ciphertext is written to STORE/rekey.tmp and synced;
    2. STORE/rekey.json names the file: from here on the copy is the truth;
    3. the copy overwrites the file, which is synced, and its times restored;
    4. rekey.json is removed.

    Killed anywhere, a rerun redoes step 3 for the file in rekey.json and
    goes on; a file already under the new key is skipped. Until the end both
    keys stay in store.json, so a mount in between reads every file; a mount
    finishes an interrupted step 3 before it serves (mount.serve), so what
    it writes is never overwritten by a stale copy. A file that is gone or
    was replaced since its copy was made is left alone (its copy dropped)."""

    def __init__(self, store: Store, keys: dict[int, bytes], block: dict[str, Any]) -> None:
        self.store = store
        self.keys = keys
        self.block = block
        self.journal = store.root / REKEY_JOURNAL
        self.scratch = store.root / REKEY_SCRATCH

    @property
    def target(self) -> int:
        return int(self.block["current_key_id"])

    def pending(self) -> list[Path]:
        out = []
        for p in files(self.store):
            try:
                h = header_of(p)
            except FormatError:
                continue  # damaged header: verify reports it; nothing to move
            if h is not None and (h.key_id, h.version) != (self.target, FORMAT_VERSION):
                out.append(p)
        return out

    def finish_interrupted(self) -> None:
        if not self.journal.exists():
            return
        rec = json.loads(self.journal.read_text())
        path = Path(rec["path"])
        try:
            ino = os.lstat(path).st_ino
        except FileNotFoundError:
            ino = None
        if ino is None or ino != rec.get("ino", ino):  # removed or replaced meanwhile: the copy is stale
            log.info("rekey: %s is gone or replaced since its copy; copy dropped", path)
            self.journal.unlink()
            self.scratch.unlink(missing_ok=True)
            return
        log.info("rekey: completing interrupted copy of %s", path)
        self._overwrite(path, rec["atime_ns"], rec["mtime_ns"])

    def move(self, path: Path) -> None:
        st = os.lstat(path)
        bs = int(self.block["block_size"])
        src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        dst = os.open(self.scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            old = EncryptedFile(src, self.keys, self.target, bs)
            new = EncryptedFile(dst, self.keys, self.target, bs)
            for n, data, problem in _blocks(old, bs):
                if problem:  # one line and exit 26, not a traceback; the file stays as it was
                    raise DamageFound(f"{path}: {problem}; run verify, restore it, then rekey again")
                if data.count(0) != len(data):  # zeros stay (or become) holes
                    new.write(n * bs, data)
            new.truncate(old.size())
            faults.fsync(dst)
        finally:
            os.close(src)
            os.close(dst)
        rec = {"path": str(path), "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        _write_synced(self.journal, json.dumps(rec).encode())
        self._overwrite(path, st.st_atime_ns, st.st_mtime_ns)

    def _overwrite(self, path: Path, atime_ns: int, mtime_ns: int) -> None:
        src = os.open(self.scratch, os.O_RDONLY)
        dst = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            faults.ftruncate(dst, 0)  # the copy is the truth; cut, its holes stay holes
            copy_sparse(src, dst)
            faults.fsync(dst)
        finally:
            os.close(src)
            os.close(dst)
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
        self.journal.unlink()
        self.scratch.unlink(missing_ok=True)

    def finish(self) -> dict[str, Any]:
        """The encryption block with only the new key left."""
        kid = self.target
        return dict(self.block, keys=[k for k in self.block["keys"] if int(k["key_id"]) == kid])


def start_rekey(block: dict[str, Any], keys: dict[int, bytes], kek: bytes) -> dict[str, Any]:
    """The block with a new master key added (to `keys` too) and made current."""
    master = crypto.new_master_key()
    kid = crypto.key_id(master)
    keys[kid] = master
    return with_keys(dict(block, current_key_id=kid, **{KEY_CREATED: stamp()}), keys, kek)


def _write_synced(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        faults.fsync(fd)
    finally:
        os.close(fd)
    faults.replace(tmp, path)
