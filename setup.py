"""The optional C parts: the sensitive-data scans (seldonfs/_scan.c), the
JSON and CSV structure checks (seldonfs/_structure.c) and FUSE over io_uring
(seldonfs/_uring.c, with libfuse3's and liburing's headers). Without a
compiler or those headers the install goes on: validation.py and
structure.py use their Python versions, and the mount serves over /dev/fuse."""

import subprocess

from setuptools import Extension, setup


def cflags(pkg: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", "--cflags", pkg], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


setup(ext_modules=[
    Extension("seldonfs._scan", ["seldonfs/_scan.c"], optional=True),
    Extension("seldonfs._structure", ["seldonfs/_structure.c"], optional=True),
    Extension("seldonfs._uring", ["seldonfs/_uring.c"], optional=True, extra_compile_args=cflags("fuse3"),
              libraries=["fuse3", "uring", "pthread"]),
])
