"""seldonfs top STORE|MOUNTPOINT [--interval SECONDS] [--once]: a live view of a mount.

Operations per second (in all, and the busiest operations with their
errors), read and write throughput, open files, folders (files and bytes,
the largest first), the store's disk usage (yellow at the warning
threshold, red at the emergency one), the janitor (running, runs, files
done and skipped, bytes freed, the last run), validation and the
quarantine backlog, audit records, damaged reads, active alerts, uptime.
Rates are the difference between two snapshots of
MOUNTPOINT/.seldonfs-stats.json (every mount has it, whatever its profile),
read as any file is: no token, no
network. A value the mount does not publish shows as "–". `q` quits.
`--once` prints one plain frame (two snapshots SECONDS apart) to stdout
and exits, for scripts. A STORE is found at its mount; exit 10 when there
is none.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .. import top
from ..errors import SeldonError, UsageError
from .common import mount_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live view of a mount: operations, throughput, folders, janitor, alerts",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="seconds between snapshots (default 2)")
    p.add_argument("--once", action="store_true", help="print one frame to stdout and exit")
    p.set_defaults(func=run)


def unreadable(mp: Path, e: OSError | ValueError) -> SeldonError:
    if isinstance(e, OSError):
        return SeldonError(f"{mp / top.STATS}: cannot read: {e.strerror or e}")
    return SeldonError(f"{mp / top.STATS}: not a stats document: {e}")


def snapshot(mp: Path) -> dict:
    """One snapshot, or a one-line error."""
    try:
        return top.read_stats(mp)
    except (OSError, ValueError) as e:
        raise unreadable(mp, e) from None


def run(args: argparse.Namespace) -> None:
    if not args.interval > 0:
        raise UsageError(f"--interval {args.interval:g}: must be more than 0 seconds")
    _, mp = mount_of(args.target)
    if args.once:
        a, ta = snapshot(mp), time.monotonic()
        time.sleep(args.interval)
        b, tb = snapshot(mp), time.monotonic()
        width = shutil.get_terminal_size((100, 40)).columns
        sys.stdout.write(top.plain(top.frame(a, b, tb - ta, width, None)))
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("top needs a terminal; use --once in scripts")
    snapshot(mp)  # fail with one line before the screen is taken
    try:
        top.run_curses(lambda: top.read_stats(mp), args.interval)
    except (OSError, ValueError) as e:  # only the first read raises; later ones go to the footer
        raise unreadable(mp, e) from None
