"""A hypothesis state machine drives random file operations through the real
mount and checks every read, size and listing against an in-memory model."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from .conftest import needs_fuse

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
OFFSETS = st.integers(min_value=0, max_value=300_000)
DATA = st.binary(min_size=0, max_size=70_000)


class FsMachine(RuleBasedStateMachine):
    base: Path  # set per run

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base))
        self.files: dict[str, int] = {}  # name -> model inode
        self.contents: dict[int, bytearray] = {}
        self.inos = itertools.count()

    def _path(self, name: str) -> Path:
        return self.dir / name

    @rule(name=NAMES)
    def create(self, name: str) -> None:
        fd = os.open(self._path(name), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.close(fd)
        if name in self.files:
            self.contents[self.files[name]][:] = b""
        else:
            ino = next(self.inos)
            self.files[name] = ino
            self.contents[ino] = bytearray()

    @precondition(lambda self: self.files)
    @rule(data=st.data(), off=OFFSETS, payload=DATA)
    def pwrite(self, data, off: int, payload: bytes) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        fd = os.open(self._path(name), os.O_WRONLY)
        try:
            assert os.pwrite(fd, payload, off) == len(payload)
        finally:
            os.close(fd)
        buf = self.contents[self.files[name]]
        if payload:
            if len(buf) < off:
                buf.extend(b"\0" * (off - len(buf)))
            buf[off : off + len(payload)] = payload

    @precondition(lambda self: self.files)
    @rule(data=st.data(), payload=DATA)
    def append(self, data, payload: bytes) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        with open(self._path(name), "ab") as f:
            f.write(payload)
        self.contents[self.files[name]].extend(payload)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), size=OFFSETS)
    def truncate(self, data, size: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        os.truncate(self._path(name), size)
        buf = self.contents[self.files[name]]
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(b"\0" * (size - len(buf)))

    @precondition(lambda self: self.files)
    @rule(data=st.data(), off=OFFSETS, size=st.integers(0, 200_000))
    def pread(self, data, off: int, size: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        fd = os.open(self._path(name), os.O_RDONLY)
        try:
            got = os.pread(fd, size, off)
        finally:
            os.close(fd)
        assert got == bytes(self.contents[self.files[name]][off : off + size])

    @precondition(lambda self: self.files)
    @rule(data=st.data(), new=NAMES)
    def rename(self, data, new: str) -> None:
        old = data.draw(st.sampled_from(sorted(self.files)))
        os.rename(self._path(old), self._path(new))
        if self.files.get(new) == self.files[old]:
            return  # POSIX: renaming a hard link onto another of its names changes nothing
        self.files[new] = self.files.pop(old)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def unlink(self, data) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        os.unlink(self._path(name))
        del self.files[name]

    @precondition(lambda self: self.files)
    @rule(data=st.data(), new=NAMES)
    def link(self, data, new: str) -> None:
        old = data.draw(st.sampled_from(sorted(self.files)))
        if new in self.files:
            return
        os.link(self._path(old), self._path(new))
        self.files[new] = self.files[old]

    @invariant()
    def listing_and_sizes_match(self) -> None:
        assert sorted(os.listdir(self.dir)) == sorted(self.files)
        by_ino: dict[int, int] = {}
        for name, ino in self.files.items():
            st_ = os.stat(self._path(name))
            assert st_.st_size == len(self.contents[ino]), name
            assert by_ino.setdefault(ino, st_.st_ino) == st_.st_ino, "hard links share an inode"


@needs_fuse
def test_random_operations_match_model(plain: Path) -> None:
    FsMachine.base = plain
    run_state_machine_as_test(
        FsMachine,
        settings=settings(
            max_examples=80, stateful_step_count=50, deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
