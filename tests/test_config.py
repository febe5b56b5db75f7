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


THREE_PROBLEMS = (
    '[mount]\nattr_timeout = 30.0\nsurplus = 1\n'  # an unknown key
    '[janitor]\ncheck_every = "5 minutes"\n'  # a bad duration
    '[folders."a"]\nmode = 0o17777\nmax_age = "30d"\n'  # a bad folder mode
)
THREE_KEYS = ["mount.surplus", "janitor.check_every", "folders.'a'.mode"]


def test_parsing_collects_every_problem(tmp_path: Path) -> None:
    p = tmp_path / "seldonfs.toml"
    p.write_text(THREE_PROBLEMS)
    cfg, problems = config.check_file(p)
    assert [x.key for x in problems] == THREE_KEYS
    assert cfg is not None and cfg.folders[0].max_age == 30 * 86400  # the good keys still read
    with pytest.raises(ConfigError) as e:  # a mount names the first, and how many more
        config.load(p)
    assert str(e.value) == f"{p}: mount.surplus: unknown key (allowed: {', '.join(sorted(config.MountConfig.__dataclass_fields__))}) " \
        "(and 2 more problems: `seldonfs config check` lists all)"
    assert [x.key for x in e.value.problems] == THREE_KEYS and e.value.exit_code == 13


def test_config_check_names_all_problems(tmp_path: Path) -> None:
    import json

    from .conftest import init_store, seldonfs

    store = init_store(tmp_path / "store", "--profile", "reorg", encrypted=False)
    r = seldonfs("config", "check", store)
    assert r.returncode == 0 and r.stdout == f"{store / 'seldonfs.toml'}: no problems\n", r.stdout + r.stderr
    conf = store / "seldonfs.toml"
    conf.write_text(THREE_PROBLEMS)
    r = seldonfs("config", "check", store)
    assert r.returncode == 13, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(": ")[1] for line in lines] == THREE_KEYS and all(l.startswith(f"{conf}: ") for l in lines)
    assert "'5 minutes'" in lines[1] and "permission mode" in lines[2]
    assert r.stderr == f"seldonfs: {conf}: 3 problems\n"
    r = seldonfs("config", "check", conf, "--json")  # the file itself, as JSON
    doc = json.loads(r.stdout)
    assert r.returncode == 13 and doc["file"] == str(conf) and doc["ok"] is False
    assert [x["key"] for x in doc["problems"]] == THREE_KEYS and "unknown key" in doc["problems"][0]["message"]
    conf.write_text("[mount\n")
    r = seldonfs("config", "check", store, "--json")
    assert r.returncode == 13 and json.loads(r.stdout)["problems"][0]["key"] == ""
    assert "not valid TOML" in json.loads(r.stdout)["problems"][0]["message"]
    r = seldonfs("mount", store, tmp_path / "mnt")  # a mount refuses it with one line, exit 13
    assert r.returncode == 13 and "not valid TOML" in r.stderr and len(r.stderr.splitlines()) == 1
    assert seldonfs("config", "check", tmp_path / "nowhere").returncode == 14


@pytest.mark.parametrize("name", config.profile_names())
def test_init_shows_the_tables_a_profile_leaves_out_with_their_defaults(name: str) -> None:
    """seldonfs init's seldonfs.toml: [monitoring], [alerts], [audit]
    commented out; uncommented, they are the defaults, and commented they
    leave room for a script to append the table itself."""
    import re

    text = config.with_default_tables(config.profile_text(name))
    assert config.parse(tomllib.loads(text), name) == config.parse(tomllib.loads(config.profile_text(name)), name)
    kinds = {"monitoring": config.MonitoringConfig, "alerts": config.AlertsConfig, "audit": config.AuditConfig,
             "encryption": config.EncryptionConfig}
    left_out = [t for t in kinds if t not in tomllib.loads(config.profile_text(name))]
    assert left_out  # every profile leaves some to the defaults
    for table in left_out:
        assert f"\n# [{table}]\n" in text
        tomllib.loads(text + f"\n[{table}]\n")  # appending the table stays valid TOML
    shown = "\n".join(re.sub(r"^# (\[\w+\]|\w+ = \S+).*$", r"\1", line) for line in text.splitlines())
    cfg = config.parse(tomllib.loads(shown), name)
    assert [getattr(cfg, t) for t in left_out] == [kinds[t]() for t in left_out]
    keys = set(re.findall(r"^# (\w+) = ", text, re.M))
    fields = [f for t in left_out for f in kinds[t].__dataclass_fields__.values()]
    # a key that is off unless set is shown as an example, indented
    assert keys == {f.name for f in fields if f.default is not None}
    assert set(re.findall(r"^#   (\w+) = ", text, re.M)) == {f.name for f in fields if f.default is None}


def test_one_mistake_is_one_problem() -> None:
    """A key with a problem reads as its default: what depends on it is
    not reported as wrong too. Problems come in the file's order."""
    _, problems = config.check(tomllib.loads(
        '[policy.patterns]\nticket = "TCK-("\n'  # a broken pattern a folder uses
        '[janitor]\nwarning = "high"\nemergency = 90\n'  # a wrong type beside a valid threshold
        '[folders."a"]\nsensitive = ["ticket", "ssn"]\nroute = "("\nroute_to = "b/{name}"\n'
        '[folders."b"]\nmax_files = "many"\nallow_extensions = ["json", ".csv"]\n'
    ))
    assert [x.key for x in problems] == [
        "policy.patterns.ticket", "janitor.warning", "folders.'a'.route", "folders.'b'.max_files",
        "folders.'b'.allow_extensions",
    ], problems


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
