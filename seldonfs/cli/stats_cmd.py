"""seldonfs stats STORE|MOUNTPOINT [--json]: a running mount's numbers.

Reads MOUNTPOINT/.seldonfs-stats.json (no token needed; every mount has it,
whatever its profile, though `ls -a` does not list it): uptime,
requests by operation and result, bytes read and written, folders, disk,
validation verdicts, quarantine, janitor, audit, integrity errors, the
master key's age (`key`, null for a plain store), alerts, and how the
kernel's requests come (`transport`: io_uring with its queues and counts,
or dev_fuse and why).
The JSON also names the live mount's metrics URL (`metrics_url`, null when
`[monitoring] port` is 0). A STORE is found at its mount; exit 10 when
there is none.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..virtual import STATS_NAME
from .common import mount_of

STATS = os.fsdecode(STATS_NAME)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="a running mount's numbers", description=__doc__)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="the whole document as JSON")
    p.set_defaults(func=run)


def read_stats(target: Path) -> dict[str, Any]:
    _, mountpoint = mount_of(target)
    try:
        return json.loads((mountpoint / STATS).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{mountpoint}: cannot read {STATS}: {e}") from None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run(args: argparse.Namespace) -> None:
    s = read_stats(args.target)
    if args.json:
        print(json.dumps(s, indent=2))
        return
    ops = s.get("ops", {})
    total = sum(sum(r.values()) for r in ops.values())
    errors = sum(n for r in ops.values() for k, n in r.items() if k != "OK")
    disk = s.get("disk", {})
    j = s.get("janitor")
    print(f"mount      {s['mountpoint']} (store {s['store']}, pid {s['pid']}, up {s['uptime_s']:.0f} s)")
    print(f"requests   {total:,} ({errors:,} errors); read {human(s['bytes']['read'])}, written {human(s['bytes']['written'])}")
    print(f"open files {s['open_files']}")
    if t := s.get("transport"):
        if t["kind"] == "io_uring":
            r = t["requests"]
            ended = ", ".join(map(str, t.get("ended") or []))
            state = (f", the queue of CPU {ended} ended and its requests wait: see the log" if ended
                     else ", degraded: see the log" if t["degraded"] else "")
            print(f"transport  io_uring, {t['queues']} queues{state}; "
                  f"{r['io_uring']:,} requests over the rings, {r['dev_fuse']:,} over /dev/fuse")
        else:
            print(f"transport  /dev/fuse: {t['why']}")
    print(f"disk       {disk.get('percent', 0):.1f} % of {human(disk.get('total', 0))} (warning {disk.get('warning')} %)")
    print(f"commits    {s['validation']['ok']:,} ok, {s['validation']['quarantined']:,} quarantined; "
          f"{s['quarantine_files']:,} waiting in quarantine")
    if j:
        print(f"janitor    {j['runs']} runs, {j['done']:,} done, {j['skipped']:,} skipped, {human(j['freed'])} freed"
              + (f"; last: {j['last'].get('summary')}" if j.get("last") else ""))
    print(f"audit      {s['audit_records'] if s['audit_records'] is not None else 'off'} records; "
          f"integrity errors {s['damaged_reads']}")
    if k := s.get("key"):
        print(f"key        master key {k['age_days']:.0f} days old (made {k['created']}, secret changed "
              f"{k['secret_changed']}; rotate after {k['rotate_after_days'] or 'never'} days"
              + (": due)" if k["rotate_due"] else ")"))
    for a in s.get("alerts", []):
        print(f"alert      {a['level']}: {a['message']}")
    print(f"metrics    {s.get('metrics_url') or 'off ([monitoring] port = 0)'}")
