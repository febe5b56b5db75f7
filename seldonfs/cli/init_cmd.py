"""seldonfs init STORE [--profile NAME] [--no-encryption] [--block-size SIZE] [--keyfile FILE | --passphrase-file FILE]:
create a store.

Contents are encrypted unless --no-encryption is given, in blocks of
--block-size bytes (4K to 1M, a power of two; default 16K): smaller blocks
take less CPU for a small write in place, larger ones for large reads and
writes (docs/design.md, "Block size"). The master key is
wrapped by a passphrase (asked twice on a terminal, or from
--passphrase-file / $SELDONFS_PASSPHRASE_FILE / $SELDONFS_PASSPHRASE) or by
a key file; --keyfile FILE creates FILE (32 random bytes, mode 0600) if it
does not exist. Keep the key file outside the store. `--json`: one JSON
document, {"store", "profile", "encrypted", "keyfile_created"}.

STORE must be missing or empty, or hold what an init that did not finish
left (its `init.unfinished` mark): that is cleared first.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .. import keys
from ..blockformat import DEFAULT_BLOCK_SIZE, block_shift
from ..config import SIZE_UNITS, profile_names, profile_text
from ..errors import UsageError
from ..store import check_init_target, init_store, unfinished_init
from .common import add_json_arg, add_key_args, key_source, say


MIN_CLI_BLOCK = 4096  # a page: smaller blocks only add overhead


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a store", description=__doc__)
    p.add_argument("store", type=Path, metavar="STORE", help="directory to create (missing or empty)")
    p.add_argument(
        "--profile", default="seldon", metavar="NAME",
        help=f"rules and folder tree to start from: {', '.join(profile_names())} (default: seldon)",
    )
    p.add_argument("--no-encryption", action="store_true", help="store contents as they are")
    p.add_argument(
        "--block-size", type=block_size, metavar="SIZE",
        help="encrypted block: 4K to 1M, a power of two (bytes, or with K/KiB or M/MiB; KB and MB are decimal; default 16K)",
    )
    add_json_arg(p, "one JSON document")
    add_key_args(p)
    p.set_defaults(func=run)


# The config's units (any case), and K and M alone as binary, as dd reads them.
_UNITS = {u.lower(): v for u, v in SIZE_UNITS.items() if u} | {"k": 1 << 10, "m": 1 << 20}


def block_size(text: str) -> int:
    """`--block-size`: bytes, or a number with K or M (binary, as dd reads
    them) or with KiB or MiB; KB and MB are decimal, as in the config's
    sizes (docs/configuration.md), so 16KB is 16,000 bytes and refused."""
    m = re.fullmatch(r"\s*(\d+)\s*(k|m|kib|mib|kb|mb|b)?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"want a size such as 4K, 16KiB or 65536, have {text!r}")
    unit = m[2].lower() if m[2] else "b"
    n = int(m[1]) * _UNITS[unit]
    try:
        if n >= MIN_CLI_BLOCK:
            block_shift(n)  # the format's own bounds: a power of two up to 1M
            return n
    except ValueError:
        pass
    decimal = f" ({unit.upper()} is decimal: {n:,} bytes)" if unit in ("kb", "mb") else ""
    raise argparse.ArgumentTypeError(f"want a power of two from 4K to 1M, have {text!r}{decimal}")


def run(args: argparse.Namespace) -> None:
    profile_text(args.profile)  # unknown profile: fail before asking for secrets
    if check_init_target(args.store) and unfinished_init(args.store):
        say(args, f"{args.store}: an init that did not finish was here; what it made is cleared first")
    encryption = None
    created = None
    if not args.no_encryption:
        if args.keyfile is not None and not args.keyfile.exists():
            keys.generate_keyfile(args.keyfile)
            created = str(args.keyfile.resolve())
            say(args, f"created key file {args.keyfile} (mode 0600): keep it safe, outside the store")
        encryption = keys.new_block(key_source(args), args.block_size or DEFAULT_BLOCK_SIZE)
    elif args.block_size:
        raise UsageError("--block-size is for encrypted stores: drop it, or drop --no-encryption")
    store = init_store(args.store, args.profile, encryption)
    if args.json:
        print(json.dumps({"store": str(store.root), "profile": args.profile, "encrypted": encryption is not None,
                          "keyfile_created": created}))
    else:
        print(f"created {'plain' if encryption is None else 'encrypted'} store {store.root} (profile {args.profile})")
