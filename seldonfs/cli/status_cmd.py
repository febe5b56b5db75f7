"""seldonfs status [STORE|MOUNTPOINT]: which SeldonFS mounts run, and how.

Without an argument, one line per SeldonFS mount on this machine: mount
point, store, profile, uptime, disk usage, alerts. Given a store that is
not mounted, says so with its profile and disk usage. Exit 0 either way.
An encrypted store's line also gives its master key's age, and `key-age`
when the key is older than `[encryption] rotate_after` (mounted or not).
`--json`: JSON lines, one object per mount (or for the store not mounted):
{"store", "mountpoint", "profile", "mounted", "uptime_s", "disk_percent",
"open_files", "alerts", "key", "error"}, a key absent when it does not
apply; "key" is {"created", "age_days", "secret_changed",
"rotate_after_days", "rotate_due"}, null for a plain store.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .. import config, keys
from ..errors import SeldonError
from ..host import disk_usage, seldonfs_mounts
from .common import add_json_arg, say, store_of
from .stats_cmd import read_stats


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="which mounts run: store, profile, uptime, usage, alerts", description=__doc__)
    p.add_argument("target", type=Path, nargs="?", metavar="STORE|MOUNTPOINT")
    add_json_arg(p, "one JSON object per line")
    p.set_defaults(func=run)


def _profile(store: Path) -> str:
    try:
        return config.load(store / "seldonfs.toml").profile
    except SeldonError:
        return "?"


def _key(store: Path) -> dict | None:
    """The master key's age as store.json records it (None: plain, or
    store.json not readable by this user)."""
    try:
        block = json.loads((store / "store.json").read_text()).get("encryption")
        rotate = config.load(store / "seldonfs.toml").encryption.rotate_after
    except (OSError, ValueError, AttributeError, SeldonError):
        return None
    made = keys.when(block, keys.KEY_CREATED) if isinstance(block, dict) else None
    if made is None:
        return None
    changed = keys.when(block, keys.SECRET_CHANGED)
    age = time.time() - made
    return {"created": keys.stamp(made), "age_days": round(age / 86400, 1),
            "secret_changed": None if changed is None else keys.stamp(changed),
            "rotate_after_days": round(rotate / 86400, 3) if rotate else None, "rotate_due": bool(rotate) and age > rotate}


def run(args: argparse.Namespace) -> None:
    found = seldonfs_mounts()
    if args.target is not None:
        target = os.path.abspath(args.target)
        store = str(store_of(args.target).root)
        found = [(s, m) for s, m in found if target in (s, m) or store == s]
        if not found:
            pct, _, _ = disk_usage(Path(store) / "data")
            _show(args, {"store": store, "mounted": False, "profile": _profile(Path(store)), "disk_percent": round(pct, 1),
                         "key": _key(Path(store))})
            return
    if not found:
        say(args, "no SeldonFS mounts")
    for store, mnt in found:
        _show(args, _mount_status(store, mnt))


def _mount_status(store: str, mnt: str) -> dict:
    doc = {"store": store, "mountpoint": mnt, "mounted": True, "profile": _profile(Path(store))}
    try:
        s = read_stats(Path(mnt))
    except SeldonError as e:
        return dict(doc, error=str(e), key=_key(Path(store)))
    return dict(doc, uptime_s=round(s["uptime_s"]), disk_percent=round(s["disk"]["percent"], 1),
                open_files=s["open_files"], alerts=s.get("alerts", []), key=s.get("key") or _key(Path(store)))


def _key_text(k: dict | None) -> str:
    if not k:
        return ""
    due = f", over rotate_after {k['rotate_after_days']:g} days: key-age (seldonfs rekey)" if k["rotate_due"] else ""
    return f"; master key {k['age_days']:.0f} days old{due}"


def _show(args: argparse.Namespace, d: dict) -> None:
    if args.json:
        print(json.dumps(d))
    elif not d["mounted"]:
        print(f"{d['store']}: not mounted; profile {d['profile']}; disk {d['disk_percent']:.1f} % used"
              + _key_text(d["key"]))
    elif "error" in d:
        print(f"{d['mountpoint']}: mounted from {d['store']}, not answering: {d['error']}")
    else:
        alerts = "; ".join(f"{a['level']} {a['kind']}: {a['message']}" for a in d["alerts"]) or "no alerts"
        print(f"{d['mountpoint']}: store {d['store']}, profile {d['profile']}, up {d['uptime_s']:.0f} s, "
              f"disk {d['disk_percent']:.1f} % used, {d['open_files']} open files{_key_text(d['key'])}; {alerts}")
