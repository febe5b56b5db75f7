"""The `seldonfs` command: one module per subcommand, dispatched from here.

A `SeldonError` ends the command with one line on stderr and its exit code
(SPEC §6): 0 ok, 1 other error, 2 usage, 10 mount point, 11 store locked,
12 wrong key, 13 invalid configuration, 14 not a store, 26 damage found.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import SeldonError
from . import (
    audit_cmd, config_cmd, ctl_cmd, decrypt_cmd, distributions_cmd, fsck_cmd, janitor_cmd, init_cmd, mount_cmd,
    passwd_cmd, quarantine_cmd, rekey_cmd, report_cmd, stats_cmd, status_cmd, top_cmd, umount_cmd, verify_cmd,
    versions_cmd,
)

COMMANDS = (
    init_cmd, config_cmd, mount_cmd, umount_cmd, audit_cmd, quarantine_cmd, versions_cmd, distributions_cmd,
    verify_cmd, decrypt_cmd, passwd_cmd, rekey_cmd, fsck_cmd, janitor_cmd, report_cmd, status_cmd, stats_cmd, top_cmd,
    ctl_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seldonfs", description="A policy-enforcing FUSE filesystem over a plain directory."
    )
    parser.add_argument("--version", action="version", version=f"seldonfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMANDS:
        mod.add_parser(sub)
    return parser


def run(fn, *args) -> int:
    """Call fn, turning a SeldonError into one line and its exit code, and
    an error of the system (a full disk, a missing permission) into one
    line and exit 1."""
    try:
        fn(*args)
    except SeldonError as e:
        print(f"seldonfs: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        where = f": {os.fsdecode(e.filename)}" if e.filename is not None else ""
        print(f"seldonfs: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["audit"] and argv[1:2] and argv[1] in audit_cmd.VERBS:  # verbs under a command taking a path
        argv[:2] = [audit_cmd.VERBS[argv[1]]]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="seldonfs: %(message)s")
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
