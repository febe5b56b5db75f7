"""seldonfs umount MOUNTPOINT: unmount and wait until the daemon has closed the store."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from ..errors import MountPointError, SeldonError
from ..host import FSTYPE, find_mount
from ..store import Store, StoreLock

#: How long to wait for the daemon to release the store after the unmount.
WAIT_SECONDS = 60


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="unmount a mounted store", description=__doc__)
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now, even if busy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    mp = Path(os.path.abspath(args.mountpoint))
    found = find_mount(mp)
    if found is None or found[1] != FSTYPE:
        if not os.path.lexists(mp):
            raise MountPointError(f"{mp}: no such directory")
        raise MountPointError(f"{mp}: not a SeldonFS mount")
    lock = StoreLock(Store(Path(found[0])))
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [str(mp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"
        raise MountPointError(f"{mp}: cannot unmount: {why.removeprefix('fusermount3: ')}")
    deadline = time.monotonic() + WAIT_SECONDS
    while lock.is_held_elsewhere():
        if time.monotonic() > deadline:
            raise SeldonError(f"{mp}: unmounted, but the daemon has not released the store yet")
        time.sleep(0.05)
