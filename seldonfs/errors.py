"""Domain exceptions; the user-facing ones carry the CLI exit code (SPEC §6).

A `SeldonError` is printed as one line without a traceback and ends the
command with its `exit_code` (pattern: s3ql's ``QuietError``).
"""


class SeldonError(Exception):
    """An error for people: one line, no traceback, a documented exit code."""

    exit_code = 1

    def __init__(self, msg: str, exit_code: int | None = None) -> None:
        super().__init__(msg)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SeldonError):
    exit_code = 2


class MountPointError(SeldonError):
    """Mount point missing, not a directory, not empty, already mounted, or
    busy at umount; not a SeldonFS mount (nor a mounted store) for umount,
    stats, top and ctl."""

    exit_code = 10


class StoreLockedError(SeldonError):
    """Another process (a mount, or an offline tool) holds the store."""

    exit_code = 11


class WrongKeyError(SeldonError):
    exit_code = 12


class ConfigError(SeldonError):
    """seldonfs.toml is unreadable or invalid; the message names file, key and
    problem (the first; `config check` lists every one), or `config check`
    found a problem."""

    exit_code = 13

    def __init__(self, msg: str, problems: list | tuple = ()) -> None:
        super().__init__(msg)
        self.problems = list(problems)


class NotAStoreError(SeldonError):
    """Not a SeldonFS store, or a store of an unsupported format version."""

    exit_code = 14


class DamageFound(SeldonError):
    """Damage found: by verify, fsck or audit verify; or the audit chain no
    longer matches its anchors, which a mount refuses until audit reset."""

    exit_code = 26
