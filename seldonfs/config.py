"""seldonfs.toml -> frozen dataclasses, validated on load.

Every problem names the file, the key and what is wrong; parsing goes on
past a problem and collects them all (`check`, `check_file`: what
`seldonfs config check` prints), and `parse`/`load` raise `ConfigError`
(exit code 13) with the first one in its message and all of them in its
`problems`. Profiles are TOML files shipped in
`seldonfs/profiles/`; `seldonfs init --profile NAME` copies one into the store.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import ipaddress
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
    io_uring: bool | None = None  # None: "auto", when the kernel offers it (uring.py)
    max_inodes: int = 0  # files the kernel may hold at once; 0: 70 % of the descriptor limit


DEFAULT_TEMP_PATTERNS = (".*", "*.tmp", "*.part", "*.swp", "*~")
SENSITIVE_BUILTIN = ("ssn", "card", "aws_key", "private_key")
AUDIT_PERIODS = ("daily", "weekly", "monthly")  # [audit] segment: one per UTC day, ISO week or month


@dataclass(frozen=True)
class FolderRule:
    """One [folders."PATH"] table; docs/configuration.md explains each key."""

    path: str  # relative to the mount root, e.g. "input/raw"; may hold globs
    description: str = ""
    mode: int | None = None  # applied at init when set
    # naming
    naming: str | None = None
    job: str = "JOB"
    naming_time: str = "utc"  # or "local": the zone of the times in managed names
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
    # duplicates: a file of the same name and content as one committed here before is dropped
    dedupe: bool = False
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
    orphan_wait: bool = False  # an orphan only once also untouched for [janitor] orphan_age
    schedule: str | None = None
    priority: int | None = None  # None: emergency cleanup never deletes here
    warn_percent: int | None = None
    # distribution tracking (distributions.py)
    distribution: bool = False
    distribution_expiry: float = 30 * 86400.0
    distribution_action: str = "archive"
    # protection
    write_once: bool = False  # no change through the mount until max_age has passed (policy.held)

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
    port: int = 0  # /metrics (and on a loopback address the control API) on address:port; 0: off (the socket stays)
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
    segment: int | str | None = None  # seal old records into segment files: every N records, or per period
    segments_to: str = "archive/audit"  # the folder of the tree that holds them
    retain: float | None = None  # seconds a segment is kept at least (None: for ever)
    forward: str = "none"  # each record also to "journal" or "syslog" (audit_forward.py)


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


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a configuration: the key's dotted path ("" for
    the file as a whole) and what is wrong with it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


#: What `seldonfs init` appends for each of these tables its profile leaves
#: out: the table and its keys, commented out, with their defaults (tests
#: check that they are). All commented out: a script that appends the
#: table itself (`[monitoring]`, `port = 9464`) still makes a valid file.
DEFAULT_TABLES = {
    "monitoring": """
# Monitoring (docs/operations.md). STORE/control.sock always serves /metrics
# and the control API (seldonfs ctl); a port serves them over HTTP too.
# To change a setting, uncomment the table's line and the key's.
# [monitoring]
# port = 0                   # e.g. 9464 for Prometheus; 0: the socket only
# address = "127.0.0.1"      # loopback: /metrics and the API (token). Any other
#                            # address (0.0.0.0, ::, one of this machine's IPs):
#                            # / and /metrics only, to anyone who reaches it
# metrics = true             # count every request: operation, result, latency
""",
    "alerts": """
# Alerts (docs/operations.md): to the log, notification files, a webhook, mail.
# [alerts]
# cooldown = "15m"           # the same kind of alert again only after this long
# notifications = "output/notifications"  # a JSON file per alert; "" for none
# webhook = ""               # an http(s):// URL each alert is POSTed to
# format = "json"            # the webhook's body; "slack": {"text": ...}
# quarantine_backlog = 100   # files waiting in quarantine that raise an alert
# quarantine_rate = 0        # percent of the last hour's files quarantined; 0: off
# quarantine_wait = "7d"     # the oldest file in quarantine waiting longer; "0s": off
# free_warning = 0           # bytes free on the store's disk, e.g. "50GB"; 0: off
# free_critical = 0          # e.g. "10GB"; 0: off
# Off unless set: one mail per alert (the password only in password_file):
#   email = {host = "smtp.example.com", port = 587, starttls = true, username = "alerts", password_file = "/etc/seldonfs/smtp.pw", from = "seldonfs@example.com", to = ["ops@example.com"]}
""",
    "encryption": """
# The master key (docs/configuration.md).
# [encryption]
# rotate_after = "90d"       # an older master key raises key-age; "0s": never
""",
    "audit": """
# The audit chain (docs/audit.md).
# [audit]
# enabled = true
# reads = false              # also a record per handle that read
# verify_every = "24h"       # the mount verifies its chain this often; 0: never
# segments_to = "archive/audit"  # where sealed segments go (docs/audit.md "Segments")
# forward = "none"           # each record also to "journal" or "syslog" (docs/audit.md "Shipping records")
# Off unless set: seal old records into segment files, kept at least `retain`:
#   segment = "monthly"      # or "daily", "weekly", or a number of records (1000 or more)
#   retain = "7y"
""",
}


def with_default_tables(text: str) -> str:
    """A profile's text with DEFAULT_TABLES appended for the tables it
    does not have: a new store's seldonfs.toml shows every setting."""
    have = tomllib.loads(text)
    return text.rstrip("\n") + "\n" + "".join(t for name, t in DEFAULT_TABLES.items() if name not in have)


def load(path: Path) -> Config:
    """The store's configuration; ConfigError (exit 13) naming its first
    problem, and carrying all of them, when it has any."""
    cfg, problems = check_file(path)
    if problems:
        raise config_error(str(path), problems)
    assert cfg is not None
    return cfg


def check_file(path: Path) -> tuple[Config | None, list[Problem]]:
    """`path` read as `load` reads it (with the environment's overrides),
    and every problem found in it; Config is None when the
    file cannot be read as TOML at all."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [Problem("", "missing")]
    except (OSError, UnicodeDecodeError) as e:
        return None, [Problem("", f"cannot read: {e}")]
    except tomllib.TOMLDecodeError as e:
        return None, [Problem("", f"not valid TOML: {e}")]
    p = _Problems()
    raw = _env_overrides(raw, os.environ, p)
    cfg, more = check(raw)
    return cfg, p.items + more


def config_error(where: str, problems: list[Problem]) -> ConfigError:
    """One line for people (the first problem; how many more), all of them
    kept in `.problems`."""
    more = len(problems) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''}: `seldonfs config check` lists all)" if more else ""
    return ConfigError(f"{where}: {problems[0]}{tail}", problems)


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
    """`raw` with the TEMP_STORAGE_CLEANUP_* variables of `env` applied;
    ConfigError at the first that is wrong."""
    p = _Problems()
    out = _env_overrides(raw, env, p)
    if p.items:
        raise ConfigError(str(p.items[0]), p.items)
    return out


def _env_overrides(raw: dict[str, Any], env: Mapping[str, str], p: _Problems) -> dict[str, Any]:
    janitor = raw.get("janitor", {})
    janitor = dict(janitor) if isinstance(janitor, dict) else janitor
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = ENV_KEYS.get(name[len(ENV_PREFIX):])
        if key is None:
            p.add(f"${name}", f"not a setting (known: {', '.join(ENV_PREFIX + k for k in ENV_KEYS)})")
        elif not isinstance(janitor, dict):
            continue  # the table itself is wrong; parsing says so
        else:
            try:
                janitor[key[0]] = key[1](value)
            except ValueError:
                p.add(f"${name}", f"not a number: {value!r}")
    return {**raw, "janitor": janitor} if janitor or "janitor" in raw else raw


TOP_KEYS = {"store", "mount", "policy", "janitor", "audit", "monitoring", "alerts", "encryption", "folders"}


def parse(raw: dict[str, Any], where: str) -> Config:
    """`raw` (a parsed seldonfs.toml) as a Config; ConfigError naming the
    first problem (and carrying all of them) when it has any."""
    cfg, problems = check(raw)
    if problems:
        raise config_error(where, problems)
    return cfg


def check(raw: dict[str, Any]) -> tuple[Config, list[Problem]]:
    """`raw` as a Config, and every problem found in it. A key with a
    problem takes its default in the Config (which is then only good for
    finding more problems)."""
    p = _Problems()
    _only_keys(raw, TOP_KEYS, "", p)
    store = _table(raw, "store", "", p)
    _only_keys(store, {"profile"}, "store.", p)
    profile = _Reader(store, "store.", p).get("profile", str, "custom")
    mount = _parse_mount(_table(raw, "mount", "", p), p)
    policy = _parse_policy(_table(raw, "policy", "", p), p)
    folders = tuple(
        _parse_folder(name, value, policy, p) for name, value in _table(raw, "folders", "", p).items()
    )
    folders = tuple(f for f in folders if f is not None)
    _check_emergency(folders, p)
    janitor = _parse_janitor(_table(raw, "janitor", "", p), p)
    a = _Reader(_only(raw, "audit", AuditConfig, p), "audit.", p)
    segment = a.get("segment", (int, str), None)
    if segment is not None and not (segment in AUDIT_PERIODS if isinstance(segment, str) else 1000 <= segment):
        p.add("audit.segment", f"want a number of records (1000 or more) or one of {', '.join(AUDIT_PERIODS)}, "
                               f"have {segment!r}")
        segment = None
    segments_to = a.path("segments_to", "archive/audit") or "archive/audit"
    if any(c in segments_to for c in "*?["):
        p.add("audit.segments_to", "want one folder, not a glob")
    audit = AuditConfig(
        enabled=a.get("enabled", bool, True),
        reads=a.get("reads", bool, False),
        verify_every=a.duration("verify_every", 86400.0) or 0.0,
        segment=segment, segments_to=segments_to, retain=a.duration("retain", None),
        forward=a.choice("forward", ("none", "journal", "syslog"), "none"),
    )
    holder = _deepest(folders, audit.segments_to)
    if audit.segment is not None and holder is not None and holder.max_age is not None and (
        audit.retain is None or holder.max_age < audit.retain
    ):
        p.add("audit.retain", f"segments in {audit.segments_to} would be deleted after {holder.max_age:.0f} s "
                              f"(max_age of folders.{holder.path!r}), before they may be; set audit.retain to "
                              f"at most that, or keep segments elsewhere (audit.segments_to)")
    m = _Reader(_only(raw, "monitoring", MonitoringConfig, p), "monitoring.", p)
    monitoring = MonitoringConfig(
        port=m.integer("port", 0, 0, 65535), address=m.address("address", "127.0.0.1"),
        metrics=m.get("metrics", bool, True),
    )
    alerts = _parse_alerts(raw, p)
    e = _Reader(_only(raw, "encryption", EncryptionConfig, p), "encryption.", p)
    encryption = EncryptionConfig(rotate_after=e.duration("rotate_after", EncryptionConfig.rotate_after) or 0.0)
    cfg = Config(
        profile=profile, mount=mount, folders=folders, policy=policy, janitor=janitor, audit=audit,
        monitoring=monitoring, alerts=alerts, encryption=encryption,
    )
    return cfg, sorted(p.items, key=_in_file_order(raw))


def _parse_alerts(raw: dict[str, Any], p: _Problems) -> AlertsConfig:
    d = AlertsConfig()
    al = _Reader(_only(raw, "alerts", AlertsConfig, p), "alerts.", p)
    alerts = AlertsConfig(
        cooldown=al.duration("cooldown", d.cooldown), notifications=al.get("notifications", str, d.notifications),
        webhook=al.url("webhook", ""), format=al.choice("format", ("json", "slack"), d.format),
        email=_parse_email(al.table("email"), p),
        quarantine_backlog=al.integer("quarantine_backlog", d.quarantine_backlog, 1, 10**9),
        quarantine_rate=al.percent("quarantine_rate", d.quarantine_rate),
        quarantine_wait=al.duration("quarantine_wait", d.quarantine_wait) or 0.0,
        free_warning=al.size("free_warning", d.free_warning), free_critical=al.size("free_critical", d.free_critical),
    )
    if alerts.free_warning and alerts.free_critical > alerts.free_warning:
        p.add("alerts.free_critical", "must not be above alerts.free_warning")
    return alerts


def _parse_email(t: dict[str, Any], p: _Problems) -> EmailConfig | None:
    if not t:
        return None
    where = "alerts.email."
    _only_keys(t, {"host", "port", "starttls", "username", "password_file", "from", "to"}, where, p)
    r = _Reader(t, where, p)
    missing = [k for k in ("host", "from", "to") if k not in t]
    for key in missing:
        p.add(where + key, "missing (an [alerts.email] table needs host, from, to)")
    to = r.strings("to", ())
    addresses = (r.get("from", str, ""), *to)
    if not missing and (not to or any(
            not a or "@" not in a or any(c.isspace() or c in '<>,;"' or not c.isprintable() for c in a)
            for a in addresses)):
        p.add("alerts.email", "want plain addresses like ops@example.com in from and to")
    host = r.get("host", str, "")
    if "host" in t and (not host or any(c.isspace() for c in host)):
        p.add(where + "host", f"want a host name, have {host!r}")
    cfg = EmailConfig(
        host=host, to=to, sender=addresses[0], port=r.integer("port", 25, 1, 65535),
        starttls=r.get("starttls", bool, False), username=r.get("username", str, ""),
        password_file=r.get("password_file", str, ""),
    )
    if cfg.password_file and not cfg.password_file.startswith("/"):
        p.add(where + "password_file", f"want an absolute path, have {cfg.password_file!r}")
    if cfg.username and not cfg.password_file:
        p.add(where + "password_file", "needed with username (the password is never in the toml)")
    return cfg


def _deepest(folders: tuple[FolderRule, ...], path: str) -> FolderRule | None:
    """The folder table a file in folder `path` follows: the deepest one
    at or above it (its components may be globs)."""
    parts = path.split("/")
    best = None
    for f in folders:
        fp = f.path.split("/")
        if len(fp) <= len(parts) and all(fnmatch.fnmatchcase(p, g) for p, g in zip(parts, fp)):
            if best is None or len(fp) > len(best.path.split("/")):
                best = f
    return best


def _in_file_order(raw: dict[str, Any]) -> Any:
    """A sort key putting problems in the order of the file (TOML keeps
    it): by table, a folder's among the folders, then by key in its table;
    problems of one key in the order they were found."""
    tables = {k: i for i, k in enumerate(raw)}
    folders = raw.get("folders")
    named = {f"folders.{n!r}": (i, v) for i, (n, v) in enumerate(folders.items())} if isinstance(folders, dict) else {}

    def place(table: Any, rest: str) -> int:
        keys = list(table) if isinstance(table, dict) else []
        first = rest.split(".", 1)[0]
        return keys.index(first) if first in keys else -1

    def rank(problem: Problem) -> tuple[int, int, int]:
        top, _, rest = problem.key.partition(".")
        if top == "folders":
            for k, (i, table) in named.items():
                if problem.key == k or problem.key.startswith(k + "."):
                    return tables.get(top, -1), i, place(table, problem.key[len(k) + 1:])
            return tables.get(top, -1), -1, -1
        return tables.get(top, -1), 0, place(raw.get(top), rest)

    return rank


def is_loopback(address: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _only(raw: dict[str, Any], name: str, kind: type, p: _Problems) -> dict[str, Any]:
    t = _table(raw, name, "", p)
    _only_keys(t, set(kind.__dataclass_fields__), name + ".", p)
    return t


def _parse_mount(t: dict[str, Any], p: _Problems) -> MountConfig:
    d = MountConfig()
    _only_keys(t, set(d.__dataclass_fields__), "mount.", p)
    r = _Reader(t, "mount.", p)
    values: dict[str, Any] = {}
    for key in ("entry_timeout", "attr_timeout", "negative_timeout"):
        values[key] = float(r.number(key, getattr(d, key), 0, 86400, "seconds"))
    for key in ("writeback_cache", "io_uring"):
        v = r.get(key, (bool, str), "auto")
        if isinstance(v, str) and v != "auto":
            p.add(f"mount.{key}", f"want true, false or \"auto\", have {v!r}")
            v = "auto"
        values[key] = None if v == "auto" else v
    values["spin_us"] = r.number("spin_us", d.spin_us, 0, 10_000, "microseconds", int)
    values["max_inodes"] = r.get("max_inodes", int, d.max_inodes)
    if values["max_inodes"] and not 100 <= values["max_inodes"] <= 100_000_000:
        p.add("mount.max_inodes", "must be 0 (automatic) or 100..100000000")
        values["max_inodes"] = d.max_inodes
    return MountConfig(**values)


def _parse_policy(t: dict[str, Any], p: _Problems) -> PolicyConfig:
    d = PolicyConfig()
    _only_keys(t, set(d.__dataclass_fields__), "policy.", p)
    r = _Reader(t, "policy.", p)
    patterns = {}
    for name, rx in r.table("patterns").items():
        p.pattern_names.add(name)  # a folder naming a broken one is not told it is unknown as well
        if not isinstance(rx, str):
            p.add(f"policy.patterns.{name}", "must be a regular expression string")
        elif r.regex(f"patterns.{name}", rx) is not None:
            patterns[name] = rx
    return PolicyConfig(
        temp_patterns=r.strings("temp_patterns", d.temp_patterns),
        quarantine=r.path("quarantine", d.quarantine),
        grace=r.duration("grace", d.grace),
        temp_max_age=r.duration("temp_max_age", d.temp_max_age),
        patterns=tuple(patterns.items()),
        min_free=r.percent("min_free", d.min_free, top=99),  # 100 % free cannot be had
    )


def _parse_janitor(t: dict[str, Any], p: _Problems) -> JanitorConfig:
    d = JanitorConfig()
    _only_keys(t, set(d.__dataclass_fields__), "janitor.", p)
    r = _Reader(t, "janitor.", p)
    cfg = JanitorConfig(
        warning=r.percent("warning", d.warning),
        emergency=r.percent("emergency", d.emergency),
        check_every=r.duration("check_every", d.check_every),
        batch=r.integer("batch", d.batch, 1, 1_000_000),
        schedule=r.schedule("schedule", d.schedule),
        orphan_age=r.duration("orphan_age", d.orphan_age),
    )
    if cfg.emergency < cfg.warning:
        p.add("janitor.emergency", "must not be below janitor.warning")
    return cfg


def _parse_folder(name: str, t: Any, policy: PolicyConfig, p: _Problems) -> FolderRule | None:
    key = f"folders.{name!r}"
    if not name or PurePosixPath(name).is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        p.add(key, "must be a relative path without '.' or '..'")
        return None
    if not isinstance(t, dict):
        p.add(key, "must be a table")
        return None
    d = FolderRule(path=name)
    _only_keys(t, set(d.__dataclass_fields__) - {"path"}, key + ".", p)
    r = _Reader(t, key + ".", p)
    mode = r.get("mode", int, None)
    if mode is not None and not 0 <= mode <= 0o7777:
        p.add(f"{key}.mode", "must be a permission mode like 0o750")
        mode = None
    naming = r.get("naming", str, None)
    if naming is not None:
        from .naming import Template, TemplateError  # naming imports config

        try:
            Template(naming)
        except TemplateError as e:
            p.add(f"{key}.naming", str(e))
            naming = None
    sensitive = r.strings("sensitive", ())
    known = set(SENSITIVE_BUILTIN) | {n for n, _ in policy.patterns} | p.pattern_names
    for s in sensitive:
        if s not in known:
            p.add(f"{key}.sensitive", f"unknown check {s!r} (known: {', '.join(sorted(known))})")
    sensitive = tuple(s for s in sensitive if s in known and s not in p.pattern_names - {n for n, _ in policy.patterns})
    route = r.get("route", str, None)
    route_to = r.get("route_to", str, None)
    if route is not None:
        rx = r.regex("route", route)
        if rx is None:
            route = None
        elif route_to is None:
            p.add(f"{key}.route_to", "required with route")
            route = None
        else:
            for fname in re.findall(r"{(\w+)", route_to):
                if fname not in set(rx.groupindex) | {"name"}:
                    p.add(f"{key}.route_to", f"{{{fname}}} is not a named group of route")
                    route = None
    extensions = r.strings("allow_extensions", ())
    for ext in extensions:
        if not ext.startswith("."):
            p.add(f"{key}.allow_extensions", f"{ext!r} must start with '.'")
    patterns = []
    for glob, v in r.table("patterns").items():
        age = r.duration(f"patterns.{glob}", None, v)
        if age is not None:
            patterns.append((glob, age))
    distribution_action = r.choice("distribution_action", ("archive", "delete", "keep"), d.distribution_action)
    if r.get("distribution", bool, False) and distribution_action == "archive" and r.path("archive_to", None) is None:
        p.add(f"{key}.archive_to", "required with distribution_action = \"archive\"")
    rule = FolderRule(
        path=name,
        description=r.get("description", str, ""),
        mode=mode,
        naming=naming,
        job=r.get("job", str, d.job),
        naming_time=r.choice("naming_time", ("utc", "local"), d.naming_time),
        files_at_root=r.get("files_at_root", bool, True),
        allow_extensions=tuple(e.lower() for e in extensions if e.startswith(".")),
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
        dedupe=r.get("dedupe", bool, False),
        max_age=r.duration("max_age", None),
        age_by=r.choice("age_by", ("mtime", "atime"), d.age_by),
        max_total=r.size("max_total", None),
        max_files=r.integer("max_files", None, 1, 10**12),
        evict=r.choice("evict", ("oldest", "lru"), d.evict),
        action=r.choice("action", ("delete", "archive", "move"), d.action),
        archive_to=r.path("archive_to", None),
        move_to=r.path("move_to", None),
        archive_after=r.duration("archive_after", None),
        patterns=tuple(patterns),
        remove_empty_dirs=r.get("remove_empty_dirs", bool, False),
        orphan_sessions=r.get("orphan_sessions", bool, False),
        orphan_wait=r.get("orphan_wait", bool, False),
        schedule=r.schedule("schedule", None),
        priority=r.integer("priority", d.priority, 0, 10_000),
        warn_percent=r.percent("warn_percent", None),
        distribution=r.get("distribution", bool, False),
        distribution_expiry=r.duration("distribution_expiry", d.distribution_expiry),
        distribution_action=distribution_action,
        write_once=r.get("write_once", bool, False),
    )
    _check_write_once(rule, key, p)
    return rule


def _check_write_once(r: FolderRule, key: str, p: _Problems) -> None:
    """A write-once folder's files go only when their retention (`max_age`,
    by write or arrival time) has passed: nothing may take them earlier."""
    if not r.write_once:
        return
    early = [k for k, on in (
        ("priority", r.priority is not None), ("patterns", bool(r.patterns)), ("max_total", r.max_total is not None),
        ("max_files", r.max_files is not None), ("archive_after", r.archive_after is not None),
        ("orphan_sessions", r.orphan_sessions), ("age_by = \"atime\"", r.age_by == "atime"),
        ("distribution", r.distribution),
    ) if on]
    if early:
        p.add(f"{key}.write_once", f"{early[0]} would take files before their retention")


def _check_emergency(folders: tuple[FolderRule, ...], p: _Problems) -> None:
    """Emergency cleanup never deletes archives: no `priority` on a folder
    that a rule archives into, or below one."""
    dests = {r.archive_to for r in folders if r.archive_to}
    for r in folders:
        for dest in dests:
            if r.priority is not None and (r.path == dest or r.path.startswith(dest + "/")):
                p.add(f"folders.{r.path!r}.priority", f"archives ({dest}/) are never deleted by emergency cleanup")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w|y)\s*$")
_DURATION_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
#: What each unit of a size means (docs/configuration.md): KB decimal, KiB binary.
SIZE_UNITS = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


def parse_duration(v: Any, where: str, key: str) -> float:
    try:
        return _duration(v, key)
    except _Bad as e:
        raise ConfigError(f"{where}: {e}") from None


def _duration(v: Any, key: str) -> float:
    m = _DURATION.match(v) if isinstance(v, str) else None
    if m is None:
        raise _Bad(key, f"want a duration like \"90s\", \"12h\" or \"30d\", have {v!r}")
    return float(m[1]) * _DURATION_S[m[2]]


class _Bad(Exception):
    """A key's problem, raised inside a _Reader method and collected there."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.pattern_names: set[str] = set()  # [policy.patterns] names, broken ones too

    def add(self, key: str, message: str) -> None:
        self.items.append(Problem(key, message))


_NO_DEFAULT = object()


def _collected(method: Any) -> Any:
    """A _Reader method whose problem is collected, the method answering
    with its `default` (or `fallback`) instead."""
    params = list(inspect.signature(method).parameters)
    at = params.index("default") - 2 if "default" in params else None  # its place after self and key

    @functools.wraps(method)
    def read(self: _Reader, key: str, *args: Any, **kw: Any) -> Any:
        try:
            return method(self, key, *args, **kw)
        except _Bad as e:
            self.p.add(e.key, e.message)
            if at is None:
                return {}
            return kw["default"] if "default" in kw else (args[at] if len(args) > at else None)

    return read


class _Reader:
    """Typed access to one TOML table: a value with a problem is noted
    (the key's full path and the problem) and read as its default."""

    def __init__(self, t: dict[str, Any], prefix: str, p: _Problems) -> None:
        self.t, self.prefix, self.p = t, prefix, p

    def _bad(self, key: str, problem: str) -> _Bad:
        return _Bad(self.prefix + key, problem)

    @_collected
    def get(self, key: str, types: Any, default: Any) -> Any:
        if key not in self.t:
            return default
        v = self.t[key]
        # bool is an int subclass: `mode = true` must not pass as a number.
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            raise self._bad(key, f"wrong type {type(v).__name__}")
        return v

    @_collected
    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self.t.get(key)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "must be a list of strings")
        return tuple(v)

    @_collected
    def table(self, key: str) -> dict[str, Any]:
        v = self.t.get(key, {})
        if not isinstance(v, dict):
            raise self._bad(key, f"wrong type {type(v).__name__}")
        return v

    @_collected
    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int | None:
        v = self.get(key, int, _NO_DEFAULT)  # a wrong type is noted there
        if v is _NO_DEFAULT:
            return default
        if not lo <= v <= hi:
            raise self._bad(key, f"must be {lo}..{hi}, have {v}")
        return v

    @_collected
    def number(self, key: str, default: float, lo: float, hi: float, unit: str, kind: Any = (int, float)) -> float:
        if key not in self.t:
            return default
        v = self.t[key]
        allowed = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(v, allowed) or isinstance(v, bool):
            raise self._bad(key, f"wrong type {type(v).__name__}")
        if not lo <= v <= hi:
            raise self._bad(key, f"must be {lo:g}..{hi:g} {unit}, got {v}")
        return v

    def percent(self, key: str, default: int | None, top: int = 100) -> int | None:
        return self.integer(key, default, 0, top)

    @_collected
    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        v = self.get(key, str, _NO_DEFAULT)
        if v is _NO_DEFAULT:
            return default
        if v not in choices:
            raise self._bad(key, f"want one of {', '.join(choices)}, have {v!r}")
        return v

    @_collected
    def duration(self, key: str, default: float | None, value: Any = _NO_DEFAULT) -> float | None:
        """`key`'s duration; `value` when given instead of the table's (a
        nested key such as patterns.GLOB)."""
        if value is _NO_DEFAULT:
            if key not in self.t:
                return default
            value = self.t[key]
        return _duration(value, self.prefix + key)

    @_collected
    def size(self, key: str, default: int | None) -> int | None:
        if key not in self.t:
            return default
        v = self.t[key]
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        m = _SIZE.match(v) if isinstance(v, str) else None
        if m is None:
            raise self._bad(key, f"want a size like \"100MB\" or \"10GiB\", have {v!r}")
        return int(float(m[1]) * SIZE_UNITS[m[2]])

    @_collected
    def path(self, key: str, default: str | None) -> str | None:
        if key not in self.t:
            return default
        v = self.t[key]
        if not isinstance(v, str):
            raise self._bad(key, f"wrong type {type(v).__name__}")
        if not v or v.startswith("/") or any(p in ("", ".", "..") for p in v.split("/")):
            raise self._bad(key, "must be a relative path without '.' or '..'")
        return v

    @_collected
    def schedule(self, key: str, default: str | None) -> str | None:
        if key not in self.t:
            return default
        v = self.t[key]
        if not isinstance(v, str):
            raise self._bad(key, f"wrong type {type(v).__name__}")
        if _DURATION.match(v) or croniter.is_valid(v):
            return v
        raise self._bad(key, f"want a duration like \"60m\" or a cron expression like \"0 2 * * *\", have {v!r}")

    @_collected
    def address(self, key: str, default: str) -> str:
        """An IP address to listen on (or localhost); any, loopback or not."""
        if key not in self.t:
            return default
        v = self.t[key]
        if not isinstance(v, str):
            raise self._bad(key, f"wrong type {type(v).__name__}")
        if v != "localhost":
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise self._bad(key, f"want an IP address such as 127.0.0.1, ::1, 0.0.0.0 or 192.0.2.10, have {v!r}") from None
        return v

    @_collected
    def url(self, key: str, default: str) -> str:
        v = self.get(key, str, _NO_DEFAULT)
        if v is _NO_DEFAULT:
            return default
        if v and not v.startswith(("http://", "https://")):
            raise self._bad(key, f"want an http:// or https:// URL, have {v!r}")
        return v

    def regex(self, key: str, v: str) -> re.Pattern[str] | None:
        try:
            return re.compile(v)
        except re.error as e:
            self.p.add(self.prefix + key, f"not a valid regular expression: {e}")
            return None


def _table(t: dict[str, Any], key: str, prefix: str, p: _Problems) -> dict[str, Any]:
    v = t.get(key, {})
    if not isinstance(v, dict):
        p.add(prefix + key, "must be a table")
        return {}
    return v


def _only_keys(t: dict[str, Any], allowed: set[str], prefix: str, p: _Problems) -> None:
    for k in t:
        if k not in allowed:
            p.add(prefix + k, f"unknown key (allowed: {', '.join(sorted(allowed))})")
