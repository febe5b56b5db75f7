"""Which folder rule governs a path: pure lookups over the config.

A path follows the table of the deepest folder that contains it (a table
covers its whole subtree); at the same depth a literal path beats a glob.
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache

from .config import Config, FolderRule

_GLOB_CHARS = set("*?[")


def is_glob(path: str) -> bool:
    return bool(_GLOB_CHARS & set(path))


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    return len(pattern) <= len(parts) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern)
    )


class Rules:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.policy = cfg.policy
        # deepest first; literal before glob at equal depth
        self._ordered = sorted(
            ((tuple(r.path.split("/")), r) for r in cfg.folders),
            key=lambda pr: (-len(pr[0]), is_glob(pr[1].path)),
        )
        self.for_dir = lru_cache(maxsize=4096)(self._for_dir)

    def _for_dir(self, rel: str) -> FolderRule | None:
        """The rule for files directly inside directory `rel` ("" = root)."""
        parts = tuple(rel.split("/")) if rel else ()
        for pattern, rule in self._ordered:
            if _matches(pattern, parts):
                return rule
        return None

    def covering(self, rel: str) -> list[tuple[str, FolderRule]]:
        """Every table whose folder contains directory `rel` (not only the
        deepest), with the concrete folder: (folder, rule)."""
        parts = tuple(rel.split("/")) if rel else ()
        return [("/".join(parts[: len(p)]), r) for p, r in self._ordered if _matches(p, parts)]

    def rule_depth(self, rule: FolderRule) -> int:
        return len(rule.path.split("/"))

    @property
    def any_policy(self) -> bool:
        return any(
            r.naming or r.validates or r.route or r.versions or not r.files_at_root
            or r.allow_extensions or r.deny_names or r.max_size is not None or r.distribution
            for r in self.cfg.folders
        ) or self.policy.min_free > 0
