"""seldonfs mount STORE MOUNTPOINT [-f] [-o OPTS] [--keyfile FILE | --passphrase-file FILE]:
mount a store.

Without -f the mount runs as a daemon and the command returns once the mount
is ready. An encrypted store is unlocked first (a wrong passphrase or key
file: exit 12). Unmount with `seldonfs umount MOUNTPOINT` or `fusermount3 -u`.
SIGTERM or SIGINT to the daemon unmounts; SIGHUP re-reads seldonfs.toml as
`seldonfs ctl MOUNTPOINT reload` does. Under systemd ($NOTIFY_SOCKET) the
daemon reports READY=1, RELOADING=1 and STOPPING=1 (sd_notify).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import mount
from .common import add_key_args, key_source


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="log at debug level, every request too (operation, inode, result, microseconds)")
    p.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPTS",
        help="comma-separated mount options, e.g. allow_other,ro; keyfile=FILE and "
        "passphrase_file=FILE are SeldonFS's own (for fstab)",
    )
    add_key_args(p)
    p.set_defaults(func=run)


def split_options(values: list[str]) -> list[str]:
    return [o for v in values for o in v.split(",") if o]


def run(args: argparse.Namespace) -> None:
    prep = mount.prepare(args.store, args.mountpoint, split_options(args.options), key_source(args))
    if args.foreground:
        mount.serve(prep, ready=lambda: None, debug=args.debug)
    else:
        mount.run_daemon(prep, debug=args.debug)
