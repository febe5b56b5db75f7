"""seldonfs umount STORE|MOUNTPOINT: unmount and wait until the daemon has closed the store.

A STORE is found at its mount. Exit 10 when there is none, or the mount is
busy (-z detaches it anyway).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from ..errors import MountPointError, SeldonError
from ..store import Store, StoreLock
from .common import mount_of

#: How long to wait for the daemon to release the store after the unmount.
WAIT_SECONDS = 60


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("umount", help="unmount a mounted store", description=__doc__)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now, even if busy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    store, mp = mount_of(args.target)
    lock = StoreLock(Store(store))
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
