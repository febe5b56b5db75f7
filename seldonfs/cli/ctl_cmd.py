"""seldonfs ctl STORE|MOUNTPOINT COMMAND [ARG [CHUNK_ID]]: talk to a running mount.

Commands: health, stats, metrics, reload, cleanup scheduled|emergency|
orphaned|stats, crash JOB_ID, chunk JOB_ID CHUNK_ID (the chunk is done:
its folder temp/jobs/JOB_ID/CHUNK_ID goes), task ID. health, cleanup stats
and task ask seed 004's /api/v1/cleanup/... endpoints; stats the numbers
of stats.json. Goes through STORE/control.sock; root and
the store's owner are let in by their credentials, anyone else needs the
token: --token-file FILE, else $SELDONFS_TOKEN_FILE, else $SELDONFS_TOKEN,
else STORE/control.token if readable (--token TOKEN also works, but puts
the secret where `ps` shows it to every user). A cleanup waits for its
task to finish (--no-wait: print the task and stop).
Exit 10 when STORE|MOUNTPOINT is not a SeldonFS mount or a mounted store;
exit 1 when the mount refuses (401, 4xx) or cannot be reached.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ..control import SOCKET_NAME, TOKEN_NAME
from ..errors import SeldonError, UsageError
from ..janitor import valid_id
from .common import mount_of

COMMANDS = ("health", "stats", "metrics", "reload", "cleanup", "crash", "chunk", "task")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ctl", help="ask a running mount (health, stats, cleanup, reload)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    p.add_argument("arg", nargs="?", metavar="ARG", help="cleanup kind, job id or task id")
    p.add_argument("arg2", nargs="?", metavar="CHUNK_ID", help="chunk: the chunk id")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--token-file", type=Path, metavar="FILE",
                   help="read the control token from FILE (else $SELDONFS_TOKEN_FILE, $SELDONFS_TOKEN, "
                   "STORE/control.token)")
    g.add_argument("--token", help="the control token itself; discouraged: ps shows it to every user")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a cleanup to finish")
    p.set_defaults(func=run)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 600.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(root: Path, method: str, path: str, token: str | None) -> tuple[int, bytes]:
    conn = _UnixConnection(str(root / SOCKET_NAME))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    except OSError as e:
        raise SeldonError(f"{root / SOCKET_NAME}: cannot reach the mount: {e.strerror or e}") from None
    finally:
        conn.close()


def _token(args: argparse.Namespace, root: Path) -> str | None:
    if args.token_file is not None:
        return _read_token(args.token_file)
    if args.token:
        return args.token
    if path := os.environ.get("SELDONFS_TOKEN_FILE"):
        return _read_token(Path(path))
    if os.environ.get("SELDONFS_TOKEN"):
        return os.environ["SELDONFS_TOKEN"]
    try:
        return (root / TOKEN_NAME).read_text().strip()
    except OSError:
        return None  # peer credentials may do


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"{path}: cannot read the token file: {e.strerror}") from None
    if not token:
        raise UsageError(f"{path}: the token file is empty")
    return token


def run(args: argparse.Namespace) -> None:
    root, _ = mount_of(args.target)
    token = _token(args, root)
    method, path = _route(args)
    status, body = call(root, method, path, token)
    if status >= 400:
        try:
            why = json.loads(body)["error"]
        except (ValueError, KeyError):
            why = body.decode(errors="replace").strip()
        raise SeldonError(f"{args.target}: {args.command}: refused ({status}): {why}")
    if args.command == "metrics":
        print(body.decode(), end="")
        return
    doc: Any = json.loads(body)
    if method == "POST" and "id" in doc and not args.no_wait:
        while doc["state"] in ("queued", "waiting", "running"):
            time.sleep(0.1)
            doc = json.loads(call(root, "GET", f"/api/v1/cleanup/task/{doc['id']}/status", token)[1])
    print(json.dumps(doc, indent=2))
    if doc.get("state") == "failed":
        raise SeldonError(f"cleanup failed: {doc.get('error')}")


def _route(args: argparse.Namespace) -> tuple[str, str]:
    c, arg = args.command, args.arg
    if args.arg2 is not None and c != "chunk":
        raise UsageError(f"ctl {c}: one argument at most")
    if c == "health":
        return "GET", "/api/v1/cleanup/health"
    if c == "stats":
        return "GET", "/api/v1/stats"
    if c == "metrics":
        return "GET", "/metrics"
    if c == "reload":
        return "POST", "/api/v1/reload"
    if c == "task":
        if not arg or not all(ch in "0123456789abcdef" for ch in arg):
            raise UsageError("ctl task: want a task id (hex digits)")
        return "GET", f"/api/v1/cleanup/task/{arg}/status"
    if c == "crash":
        if not arg or not valid_id(arg):
            raise UsageError("ctl crash: want a job id (a folder name: no '/', '.', '..' or control characters)")
        return "POST", f"/api/v1/cleanup/crash/{_quote(arg)}"
    if c == "chunk":
        if not (arg and args.arg2 and valid_id(arg) and valid_id(args.arg2)):
            raise UsageError("ctl chunk: want JOB_ID CHUNK_ID (folder names: no '/', '.', '..' or control characters)")
        return "POST", f"/api/v1/cleanup/chunk/{_quote(arg)}/{_quote(args.arg2)}"
    if arg == "stats":
        return "GET", "/api/v1/cleanup/stats"
    if arg not in ("scheduled", "emergency", "orphaned"):
        raise UsageError("ctl cleanup: want scheduled, emergency, orphaned or stats")
    return "POST", f"/api/v1/cleanup/{arg}"


def _quote(s: str) -> str:
    """A path segment: percent-encoded UTF-8 (valid_id refused anything else)."""
    return urllib.parse.quote(s, safe="")
