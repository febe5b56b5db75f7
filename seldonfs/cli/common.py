"""What several commands share: key options, an unlocked store held
offline, and progress that shows on a terminal and stays quiet in scripts."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import MountPointError, UsageError
from ..keys import KeySource, unlock_kek
from ..naming import shown
from ..store import Store, StoreLock

T = TypeVar("T")


def add_key_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--passphrase-file", type=Path, metavar="FILE",
        help="read the passphrase from FILE (else $SELDONFS_KEYFILE, $SELDONFS_PASSPHRASE_FILE, "
        "$SELDONFS_PASSPHRASE, or a prompt)",
    )
    g.add_argument("--keyfile", type=Path, metavar="FILE",
                   help="unlock with a key file instead of a passphrase (else $SELDONFS_KEYFILE)")


def key_source(args: argparse.Namespace) -> KeySource:
    return KeySource(keyfile=args.keyfile, passphrase_file=args.passphrase_file)


@dataclass
class Unlocked:
    store: Store
    ident: dict[str, Any]
    block: dict[str, Any]
    keys: dict[int, bytes]
    kek: bytes


@contextmanager
def unlocked_store(path: Path, args: argparse.Namespace) -> Iterator[Unlocked]:
    """The store, locked against mounts (exit 11 if mounted) and unlocked
    (exit 12 on a wrong key). UsageError for a plain store."""
    store = Store(path.resolve())
    ident = store.identity()
    block = ident.get("encryption")
    if block is None:
        raise UsageError(f"{store.root}: a plain store (created with --no-encryption) has no keys")
    lock = StoreLock(store)
    lock.acquire()
    try:
        keys, kek = unlock_kek(block, key_source(args))
        yield Unlocked(store, ident, block, keys, kek)
    finally:
        lock.release()


def each_file(u: Unlocked, paths: list[Path], what: str, act: Callable[..., Any], quiet: bool) -> list[dict[str, Any]]:
    """`act(path, keys, key_id, block_size)` -> offline.Damage for every
    file, with progress; the damaged ones as {"path", "problems"}."""
    kid, bs = int(u.block["current_key_id"]), int(u.block["block_size"])
    bad = []
    for p in progress(paths, len(paths), what, quiet):
        damage = act(p, u.keys, kid, bs)
        if damage.problems:
            bad.append({"path": shown(str(p.relative_to(u.store.data))), "problems": list(damage.problems)})
    return bad


def add_json_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"{what} on stdout (text summaries go to stderr)")


def say(args: argparse.Namespace, text: str) -> None:
    """A line for people: on stdout, or on stderr under --json, where
    stdout holds only JSON."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout)


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar on a terminal")


def progress(items: Iterable[T], total: int, what: str, quiet: bool = False,
             count: Callable[[T], int] = lambda _: 1) -> Iterator[T]:
    """Iterate with a progress bar of `total` on stderr when it is a
    terminal (never on stdout: that is the command's output) and not
    `quiet`; an item advances it by `count(item)`."""
    if quiet or not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress

    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        for item in items:
            yield item
            bar.advance(task, count(item))


def store_of(target: Path) -> Store:
    """The store behind STORE|MOUNTPOINT."""
    from ..host import FSTYPE, find_mount

    found = find_mount(target)
    if found is not None and found[1] == FSTYPE:
        return Store(Path(found[0]))
    store = Store(target.resolve())
    store.identity()  # NotAStoreError (exit 14) when it is none
    return store


def mount_of(target: Path) -> tuple[Path, Path]:
    """(store, mount point) of STORE|MOUNTPOINT: a SeldonFS mount point, or
    a store mounted somewhere; MountPointError (exit 10) for anything else."""
    from ..host import FSTYPE, find_mount, seldonfs_mounts

    path = Path(os.path.abspath(target))
    found = find_mount(path)
    if found is not None and found[1] == FSTYPE:
        return Path(found[0]), path
    real = os.path.realpath(target)  # the mount names the store by its resolved path
    for store, mnt in seldonfs_mounts():
        if store == real:
            return Path(store), Path(mnt)
    if not os.path.lexists(path):
        raise MountPointError(f"{path}: no such directory")
    raise MountPointError(f"{path}: not a SeldonFS mount")


@contextmanager
def catalog_readonly(target: Path) -> Iterator[sqlite3.Connection]:
    """The store's catalog, read-only: safe beside a running mount (WAL)."""
    store = store_of(target)
    conn = sqlite3.connect(f"file:{store.catalog_path}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def mount_above(path: Path) -> tuple[Path, str]:
    """(mount point, path inside it) of PATH, which need not exist;
    MountPointError (exit 10) when it is not inside a SeldonFS mount."""
    from ..host import FSTYPE, find_mount

    p = Path(os.path.abspath(path))
    for parent in (p, *p.parents):
        found = find_mount(parent)
        if found is not None:
            if found[1] != FSTYPE:
                break
            rel = p.relative_to(parent).as_posix()
            return parent, "" if rel == "." else rel
    raise MountPointError(f"{shown(str(path))}: not inside a SeldonFS mount")


def mounted_file(path: Path) -> str:
    """`path` if it is a file inside a SeldonFS mount, else a usage error."""
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    try:
        mount_above(path)
    except MountPointError:
        raise UsageError(f"{path}: not inside a SeldonFS mount") from None
    return os.path.abspath(path)
