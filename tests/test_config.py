"""config: profiles parse; errors name file, key and problem."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from seldonfs import config
from seldonfs.errors import ConfigError


@pytest.mark.parametrize("name", config.profile_names())
def test_shipped_profiles_parse(name: str) -> None:
    cfg = config.parse(tomllib.loads(config.profile_text(name)), name)
    assert cfg.profile == name
    assert len({f.path for f in cfg.folders}) == len(cfg.folders)


@pytest.mark.parametrize("text, want", [("true", True), ("false", False), ('"auto"', None)])
def test_writeback_setting(tmp_path: Path, text: str, want: bool | None) -> None:
    p = tmp_path / "seldonfs.toml"
    p.write_text(f"[mount]\nwriteback_cache = {text}\n")
    assert config.load(p).mount.writeback_cache is want


def test_defaults_for_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "seldonfs.toml"
    p.write_text("")
    cfg = config.load(p)
    assert cfg.mount == config.MountConfig() and cfg.folders == ()


@pytest.mark.parametrize(
    "text, message",
    [
        ("nonsense = [", "not valid TOML"),
        ("[mount]\nattr_timeout = -1\n", "mount.attr_timeout: must be 0..86400 seconds"),
        ("[mount]\nwriteback_cache = 1\n", "mount.writeback_cache: wrong type int"),
        ("[mount]\nwriteback_cache = 'sometimes'\n", "mount.writeback_cache: want true, false or \"auto\""),
        ('[folders."a"]\nmode = true\n', "folders.'a'.mode: wrong type bool"),
        ('[folders."a"]\nmode = 0o17777\n', "folders.'a'.mode: must be a permission mode"),
        ('[folders."/abs"]\n', "folders.'/abs': must be a relative path"),
        ("[surprise]\n", "surprise: unknown key"),
        ("mount = 3\n", "mount: must be a table"),
    ],
)
def test_errors_name_file_key_problem(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "seldonfs.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value)
    assert e.value.exit_code == 13


@pytest.mark.parametrize(
    "text, message",
    [
        ('[folders."c"]\nwrite_once = true\nmax_age = "7y"\npriority = 1\n', "c'.write_once: priority would take"),
        ('[folders."c"]\nwrite_once = true\nmax_total = "1GB"\n', "c'.write_once: max_total would take"),
        ('[folders."c"]\nwrite_once = true\npatterns = { "*.x" = "1d" }\n', "c'.write_once: patterns would take"),
        ('[folders."c"]\nwrite_once = true\nage_by = "atime"\n', 'c\'.write_once: age_by = "atime" would take'),
        ('[folders."c"]\nwrite_once = "yes"\n', "write_once: wrong type str"),
        ('[folders."r"]\naction = "archive"\narchive_to = "arch"\nmax_age = "1d"\n'
         '[folders."arch/x"]\nmax_age = "7y"\npriority = 5\n', "folders.'arch/x'.priority: archives (arch/)"),
    ],
)
def test_protected_folders_refuse_early_deletion(tmp_path: Path, text: str, message: str) -> None:
    """Issue 18: no key may take a write-once folder's files before their
    retention, and no archive folder opts into emergency cleanup."""
    p = tmp_path / "seldonfs.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        config.load(p)


def test_priority_is_opt_in(tmp_path: Path) -> None:
    p = tmp_path / "seldonfs.toml"
    p.write_text('[folders."a"]\nmax_age = "1d"\n[folders."b"]\nmax_age = "1d"\npriority = 0\n')
    assert [f.priority for f in config.load(p).folders] == [None, 0]
