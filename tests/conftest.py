"""Fixtures: fresh stores, and real mounts through /dev/fuse.

A mount runs `seldonfs mount -f` in a subprocess; the fixture waits for the
mount point, yields, and always runs `fusermount3 -u -z` and ends the process,
also when the test failed (pattern: pyfuse3 test/util.py). A mount whose
daemon logged a warning or error fails the test unless the test says it
expects one.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

SELDONFS = [sys.executable, "-m", "seldonfs"]

fuse_available = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
needs_fuse = pytest.mark.skipif(not fuse_available, reason="needs /dev/fuse and fusermount3")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def seldonfs(*args: str, check: bool = False, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(SELDONFS + [str(a) for a in args], check=check, **kw)


def keyfile_of(store: Path) -> Path:
    """Where the tests keep a store's key file: beside it, never inside."""
    return store.with_name(store.name + ".key")


def init_store(path: Path, *extra: str, encrypted: bool = True) -> Path:
    args = ["--keyfile", keyfile_of(path)] if encrypted else ["--no-encryption"]
    seldonfs("init", path, *args, *extra, check=True)
    return path


def key_args(store: Path) -> list[str]:
    k = keyfile_of(store)
    return ["--keyfile", str(k)] if k.exists() else []


@pytest.fixture(params=["encrypted", "plain"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    # Other users (tests that drop privileges) must reach the mount: open the
    # 0700 directories pytest makes for traversal only.
    for p in (tmp_path, *tmp_path.parents):
        if p == Path(tempfile.gettempdir()) or p == p.parent:
            break
        p.chmod(p.stat().st_mode | 0o711)
    return init_store(tmp_path / "store", encrypted=request.param == "encrypted")


def wait_for(pred, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def log_problems(store: Path, since: int = 0) -> list[str]:
    """The WARNING and ERROR lines of the daemon's log from byte `since` on."""
    log = store / "seldonfs.log"
    if not log.exists():
        return []
    with open(log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [l for l in text.splitlines() if " WARNING " in l or " ERROR " in l]


def unmount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


@contextmanager
def mounted(store: Path, mnt: Path, opts: str = "allow_other", expect_log_problems: bool = False,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A mount of `store` at `mnt` in the foreground, unmounted at the end;
    `env` adds to the daemon's environment (e.g. SELDONFS_FAULTS)."""
    mnt.mkdir(exist_ok=True)
    log = store / "seldonfs.log"
    since = log.stat().st_size if log.exists() else 0  # an earlier mount's lines are its own
    errlog = open(store.parent / f"mount-{mnt.name}.stderr", "w+")
    proc = subprocess.Popen(
        SELDONFS + ["mount", "-f", *(["-o", opts] if opts else []), *key_args(store), str(store), str(mnt)],
        stdin=subprocess.DEVNULL, stdout=errlog, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, what="mount")
        if proc.poll() is not None:
            errlog.seek(0)
            raise RuntimeError(f"mount failed (exit {proc.returncode}): {errlog.read()}")
        yield proc
    finally:
        unmount(mnt)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        errlog.close()
    problems = log_problems(store, since)
    if problems and not expect_log_problems:
        pytest.fail("daemon logged problems:\n" + "\n".join(problems))


@contextmanager
def small_disk(path: Path, mib: int) -> Iterator[Path]:
    """A `mib` MiB tmpfs mounted at `path` (needs root) for full-disk
    tests; unmounted (lazily) at the end, also when the test failed."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def webhook_server() -> tuple[HTTPServer, list[dict]]:
    """A running local HTTP server that keeps the JSON body of every POST
    (an alerts webhook); the caller shuts it down."""
    got: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


@pytest.fixture
def mnt(store: Path, tmp_path: Path) -> Iterator[Path]:
    """A mounted default store; yields the mount point."""
    m = tmp_path / "mnt"
    with mounted(store, m):
        yield m


@pytest.fixture
def plain(mnt: Path) -> Path:
    """A folder whose policy neither renames nor validates: behaves like a local disk."""
    return mnt / "input" / "processed"


# The test interpreter may live where other users cannot read it (/root/...);
# code run as another user needs only the standard library.
OTHER_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def as_user(uid: int, gid: int, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run python `code` as another user (no supplementary groups)."""
    return subprocess.run(
        [OTHER_PYTHON, "-c", code, *args], user=uid, group=gid, extra_groups=[],
        capture_output=True, text=True, cwd="/",
    )


def mount_profile(tmp_path: Path, profile: str, encrypted: bool = False, **kw):
    """A fresh store of `profile` and its (not yet entered) mount at tmp_path/mnt."""
    store = init_store(tmp_path / "store", "--profile", profile, encrypted=encrypted)
    return store, mounted(store, tmp_path / "mnt", **kw)


def configure(store: Path, table: str, *lines: str) -> None:
    """Add `lines` ("key = value") to `[table]` of the store's
    seldonfs.toml, into the table when the profile has one already."""
    conf = store / "seldonfs.toml"
    text = conf.read_text()
    head = f"[{table}]\n"
    body = "".join(line + "\n" for line in lines)
    if text.startswith(head) or f"\n{head}" in text:
        i = text.index(head) if text.startswith(head) else text.index(f"\n{head}") + 1
        text = text[:i + len(head)] + body + text[i + len(head):]
    else:
        text += f"\n{head}{body}"
    conf.write_text(text)


def profile_config(profile: str):
    """The shipped `profile` as loaded (a seldonfs.config.Config)."""
    import tomllib

    from seldonfs import config

    return config.parse(tomllib.loads(config.profile_text(profile)), profile)


def profile_rule(profile: str, path: str):
    """The loaded folder rule of `path` in the shipped `profile`."""
    (r,) = [f for f in profile_config(profile).folders if f.path == path]
    return r


def stored(store: Path, rel: str) -> bytes:
    """A file's contents as the store holds them, decrypted with the test key
    when the store is encrypted: what survives the mount."""
    from seldonfs.blockformat import EncryptedFile
    from seldonfs.keys import KeySource, unlock
    from seldonfs.store import Store

    path = store / "data" / rel
    block = Store(store).identity().get("encryption")
    if block is None:
        return path.read_bytes()
    keys = unlock(block, KeySource(keyfile=keyfile_of(store)))
    fd = os.open(path, os.O_RDONLY)
    try:
        ef = EncryptedFile(fd, keys, block["current_key_id"], block["block_size"])
        return ef.read(0, ef.size())
    finally:
        os.close(fd)


def archive_day(folder: Path) -> Path:
    """The one dated folder (YYYY/MM/DD) the janitor archived into under
    `folder` (its date is the archiving's, so a test never guesses it)."""
    import re

    days = [p for p in folder.glob("*/*/*") if p.is_dir()]
    assert len(days) == 1, days
    assert re.fullmatch(r"\d{4}/\d\d/\d\d", str(days[0].relative_to(folder))), days[0]
    return days[0]


@pytest.fixture(scope="session")
def guarded() -> memoryview:
    """Three pages, the first and last PROT_NONE: a read past either end of
    data laid against them faults (the C scans and checks must read nothing
    outside what they are given)."""
    page = mmap.PAGESIZE
    mm = mmap.mmap(-1, 3 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base, page, 0) == 0 and libc.mprotect(base + 2 * page, page, 0) == 0
    return memoryview(mm)
