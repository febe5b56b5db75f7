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


_MAIL = '[alerts.email]\nhost = "smtp.example.com"\nfrom = "fs@example.com"\nto = ["ops@example.com"]\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ('[alerts]\nformat = "teams"\n', "alerts.format: want one of json, slack"),
        ('[alerts]\nfree_warning = "10GB"\nfree_critical = "20GB"\n', "alerts.free_critical: must not be above"),
        ('[alerts]\nquarantine_rate = 101\n', "alerts.quarantine_rate: must be 0..100"),
        ('[alerts.email]\nhost = "smtp.example.com"\nto = ["ops@example.com"]\n', "alerts.email.from: missing"),
        (_MAIL.replace("ops@", "ops@example.com\\r\\nBcc: evil@"), "alerts.email: want plain addresses"),
        (_MAIL.replace('["ops@example.com"]', "[]"), "alerts.email: want plain addresses"),
        (_MAIL + 'username = "u"\n', "alerts.email.password_file: needed with username"),
        (_MAIL + 'password = "secret"\n', "alerts.email.password: unknown key"),
        (_MAIL + 'password_file = "pw"\n', "alerts.email.password_file: want an absolute path"),
        ('[encryption]\nrotate_after = "soon"\n', "encryption.rotate_after"),
    ],
)
def test_alert_and_key_settings_refused(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "seldonfs.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config.load(p)


def test_alert_and_key_settings(tmp_path: Path) -> None:
    p = tmp_path / "seldonfs.toml"
    p.write_text('[alerts]\nformat = "slack"\nfree_warning = "50GB"\nfree_critical = "10GB"\nquarantine_wait = "0s"\n'
                 + _MAIL + 'port = 587\nstarttls = true\nusername = "u"\npassword_file = "/etc/seldonfs/smtp.pw"\n'
                 '[encryption]\nrotate_after = "30d"\n')
    cfg = config.load(p)
    assert (cfg.alerts.format, cfg.alerts.free_warning, cfg.alerts.free_critical, cfg.alerts.quarantine_wait) == (
        "slack", 50 * 10**9, 10 * 10**9, 0)
    assert cfg.alerts.email == config.EmailConfig(host="smtp.example.com", to=("ops@example.com",),
                                                  sender="fs@example.com", port=587, starttls=True, username="u",
                                                  password_file="/etc/seldonfs/smtp.pw")
    assert cfg.encryption.rotate_after == 30 * 86400
    assert config.load(tmp_path / "seldonfs.toml").encryption == config.parse({"encryption": {"rotate_after": "30d"}},
                                                                               "x").encryption
