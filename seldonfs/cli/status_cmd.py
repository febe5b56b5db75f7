"""seldonfs status [STORE|MOUNTPOINT]: which SeldonFS mounts run, and how.

Without an argument, one line per SeldonFS mount on this machine: mount
point, store, profile, uptime, disk usage, alerts. Given a store that is
not mounted, says so with its profile and disk usage. Exit 0 either way.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import config
from ..errors import SeldonError
from ..host import disk_usage, seldonfs_mounts
from .common import store_of
from .stats_cmd import read_stats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="which mounts run: store, profile, uptime, usage, alerts", description=__doc__)
    p.add_argument("target", type=Path, nargs="?", metavar="STORE|MOUNTPOINT")
    p.set_defaults(func=run)


def _profile(store: Path) -> str:
    try:
        return config.load(store / "seldonfs.toml").profile
    except SeldonError:
        return "?"


def run(args: argparse.Namespace) -> None:
    found = seldonfs_mounts()
    if args.target is not None:
        target = os.path.abspath(args.target)
        store = str(store_of(args.target).root)
        found = [(s, m) for s, m in found if target in (s, m)]
        if not found:
            pct, _, total = disk_usage(Path(store) / "data")
            print(f"{store}: not mounted; profile {_profile(Path(store))}; disk {pct:.1f} % used")
            return
    if not found:
        print("no SeldonFS mounts")
        return
    for store, mnt in found:
        try:
            s = read_stats(Path(mnt))
        except SeldonError as e:
            print(f"{mnt}: mounted from {store}, not answering: {e}")
            continue
        alerts = "; ".join(f"{a['level']}: {a['message']}" for a in s.get("alerts", [])) or "no alerts"
        print(f"{mnt}: store {store}, profile {_profile(Path(store))}, up {s['uptime_s']:.0f} s, "
              f"disk {s['disk']['percent']:.1f} % used, {s['open_files']} open files; {alerts}")
