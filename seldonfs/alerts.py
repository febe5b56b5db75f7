"""Alerts: raised once, repeated only after a cool-down, delivered three ways.

An alert is (kind, level, message): kinds are disk-warning, disk-emergency,
folder-full, quarantine-backlog, janitor-failed, emergency-stuck,
integrity-error, audit-verify (the mount verifies its chain every
`[audit] verify_every`). Each goes to the log, to a JSON file in
`[alerts] notifications` (written into the store through its content
layer, so encrypted like any file, and visible in the mount), and, if
`[alerts] webhook` is set, as a JSON POST from a thread of its own with a
5 s timeout: a slow or failing receiver never holds up a file operation,
and its failure is logged, not retried. The webhook also gets the audit
chain's head once a day (`send_head`, kind audit-head): a copy of it
outside the store.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .config import AlertsConfig

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 5.0


class Alerts:
    def __init__(self, cfg: AlertsConfig, data: Path, content, mountpoint: str,
                 notify_new: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.data, self.content, self.mountpoint = cfg, data, content, mountpoint
        self.notify_new = notify_new  # told the path of each notification file written
        self.clock = clock
        self.last: dict[str, float] = {}  # "kind:about" -> when it was last delivered
        self.current: dict[str, dict] = {}  # "kind:about" -> the alert, while it holds
        self.delivered = 0

    def raise_(self, kind: str, level: str, message: str, about: str = "") -> bool:
        """Deliver unless the same alert (kind, and what it is `about`, e.g.
        a folder) was delivered within the cool-down; True when delivered."""
        now = self.clock()
        alert = {"kind": kind, "level": level, "message": message, "at": now, "mount": self.mountpoint}
        key = f"{kind}:{about}"
        self.current[key] = alert
        if now - self.last.get(key, -1e18) < self.cfg.cooldown:
            return False
        self.last[key] = now
        self.delivered += 1
        log.warning("%s alert (%s): %s", level, kind, message)
        if self.cfg.notifications:
            try:
                self._write_notification(alert)
            except OSError as e:
                log.error("cannot write the notification for %s: %s", kind, e)
        self.post(alert)
        return True

    def post(self, doc: dict) -> None:
        """`doc` to the webhook, if one is set, from a thread of its own."""
        if self.cfg.webhook:
            threading.Thread(target=self._post, args=(doc,), name="webhook", daemon=True).start()

    def clear(self, kind: str, about: str = "") -> None:
        self.current.pop(f"{kind}:{about}", None)

    def active(self) -> list[dict]:
        return sorted(self.current.values(), key=lambda a: a["at"])

    def _write_notification(self, alert: dict) -> None:
        from .store import walk

        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(alert["at"]))
        name = f"{stamp}-{alert['kind']}-{self.delivered}.json"
        root = os.open(self.data, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            dfd = walk(root, self.cfg.notifications, create=True)
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=dfd)
                try:
                    self.content.attach(fd).write(0, json.dumps(alert, indent=2).encode() + b"\n")
                finally:
                    os.close(fd)
            finally:
                os.close(dfd)
        finally:
            os.close(root)
        if self.notify_new is not None:
            self.notify_new(posixpath.join(self.cfg.notifications, name))

    def _post(self, alert: dict) -> None:
        req = urllib.request.Request(
            self.cfg.webhook, data=json.dumps(alert).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "seldonfs"},
        )
        try:
            with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT) as r:
                r.read(1024)
        except Exception as e:  # any failure of the receiver: said, not retried
            log.error("webhook %s refused the %s alert: %s", self.cfg.webhook, alert["kind"], e)


WATCH_EVERY = 10.0


class Failures:
    """Failures of the mount's background work (file records, checks, the
    janitor, watchers, the folder count): none may end the mount. Each is
    counted by task, logged with its traceback once per task and error,
    and raised as the critical task-failed alert (when alerts are wired)."""

    def __init__(self, alerts: Alerts | None = None) -> None:
        self.alerts = alerts
        self.counts: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, task: str, e: BaseException) -> None:
        self.counts[task] = self.counts.get(task, 0) + 1
        key = (task, f"{type(e).__name__}: {e}")
        if key not in self._logged:
            if len(self._logged) < 1000:
                self._logged.add(key)
            log.error("%s failed (the mount goes on): %s", task, key[1], exc_info=e)
        if self.alerts is not None:
            self.alerts.raise_("task-failed", "critical", f"{task} failed: {key[1]}", about=task)


async def watch(alerts: Alerts, sources, every: float = WATCH_EVERY) -> None:
    """Raise what no other part raises: a quarantine backlog, new
    integrity errors (damaged blocks read)."""
    import trio

    seen_damage = 0
    while True:
        await trio.sleep(every)
        try:
            seen_damage = await _watch_once(alerts, sources, seen_damage)
        except Exception as e:
            sources.failures("alert watch", e)


async def _watch_once(alerts: Alerts, sources, seen_damage: int) -> int:
    """One look; returns the damage count now seen."""
    import trio

    waiting = await trio.to_thread.run_sync(sources.quarantine)
    if waiting >= alerts.cfg.quarantine_backlog:
        alerts.raise_("quarantine-backlog", "warning", f"{waiting} files wait in quarantine "
                      f"(alert at {alerts.cfg.quarantine_backlog})")
    else:
        alerts.clear("quarantine-backlog")
    damage = sources.core.damage_count if sources.core is not None else 0
    if damage > seen_damage:
        alerts.raise_("integrity-error", "critical", f"{damage - seen_damage} reads refused: "
                      "blocks failed authentication (seldonfs verify STORE lists them)")
        seen_damage = damage
    return seen_damage


async def verify_audit(auditlog, every: float, alerts: Alerts, sources) -> None:
    """Verify the audit chain as stored every `every` seconds, in a worker
    thread; a break raises the critical audit-verify alert."""
    import trio

    while True:
        await trio.sleep(every)
        try:
            n, brk = await trio.to_thread.run_sync(auditlog.verify_stored)
        except Exception as e:
            sources.failures("audit verify", e)
            continue
        sources.audit_verify = {"at": time.time(), "records": n, "intact": brk is None,
                                "break": None if brk is None else f"{brk.kind} at record {brk.seq}: {brk.detail}"}
        if brk is not None:
            alerts.raise_("audit-verify", "critical", f"the audit chain is broken: {brk.kind} at record "
                          f"{brk.seq}: {brk.detail}")
        else:
            alerts.clear("audit-verify")


HEAD_FIRST = 5.0  # seconds after the mount: its first records are stored
HEAD_EVERY = 86400.0


async def send_head(auditlog, alerts: Alerts, sources, every: float = HEAD_EVERY) -> None:
    """The audit chain's head (what `seldonfs audit head` prints) to the
    webhook, shortly after the mount and then once a day: a copy outside
    the store that a rewritten chain cannot match (docs/audit.md)."""
    import trio

    delay = HEAD_FIRST
    while True:
        await trio.sleep(delay)
        delay = every
        if not alerts.cfg.webhook:
            continue
        try:
            head = await trio.to_thread.run_sync(auditlog.head)
        except Exception as e:
            sources.failures("audit head", e)
            continue
        alerts.post({"kind": "audit-head", "level": "info", "at": time.time(), "mount": alerts.mountpoint,
                     "message": f"audit chain head: epoch {head['epoch']}, record {head['seq']}", "head": head})
