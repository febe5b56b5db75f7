"""The `user.seldon.*` attribute namespace: every name, and who may set what.

Stored attributes (kept on backing files, written by the filesystem only):
REASON and ORIGIN on a quarantined file, ORIGINAL on a file whose managed
name had to be shortened to fit 255 bytes, VERSION_OF on a kept version,
CREATOR on a folder under temp/, ARCHIVING on a file the janitor is
archiving (the folder of the attempt, so a resumed one finishes there),
RESIZING on an encrypted file while a write or truncate moves its end
(what to cut it to if that was killed halfway: blockformat.py),
UNSEALED on a file made in a write-once folder while its writer still
has it open (left by a mount that ended before that writer: engine.py),
REWRITING on a file of a folder that commits from its first change to its
next commit (left the same way: commit.py),
JOB on a file (the one name a writer may
set, through the mount). Control attributes are answered, never stored:
VERSIONS (read: a file's versions), RESTORE and RELEASE (write: act on a
file), JANITOR (on the mount root: read the janitor's state, write a run),
RECIPIENT (write: a distribution record of a file) and DISTRIBUTION (on
the mount root, write: a record's status); neither is ever readable.

`Namespace` routes a control attribute to the part of the mount that
serves it (the policy engine, the janitor); any other `user.seldon.*`
change through the mount is refused with EPERM. Trio thread only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

PREFIX = b"user.seldon."
REASON = b"user.seldon.reason"  # why a file is in quarantine
ORIGIN = b"user.seldon.origin"  # where it was written
JOB = b"user.seldon.job"  # the writer's job id (a writer may set it)
ORIGINAL = b"user.seldon.original"  # a committed file's whole name, where its new name had to be shortened
VERSION_OF = b"user.seldon.version"  # on a stored version: [path, saved_ns, cause]
CREATOR = b"user.seldon.creator"  # on a folder under temp/: the process that made it
ARCHIVING = b"user.seldon.archiving"  # on a file being archived: the folder its archive goes to
RESIZING = b"user.seldon.resizing"  # on a backing file while its end moves in two steps (blockformat.py)
UNSEALED = b"user.seldon.unsealed"  # on a new file of a write-once folder until its writer's last close
REWRITING = b"user.seldon.rewriting"  # on a file changed in a folder that commits, until its next commit
VERSIONS = b"user.seldon.versions"  # control, read: JSON list
RESTORE = b"user.seldon.restore"  # control, write: a version number
RELEASE = b"user.seldon.release"  # control, write: b"" or b"force"; root only
JANITOR = b"user.seldon.janitor"  # control, on the mount root: state / a run; root only
RECIPIENT = b"user.seldon.recipient"  # control, write: a distribution record; the file's owner or root
DISTRIBUTION = b"user.seldon.distribution"  # control, on the mount root, write: "ID STATUS"; store owner or root

#: Control attributes only root may write.
ROOT_ONLY = frozenset({RELEASE, JANITOR})

Getter = Callable[[int], "bytes | None"]  # (inode) -> value, None: not answered here
Setter = Callable[[int, bytes, int, int], None]  # (inode, value, uid, pid)


def reserved(name: bytes) -> bool:
    return name.startswith(PREFIX)


class Namespace:
    """Which part of the mount answers each control attribute."""

    def __init__(self) -> None:
        self._get: dict[bytes, Getter] = {}
        self._set: dict[bytes, Setter] = {}

    def serve(self, name: bytes, get: Getter | None = None, set: Setter | None = None) -> None:
        assert reserved(name), name
        if get is not None:
            self._get[name] = get
        if set is not None:
            self._set[name] = set

    def get(self, ino: int, name: bytes) -> bytes | None:
        """The value of a control attribute; None when no one answers it
        (then the stored attribute, if any, is read)."""
        fn = self._get.get(name)
        return None if fn is None else fn(ino)

    def set(self, ino: int, name: bytes, value: bytes, uid: int, pid: int) -> None:
        """Act on a control attribute; EPERM for any other reserved name
        and for a root-only one set by another user."""
        fn = self._set.get(name)
        if fn is None:
            raise OSError(errno.EPERM, "reserved attribute prefix")
        if name in ROOT_ONLY and uid != 0:
            raise OSError(errno.EPERM, "only root may set " + name.decode())
        fn(ino, value, uid, pid)
