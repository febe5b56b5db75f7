"""Alerts that reach people: mail through a real SMTP server started here
(aiosmtpd), Slack-format and JSON webhooks, and the alert kinds the mount's
watch raises: free space in bytes, folder file-count and size caps between
the janitor's runs, the quarantine's rate and its oldest file."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from seldonfs.alerts import Alerts
from seldonfs.config import AlertsConfig, EmailConfig
from seldonfs.content import PlainContent

from .conftest import init_store, mounted, needs_fuse, seldonfs, wait_for, webhook_server

USER, PASSWORD = "alerts", "s3cret pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        if session.authenticated:  # a mail sent without the login does not count
            self.got.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok)


@contextmanager
def smtp_server() -> Iterator[tuple[int, list]]:
    """A real SMTP server on localhost that checks AUTH (without TLS: a
    test server); yields its port and what arrived after a good login."""
    inbox = _Inbox()
    port = _free_port()
    c = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=_authenticate, auth_require_tls=False)
    c.start()
    try:
        yield port, inbox.got
    finally:
        c.stop()


def _email_toml(port: int, pw: Path) -> str:
    return (f'[alerts.email]\nhost = "127.0.0.1"\nport = {port}\nusername = "{USER}"\npassword_file = "{pw}"\n'
            'from = "seldonfs@example.com"\nto = ["ops@example.com", "admin@example.com"]\n')


def test_a_hostile_alert_text_adds_no_header_and_a_dead_server_is_said_once(tmp_path: Path, caplog) -> None:
    pw = tmp_path / "smtp.pw"
    pw.write_text(PASSWORD + "\n")
    (tmp_path / "data").mkdir()
    with smtp_server() as (port, got):
        cfg = AlertsConfig(notifications="", email=EmailConfig(
            host="127.0.0.1", port=port, to=("ops@example.com",), sender="seldonfs@example.com",
            username=USER, password_file=str(pw)))
        a = Alerts(cfg, tmp_path / "data", PlainContent(), "/mnt/x\r\nBcc: evil@example.com")
        t = time.perf_counter()
        assert a.raise_("task-failed", "critical", "bad name\r\nBcc: evil@example.com\r\n\x1b[31mred\x07")
        assert time.perf_counter() - t < 0.5  # mailed from a thread of its own
        wait_for(lambda: got, timeout=30, what="the mail")
    sender, rcpts, msg = got[0]
    assert sender == "seldonfs@example.com" and rcpts == ["ops@example.com"]
    assert "Bcc" not in msg and "\n" not in msg["Subject"] and "task-failed" in msg["Subject"]
    body = msg.get_content()
    assert "\x1b" not in body and "\\x1b[31mred\\x07" in body and "Bcc: evil" in body  # as text, one line
    assert "bad name\\r\\nBcc" in body and f"Store:   {tmp_path}" in body

    # the server gone: a warning the first time, info after, nothing raised
    caplog.set_level(logging.INFO, logger="seldonfs.alerts")
    for kind in ("disk-warning", "folder-full"):
        assert a.raise_(kind, "warning", "something")
    wait_for(lambda: len([r for r in caplog.records if "alert mail" in r.getMessage()]) == 2, timeout=30,
             what="two mail failures")
    levels = [r.levelno for r in caplog.records if "alert mail" in r.getMessage()]
    assert sorted(levels) == [logging.INFO, logging.WARNING]


@needs_fuse
def test_alerts_reach_mail_and_slack(tmp_path: Path) -> None:
    """A real mount: the quarantine backlog alert arrives once by mail
    (subject and body name the alert, the mount and the store) and as a
    Slack incoming-webhook payload."""
    hook, posted = webhook_server()
    pw = tmp_path / "smtp.pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    store = init_store(tmp_path / "store", encrypted=False)
    m = tmp_path / "mnt"
    try:
        with smtp_server() as (port, got):
            conf = store / "seldonfs.toml"
            conf.write_text(_with_alerts(conf.read_text(), 'quarantine_backlog = 1\nformat = "slack"\n'
                                         f'webhook = "http://127.0.0.1:{hook.server_port}/slack"\n')
                            + _email_toml(port, pw))
            with mounted(store, m, expect_log_problems=True):
                for i in range(3):
                    (m / "input" / "raw" / f"broken{i}.json").write_text("{not json")
                wait_for(lambda: got and posted, timeout=40, what="the mail and the webhook")
                r = seldonfs("ctl", m, "health")
                assert "quarantine-backlog" in r.stdout
            mails = [g for g in got if "quarantine-backlog" in g[2]["Subject"]]
            assert len(mails) == 1, [g[2]["Subject"] for g in got]  # the cool-down holds the next ones
            _, rcpts, msg = mails[0]
            assert rcpts == ["ops@example.com", "admin@example.com"] and msg["To"] == "ops@example.com, admin@example.com"
            assert str(m) in msg["Subject"] and "warning" in msg["Subject"]
            body = msg.get_content()
            assert f"Mount:   {m}" in body and f"Store:   {store}" in body and "files wait in quarantine" in body
    finally:
        hook.shutdown()
        hook.server_close()
    (slack,) = [p for p in posted if "quarantine-backlog" in p.get("text", "")]
    assert set(slack) == {"text"} and str(m) in slack["text"] and str(store) in slack["text"]


def _with_alerts(text: str, extra: str) -> str:
    """seldonfs.toml `text` with `extra` keys at the top of its [alerts] table."""
    if "\n[alerts]\n" not in text:
        return text + "\n[alerts]\n" + extra
    return text.replace("\n[alerts]\n", "\n[alerts]\n" + extra, 1)


def _kinds(mnt: Path) -> set[str]:
    r = seldonfs("ctl", mnt, "health")
    return {a["kind"] for a in json.loads(r.stdout)["alerts"]} if r.returncode == 0 else set()


@needs_fuse
def test_free_space_folder_caps_and_quarantine_alerts(tmp_path: Path) -> None:
    """Raised by the mount's watch, not by a janitor run: free space under
    bytes thresholds (both levels, a reload moves between them), a folder
    at warn_percent of its file and byte caps long before its 24 h
    schedule, a quarantine rate, and a file waiting in quarantine too long."""
    hook, posted = webhook_server()
    store = init_store(tmp_path / "store", encrypted=True)
    conf = store / "seldonfs.toml"
    base = _with_alerts(conf.read_text(), f'webhook = "http://127.0.0.1:{hook.server_port}/h"\nquarantine_rate = 50\n')
    conf.write_text(_with_alerts(base, 'free_warning = "1000TB"\nfree_critical = "999TB"\n')
                    + '\n[folders."temp/counted"]\nmax_age = "30d"\nmax_files = 10\nmax_total = "1MB"\n'
                      'warn_percent = 50\nschedule = "24h"\n')
    m = tmp_path / "mnt"
    try:
        with mounted(store, m, expect_log_problems=True):
            wait_for(lambda: "disk-free-critical" in _kinds(m), timeout=30, what="disk-free-critical")
            conf.write_text(conf.read_text().replace('free_critical = "999TB"\n', ""))
            assert seldonfs("ctl", m, "reload").returncode == 0
            wait_for(lambda: "disk-free-warning" in _kinds(m) and "disk-free-critical" not in _kinds(m),
                     timeout=30, what="disk-free-warning alone")

            (m / "temp" / "counted" / "sub").mkdir(parents=True)
            for i in range(4):
                (m / "temp" / "counted" / "sub" / f"f{i}").write_bytes(b"x" * 1000)
            assert "folder-files" not in _kinds(m)
            (m / "temp" / "counted" / "f4").write_bytes(b"x" * 1000)  # 5 of 10 files
            wait_for(lambda: "folder-files" in _kinds(m), timeout=30, what="folder-files")
            assert "folder-full" not in _kinds(m)
            (m / "temp" / "counted" / "big").write_bytes(b"x" * 500_000)  # 50 % of 1 MB
            wait_for(lambda: "folder-full" in _kinds(m), timeout=30, what="folder-full")

            for i in range(20):
                (m / "input" / "raw" / f"bad{i}.json").write_text("{not json")
            wait_for(lambda: "quarantine-rate" in _kinds(m), timeout=30, what="quarantine-rate")
            assert "quarantine-waiting" not in _kinds(m)
        for kind in ("disk-free-critical", "folder-files", "folder-full", "quarantine-rate"):
            assert any(p["kind"] == kind for p in posted), kind

        # a file 8 days in quarantine (the default limit is 7 days)
        with sqlite3.connect(store / "catalog.sqlite") as db:
            db.execute("UPDATE quarantine SET at_ns = ? WHERE id = (SELECT min(id) FROM quarantine)",
                       (time.time_ns() - 8 * 86400 * 10**9,))
        db.close()
        conf.write_text(base)
        with mounted(store, m, expect_log_problems=True):
            wait_for(lambda: "quarantine-waiting" in _kinds(m), timeout=30, what="quarantine-waiting")
            assert not {"disk-free-warning", "quarantine-rate"} & _kinds(m)  # no thresholds / a new hour
    finally:
        hook.shutdown()
        hook.server_close()


def test_a_hanging_mail_server_delays_no_write(tmp_path: Path) -> None:
    """Issue 19: an SMTP server that accepts the connection and never
    answers holds the alert's mail for its 10 s timeout; writes through the
    mount meanwhile return at once (the mail has a thread of its own)."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)  # accepted by the kernel, never answered
    pw = tmp_path / "smtp.pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    store = init_store(tmp_path / "store", encrypted=False)
    conf = store / "seldonfs.toml"
    conf.write_text(_with_alerts(conf.read_text(), "quarantine_backlog = 1\n") + _email_toml(hang.getsockname()[1], pw))
    m = tmp_path / "mnt"
    try:
        with mounted(store, m, expect_log_problems=True):
            for i in range(3):
                (m / "input" / "raw" / f"broken{i}.json").write_text("{not json")
            wait_for(lambda: "quarantine-backlog" in _kinds(m), timeout=40, what="the alert")
            slowest = 0.0
            for i in range(40):  # about 4 s of writes while the mail hangs
                t = time.perf_counter()
                (m / "input" / "processed" / f"f{i}.txt").write_text("x" * 4096)
                slowest = max(slowest, time.perf_counter() - t)
                time.sleep(0.1)
            print(f"slowest of 40 writes while the mail hangs: {slowest * 1000:.1f} ms")
            assert slowest < 0.5, slowest
    finally:
        hang.close()
