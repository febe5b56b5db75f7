"""seldonfs ctl STORE|MOUNTPOINT COMMAND [ARG]: talk to a running mount.

Commands: health, stats, metrics, reload, cleanup scheduled|emergency|
orphaned, crash JOB_ID, task ID. Goes through STORE/control.sock; root and
the store's owner are let in by their credentials, anyone else needs the
token: --token-file FILE, else $SELDONFS_TOKEN_FILE, else $SELDONFS_TOKEN,
else STORE/control.token if readable. No secret is taken on the command
line, where `ps` shows it to every user: the old --token TOKEN is refused
(exit 2). A cleanup waits for its task to finish (--no-wait: print the
task and stop).
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
from pathlib import Path
from typing import Any

from ..control import SOCKET_NAME, TOKEN_NAME
from ..errors import SeldonError, UsageError
from .common import mount_of

COMMANDS = ("health", "stats", "metrics", "reload", "cleanup", "crash", "task")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ctl", help="ask a running mount (health, stats, cleanup, reload)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="STORE|MOUNTPOINT")
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND", help=", ".join(COMMANDS))
    p.add_argument("arg", nargs="?", metavar="ARG", help="cleanup kind, job id or task id")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="read the control token from FILE (else $SELDONFS_TOKEN_FILE, $SELDONFS_TOKEN, "
                   "STORE/control.token)")
    p.add_argument("--token", help=argparse.SUPPRESS)  # gone: refused with a pointer to --token-file
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
    if args.token is not None:
        raise UsageError("ctl --token is gone (ps shows it to every user): put the token in a file (mode 0600) "
                         "and use --token-file FILE or $SELDONFS_TOKEN_FILE")
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
            doc = json.loads(call(root, "GET", f"/api/v1/tasks/{doc['id']}", token)[1])
    print(json.dumps(doc, indent=2))
    if doc.get("state") == "failed":
        raise SeldonError(f"cleanup failed: {doc.get('error')}")


def _route(args: argparse.Namespace) -> tuple[str, str]:
    c, arg = args.command, args.arg
    if c in ("health", "stats"):
        return "GET", f"/api/v1/{c}"
    if c == "metrics":
        return "GET", "/metrics"
    if c == "reload":
        return "POST", "/api/v1/reload"
    if c == "task":
        if not (arg or "").isdigit():
            raise UsageError("ctl task: want a task id")
        return "GET", f"/api/v1/tasks/{arg}"
    if c == "crash":
        if not arg or "/" in arg:
            raise UsageError("ctl crash: want a job id")
        return "POST", f"/api/v1/cleanup/crash/{arg}"
    if arg not in ("scheduled", "emergency", "orphaned"):
        raise UsageError("ctl cleanup: want scheduled, emergency or orphaned")
    return "POST", f"/api/v1/cleanup/{arg}"
