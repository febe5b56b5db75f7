"""seldonfs report STORE|MOUNTPOINT [--json | --html FILE]: what is in the store.

Usage by folder (top-level and second-level: files, bytes, share), the
largest files, an age distribution by modification time, extensions and
the configuration's name patterns, permission problems in the backing
store (entries not owned by the store's owner, world-writable, unreadable
by their owner, symlinks, special files), the data classification from
the validation results in the catalog (by verdict and type, the quarantine
backlog by reason) and what the janitor's retention rules say is due now
(a dry run). Sizes are plaintext sizes. Reads data/ and the catalog only,
without the store lock, so it works with the store mounted or not.
Text by default; `--json` one JSON document; `--html FILE` a
self-contained page with charts (no scripts, no network).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .. import config, report
from ..blockformat import plain_size
from ..catalog import distribution_counts
from ..errors import SeldonError
from ..host import FSTYPE, find_mount
from .common import catalog_readonly, store_of


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="usage, large files, ages, permissions, classification, janitor due",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON document on stdout")
    out.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML page to FILE")
    p.set_defaults(func=run)


def make(target: Path, now: float | None = None) -> dict:
    """The report of the store behind `target` (read-only, no lock)."""
    store = store_of(target)
    block = store.identity().get("encryption")
    cfg = config.load(store.config_path)
    size = (lambda n: plain_size(n, int(block["block_size"]))) if block else (lambda n: n)
    with catalog_readonly(target) as conn:
        commits, backlog = report.read_catalog(conn)
        dist = distribution_counts(conn)
    found = find_mount(Path(os.path.abspath(target)))
    info = {
        "root": str(store.root), "encrypted": block is not None,
        "mountpoint": os.path.abspath(target) if found is not None and found[1] == FSTYPE else None,
    }
    items = report.scan(store.data, size)
    owner = os.stat(store.data).st_uid
    return report.build(time.time() if now is None else now, cfg, items, commits, backlog, owner, info, dist)


def run(args: argparse.Namespace) -> None:
    rep = make(args.target)
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        print()
    elif args.html:
        from ..report_html import render_html

        try:
            args.html.write_text(render_html(rep), encoding="utf-8")
        except OSError as e:
            raise SeldonError(f"{args.html}: cannot write: {e.strerror}") from None
        print(f"{args.html}: report written")
    else:
        sys.stdout.write(report.render_text(rep))
