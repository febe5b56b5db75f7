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
    "ext": None,  # filled in below from COMPOUND_EXTS
}

#: Extensions of two suffixes that `{ext}`, `{stem}`, the `-N` of a name
#: taken and a shortened name keep whole (matched without regard to case):
#: `model.tar.gz` has the extension `.tar.gz`. Any other name's extension
#: is its last suffix: `report.v2.final.pdf` has `.pdf`.
COMPOUND_EXTS = tuple(
    f".{inner}.{outer}" for inner, outers in (
        ("tar", ("gz", "bz2", "xz", "zst", "lz4", "lzma", "lz", "br", "z")),
        ("nii", ("gz",)),
        ("csv", ("gz", "bz2", "xz", "zst")),
        ("json", ("gz", "bz2", "xz", "zst")),
        ("jsonl", ("gz", "bz2", "xz", "zst")),
        ("txt", ("gz",)),
        ("log", ("gz",)),
        ("sql", ("gz",)),
        ("warc", ("gz",)),
    ) for outer in outers
)
FIELDS["ext"] = "(?:(?i:" + "|".join(re.escape(e) for e in COMPOUND_EXTS) + r")|\.[^./]+)?"

NAME_MAX = 255  # bytes in one name (Linux)
_EXT_MAX = 16  # bytes of an extension kept when a name is shortened
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

    def render(self, now: datetime, job: str, seq: int, name: str, limit: int = NAME_MAX) -> str:
        """The managed name, at most `limit` bytes; only the fields the
        template uses are made (this runs at every commit). `now` is the
        time in the zone the name is to show (naming_time)."""
        return self.render_fitted(now, job, seq, name, limit)[0]

    def render_fitted(self, now: datetime, job: str, seq: int, name: str, limit: int = NAME_MAX) -> tuple[str, bool]:
        """`render`, and whether the written name had to be shortened."""
        f = self.fields
        values: dict[str, object] = {}
        # Formatted by hand: datetime.strftime took 9 us of a commit in the
        # daemon (its format is rewritten for %z and %f, then run by libc).
        if "ts" in f:
            values["ts"] = (f"{now.year:04d}-{now.month:02d}-{now.day:02d}-{now.hour:02d}-{now.minute:02d}-"
                            f"{now.second:02d}-{now.microsecond // 1000:03d}")
        if "stamp" in f:
            values["stamp"] = f"{now.year:04d}{now.month:02d}{now.day:02d}_{now.hour:02d}{now.minute:02d}{now.second:02d}"
        if "date" in f:
            values["date"] = f"{now.year:04d}-{now.month:02d}-{now.day:02d}"
        if "uuid" in f:
            values["uuid"] = secrets.token_hex(4)
        if "stem" in f or "ext" in f:
            values["stem"], values["ext"] = split_ext(name)
        out = self.text.format(job=job, seq=seq, name=name, **values)
        over = len(_enc(out)) - limit
        if over <= 0:
            return out, False
        # Too long for one name: the written name (or stem) gives way, so
        # the time, job, sequence and extension survive (docs/configuration.md).
        key = "stem" if "stem" in f else "name" if "name" in f else None
        if key is None:
            return fit(out, limit), True
        value = name if key == "name" else str(values["stem"])
        raw = _enc(value)
        tag = b"~" + hashlib.sha256(_enc(name)).hexdigest()[:8].encode()
        keep = len(raw) - over - len(tag)
        if key == "name":  # {name} holds the extension: cut before it
            stem, ext = split_ext(name)
            raw_stem, raw_ext = _enc(stem), _enc(ext)
            if len(raw_ext) > _EXT_MAX:
                raw_stem, raw_ext = raw, b""
            short = _cut(raw_stem, keep - len(raw_ext)) + tag + raw_ext
        else:
            short = _cut(raw, keep) + tag
        values[key] = os.fsdecode(short)
        if key == "name":
            name = values.pop("name")  # type: ignore[assignment]
        out = self.text.format(job=job, seq=seq, name=name, **values)
        return fit(out, limit), True  # fit: a template whose fixed parts alone are too long

    def is_managed(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None

    def parts(self, name: str) -> dict[str, str] | None:
        """The fields of a name this template made (job, seq, name...), or None."""
        m = self._regex.fullmatch(name)
        return m.groupdict() if m else None

    def held(self, name: str) -> tuple[str, str, int | None] | None:
        """(job, written name, sequence number) that a name this template
        made holds, as its file record names them; None for another name."""
        parts = self.parts(name)
        if parts is None:
            return None
        seq = parts.get("seq")
        return parts.get("job") or "", parts.get("name") or name, int(seq) if seq else None


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




def fit(name: str, limit: int = NAME_MAX) -> str:
    """`name` if it fits in `limit` bytes, else shortened deterministically:
    its start (cut at a character boundary), "~", 8 hex digits of a hash of
    the whole name (so two long names that share a start stay apart), and
    its extension. Names that grow at commit (managed names, quarantine
    stamps, archive suffixes) go through here; the full name is kept in
    the catalog and an attribute."""
    raw = _enc(name)
    if len(raw) <= limit:
        return name
    tag = b"~" + hashlib.sha256(raw).hexdigest()[:8].encode()
    s, e = split_ext(name)
    stem, ext = _enc(s), _enc(e)
    if len(ext) > _EXT_MAX:
        stem, ext = raw, b""
    return os.fsdecode(_cut(stem, limit - len(tag) - len(ext)) + tag + ext)


def _enc(name: str) -> bytes:
    """A name's bytes (os.fsencode); a lone surrogate no name read from
    the kernel can hold is written as UTF-8 would spell it."""
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")


def _cut(raw: bytes, n: int) -> bytes:
    """The first `n` bytes of `raw` (at least none), not ending inside a
    UTF-8 sequence."""
    head = raw[: max(0, n)]
    if len(head) == len(raw):
        return head
    while head and head[-1] & 0xC0 == 0x80:  # inside a UTF-8 sequence: back to its start
        head = head[:-1]
    if head and head[-1] >= 0xC0:
        head = head[:-1]
    return head


def split_ext(name: str) -> tuple[str, str]:
    """(stem, extension): the extension with its dot, one of COMPOUND_EXTS
    or else the last suffix; "" for a name without one (".bashrc" and
    "notes." too: the `{ext}` pattern must recognise what it made)."""
    low = name.lower()
    for ext in COMPOUND_EXTS:
        if low.endswith(ext) and len(name) > len(ext) and name[-len(ext) - 1] != "/":
            return name[: -len(ext)], name[-len(ext):]
    stem, dot, ext = name.rpartition(".")
    if not stem or not ext:  # ".bashrc", "notes." or no dot at all
        return name, ""
    return stem, dot + ext
