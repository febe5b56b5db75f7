"""mount.seldonfs STORE MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE]: the mount(8) helper.

Lets `mount -t fuse.seldonfs STORE MNT -o OPTS` and /etc/fstab lines work:
mount(8) runs /sbin/mount.fuse.seldonfs (a link to this program) with the
arguments above. The mount runs as a daemon, as with `seldonfs mount`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import mount
from ..keys import KeySource
from . import run
from .mount_cmd import split_options


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mount.seldonfs", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[])
    p.add_argument("-t", dest="type", default="fuse.seldonfs")
    # mount(8) flags: sloppy, fake, no-mtab, verbose
    for flag in ("-s", "-f", "-n", "-v"):
        p.add_argument(flag, action="store_true")
    args = p.parse_args(argv)
    if args.f:  # fake mount: do everything but the mount
        return 0
    return run(_mount, args.store, args.mountpoint, split_options(args.options))


def _mount(store: Path, mountpoint: Path, opts: list[str]) -> None:
    mount.run_daemon(mount.prepare(store, mountpoint, opts, KeySource(mount_options=True)))


if __name__ == "__main__":
    sys.exit(main())
