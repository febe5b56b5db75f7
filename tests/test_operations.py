"""Operating a mount: /metrics scraped over HTTP while files are written,
the control API's token, alerts to a webhook and notification files,
`seldonfs ctl`, `stats`, `status`, and seed 004's environment overrides."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
import threading
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from seldonfs import config
from seldonfs.errors import ConfigError

from .conftest import as_user, configure, init_store, mounted, needs_fuse, seldonfs, wait_for, webhook_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_a_hanging_webhook_holds_nothing_up(tmp_path: Path) -> None:
    import time

    from seldonfs.alerts import Alerts
    from seldonfs.config import AlertsConfig
    from seldonfs.content import PlainContent

    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        (tmp_path / "data").mkdir()
        cfg = AlertsConfig(cooldown=60, webhook=f"http://127.0.0.1:{silent.getsockname()[1]}/")
        clock = [1000.0]
        a = Alerts(cfg, tmp_path / "data", PlainContent(), "/mnt", clock=lambda: clock[0])
        t = time.perf_counter()
        assert a.raise_("disk-warning", "warning", "store disk 86 % full")
        assert time.perf_counter() - t < 0.5  # the POST waits in a thread of its own
        assert not a.raise_("disk-warning", "warning", "store disk 87 % full")  # cooling down
        assert a.raise_("folder-full", "warning", "temp/cache/ 81 %", about="temp/cache")  # another alert
        clock[0] += 61
        assert a.raise_("disk-warning", "warning", "store disk 88 % full")
        notes = sorted(os.listdir(tmp_path / "data" / "output" / "notifications"))
        assert len(notes) == 3 and json.loads((tmp_path / "data" / "output" / "notifications" / notes[0]).read_text())["kind"]
    finally:
        silent.close()


def test_environment_overrides_seed_004() -> None:
    raw = tomllib.loads(config.profile_text("pixcrawler"))
    env = {"TEMP_STORAGE_CLEANUP_EMERGENCY_CLEANUP_THRESHOLD": "90.0", "TEMP_STORAGE_CLEANUP_MAX_ORPHAN_AGE_HOURS": "12",
           "TEMP_STORAGE_CLEANUP_EMERGENCY_CHECK_INTERVAL_MINUTES": "1", "PATH": "/bin"}
    j = config.parse(config.env_overrides(raw, env), "x").janitor
    assert (j.emergency, j.orphan_age, j.check_every, j.warning) == (90, 12 * 3600, 60, 85)
    with pytest.raises(ConfigError, match="TEMP_STORAGE_CLEANUP_NOPE: not a setting"):
        config.env_overrides(raw, {"TEMP_STORAGE_CLEANUP_NOPE": "1"})
    with pytest.raises(ConfigError, match="janitor.emergency: must not be below"):
        config.parse(config.env_overrides(raw, {"TEMP_STORAGE_CLEANUP_EMERGENCY_CLEANUP_THRESHOLD": "50"}), "x")


@needs_fuse
def test_metrics_control_and_alerts(tmp_path: Path) -> None:
    hook, got = webhook_server()
    port = _free_port()
    store = init_store(tmp_path / "store", encrypted=True)
    conf = store / "seldonfs.toml"
    conf.write_text(conf.read_text() + f'\n[monitoring]\nport = {port}\n[alerts]\nquarantine_backlog = 1\n'
                    f'webhook = "http://127.0.0.1:{hook.server_port}/hook"\n')
    m = tmp_path / "mnt"
    base = f"http://127.0.0.1:{port}"
    try:
        with mounted(store, m, expect_log_problems=True):
            before = _samples(base + "/metrics")
            for i in range(20):
                (m / "input" / "processed" / f"f{i}.csv").write_text("a,b\n1,2\n" * 100)
            (m / "input" / "raw" / "broken.json").write_text("{not json")  # quarantined
            after = _samples(base + "/metrics")
            ok = lambda s, op: s.get(("seldonfs_operations_total", (("op", op), ("result", "ok"))), 0)  # noqa: E731
            assert ok(after, "create") >= ok(before, "create") + 21
            assert after[("seldonfs_bytes_total", (("direction", "written"),))] >= 20 * 800
            assert after[("seldonfs_validation_total", (("verdict", "quarantined"),))] == 1
            assert ("seldonfs_operation_seconds_count", (("op", "write"),)) in after

            # scraped during a workload: the counters only move forward
            def work() -> None:
                for i in range(300):
                    (m / "input" / "processed" / f"w{i}.csv").write_text("a,b\n1,2\n")

            writer = threading.Thread(target=work)
            seen = [ok(_samples(base + "/metrics"), "create")]
            writer.start()
            while writer.is_alive():
                seen.append(ok(_samples(base + "/metrics"), "create"))
            writer.join()
            seen.append(ok(_samples(base + "/metrics"), "create"))
            assert seen == sorted(seen) and seen[-1] >= seen[0] + 300 and len(seen) >= 3, seen

            # the control API: no token, a wrong one, the right one
            for headers in ({}, {"Authorization": "Bearer nope"}):
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(urllib.request.Request(base + "/api/v1/health", headers=headers), timeout=10)
                assert e.value.code == 401
                e.value.close()
            token = (store / "control.token").read_text().strip()
            assert (store / "control.token").stat().st_mode & 0o777 == 0o600
            req = urllib.request.Request(base + "/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                stats = json.loads(r.read())
            assert stats["bytes"]["written"] >= 20 * 800 and stats["quarantine_files"] == 1

            # alerts: the quarantine backlog reaches the webhook and output/notifications
            wait_for(lambda: any(a["kind"] == "quarantine-backlog" for a in got), timeout=30, what="webhook")
            notes = os.listdir(m / "output" / "notifications")
            assert any("quarantine-backlog" in n for n in notes), notes
            body = json.loads((m / "output" / "notifications" / notes[0]).read_text())
            assert body["level"] == "warning" and "quarantine" in body["message"]

            r = seldonfs("ctl", m, "health")  # root: let in by its credentials
            assert r.returncode == 0 and json.loads(r.stdout)["alerts"], r.stderr
            r = seldonfs("ctl", m, "cleanup", "scheduled")
            assert r.returncode == 0 and json.loads(r.stdout)["state"] == "done", r.stdout + r.stderr
            r = seldonfs("ctl", m, "reload")
            assert r.returncode == 0 and json.loads(r.stdout)["reloaded"], r.stderr
            r = seldonfs("stats", m, "--json")
            assert json.loads(r.stdout)["metrics_url"] == base + "/metrics"
            r = seldonfs("status")
            assert str(m) in r.stdout and "quarantine" in r.stdout, r.stdout
    finally:
        hook.shutdown()
        hook.server_close()
    recs = [json.loads(l) for l in seldonfs("audit", store, "--json").stdout.splitlines()]
    refused = [r for r in recs if r["op"] == "control"]
    assert [r["result"] for r in refused] == ["EACCES", "EACCES"]
    assert {r["detail"] for r in refused} == {"/api/v1/health: no token", "/api/v1/health: wrong token"}
    assert "not mounted" in seldonfs("status", store).stdout
    assert not (store / "control.sock").exists()


@needs_fuse
def test_the_socket_refuses_a_stranger_without_the_token(tmp_path: Path) -> None:
    """Root is let in by its credentials; another user needs the token."""
    store = init_store(tmp_path / "store", encrypted=False)
    for p in (store, tmp_path, *tmp_path.parents):  # let the other user reach the socket
        if p == Path(tempfile.gettempdir()) or p == p.parent:
            break
        p.chmod(p.stat().st_mode | 0o711)
    m = tmp_path / "mnt"
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "s.sendall(b'GET /api/v1/health HTTP/1.0\\r\\n' + sys.argv[2].encode() + b'\\r\\n\\r\\n')\n"
        "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
    )
    with mounted(store, m):
        sock = str(store / "control.sock")
        os.chmod(sock, 0o666)
        token = (store / "control.token").read_text().strip()
        assert as_user(65534, 65534, code, sock, "X-None: 1").stdout.split()[1] == "401"
        assert as_user(65534, 65534, code, sock, f"Authorization: Bearer {token}").stdout.split()[1] == "200"
        assert seldonfs("ctl", m, "health").returncode == 0


@needs_fuse
def test_the_mount_verifies_its_audit_chain_and_alerts_on_a_break(tmp_path: Path) -> None:
    import sqlite3

    store = init_store(tmp_path / "store", encrypted=False)
    configure(store, "audit", 'verify_every = "1s"')
    m = tmp_path / "mnt"
    stats = lambda: json.loads((m / "system" / "monitoring" / "stats.json").read_text())  # noqa: E731
    with mounted(store, m, expect_log_problems=True):
        for i in range(5):
            (m / "input" / "processed" / f"f{i}").write_text("x")
        wait_for(lambda: (stats()["audit_verify"] or {}).get("records", 0) >= 5, timeout=20, what="a verify")
        assert stats()["audit_verify"]["intact"] is True
        with sqlite3.connect(store / "catalog.sqlite") as db:  # someone edits the record of a write
            db.execute("UPDATE audit SET path = 'input/processed/other' WHERE seq = 3")
        wait_for(lambda: stats()["audit_verify"]["intact"] is False, timeout=20, what="the break")
        assert "edited at record 3" in stats()["audit_verify"]["break"]
        assert any(a["kind"] == "audit-verify" and a["level"] == "critical" for a in stats()["alerts"])
        assert json.loads(seldonfs("ctl", m, "health").stdout)["status"] == "degraded"


@needs_fuse
def test_a_busy_metrics_port_fails_the_mount_with_one_line(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        store = init_store(tmp_path / "store", encrypted=False)
        conf = store / "seldonfs.toml"
        conf.write_text(conf.read_text() + f"\n[monitoring]\nport = {busy.getsockname()[1]}\n")
        (tmp_path / "mnt").mkdir()
        r = seldonfs("mount", store, tmp_path / "mnt")
        assert r.returncode == 1 and not os.path.ismount(tmp_path / "mnt")
        assert r.stderr.strip().count("\n") == 0 and "cannot listen on 127.0.0.1" in r.stderr, r.stderr
        assert not (store / "control.sock").exists()
    finally:
        busy.close()


def _non_loopback_address(version: int) -> str | None:
    """An address of this machine (IPv4 or IPv6) that is not loopback nor
    link-local (`hostname -I`), or None."""
    import ipaddress
    import subprocess

    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for a in out.split():
        ip = ipaddress.ip_address(a)
        if ip.version == version and not ip.is_loopback and not ip.is_link_local:
            return a
    return None


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
                     r'(-?[0-9.e+-]+|[+-]Inf|NaN)$')


def _check_exposition(text: str) -> None:
    """Prometheus text format, line by line: every family has a HELP and a
    TYPE line before its samples, every sample line parses, names belong
    to the family announced last."""
    helped, typed, current = set(), {}, None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name in helped and name not in typed, line
            typed[name], current = kind, name
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name = m[1]
            family = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
            assert current is not None and (name == current or any(
                name == current + s for s in family.get(typed[current], ()))), (current, line)


@needs_fuse
@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_prometheus_scrapes_a_non_loopback_address(tmp_path: Path, version: int) -> None:
    """Issue 20 item 6: `[monitoring] address` set to one of this machine's
    non-loopback addresses; /metrics and / answer there without a token,
    the control API does not (403, token or not)."""
    import platform
    import time

    from seldonfs import __version__

    address = _non_loopback_address(version)
    if address is None:
        pytest.skip(f"no IPv{version} address but loopback and link-local on this machine (hostname -I)")
    with socket.socket(socket.AF_INET6 if version == 6 else socket.AF_INET) as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    store = init_store(tmp_path / "store", "--profile", "vision", encrypted=False)
    conf = store / "seldonfs.toml"
    assert "\n# [monitoring]\n# port = 0 " in conf.read_text()  # init shows the table, commented out
    conf.write_text(conf.read_text() + f'\n[monitoring]\nport = {port}\naddress = "{address}"\n')
    assert seldonfs("config", "check", store).returncode == 0
    m = tmp_path / "mnt"
    base = f"http://{address}:{port}" if version == 4 else f"http://[{address}]:{port}"
    before = time.time()
    with mounted(store, m):
        (m / "temp" / "cache" / "images" / "a.png").write_bytes(b"\x89PNG")
        with pytest.raises(OSError) as e:
            (m / "temp" / "cache").rmdir()  # an error result too
        assert e.value.errno == errno.ENOTEMPTY
        with urllib.request.urlopen(base + "/metrics?from=prometheus", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = r.read().decode()
        _check_exposition(text)
        openmetrics = urllib.request.Request(base + "/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4"})
        with urllib.request.urlopen(openmetrics, timeout=10) as r:  # what Prometheus asks for
            assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
            assert r.read().endswith(b"\n# EOF\n")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
        build = samples[("seldonfs_build_info", (("python", platform.python_version()), ("version", __version__)))]
        assert build == 1
        assert samples[("seldonfs_operations_total", (("op", "create"), ("result", "ok")))] >= 1
        assert samples[("seldonfs_operations_total", (("op", "rmdir"), ("result", "enotempty")))] >= 1
        results = {dict(k[1])["result"] for k in samples if k[0] == "seldonfs_operations_total"}
        assert results == {r.lower() for r in results}, results
        assert samples[("process_resident_memory_bytes", ())] > 1 << 20
        assert samples[("process_open_fds", ())] >= 3 and samples[("process_cpu_seconds_total", ())] > 0
        started = samples[("seldonfs_start_time_seconds", ())]
        assert samples[("process_start_time_seconds", ())] - 2 <= started and before - 2 <= started <= time.time()
        assert not any(k[0] == "seldonfs_uptime_seconds" for k in samples)
        kind = json.loads(seldonfs("stats", m, "--json").stdout)["transport"]["kind"]  # dev_fuse or io_uring
        assert [(k[1], v) for k, v in samples.items() if k[0] == "seldonfs_transport_info"] == [
            ((("transport", kind),), 1)]

        with urllib.request.urlopen(base + "/", timeout=10) as r:
            page = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/html") and '<a href="metrics">' in page
            assert f"seldonfs {__version__}" in page
        token = (store / "control.token").read_text().strip()
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            for method in ("GET", "POST"):
                path = "/api/v1/health" if method == "GET" else "/api/v1/cleanup/scheduled"
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(urllib.request.Request(base + path, headers=headers, method=method), timeout=10)
                assert e.value.code == 403 and "loopback only" in json.loads(e.value.read())["error"]
                e.value.close()
        assert json.loads(seldonfs("ctl", m, "health").stdout)["status"] == "ok"  # the socket still answers
        assert json.loads(seldonfs("stats", m, "--json").stdout)["metrics_url"] == base + "/metrics"
    log = (store / "seldonfs.log").read_text()
    assert f"metrics at {base}/metrics for anyone who reaches that address" in log


def test_metrics_of_folders_with_any_name(tmp_path: Path) -> None:
    """A folder whose name is not UTF-8, or holds a quote, a backslash or a
    newline, is a label like any other: the scrape does not fail."""
    from prometheus_client import generate_latest

    from seldonfs.metrics import Sources, registry

    data = tmp_path / "data"
    for name in (b"bad\xff", b'q"uote\\back\nline', b"plain"):
        (data / os.fsdecode(name) / "sub").mkdir(parents=True)
        (data / os.fsdecode(name) / "sub" / "f").write_bytes(b"12345")
    sources = Sources(None, data, tmp_path / "catalog.sqlite")
    sources._count_folders()
    sources._folders_at = float("inf")  # no second count in a thread
    text = generate_latest(registry(sources)).decode()
    _check_exposition(text)
    files = {s.labels["folder"]: s.value for fam in text_string_to_metric_families(text)
             for s in fam.samples if s.name == "seldonfs_folder_files"}
    assert files == {"bad\\xff": 1, "bad\\xff/sub": 1, 'q"uote\\back\\x0aline': 1, 'q"uote\\back\\x0aline/sub': 1,
                     "plain": 1, "plain/sub": 1}, files
