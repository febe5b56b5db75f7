"""seldonfs mount STORE MOUNTPOINT [-f] [-o OPTS] [--keyfile FILE | --passphrase-file FILE]:
mount a store.

Without -f the mount runs as a daemon and the command returns once the mount
is ready. An encrypted store is unlocked first (a wrong passphrase or key
file: exit 12). Unmount with `seldonfs umount MOUNTPOINT` or `fusermount3 -u`.
SIGTERM or SIGINT to the daemon unmounts; SIGHUP re-reads seldonfs.toml as
`seldonfs ctl MOUNTPOINT reload` does. Under systemd ($NOTIFY_SOCKET) the
daemon reports READY=1, RELOADING=1 and STOPPING=1 (sd_notify).

The daemon logs to STORE/seldonfs.log (and in the foreground warnings to
stderr). Under systemd ($JOURNAL_STREAM or $NOTIFY_SOCKET set) it logs to
the journal instead of stderr, natively: MESSAGE, PRIORITY,
SYSLOG_IDENTIFIER=seldonfs, CODE_FILE/LINE/FUNC, SELDONFS_LOGGER,
SELDONFS_STORE ($SELDONFS_JOURNAL_SOCKET names another socket than
/run/systemd/journal/socket).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import mount
from .common import add_key_args, key_source


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mount", help="mount a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="log at debug level, every request too (operation, inode, result, microseconds)")
    p.add_argument("--log-level", choices=LEVELS, metavar="LEVEL",
                   help=f"log from LEVEL up: {', '.join(LEVELS)} (default info; debug is -d)")
    p.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPTS",
        help="comma-separated mount options, e.g. allow_other,ro; keyfile=FILE and "
        "passphrase_file=FILE are SeldonFS's own (for fstab)",
    )
    add_key_args(p)
    p.set_defaults(func=run)


LEVELS = ("debug", "info", "warning", "error")


def split_options(values: list[str]) -> list[str]:
    return [o for v in values for o in v.split(",") if o]


def run(args: argparse.Namespace) -> None:
    prep = mount.prepare(args.store, args.mountpoint, split_options(args.options), key_source(args))
    level = getattr(logging, args.log_level.upper()) if args.log_level else None
    if args.foreground:
        mount.serve(prep, ready=lambda: None, debug=args.debug, log_level=level)
    else:
        mount.run_daemon(prep, debug=args.debug, log_level=level)
