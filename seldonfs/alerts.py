"""Alerts: raised once, repeated only after a cool-down, delivered four ways.

An alert is (kind, level, message): kinds are disk-warning, disk-emergency,
disk-free-warning, disk-free-critical, folder-full, folder-files,
quarantine-backlog, quarantine-rate, quarantine-waiting, key-age,
janitor-failed, emergency-stuck, integrity-error, audit-verify (the mount
verifies its chain every `[audit] verify_every`), transport-stalled. Each
goes to the log, to a JSON file in `[alerts] notifications` (written into
the store through its content layer, so encrypted like any file, and
visible in the mount), if `[alerts] webhook` is set as a POST (the alert
as JSON, or with `format = "slack"` an incoming-webhook {"text": ...}),
and if `[alerts.email]` is set as one mail through SMTP. The POST and the
mail each go from a thread of their own with a timeout: a slow or failing
receiver never holds up a file operation, and its failure is logged, not
retried. The webhook also gets the audit chain's head once a day
(`send_head`, kind audit-head): a copy of it outside the store.
"""

from __future__ import annotations

import collections
import email.message
import email.utils
import json
import logging
import os
import posixpath
import smtplib
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .config import AlertsConfig, EmailConfig, FolderRule

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 5.0
SMTP_TIMEOUT = 10.0


class Alerts:
    def __init__(self, cfg: AlertsConfig, data: Path, content, mountpoint: str,
                 notify_new: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.data, self.content, self.mountpoint = cfg, data, content, mountpoint
        self.store = str(Path(data).parent)
        self._mail_failing = False  # the first failure is a warning, the next ones info
        self.notify_new = notify_new  # told the path of each notification file written
        self.clock = clock
        self.last: dict[str, float] = {}  # "kind:about" -> when it was last delivered
        self.current: dict[str, dict] = {}  # "kind:about" -> the alert, while it holds
        self.delivered = 0

    def raise_(self, kind: str, level: str, message: str, about: str = "") -> bool:
        """Deliver unless the same alert (kind, and what it is `about`, e.g.
        a folder) was delivered within the cool-down; True when delivered."""
        now = self.clock()
        alert = {"kind": kind, "level": level, "message": message, "at": now, "mount": self.mountpoint,
                 "store": self.store}
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
        if self.cfg.email is not None:
            threading.Thread(target=self._mail, args=(self.cfg.email, alert), name="alert-mail", daemon=True).start()
        return True

    def post(self, doc: dict) -> None:
        """`doc` to the webhook, if one is set, from a thread of its own."""
        if self.cfg.webhook:
            body = {"text": slack_text(doc)} if self.cfg.format == "slack" else doc
            threading.Thread(target=self._post, args=(self.cfg.webhook, body, doc["kind"]), name="webhook",
                             daemon=True).start()

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

    def _post(self, url: str, body: dict, kind: str) -> None:
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "seldonfs"},
        )
        try:
            with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT) as r:
                r.read(1024)
        except Exception as e:  # any failure of the receiver: said, not retried
            log.error("webhook %s refused the %s alert: %s", url, kind, e)

    def _mail(self, cfg: EmailConfig, alert: dict) -> None:
        """One message for `alert` through `cfg`'s SMTP server (a thread of
        its own); a failure is a warning the first time, then info until
        a message gets through again: never retried, never fatal."""
        try:
            msg = mail_message(cfg, alert)
            with smtplib.SMTP(cfg.host, cfg.port, timeout=SMTP_TIMEOUT) as smtp:
                if cfg.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if cfg.username:
                    with open(cfg.password_file, encoding="utf-8") as f:
                        smtp.login(cfg.username, f.read().rstrip("\r\n"))
                smtp.send_message(msg)
        except Exception as e:  # unreachable, refused, a bad password file: said, not retried
            level = logging.INFO if self._mail_failing else logging.WARNING
            self._mail_failing = True
            log.log(level, "alert mail to %s:%d failed for the %s alert: %s: %s", cfg.host, cfg.port, alert["kind"],
                    type(e).__name__, e)
            return
        if self._mail_failing:
            self._mail_failing = False
            log.info("alert mail to %s:%d gets through again", cfg.host, cfg.port)


def printable(s: str, newlines: bool = False) -> str:
    """`s` with every control character (newline too, unless `newlines`)
    written as an escape: a file name in an alert cannot add a line to a
    mail or a chat message, or send a terminal an escape sequence."""
    return "".join(c if c.isprintable() or (newlines and c == "\n") else ascii(c)[1:-1] for c in s)


def slack_text(doc: dict) -> str:
    """A Slack incoming webhook's text: &, < and > escaped as its format wants."""
    text = (f"SeldonFS {doc.get('level', '')} alert {doc['kind']} on {doc.get('mount', '')} "
            f"(store {doc.get('store', '')}): {doc.get('message', '')}")
    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mail_message(cfg: EmailConfig, alert: dict) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Subject"] = printable(f"[SeldonFS {alert['level']}] {alert['kind']} on {alert['mount']}")[:200]
    msg["Date"] = email.utils.formatdate(alert["at"], localtime=False)
    msg["Message-ID"] = email.utils.make_msgid("seldonfs")
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(alert["at"]))
    msg.set_content(
        f"Alert:   {alert['kind']} ({alert['level']})\n"
        f"Mount:   {printable(alert['mount'])}\n"
        f"Store:   {printable(alert.get('store', ''))}\n"
        f"At:      {at}\n\n"
        f"{printable(alert['message'])}\n\n"
        "The same alert is mailed again only after [alerts] cooldown.\n"
    )
    return msg


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
    """Raise what no other part raises: a quarantine backlog, rate and
    long wait, new integrity errors (damaged blocks read), little free
    space in bytes, a capped folder near its cap (between the janitor's
    runs), an old master key. A first look at once, then every `every` s."""
    import trio

    w = Watch(alerts, sources)
    while True:
        try:
            await w.once()
        except Exception as e:
            sources.failures("alert watch", e)
        await trio.sleep(every)


def check_transport(alerts: Alerts, sources) -> None:
    """transport-stalled (critical) while an io_uring queue has ended: the
    requests of its CPU wait until the mount goes, and nothing but an
    unmount ends that (uring.py)."""
    t = sources.transport() if sources.transport is not None else None
    ended = t.get("ended") if t is not None else None
    if ended:
        which = f"queue of CPU {ended[0]}" if len(ended) == 1 else f"queues of CPUs {', '.join(map(str, ended))}"
        alerts.raise_("transport-stalled", "critical", f"the io_uring {which} ended ({t.get('error')}): "
                      "requests from there wait until the mount is unmounted; unmount and mount again")
    else:
        alerts.clear("transport-stalled")


RATE_WINDOW = 3600.0  # quarantine-rate: the share over this long
RATE_MIN_FILES = 20  # ... once at least this many files were decided in it


class Watch:
    """The watcher's state between looks; `sources` is metrics.Sources,
    its `cfg` the mount's Config (taken anew at each look: a reload)."""

    def __init__(self, alerts: Alerts, sources, clock: Callable[[], float] = time.time) -> None:
        self.alerts, self.sources, self.clock = alerts, sources, clock
        self.seen_damage = 0
        self.caps_due = 0.0  # when the capped folders are walked next
        self.decided: collections.deque[tuple[float, int, int]] = collections.deque()  # (at, committed, quarantined)

    async def once(self) -> None:
        import trio

        a, s, cfg = self.alerts, self.sources, self.alerts.cfg
        now = self.clock()
        waiting, oldest = await trio.to_thread.run_sync(s.quarantine_oldest)
        if waiting >= cfg.quarantine_backlog:
            a.raise_("quarantine-backlog", "warning", f"{waiting} files wait in quarantine "
                     f"(alert at {cfg.quarantine_backlog})")
        else:
            a.clear("quarantine-backlog")
        if cfg.quarantine_wait and oldest is not None and now - oldest > cfg.quarantine_wait:
            a.raise_("quarantine-waiting", "warning", f"the oldest of {waiting} files in quarantine has waited "
                     f"{(now - oldest) / 86400:.1f} days (alert after {cfg.quarantine_wait / 86400:g}): "
                     f"seldonfs quarantine list {a.store}")
        else:
            a.clear("quarantine-waiting")
        self._rate(now)
        damage = s.core.damage_count if s.core is not None else 0
        if damage > self.seen_damage:
            a.raise_("integrity-error", "critical", f"{damage - self.seen_damage} reads refused: "
                     "blocks failed authentication (seldonfs verify STORE lists them)")
            self.seen_damage = damage
        self._free_space()
        if s.cfg is not None and now >= self.caps_due:
            t0 = time.monotonic()
            usage = await trio.to_thread.run_sync(capped_usage, s.data, s.cfg.folders, _plain_size(s.content))
            # a large capped tree is walked less often: at most a tenth of the time
            self.caps_due = now + 10 * (time.monotonic() - t0)
            check_caps(a, usage, clear=True)
        check_key_age(a, s, now)
        check_transport(a, s)

    def _rate(self, now: float) -> None:
        a, cfg, counts = self.alerts, self.alerts.cfg, self.sources.decisions
        if counts is None:
            return
        self.decided.append((now, counts.get("commit", 0), counts.get("quarantine", 0)))
        while len(self.decided) > 2 and self.decided[1][0] <= now - RATE_WINDOW:
            self.decided.popleft()  # the first kept is the last at or before the window's start
        if not cfg.quarantine_rate:
            a.clear("quarantine-rate")
            return
        _, c0, q0 = self.decided[0]
        _, c1, q1 = self.decided[-1]
        files, bad = (c1 - c0) + (q1 - q0), q1 - q0
        if files >= RATE_MIN_FILES and bad * 100 >= files * cfg.quarantine_rate:
            a.raise_("quarantine-rate", "warning", f"{bad} of the last hour's {files} files were quarantined "
                     f"({100 * bad // files} %, alert at {cfg.quarantine_rate} %)")
        else:
            a.clear("quarantine-rate")

    def _free_space(self) -> None:
        from .host import disk_usage

        a, cfg = self.alerts, self.alerts.cfg
        if not (cfg.free_warning or cfg.free_critical):
            return
        _, used, total = disk_usage(self.sources.data)
        free = total - used
        level = ("critical" if cfg.free_critical and free < cfg.free_critical
                 else "warning" if cfg.free_warning and free < cfg.free_warning else None)
        for lv in ("warning", "critical"):
            if lv != level:
                a.clear(f"disk-free-{lv}")
        if level is not None:
            limit = cfg.free_critical if level == "critical" else cfg.free_warning
            a.raise_(f"disk-free-{level}", level, f"only {free / 1e9:.2f} GB free on the store's disk "
                     f"({level} below {limit / 1e9:g} GB)")


def _plain_size(content):
    return content.plain_size if content is not None else (lambda n: n)


def capped_usage(data: Path, folders: tuple[FolderRule, ...], plain_size) -> dict[str, tuple[int, int, FolderRule]]:
    """(bytes, files, rule) of each folder that warns near a cap (`warn_percent`
    with `max_total` or `max_files`), counting its whole subtree: what
    `check_caps` judges. Folder patterns (globs) are left to the janitor."""
    from .rules import is_glob
    from .store import tree

    out = {}
    for r in folders:
        if not r.warn_percent or (r.max_total is None and r.max_files is None) or is_glob(r.path):
            continue
        total = files = 0
        for _, _, st in tree(data / r.path):
            if st.st_mode & 0o170000 == 0o100000:
                total += plain_size(st.st_size)
                files += 1
        out[r.path] = (total, files, r)
    return out


def check_caps(alerts: Alerts, usage: dict, clear: bool = False) -> None:
    """folder-full when a folder holds `warn_percent` of its `max_total`,
    folder-files when it holds that share of its `max_files`; with `clear`,
    an alert of a folder back under is cleared."""
    for folder, (total, files, rule) in sorted(usage.items()):
        pct = rule.warn_percent
        if not pct:
            continue
        if rule.max_total and total * 100 >= rule.max_total * pct:
            alerts.raise_("folder-full", "warning", f"{folder}/ holds {total:,} bytes, "
                          f"{100 * total // rule.max_total} % of its {rule.max_total:,}-byte cap", about=folder)
        elif clear:
            alerts.clear("folder-full", folder)
        if rule.max_files and files * 100 >= rule.max_files * pct:
            alerts.raise_("folder-files", "warning", f"{folder}/ holds {files:,} files, "
                          f"{100 * files // rule.max_files} % of its {rule.max_files:,}-file cap", about=folder)
        elif clear:
            alerts.clear("folder-files", folder)


def check_key_age(alerts: Alerts, sources, now: float) -> None:
    """key-age while the master key is older than `[encryption] rotate_after`."""
    made, cfg = sources.key_created, sources.cfg
    limit = cfg.encryption.rotate_after if cfg is not None else 0
    if made is None or not limit or now - made <= limit:
        alerts.clear("key-age")
        return
    alerts.raise_("key-age", "warning", f"the master key is {(now - made) / 86400:.0f} days old "
                  f"(rotate_after {limit / 86400:g} days): seldonfs rekey {alerts.store}")


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
