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
