"""The mount's HTTP endpoints: Prometheus metrics, health, and control.

Served by threads of their own on STORE/control.sock (always) and, when
`[monitoring] port` is set, on `[monitoring] address`:port. Seed 004's API:

    GET  /                                   a page linking /metrics (no token)
    GET  /metrics                            Prometheus text format (no token)
    GET  /api/v1/cleanup/health              ok or degraded, active alerts, janitor, disk
    GET  /api/v1/cleanup/stats               disk use and thresholds, temp/ folders, cleanup totals
    GET  /api/v1/cleanup/task/{task_id}/status  a cleanup's state, progress and result
    POST /api/v1/cleanup/scheduled           a janitor run of every rule
    POST /api/v1/cleanup/emergency           ... then down to the warning level
    POST /api/v1/cleanup/orphaned            orphan sessions only
    POST /api/v1/cleanup/crash/{job_id}      that job's temp/ folders
    POST /api/v1/cleanup/chunk/{job_id}/{chunk_id}  a finished chunk: temp/jobs/JOB/CHUNK
    POST /api/v1/reload                      re-read seldonfs.toml (see reload())

Kept from before: GET /api/v1/health (= cleanup/health), /api/v1/stats
(the numbers of stats.json), /api/v1/tasks/{task_id} (= .../status).
Ids in a path are percent-decoded UTF-8; a job or chunk id must pass
janitor.valid_id (400 otherwise), so no request reaches outside its
folder. Task ids are random (32 hex digits), not counters.

/api/* wants `Authorization: Bearer TOKEN`, the token being STORE/control.
token (0600, made at the first mount), or, on the socket, a peer that is
root or the store's owner (SO_PEERCRED). Anything else gets 401, and the
refusal goes into the audit chain. On an address that is not loopback
(0.0.0.0, ::, one of the machine's IPs) only / and /metrics answer: /api/*
is 403 there, token or not, since plain HTTP would show the token to the
network; the API stays on the socket and loopback. Work is handed to the
request loop's trio thread (trio.from_thread); nothing here touches the
store itself.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
import secrets
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .config import is_loopback
from .errors import SeldonError
from .janitor import Request, valid_id
from .metrics import snapshot

log = logging.getLogger(__name__)

TOKEN_NAME = "control.token"
SOCKET_NAME = "control.sock"
MIN_TOKEN = 32  # characters: a shorter token (an emptied file) is replaced, never accepted
REFUSED_PATH_MAX = 200  # characters of a refused request's path kept in its audit record
REFUSED_PER_MINUTE = 30  # audit records of refusals per peer per minute; the rest are counted only
TASKS_KEPT = 1000  # finished tasks remembered for their status; the oldest are forgotten


def ensure_token(store_root: Path) -> str:
    """The API token of STORE/control.token (mode 0600); one of fewer than
    MIN_TOKEN characters (an empty or truncated file) is replaced by a new
    one, never accepted."""
    path = store_root / TOKEN_NAME
    try:
        token = path.read_text().strip()
        if len(token) >= MIN_TOKEN:
            return token
        log.warning("%s: a token of %d characters is too short: made a new one", path, len(token))
    except FileNotFoundError:
        pass
    token = secrets.token_hex(32)
    tmp = path.with_name(f".{TOKEN_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


class Control:
    """What the endpoints reach: set up by the mount, run in its threads."""

    def __init__(self, store_root: Path, token: str, sources, registry, janitor, audit, reload) -> None:
        self.root, self.token, self.sources, self.registry = store_root, token, sources, registry
        self.janitor, self.audit, self.reload = janitor, audit, reload
        self.trio_token: Any = None  # set by serve(), inside trio.run
        self.nursery: Any = None
        self.tasks: dict[str, dict[str, Any]] = {}
        self.refusals = 0  # refused requests, all of them (the audit chain keeps a bounded share)
        self._refused_by: dict[int, tuple[int, int]] = {}  # peer uid -> (minute, refusals in it)
        self._refused_lock = threading.Lock()
        self.servers: list[socketserver.BaseServer] = []
        self.serving = False

    # ------------------------------------------------------------ serving

    def bind(self, port: int, address: str) -> None:
        """Make the sockets (before the mount: a busy port is an error then)."""
        sock_path = self.root / SOCKET_NAME
        try:
            sock_path.unlink()  # left by a daemon that was killed
        except FileNotFoundError:
            pass
        self.servers.append(_UnixServer(str(sock_path), _handler(self)))
        os.chmod(sock_path, 0o660)
        if port:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            tcp_cls = type("TCP", (ThreadingHTTPServer,), {
                "address_family": family, "daemon_threads": True, "api": is_loopback(address),
            })
            try:
                self.servers.append(tcp_cls((address, port), _handler(self)))
            except OSError as e:
                self.close()
                raise SeldonError(f"monitoring.port {port}: cannot listen on {address}: {e.strerror}") from None

    def serve(self, trio_token, nursery) -> None:
        """Answer requests, from threads of their own (inside trio.run)."""
        self.trio_token, self.nursery = trio_token, nursery
        for s in self.servers:
            threading.Thread(target=s.serve_forever, name="control", daemon=True).start()
        self.serving = True

    def close(self) -> None:
        if self.serving:
            for s in self.servers:
                s.shutdown()
            self.serving = False
        for s in self.servers:
            s.server_close()
        self.servers.clear()
        try:
            (self.root / SOCKET_NAME).unlink()
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------ in the trio thread

    def on_loop(self, fn, *args):
        import trio

        return trio.from_thread.run_sync(fn, *args, trio_token=self.trio_token)

    def start_cleanup(self, req) -> dict[str, Any]:
        """A task for `req`, started on the trio thread (which alone touches
        `tasks`); its state as it is now."""
        return self.on_loop(self._start_cleanup, req)

    def _start_cleanup(self, req) -> dict[str, Any]:
        task_id = secrets.token_hex(16)
        task = {"id": task_id, "task_id": task_id, "kind": req.trigger, "state": "queued", "status": "PENDING",
                "started": time.time()}
        if len(self.tasks) >= TASKS_KEPT:
            done = [k for k, t in self.tasks.items() if "finished" in t]
            for k in done[: len(self.tasks) - TASKS_KEPT + 1]:
                del self.tasks[k]
        self.tasks[task_id] = task

        async def run() -> None:
            import trio

            if self.janitor.running:
                task["state"] = "waiting"
                while self.janitor.running:
                    await trio.sleep(0.05)
            task.update(state="running", status="STARTED")
            result = await self.janitor.run(req)  # a failed run answers with its error
            failed = "error" in result
            task.update(state="failed" if failed else "done", status="FAILURE" if failed else "SUCCESS",
                        result=result, finished=time.time(), duration_s=result.get("seconds"),
                        files_deleted=result.get("deleted", 0), bytes_freed=result.get("freed", 0),
                        **({"error": result["error"]} if failed else {}))

        self.nursery.start_soon(run)
        return dict(task)

    def task_status(self, task_id: str) -> dict[str, Any] | None:
        """A task as seed 004's status endpoint shows it (in the trio thread):
        while it runs, the janitor's progress so far."""
        task = self.tasks.get(task_id)
        if task is None:
            return None
        doc = dict(task)
        if task["state"] == "running" and self.janitor is not None:
            doc["progress"] = dict(self.janitor.now)
        return doc

    def health(self) -> dict[str, Any]:
        """ok or degraded (a critical alert holds), with the janitor and disk (in the trio thread)."""
        s = self.sources
        alerts = s.alerts.active() if s.alerts else []
        critical = any(a["level"] == "critical" for a in alerts)
        j = self.janitor
        disk = s.disk()
        return {
            "status": "degraded" if critical else "ok", "uptime_s": round(time.time() - s.started, 3),
            "alerts": alerts,
            "janitor": {"enabled": j is not None, "running": bool(j and j.running),
                        "disk_level": j.disk_level if j else None,
                        "last_run": _last_run(j.last) if j and j.last else None},
            "storage": {"usage_percent": disk["percent"], "warning_threshold": disk["warning"],
                        "emergency_threshold": disk["emergency"]},
        }

    def cleanup_stats(self) -> dict[str, Any]:
        """Seed 004's statistics: storage use against the thresholds, what
        temp/ holds, and the cleanups' files deleted, bytes freed and
        durations (in the trio thread)."""
        s, j = self.sources, self.janitor
        disk = s.disk()
        pct = disk["percent"]
        level = ("emergency" if disk["emergency"] is not None and pct >= disk["emergency"]
                 else "warning" if disk["warning"] is not None and pct >= disk["warning"] else "ok")
        folders = {k: {"files": v[0], "bytes": v[1]} for k, v in sorted(s.folders().items())
                   if k == "temp" or k.startswith("temp/")}
        totals = j.totals if j is not None else {}
        return {
            "storage": {"total_bytes": disk["total"], "used_bytes": disk["used"],
                        "free_bytes": disk["total"] - disk["used"], "usage_percent": pct, "level": level,
                        "warning_threshold": disk["warning"], "emergency_threshold": disk["emergency"]},
            "temp": folders,
            "cleanup": {
                "enabled": j is not None, "running": bool(j and j.running),
                "runs": totals.get("runs", 0), "files_deleted": totals.get("deleted", 0),
                "actions_done": totals.get("done", 0), "bytes_freed": totals.get("freed", 0),
                "skipped": totals.get("skipped", 0),
                "last_run": _last_run(j.last) if j is not None and j.last else None,
            },
            "settings": {"orphan_age_s": j.cfg.janitor.orphan_age, "batch": j.cfg.janitor.batch,
                         "check_every_s": j.cfg.janitor.check_every} if j is not None else None,
        }

    def refused(self, path: str, uid: int, gid: int, pid: int, why: str) -> None:
        """An audit record of a refused request (uid, gid -1: over TCP,
        unknown), its path cut to REFUSED_PATH_MAX, at most
        REFUSED_PER_MINUTE per peer: no outsider can grow the chain
        without bound. Every refusal is counted (`refusals`)."""
        with self._refused_lock:
            self.refusals += 1
            minute = int(time.monotonic() // 60)
            seen = self._refused_by.get(uid, (minute, 0))
            n = seen[1] + 1 if seen[0] == minute else 1
            if len(self._refused_by) > 10_000:
                self._refused_by.clear()
            self._refused_by[uid] = (minute, n)
        if n > REFUSED_PER_MINUTE:
            if n == REFUSED_PER_MINUTE + 1:
                log.warning("control: more than %d refused requests a minute from uid %d; counting only",
                            REFUSED_PER_MINUTE, uid)
            return
        short = path if len(path) <= REFUSED_PATH_MAX else path[:REFUSED_PATH_MAX] + f"... ({len(path)} chars)"
        if self.audit is not None:
            self.on_loop(lambda: self.audit.record("control", uid, gid, pid, "", "", "EACCES", 0, f"{short}: {why}"))


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    api = True  # the control API answers here (a listener on a non-loopback address: False)


def landing_page(api: bool) -> bytes:
    """GET /: what answers here, as node_exporter's page says it."""
    api_line = (
        "<li><code>/api/v1/health</code>, <code>/api/v1/stats</code>, ... (the control API: "
        "<code>Authorization: Bearer</code> the store's control.token)</li>"
        if api else
        "<li>the control API answers on the store's control.sock and on loopback only</li>"
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>SeldonFS exporter</title></head>\n"
        f"<body><h1>SeldonFS exporter</h1><p>seldonfs {html.escape(__version__)}</p>\n"
        f"<ul><li><a href=\"metrics\">Metrics</a> (Prometheus text format)</li>\n{api_line}</ul>\n"
        "</body></html>\n"
    ).encode()


def _handler(ctl: Control) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "seldonfs"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("control: " + fmt, *args)

        def address_string(self) -> str:
            return "socket" if isinstance(self.client_address, (str, bytes)) else str(self.client_address[0])

        def _peer(self) -> tuple[int, int, int]:
            """(uid, gid, pid) of a socket peer; (-1, -1, 0) over TCP."""
            if self.connection.family != socket.AF_UNIX:
                return -1, -1, 0
            creds = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            return uid, gid, pid

        def _send(self, code: int, body: Any, ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else (json.dumps(body, indent=2) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="seldonfs"')
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            uid, gid, pid = self._peer()
            given = self.headers.get("Authorization", "")
            if (given.startswith("Bearer ") and len(ctl.token) >= MIN_TOKEN
                    and hmac.compare_digest(given[7:].strip().encode(), ctl.token.encode())):
                return True
            if uid >= 0 and uid in (0, os.stat(ctl.root).st_uid):
                return True
            why = "wrong token" if given else "no token"
            ctl.refused(self.path, uid, gid, pid, why)
            self._send(401, {"error": why})
            return False

        def _api_here(self) -> bool:
            """False (and 403 sent) on a listener whose address is not loopback."""
            if self.server.api:  # type: ignore[attr-defined]
                return True
            self._send(403, {"error": "the control API answers on the store's control.sock and on loopback only"})
            return False

        def do_GET(self) -> None:
            from prometheus_client.exposition import choose_encoder

            path = urlsplit(self.path).path  # a scraper may add a query
            if path == "/metrics":
                # the format the scraper asks for: OpenMetrics for Prometheus, else the text format 0.0.4
                encode, ctype = choose_encoder(self.headers.get("Accept", ""))
                return self._send(200, encode(ctl.registry), ctype)
            if path == "/":
                return self._send(200, landing_page(self.server.api), "text/html; charset=utf-8")  # type: ignore[attr-defined]
            if not path.startswith("/api/"):
                return self._send(404, {"error": "not found"})
            if not self._api_here() or not self._authorized():
                return
            if path in ("/api/v1/cleanup/health", "/api/v1/health"):
                return self._send(200, ctl.on_loop(ctl.health))
            if path == "/api/v1/cleanup/stats":
                return self._send(200, ctl.on_loop(ctl.cleanup_stats))
            if path == "/api/v1/stats":
                return self._send(200, ctl.on_loop(snapshot, ctl.sources))
            parts = path.split("/")  # "", api, v1, ...
            task_id = None
            if parts[3:5] == ["cleanup", "task"] and len(parts) == 7 and parts[6] == "status":
                task_id = parts[5]
            elif parts[3:4] == ["tasks"] and len(parts) == 5:
                task_id = parts[4]
            if task_id is not None:
                task = ctl.on_loop(ctl.task_status, task_id)
                return self._send(200, task) if task else self._send(404, {"error": "no such task"})
            self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 16))
            if not self.path.startswith("/api/"):
                return self._send(404, {"error": "not found"})
            if not self._api_here() or not self._authorized():
                return
            path = self.path.split("?", 1)[0]
            if path == "/api/v1/reload":
                try:
                    return self._send(200, ctl.on_loop(ctl.reload))
                except Exception as e:  # a broken config: said, the running one kept
                    return self._send(400, {"error": str(e)})
            kinds = {
                "/api/v1/cleanup/scheduled": Request("request"),
                "/api/v1/cleanup/emergency": Request("emergency", emergency=True),
                "/api/v1/cleanup/orphaned": Request("orphaned", orphans=True),
            }
            req = kinds.get(path)
            parts = path.split("/")  # "", api, v1, cleanup, crash|chunk, ids...
            if req is None and parts[3:4] == ["cleanup"] and parts[4:5] in (["crash"], ["chunk"]):
                want = 1 if parts[4] == "crash" else 2
                if len(parts) != 5 + want:
                    return self._send(404, {"error": "not found"})
                ids = [_id(p) for p in parts[5:]]
                if None in ids:
                    return self._send(400, {"error": f"{parts[4]}: not a valid job or chunk id (percent-encoded "
                                                     "UTF-8, no '/', '.', '..' or control characters)"})
                req = Request("crash", crash=ids[0]) if want == 1 else Request("chunk", chunk=(ids[0], ids[1]))
            if req is None:
                return self._send(404, {"error": "not found"})
            if ctl.janitor is None:
                return self._send(409, {"error": "the store's rules have no retention: no janitor runs"})
            self._send(202, ctl.start_cleanup(req))

    return Handler


def _id(segment: str) -> str | None:
    """A job or chunk id from one path segment: percent-decoded, strict
    UTF-8 (bytes sent raw arrive as Latin-1 and are refused), valid_id."""
    if not segment.isascii():
        return None
    try:
        s = urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None
    return s if valid_id(s) else None


def _last_run(last: dict[str, Any]) -> dict[str, Any]:
    """A janitor run as the cleanup endpoints show it."""
    return {"trigger": last.get("trigger"), "started": last.get("started"), "duration_s": last.get("seconds"),
            "files_deleted": last.get("deleted", 0), "bytes_freed": last.get("freed", 0),
            "skipped": last.get("skipped_count", 0), "summary": last.get("summary"),
            **({"error": last["error"]} if "error" in last else {})}
