"""Profile "pixcrawler" (seed 004, PixCrawler's crawl jobs): its rules through a real mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import mount_profile, needs_fuse, profile_config

pytestmark = needs_fuse


def test_pixcrawler_job_folders(tmp_path: Path) -> None:
    store, m = mount_profile(tmp_path, "pixcrawler")
    with m:
        jobs = tmp_path / "mnt" / "temp" / "jobs"
        with pytest.raises(PermissionError):
            (jobs / "stray.jpg").write_bytes(b"x")  # only inside a job's folder
        (jobs / "job-42" / "chunk-1").mkdir(parents=True)
        (jobs / "job-42" / "chunk-1" / "img.jpg").write_bytes(b"x")
    j = profile_config("pixcrawler").janitor
    assert (j.warning, j.emergency, j.check_every, j.batch, j.orphan_age) == (85, 95, 300, 1000, 86400)


# --------------------------------------------------------------------------
# Seed 004's cleanup API, chunk cleanup, orphan age and emergency order
# (issue 18, "PixCrawler").

H = 3600.0
SEED_004_GETS = ("/api/v1/cleanup/stats", "/api/v1/cleanup/health")
SEED_004_POSTS = ("/api/v1/cleanup/scheduled", "/api/v1/cleanup/emergency", "/api/v1/cleanup/orphaned",
                  "/api/v1/cleanup/crash/job-9")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, method: str, path: str, token: str | None = None) -> tuple[int, dict]:
    """One request, the path sent exactly as given (no client-side normalising)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        body = r.read()
        return r.status, json.loads(body) if body else {}
    finally:
        conn.close()


def _pix_mount(tmp_path: Path, **kw):
    """A pixcrawler store (plain: STORE/data can be aged) whose control API
    listens on a free port; (store, mount context, port)."""
    port = _free_port()
    store, m = mount_profile(tmp_path, "pixcrawler", **kw)
    conf = store / "seldonfs.toml"
    conf.write_text(conf.read_text() + f"\n[monitoring]\nport = {port}\n")
    return store, m, port


def _finished(port: int, token: str, task: dict) -> dict:
    """Poll seed 004's task status endpoint until the task has ended."""
    import time

    deadline = time.monotonic() + 120
    while True:
        code, doc = _api(port, "GET", f"/api/v1/cleanup/task/{task['task_id']}/status", token)
        assert code == 200, doc
        if doc["status"] in ("SUCCESS", "FAILURE"):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)


def _exited_writer(*paths: Path) -> None:
    """A process that makes each folder (its creator) with a file in it, and exits."""
    import subprocess
    import sys

    code = "import os, sys\nfor p in sys.argv[1:]:\n    os.makedirs(p)\n    open(p + '/img.jpg', 'wb').write(b'x' * 100)\n"
    subprocess.run([sys.executable, "-c", code, *map(str, paths)], check=True)


def _age(data: Path, rel: str, seconds: float) -> None:
    """Set the mtime (and atime) of rel and everything under it in the backing
    store back by `seconds`, files before their folders."""
    import os
    import time

    t = time.time() - seconds
    top = data / rel
    if not top.is_dir():
        os.utime(top, (t, t), follow_symlinks=False)
        return
    for d, dirs, files in os.walk(top, topdown=False):
        for n in files:
            os.utime(os.path.join(d, n), (t, t), follow_symlinks=False)
        os.utime(d, (t, t), follow_symlinks=False)


def test_pixcrawler_seed_004_paths_want_the_token(tmp_path: Path) -> None:
    """Each seed-004 path: 401 without the token and with a wrong one (each
    refusal audited), its answer with it; task ids are random, not paths."""
    import json
    import re

    from .conftest import seldonfs

    store, m, port = _pix_mount(tmp_path)
    with m:
        token = (store / "control.token").read_text().strip()
        for method, path in [("GET", p) for p in SEED_004_GETS] + [("POST", p) for p in SEED_004_POSTS] + [
                ("POST", "/api/v1/cleanup/chunk/job-9/chunk-1"), ("GET", "/api/v1/cleanup/task/0/status")]:
            for bad in (None, "x" * 64):
                code, doc = _api(port, method, path, bad)
                assert code == 401 and doc["error"] == ("no token" if bad is None else "wrong token"), (path, doc)
        code, stats = _api(port, "GET", "/api/v1/cleanup/stats", token)
        assert code == 200
        assert stats["storage"]["warning_threshold"] == 85 and stats["storage"]["emergency_threshold"] == 95
        assert stats["storage"]["used_bytes"] + stats["storage"]["free_bytes"] == stats["storage"]["total_bytes"]
        assert set(stats["cleanup"]) >= {"files_deleted", "bytes_freed", "runs", "last_run"}
        code, health = _api(port, "GET", "/api/v1/cleanup/health", token)
        assert code == 200 and health["status"] == "ok" and health["janitor"]["enabled"], health
        ids = []
        for path in SEED_004_POSTS:
            code, task = _api(port, "POST", path, token)
            assert code == 202 and re.fullmatch(r"[0-9a-f]{32}", task["task_id"]), task
            ids.append(task["task_id"])
            done = _finished(port, token, task)
            assert done["state"] == "done" and done["files_deleted"] == 0 and "duration_s" in done, done
        assert len(set(ids)) == len(ids)
        code, stats = _api(port, "GET", "/api/v1/cleanup/stats", token)
        assert stats["cleanup"]["runs"] == len(SEED_004_POSTS) and stats["cleanup"]["last_run"]["trigger"] == "crash"
        for path in ("/api/v1/cleanup/task/../status", "/api/v1/cleanup/task/1/status",
                     f"/api/v1/cleanup/task/{ids[0]}/../status", "/api/v1/cleanup/stats/x"):
            assert _api(port, "GET", path, token)[0] == 404, path
        # the old paths stay (documented in docs/operations.md)
        assert _api(port, "GET", f"/api/v1/tasks/{ids[0]}", token)[1]["task_id"] == ids[0]
        assert _api(port, "GET", "/api/v1/health", token)[0] == 200
        r = seldonfs("ctl", tmp_path / "mnt", "cleanup", "stats", "--token-file", store / "control.token")
        assert r.returncode == 0 and json.loads(r.stdout)["storage"]["emergency_threshold"] == 95, r.stderr
        r = seldonfs("ctl", tmp_path / "mnt", "task", ids[1])
        assert r.returncode == 0 and json.loads(r.stdout)["kind"] == "emergency", r.stderr
    recs = [json.loads(l) for l in seldonfs("audit", store, "--json").stdout.splitlines()]
    refused = [r["detail"] for r in recs if r["op"] == "control"]
    assert "/api/v1/cleanup/stats: no token" in refused and "/api/v1/cleanup/crash/job-9: wrong token" in refused


def test_pixcrawler_chunk_done_removes_exactly_that_chunk(tmp_path: Path) -> None:
    """`POST /api/v1/cleanup/chunk/JOB/CHUNK` and `seldonfs ctl MNT chunk
    JOB CHUNK` remove temp/jobs/JOB/CHUNK with all in it and nothing else;
    an id that would reach outside it is refused (400, ctl: exit 2)."""
    import os

    from .conftest import seldonfs

    store, m, port = _pix_mount(tmp_path)
    with m:
        token = (store / "control.token").read_text().strip()
        jobs = tmp_path / "mnt" / "temp" / "jobs"
        keep = ["j1/chunk-10/a.jpg", "j1/chunk-2/a.jpg", "j1/chunk-1x/a.jpg", "j2/chunk-1/a.jpg", "j1/chunk-1.jpg/a"]
        gone = ["j1/chunk-1/a.jpg", "j1/chunk-1/deep/b.jpg", "j1/ü 3/c.jpg"]
        for rel in keep + gone:
            (jobs / rel).parent.mkdir(parents=True, exist_ok=True)
            (jobs / rel).write_bytes(b"y" * 1000)
        # hostile ids: all refused, nothing removed
        for path in ("/api/v1/cleanup/chunk/j1/..", "/api/v1/cleanup/chunk/j1/%2e%2e",
                     "/api/v1/cleanup/chunk/..%2Fj1/chunk-2", "/api/v1/cleanup/chunk/j1/chunk-2%2F..",
                     "/api/v1/cleanup/chunk/j1/chunk%00-2", "/api/v1/cleanup/chunk/j1/%FF",
                     "/api/v1/cleanup/chunk/j1/chunk-2%0a", "/api/v1/cleanup/chunk/j1/" + "x" * 256,
                     "/api/v1/cleanup/crash/..", "/api/v1/cleanup/crash/%2e"):
            code, doc = _api(port, "POST", path, token)
            assert code == 400, (path, code, doc)
        for path in ("/api/v1/cleanup/chunk/j1", "/api/v1/cleanup/chunk/j1/chunk-2/x", "/api/v1/cleanup/chunk/j1//"):
            assert _api(port, "POST", path, token)[0] in (400, 404), path
        assert sorted(str(p.relative_to(jobs)) for p in jobs.rglob("*") if p.is_file()) == sorted(keep + gone)

        # a chunk "folder" that is a symlink out of the store: nothing behind it is touched
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "precious").write_text("keep")
        os.symlink(outside, store / "data" / "temp" / "jobs" / "j1" / "evil")
        done = _finished(port, token, _api(port, "POST", "/api/v1/cleanup/chunk/j1/evil", token)[1])
        assert done["result"]["planned"] == 0 and (outside / "precious").exists(), done
        os.unlink(store / "data" / "temp" / "jobs" / "j1" / "evil")

        code, task = _api(port, "POST", "/api/v1/cleanup/chunk/j1/chunk-1", token)
        assert code == 202
        done = _finished(port, token, task)
        assert done["files_deleted"] == 2 and done["bytes_freed"] == 2000, done
        assert not (jobs / "j1" / "chunk-1").exists()
        r = seldonfs("ctl", tmp_path / "mnt", "chunk", "j1", "ü 3")  # percent-encoded on the way
        assert r.returncode == 0 and '"files_deleted": 1' in r.stdout, r.stdout + r.stderr
        for bad in (["chunk", "j1", ".."], ["chunk", "j1"], ["chunk", "j1", "a/b"], ["crash", ".."]):
            r = seldonfs("ctl", tmp_path / "mnt", *bad)
            assert r.returncode == 2 and r.stderr.count("\n") == 1, (bad, r.stderr)
        left = sorted(str(p.relative_to(jobs)) for p in jobs.rglob("*") if p.is_file())
        assert left == sorted(keep), left
        assert sorted(os.listdir(jobs / "j1")) == ["chunk-1.jpg", "chunk-10", "chunk-1x", "chunk-2"]


def test_pixcrawler_orphan_needs_its_creator_gone_and_24h(tmp_path: Path) -> None:
    """A job folder whose creator exited stays until nothing in it changed
    for orphan_age (24 h); one still written to, or whose creator runs,
    stays however old its folders are."""
    import os
    import subprocess

    store, m, port = _pix_mount(tmp_path)
    data = store / "data"
    with m:
        token = (store / "control.token").read_text().strip()
        jobs = tmp_path / "mnt" / "temp" / "jobs"
        _exited_writer(jobs / "young" / "chunk-0", jobs / "old" / "chunk-0", jobs / "writing" / "chunk-0")
        live = subprocess.Popen(["sh", "-c", f"mkdir -p {jobs / 'live' / 'chunk-0'} && echo made && read x"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert live.stdout.readline() == "made\n"
            (jobs / "live" / "chunk-0" / "img.jpg").write_bytes(b"z")
            _age(data, "temp/jobs/young", 23 * H)  # gone, but younger than 24 h
            _age(data, "temp/jobs/old", 25 * H)
            _age(data, "temp/jobs/live", 48 * H)  # old, but its creator runs
            _age(data, "temp/jobs/writing", 48 * H)
            _age(data, "temp/jobs/writing/chunk-0/img.jpg", 1 * H)  # written an hour ago
            code, task = _api(port, "POST", "/api/v1/cleanup/orphaned", token)
            assert code == 202
            done = _finished(port, token, task)
            assert sorted(os.listdir(jobs)) == ["live", "writing", "young"], done
            assert done["files_deleted"] == 1, done
            _age(data, "temp/jobs/young", 25 * H)  # a day has passed for it, too
            _finished(port, token, _api(port, "POST", "/api/v1/cleanup/orphaned", token)[1])
            assert sorted(os.listdir(jobs)) == ["live", "writing"]
        finally:
            live.stdin.close()
            live.wait()
            live.stdout.close()
    import json

    from .conftest import seldonfs

    recs = [json.loads(l) for l in seldonfs("audit", store, "--json").stdout.splitlines()]
    why = {r["path"]: r["detail"] for r in recs if r["op"] == "janitor-rmdir"}
    assert "its creator is gone and it is untouched for 1d" in why["temp/jobs/old"], why


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="mounts a tmpfs")
def test_pixcrawler_emergency_frees_temp_jobs_in_seed_004_order(tmp_path: Path) -> None:
    """Past 95 %, emergency cleanup deletes from temp/jobs down to 85 %:
    first the files of a job whose creator is gone (though they are the
    newest), then a live job's files oldest first; what else fills the
    disk stays."""
    import errno
    import os
    import subprocess
    import time

    from seldonfs.host import disk_usage

    from .conftest import init_store, mounted, small_disk

    with small_disk(tmp_path / "small", 32) as small:
        port = _free_port()
        store = init_store(small / "store", "--profile", "pixcrawler", encrypted=False)
        conf = store / "seldonfs.toml"
        conf.write_text(conf.read_text() + f"\n[monitoring]\nport = {port}\n")
        m = tmp_path / "mnt"
        with mounted(store, m, expect_log_problems=True):
            token = (store / "control.token").read_text().strip()
            jobs = m / "temp" / "jobs"
            mib = os.urandom(1 << 20)
            live = subprocess.Popen(["sh", "-c", f"mkdir -p {jobs / 'live' / 'chunk-0'} && echo made && read x"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert live.stdout.readline() == "made\n"
                now = time.time()
                for i in range(6):  # older than the orphan's files
                    p = jobs / "live" / "chunk-0" / f"l{i}.jpg"
                    p.write_bytes(mib)
                    os.utime(p, (now - 10 * H + i, now - 10 * H + i))
                _exited_writer(jobs / "gone" / "chunk-0")
                for i in range(3):
                    (jobs / "gone" / "chunk-0" / f"g{i}.jpg").write_bytes(mib)
                _, used, total = disk_usage(small)
                with open(small / "other", "wb") as other:  # something else fills the disk to ~96.5 %
                    try:
                        other.write(os.urandom(total * 965 // 1000 - used))
                    except OSError as e:  # the mount's own audit and catalog writes got there first
                        assert e.errno == errno.ENOSPC
                assert disk_usage(small)[0] >= 95
                code, task = _api(port, "POST", "/api/v1/cleanup/emergency", token)
                assert code == 202
                done = _finished(port, token, task)
                assert done["state"] == "done", done
                assert disk_usage(small)[0] < 85 or done["bytes_freed"] >= used - total * 85 // 100
                assert os.listdir(jobs / "gone" / "chunk-0") == [], done  # all of the orphan's files first
                left = sorted(os.listdir(jobs / "live" / "chunk-0"))
                assert 3 <= len(left) < 6 and left == [f"l{i}.jpg" for i in range(6 - len(left), 6)], left
                assert (small / "other").exists()
            finally:
                live.stdin.close()
                live.wait()
                live.stdout.close()


def test_pixcrawler_orphan_age_is_the_newest_mtime_inside() -> None:
    """The planner: creator gone and orphan_wait: an orphan only when the
    folder and everything in it are older than orphan_age; a file that
    arrived with an old mtime still renewed its folder's mtime."""
    from seldonfs.janitor import Entry, Listed, plan

    cfg = profile_config("pixcrawler")
    now = 2_000_000_000.0
    d = lambda rel, age, alive=False: Entry(rel, 0, now - age, now - age, True, alive)  # noqa: E731
    f = lambda rel, age: Entry(rel, 10, now - age, now - age)  # noqa: E731
    entries = Listed([
        d("temp/jobs/a", 30 * H), d("temp/jobs/a/c", 30 * H), f("temp/jobs/a/c/x", 30 * H),
        d("temp/jobs/b", 30 * H), d("temp/jobs/b/c", 2 * H), f("temp/jobs/b/c/x", 30 * H),  # x copied in 2 h ago
        d("temp/jobs/c", 30 * H), d("temp/jobs/c/c", 30 * H), f("temp/jobs/c/c/x", 1 * H),  # still written
        d("temp/jobs/e", 30 * H, alive=True), f("temp/jobs/e/x", 30 * H),
        d("temp/jobs/u", 30 * H, alive=None), f("temp/jobs/u/x", 30 * H),  # no creator on record
    ])
    gone = {a.rel for a in plan(now, cfg, entries)}
    assert gone == {"temp/jobs/a", "temp/jobs/a/c", "temp/jobs/a/c/x", "temp/jobs/u", "temp/jobs/u/x"}, gone
