"""seldonfs.toml -> frozen dataclasses, validated on load.

Every error names the file, the key and the problem, and ends the command
with exit code 13 (`ConfigError`). Profiles are TOML files shipped in
`seldonfs/profiles/`; `seldonfs init --profile NAME` copies one into the store.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from croniter import croniter

from .errors import ConfigError, UsageError

CONFIG_NAME = "seldonfs.toml"


@dataclass(frozen=True)
class MountConfig:
    entry_timeout: float = 30.0
    attr_timeout: float = 30.0
    negative_timeout: float = 30.0
    writeback_cache: bool | None = None  # None: "auto", on for encrypted stores
    spin_us: int = 200  # see fuseloop.py
    max_inodes: int = 0  # files the kernel may hold at once; 0: 70 % of the descriptor limit


DEFAULT_TEMP_PATTERNS = (".*", "*.tmp", "*.part", "*.swp", "*~")
SENSITIVE_BUILTIN = ("ssn", "card", "aws_key", "private_key")


@dataclass(frozen=True)
class FolderRule:
    """One [folders."PATH"] table; docs/configuration.md explains each key."""

    path: str  # relative to the mount root, e.g. "input/raw"; may hold globs
    description: str = ""
    mode: int | None = None  # applied at init when set
    # naming
    naming: str | None = None
    job: str = "JOB"
    # validation
    files_at_root: bool = True
    allow_extensions: tuple[str, ...] = ()
    deny_names: tuple[str, ...] = ()
    max_size: int | None = None
    allow_mime: tuple[str, ...] = ()
    check_extension: bool = False
    check_structure: bool = False
    sensitive: tuple[str, ...] = ()
    on_invalid: str = "quarantine"
    quarantine: str | None = None
    # routing
    route: str | None = None
    route_to: str | None = None
    route_unmatched: str = "leave"
    route_retries: int = 3
    # versioning
    versions: int = 0
    # retention (the janitor's)
    max_age: float | None = None
    age_by: str = "mtime"
    max_total: int | None = None
    max_files: int | None = None
    evict: str = "oldest"
    action: str = "delete"
    archive_to: str | None = None
    move_to: str | None = None
    archive_after: float | None = None
    patterns: tuple[tuple[str, float], ...] = ()
    remove_empty_dirs: bool = False
    orphan_sessions: bool = False
    schedule: str | None = None
    priority: int = 100
    warn_percent: int | None = None

    @property
    def validates(self) -> bool:
        """True when a commit has to read the file's contents."""
        return bool(self.allow_mime or self.check_extension or self.check_structure or self.sensitive)


@dataclass(frozen=True)
class PolicyConfig:
    temp_patterns: tuple[str, ...] = DEFAULT_TEMP_PATTERNS
    quarantine: str = "input/quarantine"
    grace: float = 10.0
    temp_max_age: float = 3600.0  # a temporary name left this long in a checked folder commits like any
    patterns: tuple[tuple[str, str], ...] = ()  # extra sensitive patterns: name, regex
    min_free: int = 0  # percent


@dataclass(frozen=True)
class JanitorConfig:
    warning: int = 85
    emergency: int = 95
    check_every: float = 300.0
    batch: int = 1000
    schedule: str = "60m"
    orphan_age: float = 86400.0


@dataclass(frozen=True)
class MonitoringConfig:
    port: int = 0  # /metrics and the control API on 127.0.0.1:port; 0: off (the socket stays)
    metrics: bool = True  # count requests (off: the operation metrics stay empty)
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class EmailConfig:
    """[alerts.email]: one message per alert through SMTP."""

    host: str
    to: tuple[str, ...]
    sender: str  # the key is `from`
    port: int = 25
    starttls: bool = False
    username: str = ""
    password_file: str = ""  # read at each send, never kept in the toml


@dataclass(frozen=True)
class AlertsConfig:
    cooldown: float = 900.0  # the same alert again only after this long
    notifications: str = "output/notifications"  # folder for JSON files; "" = none
    webhook: str = ""  # URL that gets each alert as a JSON POST; "" = none
    format: str = "json"  # of the webhook's body: "json" (the alert) or "slack" ({"text": ...})
    email: EmailConfig | None = None
    quarantine_backlog: int = 100  # files waiting in quarantine that raise an alert
    quarantine_rate: int = 0  # percent of the last hour's files quarantined that raise an alert; 0 = off
    quarantine_wait: float = 7 * 86400.0  # oldest file waiting in quarantine longer raises an alert; 0 = off
    free_warning: int = 0  # bytes free on the store's disk below which disk-free-warning; 0 = off
    free_critical: int = 0  # ... disk-free-critical; 0 = off


@dataclass(frozen=True)
class EncryptionConfig:
    rotate_after: float = 90 * 86400.0  # a master key older raises key-age; 0 = never


@dataclass(frozen=True)
class AuditConfig:
    enabled: bool = True
    reads: bool = False  # a record per handle that read, too
    verify_every: float = 86400.0  # the mount verifies its chain this often; 0: never


@dataclass(frozen=True)
class Config:
    profile: str
    mount: MountConfig
    folders: tuple[FolderRule, ...]
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    janitor: JanitorConfig = field(default_factory=JanitorConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)


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
    return parse(env_overrides(raw, os.environ), str(path))


#: Seed 004's environment variables and the keys they set (`[janitor]`);
#: values in its units (percent, hours, minutes).
ENV_PREFIX = "TEMP_STORAGE_CLEANUP_"
ENV_KEYS = {
    "EMERGENCY_CLEANUP_THRESHOLD": ("emergency", lambda v: round(float(v))),
    "WARNING_THRESHOLD": ("warning", lambda v: round(float(v))),
    "MAX_ORPHAN_AGE_HOURS": ("orphan_age", lambda v: f"{float(v):g}h"),
    "CLEANUP_BATCH_SIZE": ("batch", int),
    "SCHEDULED_CLEANUP_INTERVAL_MINUTES": ("schedule", lambda v: f"{float(v):g}m"),
    "EMERGENCY_CHECK_INTERVAL_MINUTES": ("check_every", lambda v: f"{float(v):g}m"),
}


def env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """`raw` with the TEMP_STORAGE_CLEANUP_* variables of `env` applied."""
    janitor = dict(raw.get("janitor", {}))
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = ENV_KEYS.get(name[len(ENV_PREFIX):])
        if key is None:
            raise ConfigError(f"${name}: not a setting (known: {', '.join(ENV_PREFIX + k for k in ENV_KEYS)})")
        try:
            janitor[key[0]] = key[1](value)
        except ValueError:
            raise ConfigError(f"${name}: not a number: {value!r}") from None
    return {**raw, "janitor": janitor} if janitor or "janitor" in raw else raw


def parse(raw: dict[str, Any], where: str) -> Config:
    _only_keys(raw, {"store", "mount", "policy", "janitor", "audit", "monitoring", "alerts", "encryption",
                    "folders"}, where, "")
    store = _table(raw, "store", where, "")
    _only_keys(store, {"profile"}, where, "store.")
    profile = _get(store, "profile", str, where, "store.", "custom")
    mount = _parse_mount(_table(raw, "mount", where, ""), where)
    policy = _parse_policy(_table(raw, "policy", where, ""), where)
    folders = tuple(
        _parse_folder(name, value, where, policy)
        for name, value in _table(raw, "folders", where, "").items()
    )
    janitor = _parse_janitor(_table(raw, "janitor", where, ""), where)
    a = _table(raw, "audit", where, "")
    _only_keys(a, {"enabled", "reads", "verify_every"}, where, "audit.")
    audit = AuditConfig(
        enabled=_get(a, "enabled", bool, where, "audit.", True),
        reads=_get(a, "reads", bool, where, "audit.", False),
        verify_every=_Reader(a, where, "audit.").duration("verify_every", 86400.0) or 0.0,
    )
    m = _Reader(_only(raw, "monitoring", MonitoringConfig, where), where, "monitoring.")
    monitoring = MonitoringConfig(
        port=m.integer("port", 0, 0, 65535), address=m.get("address", str, "127.0.0.1"),
        metrics=m.get("metrics", bool, True),
    )
    if monitoring.address not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(f"{where}: monitoring.address: loopback only (127.0.0.1, ::1), have {monitoring.address!r}")
    alerts = _parse_alerts(raw, where)
    e = _Reader(_only(raw, "encryption", EncryptionConfig, where), where, "encryption.")
    encryption = EncryptionConfig(rotate_after=e.duration("rotate_after", EncryptionConfig.rotate_after) or 0.0)
    return Config(
        profile=profile, mount=mount, folders=folders, policy=policy, janitor=janitor, audit=audit,
        monitoring=monitoring, alerts=alerts, encryption=encryption,
    )


def _parse_alerts(raw: dict[str, Any], where: str) -> AlertsConfig:
    d = AlertsConfig()
    t = _table(raw, "alerts", where, "")
    _only_keys(t, set(d.__dataclass_fields__), where, "alerts.")
    al = _Reader(t, where, "alerts.")
    alerts = AlertsConfig(
        cooldown=al.duration("cooldown", d.cooldown), notifications=al.get("notifications", str, d.notifications),
        webhook=al.get("webhook", str, ""), format=al.choice("format", ("json", "slack"), d.format),
        email=_parse_email(al.table("email"), where),
        quarantine_backlog=al.integer("quarantine_backlog", d.quarantine_backlog, 1, 10**9),
        quarantine_rate=al.percent("quarantine_rate", d.quarantine_rate),
        quarantine_wait=al.duration("quarantine_wait", d.quarantine_wait) or 0.0,
        free_warning=al.size("free_warning", d.free_warning), free_critical=al.size("free_critical", d.free_critical),
    )
    if alerts.webhook and not alerts.webhook.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: alerts.webhook: want an http:// or https:// URL, have {alerts.webhook!r}")
    if alerts.free_warning and alerts.free_critical > alerts.free_warning:
        raise ConfigError(f"{where}: alerts.free_critical: must not be above alerts.free_warning")
    return alerts


def _parse_email(t: dict[str, Any], where: str) -> EmailConfig | None:
    if not t:
        return None
    keys = {"host", "port", "starttls", "username", "password_file", "from", "to"}
    _only_keys(t, keys, where, "alerts.email.")
    r = _Reader(t, where, "alerts.email.")
    for key in ("host", "from", "to"):
        if key not in t:
            raise ConfigError(f"{where}: alerts.email.{key}: missing (an [alerts.email] table needs host, from, to)")
    to = r.strings("to", ())
    addresses = (r.get("from", str, ""), *to)
    if not to or any(not a or "@" not in a or any(c.isspace() or c in '<>,;"' or not c.isprintable() for c in a) for a in addresses):
        raise ConfigError(f"{where}: alerts.email: want plain addresses like ops@example.com in from and to")
    host = r.get("host", str, "")
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"{where}: alerts.email.host: want a host name, have {host!r}")
    cfg = EmailConfig(
        host=host, to=to, sender=addresses[0], port=r.integer("port", 25, 1, 65535),
        starttls=r.get("starttls", bool, False), username=r.get("username", str, ""),
        password_file=r.get("password_file", str, ""),
    )
    if cfg.password_file and not cfg.password_file.startswith("/"):
        raise ConfigError(f"{where}: alerts.email.password_file: want an absolute path, have {cfg.password_file!r}")
    if cfg.username and not cfg.password_file:
        raise ConfigError(f"{where}: alerts.email.password_file: needed with username (the password is never in the toml)")
    return cfg


def _only(raw: dict[str, Any], name: str, kind: type, where: str) -> dict[str, Any]:
    t = _table(raw, name, where, "")
    _only_keys(t, set(kind.__dataclass_fields__), where, name + ".")
    return t


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
    values["max_inodes"] = _get(t, "max_inodes", int, where, "mount.", d.max_inodes)
    if values["max_inodes"] and not 100 <= values["max_inodes"] <= 100_000_000:
        raise ConfigError(f"{where}: mount.max_inodes: must be 0 (automatic) or 100..100000000")
    return MountConfig(**values)


def _parse_policy(t: dict[str, Any], where: str) -> PolicyConfig:
    d = PolicyConfig()
    _only_keys(t, set(d.__dataclass_fields__), where, "policy.")
    r = _Reader(t, where, "policy.")
    patterns = r.table("patterns")
    for name, rx in patterns.items():
        if not isinstance(rx, str):
            raise ConfigError(f"{where}: policy.patterns.{name}: must be a regular expression string")
        _regex(rx, where, f"policy.patterns.{name}")
    return PolicyConfig(
        temp_patterns=r.strings("temp_patterns", d.temp_patterns),
        quarantine=r.path("quarantine", d.quarantine),
        grace=r.duration("grace", d.grace),
        temp_max_age=r.duration("temp_max_age", d.temp_max_age),
        patterns=tuple(patterns.items()),
        min_free=r.percent("min_free", d.min_free, top=99),  # 100 % free cannot be had
    )


def _parse_janitor(t: dict[str, Any], where: str) -> JanitorConfig:
    d = JanitorConfig()
    _only_keys(t, set(d.__dataclass_fields__), where, "janitor.")
    r = _Reader(t, where, "janitor.")
    cfg = JanitorConfig(
        warning=r.percent("warning", d.warning),
        emergency=r.percent("emergency", d.emergency),
        check_every=r.duration("check_every", d.check_every),
        batch=r.integer("batch", d.batch, 1, 1_000_000),
        schedule=r.schedule("schedule", d.schedule),
        orphan_age=r.duration("orphan_age", d.orphan_age),
    )
    if cfg.emergency < cfg.warning:
        raise ConfigError(f"{where}: janitor.emergency: must not be below janitor.warning")
    return cfg


def _parse_folder(name: str, t: Any, where: str, policy: PolicyConfig) -> FolderRule:
    key = f"folders.{name!r}"
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise ConfigError(f"{where}: {key}: must be a relative path without '.' or '..'")
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: {key}: must be a table")
    d = FolderRule(path=name)
    _only_keys(t, set(d.__dataclass_fields__) - {"path"}, where, key + ".")
    r = _Reader(t, where, key + ".")
    mode = r.get("mode", int, None)
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ConfigError(f"{where}: {key}.mode: must be a permission mode like 0o750")
    naming = r.get("naming", str, None)
    if naming is not None:
        from .naming import Template, TemplateError  # naming imports config

        try:
            Template(naming)
        except TemplateError as e:
            raise ConfigError(f"{where}: {key}.naming: {e}") from None
    sensitive = r.strings("sensitive", ())
    known = set(SENSITIVE_BUILTIN) | {n for n, _ in policy.patterns}
    for s in sensitive:
        if s not in known:
            raise ConfigError(
                f"{where}: {key}.sensitive: unknown check {s!r} (known: {', '.join(sorted(known))})"
            )
    route = r.get("route", str, None)
    route_to = r.get("route_to", str, None)
    if route is not None:
        groups = set(_regex(route, where, f"{key}.route").groupindex)
        if route_to is None:
            raise ConfigError(f"{where}: {key}.route_to: required with route")
        for fname in re.findall(r"{(\w+)", route_to):
            if fname not in groups | {"name"}:
                raise ConfigError(
                    f"{where}: {key}.route_to: {{{fname}}} is not a named group of route"
                )
    extensions = r.strings("allow_extensions", ())
    for ext in extensions:
        if not ext.startswith("."):
            raise ConfigError(f"{where}: {key}.allow_extensions: {ext!r} must start with '.'")
    patterns = r.table("patterns")
    return FolderRule(
        path=name,
        description=r.get("description", str, ""),
        mode=mode,
        naming=naming,
        job=r.get("job", str, d.job),
        files_at_root=r.get("files_at_root", bool, True),
        allow_extensions=tuple(e.lower() for e in extensions),
        deny_names=r.strings("deny_names", ()),
        max_size=r.size("max_size", None),
        allow_mime=r.strings("allow_mime", ()),
        check_extension=r.get("check_extension", bool, False),
        check_structure=r.get("check_structure", bool, False),
        sensitive=sensitive,
        on_invalid=r.choice("on_invalid", ("quarantine", "reject"), d.on_invalid),
        quarantine=r.path("quarantine", None) or policy.quarantine,
        route=route,
        route_to=route_to,
        route_unmatched=r.choice("route_unmatched", ("leave", "quarantine"), d.route_unmatched),
        route_retries=r.integer("route_retries", d.route_retries, 0, 100),
        versions=r.integer("versions", 0, 0, 10_000),
        max_age=r.duration("max_age", None),
        age_by=r.choice("age_by", ("mtime", "atime"), d.age_by),
        max_total=r.size("max_total", None),
        max_files=r.integer("max_files", None, 1, 10**12),
        evict=r.choice("evict", ("oldest", "lru"), d.evict),
        action=r.choice("action", ("delete", "archive", "move"), d.action),
        archive_to=r.path("archive_to", None),
        move_to=r.path("move_to", None),
        archive_after=r.duration("archive_after", None),
        patterns=tuple(
            (glob, parse_duration(v, where, f"{key}.patterns.{glob}")) for glob, v in patterns.items()
        ),
        remove_empty_dirs=r.get("remove_empty_dirs", bool, False),
        orphan_sessions=r.get("orphan_sessions", bool, False),
        schedule=r.schedule("schedule", None),
        priority=r.integer("priority", d.priority, 0, 10_000),
        warn_percent=r.percent("warn_percent", None),
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w|y)\s*$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_B = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


def parse_duration(v: Any, where: str, key: str) -> float:
    m = _DURATION.match(v) if isinstance(v, str) else None
    if m is None:
        raise ConfigError(f"{where}: {key}: want a duration like \"90s\", \"12h\" or \"30d\", have {v!r}")
    return float(m[1]) * _DURATION_S[m[2]]


def _regex(v: str, where: str, key: str) -> re.Pattern[str]:
    try:
        return re.compile(v)
    except re.error as e:
        raise ConfigError(f"{where}: {key}: not a valid regular expression: {e}") from None


class _Reader:
    """Typed access to one TOML table; errors name the key."""

    def __init__(self, t: dict[str, Any], where: str, prefix: str) -> None:
        self.t, self.where, self.prefix = t, where, prefix

    def _err(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {self.prefix}{key}: {problem}")

    def get(self, key: str, types: Any, default: Any) -> Any:
        return _get(self.t, key, types, self.where, self.prefix, default)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.get(key, list, None)
        if v is None:
            return default
        if not all(isinstance(x, str) for x in v):
            raise self._err(key, "must be a list of strings")
        return tuple(v)

    def table(self, key: str) -> dict[str, Any]:
        return self.get(key, dict, {})

    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int | None:
        v = self.get(key, int, default)
        if v is not None and not lo <= v <= hi:
            raise self._err(key, f"must be {lo}..{hi}, have {v}")
        return v

    def percent(self, key: str, default: int | None, top: int = 100) -> int | None:
        return self.integer(key, default, 0, top)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        v = self.get(key, str, default)
        if v not in choices:
            raise self._err(key, f"want one of {', '.join(choices)}, have {v!r}")
        return v

    def duration(self, key: str, default: float | None) -> float | None:
        return default if key not in self.t else parse_duration(self.t[key], self.where, self.prefix + key)

    def size(self, key: str, default: int | None) -> int | None:
        if key not in self.t:
            return default
        v = self.t[key]
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        m = _SIZE.match(v) if isinstance(v, str) else None
        if m is None:
            raise self._err(key, f"want a size like \"100MB\" or \"10GiB\", have {v!r}")
        return int(float(m[1]) * _SIZE_B[m[2]])

    def path(self, key: str, default: str | None) -> str | None:
        v = self.get(key, str, default)
        if v is not None and (
            not v or v.startswith("/") or any(p in ("", ".", "..") for p in v.split("/"))
        ):
            raise self._err(key, "must be a relative path without '.' or '..'")
        return v

    def schedule(self, key: str, default: str | None) -> str | None:
        v = self.get(key, str, default)
        if v is None or key not in self.t:
            return v
        if _DURATION.match(v):
            return v
        if croniter.is_valid(v):
            return v
        raise self._err(key, f"want a duration like \"60m\" or a cron expression like \"0 2 * * *\", have {v!r}")


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
