"""seldonfs mount STORE MOUNTPOINT [-f] [-o OPTS]: mount a store.

Without -f the mount runs as a daemon and the command returns once the mount
is ready. Unmount with `seldonfs umount MOUNTPOINT` or `fusermount3 -u`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import mount


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="log every request (implies nothing else)")
    p.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPTS",
        help="comma-separated mount options, e.g. allow_other,default_permissions,ro",
    )
    p.set_defaults(func=run)


def split_options(values: list[str]) -> list[str]:
    return [o for v in values for o in v.split(",") if o]


def run(args: argparse.Namespace) -> None:
    opts = split_options(args.options)
    if args.foreground:
        mount.run(args.store, args.mountpoint, opts, ready=lambda: None, debug=args.debug)
    else:
        mount.run_daemon(args.store, args.mountpoint, opts, debug=args.debug)
