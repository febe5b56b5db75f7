"""seldonfs.toml -> frozen dataclasses, validated on load.

Every error names the file, the key and the problem, and ends the command
with exit code 13 (`ConfigError`). Profiles are TOML files shipped in
`seldonfs/profiles/`; `seldonfs init --profile NAME` copies one into the store.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ConfigError, UsageError

CONFIG_NAME = "seldonfs.toml"


@dataclass(frozen=True)
class MountConfig:
    entry_timeout: float = 30.0
    attr_timeout: float = 30.0
    negative_timeout: float = 30.0
    writeback_cache: bool | None = None  # None: "auto", on for encrypted stores
    spin_us: int = 200  # see fuseloop.py


@dataclass(frozen=True)
class FolderRule:
    path: str  # relative to the mount root, e.g. "input/raw"
    description: str = ""
    mode: int | None = None  # applied at init when set


@dataclass(frozen=True)
class Config:
    profile: str
    mount: MountConfig
    folders: tuple[FolderRule, ...]


def profile_names() -> list[str]:
    files = resources.files("seldonfs.profiles").iterdir()
    return sorted(f.name[: -len(".toml")] for f in files if f.name.endswith(".toml"))


def profile_text(name: str) -> str:
    if name not in profile_names():
        raise UsageError(
            f"unknown profile {name!r} (available: {', '.join(profile_names())})"
        )
    return resources.files("seldonfs.profiles").joinpath(f"{name}.toml").read_text()


def load(path: Path) -> Config:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(raw, str(path))


def parse(raw: dict[str, Any], where: str) -> Config:
    _only_keys(raw, {"store", "mount", "folders"}, where, "")
    store = _table(raw, "store", where, "")
    _only_keys(store, {"profile"}, where, "store.")
    profile = _get(store, "profile", str, where, "store.", "custom")
    mount = _parse_mount(_table(raw, "mount", where, ""), where)
    folders = tuple(
        _parse_folder(name, value, where)
        for name, value in _table(raw, "folders", where, "").items()
    )
    return Config(profile=profile, mount=mount, folders=folders)


def _parse_mount(t: dict[str, Any], where: str) -> MountConfig:
    d = MountConfig()
    _only_keys(t, set(d.__dataclass_fields__), where, "mount.")
    values = {}
    for key in ("entry_timeout", "attr_timeout", "negative_timeout"):
        v = _get(t, key, (int, float), where, "mount.", getattr(d, key))
        if not 0 <= v <= 86400:
            raise ConfigError(f"{where}: mount.{key}: must be 0..86400 seconds, got {v}")
        values[key] = float(v)
    wb = _get(t, "writeback_cache", (bool, str), where, "mount.", "auto")
    if isinstance(wb, str) and wb != "auto":
        raise ConfigError(f"{where}: mount.writeback_cache: want true, false or \"auto\", have {wb!r}")
    values["writeback_cache"] = None if wb == "auto" else wb
    values["spin_us"] = _get(t, "spin_us", int, where, "mount.", d.spin_us)
    if not 0 <= values["spin_us"] <= 10_000:
        raise ConfigError(f"{where}: mount.spin_us: must be 0..10000 microseconds")
    return MountConfig(**values)


def _parse_folder(name: str, t: Any, where: str) -> FolderRule:
    key = f"folders.{name!r}"
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise ConfigError(f"{where}: {key}: must be a relative path without '.' or '..'")
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: {key}: must be a table")
    _only_keys(t, {"description", "mode"}, where, key + ".")
    mode = _get(t, "mode", int, where, key + ".", None)
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ConfigError(f"{where}: {key}.mode: must be a permission mode like 0o750")
    return FolderRule(
        path=name, description=_get(t, "description", str, where, key + ".", ""), mode=mode
    )


def _table(t: dict[str, Any], key: str, where: str, prefix: str) -> dict[str, Any]:
    v = t.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: {prefix}{key}: must be a table")
    return v


def _only_keys(t: dict[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    for k in t:
        if k not in allowed:
            raise ConfigError(
                f"{where}: {prefix}{k}: unknown key (allowed: {', '.join(sorted(allowed))})"
            )


def _get(t: dict[str, Any], key: str, types: Any, where: str, prefix: str, default: Any) -> Any:
    if key not in t:
        return default
    v = t[key]
    # bool is an int subclass: `mode = true` must not pass as a number.
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise ConfigError(f"{where}: {prefix}{key}: wrong type {type(v).__name__}")
    return v
