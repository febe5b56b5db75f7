"""The optional C parts: the sensitive-data scans (seldonfs/_scan.c) and the
JSON and CSV structure checks (seldonfs/_structure.c). Without a compiler
the install goes on, and validation.py and structure.py use their Python
versions."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("seldonfs._scan", ["seldonfs/_scan.c"], optional=True),
    Extension("seldonfs._structure", ["seldonfs/_structure.c"], optional=True),
])
