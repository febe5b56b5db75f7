"""Managed names: templates like ``{ts}-{job}-{seq:03d}_{name}``.

Pure functions; the fields are documented in docs/configuration.md. A
template also yields a regular expression that recognises names it made, so
a name that is already managed is never renamed again.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
import secrets
import string
from datetime import datetime, timezone

FIELDS = {
    "ts": r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}",
    "stamp": r"\d{8}_\d{6}",
    "date": r"\d{4}-\d{2}-\d{2}",
    "job": r"[A-Za-z0-9][A-Za-z0-9._-]*",
    "seq": r"\d+",
    "uuid": r"[0-9a-f]{8}",
    "name": r".+",
    "stem": r".+",
    "ext": r"(?:\.[^./]+)?",
}
_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TemplateError(ValueError):
    pass


class Template:
    def __init__(self, text: str) -> None:
        self.text = text
        parts = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise TemplateError(f"not a valid template: {e}") from None
        names = set()
        self.seq_max: int | None = None  # the largest number {seq} may show (its width's), None: no width
        for literal, fname, spec, conv in parsed:
            parts.append(re.escape(literal))
            if fname is None:
                continue
            if fname not in FIELDS or conv:
                raise TemplateError(f"unknown field {{{fname}}} (known: {', '.join(FIELDS)})")
            if spec and fname != "seq":
                raise TemplateError(f"only {{seq}} takes a format, not {{{fname}:{spec}}}")
            width = re.fullmatch(r"0?([1-9][0-9]?)d?", spec or "")
            if fname == "seq" and width:
                top = 10 ** int(width[1]) - 1
                self.seq_max = top if self.seq_max is None else min(self.seq_max, top)
            # a field's first use is a named group: `parts()` reads names back
            parts.append(FIELDS[fname] if fname in names else f"(?P<{fname}>{FIELDS[fname]})")
            names.add(fname)
        if not names & {"name", "stem", "uuid", "seq"}:
            raise TemplateError("names would repeat: use {name}, {stem}, {uuid} or {seq}")
        if "/" in text:
            raise TemplateError("must not contain '/'")
        self.uses_seq = "seq" in names
        self.fields = frozenset(names)
        self._regex = re.compile("".join(parts), re.DOTALL)
        try:
            self.render(datetime(2000, 1, 1, tzinfo=timezone.utc), "JOB", 1, "x.txt")
        except (ValueError, KeyError) as e:
            raise TemplateError(f"cannot be filled in: {e}") from None

    def render(self, now: datetime, job: str, seq: int, name: str) -> str:
        """The managed name; only the fields the template uses are made
        (this runs at every commit)."""
        f = self.fields
        values: dict[str, object] = {}
        if "ts" in f:
            values["ts"] = now.strftime("%Y-%m-%d-%H-%M-%S-") + f"{now.microsecond // 1000:03d}"
        if "stamp" in f:
            values["stamp"] = now.strftime("%Y%m%d_%H%M%S")
        if "date" in f:
            values["date"] = now.strftime("%Y-%m-%d")
        if "uuid" in f:
            values["uuid"] = secrets.token_hex(4)
        if "stem" in f or "ext" in f:
            stem, dot, ext = name.rpartition(".")
            if not stem:  # ".bashrc" or no dot at all
                stem, ext = name, ""
            else:
                ext = dot + ext
            values["stem"], values["ext"] = stem, ext
        return self.text.format(job=job, seq=seq, name=name, **values)

    def is_managed(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None

    def parts(self, name: str) -> dict[str, str] | None:
        """The fields of a name this template made (job, seq, name...), or None."""
        m = self._regex.fullmatch(name)
        return m.groupdict() if m else None


def is_temporary(name: str, patterns: tuple[str, ...]) -> bool:
    """Names that never commit: rsync's, editors' and downloaders' temp files."""
    return _temp_regex(patterns).match(name) is not None


@functools.lru_cache(maxsize=16)
def _temp_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.DOTALL)


def clean_job(job: str | None, default: str) -> str:
    """A job id safe inside a name, or `default`."""
    if job and _JOB.match(job):
        return job
    return default


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f]")


def shown(name: str | bytes) -> str:
    """A name or path as text safe to print or put in JSON: bytes that are
    not UTF-8 and control characters (newline, ESC...) as \\xNN, as the
    audit chain writes undecodable bytes. Rich tables take it as `Text`,
    never as markup."""
    if isinstance(name, str):
        if name.isascii() and name.isprintable():
            return name
        name = os.fsencode(name)
    text = name.decode("utf-8", "backslashreplace")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


NAME_MAX = 255  # bytes in one name (Linux)
_EXT_MAX = 16  # bytes of an extension kept when a name is shortened


def fit(name: str, limit: int = NAME_MAX) -> str:
    """`name` if it fits in `limit` bytes, else shortened deterministically:
    its start (cut at a character boundary), "~", 8 hex digits of a hash of
    the whole name (so two long names that share a start stay apart), and
    its extension. Names that grow at commit (managed names, quarantine
    stamps, archive suffixes) go through here; the full name is kept in
    the catalog and an attribute."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    tag = b"~" + hashlib.sha256(raw).hexdigest()[:8].encode()
    stem, dot, ext = raw.rpartition(b".")
    if not stem or len(ext) + 1 > _EXT_MAX:
        stem, dot, ext = raw, b"", b""
    head = stem[: limit - len(tag) - len(dot) - len(ext)]
    while head and head[-1] & 0xC0 == 0x80:  # inside a UTF-8 sequence: back to its start
        head = head[:-1]
    if head and head[-1] >= 0xC0:
        head = head[:-1]
    return os.fsdecode(head + tag + dot + ext)
