"""seldonfs versions FILE: list the kept versions of a file, or restore one.

FILE is a path inside a running mount, in a folder with `versions = N`.
Version 1 is the newest. `--restore N` puts version N back; the content it
replaces becomes a version itself, so a restore can be undone.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
from datetime import datetime
from pathlib import Path

from .. import xattrs
from ..errors import SeldonError, UsageError
from ..naming import shown
from .common import mounted_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("versions", help="list or restore earlier versions of a file", description=__doc__)
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--restore", type=int, metavar="N", help="put version N back")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    path = mounted_file(args.file)
    if args.restore is not None:
        try:
            os.setxattr(path, xattrs.RESTORE, str(args.restore).encode(), follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise UsageError(f"{shown(str(args.file))}: no version {args.restore}") from None
            raise SeldonError(f"{shown(str(args.file))}: cannot restore: {e.strerror}") from None
        print(f"{shown(str(args.file))}: version {args.restore} restored")
        return
    versions = json.loads(os.getxattr(path, xattrs.VERSIONS, follow_symlinks=False))
    if args.json:
        print(json.dumps(versions))
        return
    for v in versions:
        when = datetime.fromtimestamp(v["saved_ns"] / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{v['n']:>3}  {when}  {v['size']:>12}  {v['cause']}")
    if not versions:
        print(f"{shown(str(args.file))}: no versions kept")
