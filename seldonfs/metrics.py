"""What a mount counts, and the Prometheus metrics made of it.

The request loop counts in plain dicts and integers (`OpStats`: a few
hundred nanoseconds per request); a scrape turns those, and what is read at
scrape time (disk usage, folder sizes, quarantine, janitor, audit), into
metrics by `Collector`. Every metric is defined once, in METRICS; the same
numbers fill MOUNT/.seldonfs-stats.json (`snapshot()`), which
`seldonfs stats` and `seldonfs top` read.
"""

from __future__ import annotations

import bisect
import platform
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry

from . import __version__
from .alerts import Failures
from .catalog import distribution_counts
from .host import disk_usage
from .janitor import inventory
from .naming import shown
from .store import PRIVATE_DIR

#: name -> (kind, help, labels)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "seldonfs_build_info": ("gauge", "Always 1; the labels name the seldonfs version and the Python running it", ("version", "python")),
    "seldonfs_operations_total": ("counter", "Filesystem requests answered, by operation and result (ok, or the errno name in lower case)", ("op", "result")),
    "seldonfs_operation_seconds": ("histogram", "Time to answer a filesystem request, by operation", ("op",)),
    "seldonfs_bytes_total": ("counter", "Bytes read or written through the mount (plaintext)", ("direction",)),
    "seldonfs_open_files": ("gauge", "File handles open through the mount", ()),
    "seldonfs_folder_files": ("gauge", "Files under each top and second level folder (refreshed every minute)", ("folder",)),
    "seldonfs_folder_bytes": ("gauge", "Bytes (plaintext) under each top and second level folder", ("folder",)),
    "seldonfs_disk_used_ratio": ("gauge", "Used share of the store's filesystem, 0..1", ()),
    "seldonfs_disk_bytes": ("gauge", "Size and use of the store's filesystem", ("kind",)),
    "seldonfs_validation_total": ("counter", "Commit verdicts of the policy engine", ("verdict",)),
    "seldonfs_quarantine_files": ("gauge", "Files waiting in quarantine", ()),
    "seldonfs_distribution_records": ("gauge", "Distribution records, by state (open, expired, closed)", ("state",)),
    "seldonfs_distribution_downloads": ("gauge", "Opens for reading counted on distribution records", ()),
    "seldonfs_janitor_runs_total": ("counter", "Janitor runs finished", ()),
    "seldonfs_janitor_actions_total": ("counter", "Janitor actions, by result", ("result",)),
    "seldonfs_janitor_freed_bytes_total": ("counter", "Bytes the janitor deleted or archived", ()),
    "seldonfs_audit_records_total": ("counter", "Records appended to the audit chain by this mount", ()),
    "seldonfs_audit_verified_records": ("gauge", "Records the last verify of the audit chain in the mount checked", ()),
    "seldonfs_audit_chain_intact": ("gauge", "1 when the last verify found the chain intact, 0 when broken, -1 before any", ()),
    "seldonfs_integrity_errors_total": ("counter", "Reads refused because a block failed authentication", ()),
    "seldonfs_alerts_active": ("gauge", "Alerts raised and not yet cleared, by kind", ("kind",)),
    "seldonfs_start_time_seconds": ("gauge", "When the mount started, in seconds since the Unix epoch", ()),
    "seldonfs_transport_info": ("gauge", "Always 1; the label says how the kernel's requests come: io_uring or dev_fuse", ("transport",)),
}

#: Histogram buckets, in seconds (and nanoseconds, for counting).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_BUCKETS_NS = tuple(int(b * 1e9) for b in BUCKETS)
FOLDER_REFRESH = 60.0


class OpStats:
    """Counted on the request loop; read (copied) by scrapes in other threads."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.hist: dict[str, list[int]] = {}  # per op: one count per bucket, +Inf last, then the sum in ns
        self.read = 0
        self.written = 0
        # GETXATTRs answered ENODATA outside the handlers, so far (uring.py's
        # absent_answers): counted in `view` as getxattr ENODATA of 0 ns.
        self.outside: Callable[[], int] | None = None

    def op(self, name: str, result: str, ns: int) -> None:
        k = (name, result)
        self.counts[k] = self.counts.get(k, 0) + 1
        h = self.hist.get(name)
        if h is None:
            h = self.hist[name] = [0] * (len(_BUCKETS_NS) + 2)
        h[bisect.bisect_left(_BUCKETS_NS, ns)] += 1
        h[-1] += ns

    def view(self) -> tuple[dict[tuple[str, str], int], dict[str, list[int]]]:
        """Copies of `counts` and `hist`, the answers given outside the
        handlers included."""
        counts, hist = dict(self.counts), {op: list(h) for op, h in dict(self.hist).items()}
        n = self.outside() if self.outside is not None else 0
        if n:
            counts["getxattr", "ENODATA"] = counts.get(("getxattr", "ENODATA"), 0) + n
            hist.setdefault("getxattr", [0] * (len(_BUCKETS_NS) + 2))[0] += n
        return counts, hist


class Sources:
    """Where the numbers come from; any but `data` and `catalog_path` may
    be None (`ops` is, with `[monitoring] metrics = false`)."""

    def __init__(self, ops: OpStats | None, data: Path, catalog_path: Path, core=None, audit=None,
                 janitor=None, alerts=None, content=None, janitor_cfg=None, decisions=None) -> None:
        self.ops, self.data, self.catalog_path = ops, data, catalog_path
        self.decisions = decisions  # the policy engine's counts of its decisions
        self.failures = Failures()  # of background work; the mount wires it to its alerts
        self.refusals = None  # the mount's last refusals (refusals.Refusals), all of them in the snapshot
        self.core, self.audit, self.janitor, self.alerts = core, audit, janitor, alerts
        self.content, self.janitor_cfg = content, janitor_cfg
        self.started = time.time()
        self.audit_verify: dict | None = None  # the last verify in the mount (alerts.verify_audit)
        self.cfg = None  # the mount's Config, as last (re)loaded
        self.transport: Callable[[], dict[str, Any]] | None = None  # how requests come (uring.py)
        self.key_created: float | None = None  # the master key's dates (keys.when); None: a plain store
        self.secret_changed: float | None = None
        self._folders: dict[str, list[int]] = {}
        self._folders_at = 0.0
        self._lock = threading.Lock()

    def folders(self) -> dict[str, list[int]]:
        """files, bytes per top and second level folder, as last counted;
        a count older than a minute is redone in a thread of its own (the
        caller may be the request loop), so the first answer may be empty."""
        with self._lock:
            if time.time() - self._folders_at > FOLDER_REFRESH:
                self._folders_at = time.time()
                threading.Thread(target=self._count_folders, name="folder-count", daemon=True).start()
            return self._folders

    def _count_folders(self) -> None:
        try:
            self._folders = _walk_folders(self.data, self.content.plain_size if self.content else (lambda n: n))
        except Exception as e:  # a thread of its own: logged and counted, the last count stays
            self.failures("folder count", e)

    def quarantine(self) -> int:
        return self.quarantine_oldest()[0]

    def quarantine_oldest(self) -> tuple[int, float | None]:
        """Files waiting in quarantine, and when the oldest of them came."""
        try:
            conn = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True, timeout=1)
            try:
                n, oldest = conn.execute(
                    "SELECT count(*), min(at_ns) FROM quarantine WHERE released_ns IS NULL").fetchone()
                return n, None if oldest is None else oldest / 1e9
            finally:
                conn.close()
        except sqlite3.Error:
            return 0, None

    def key(self) -> dict[str, Any] | None:
        """The master key's age (None: a plain store)."""
        if self.key_created is None:
            return None
        rotate = self.cfg.encryption.rotate_after if self.cfg is not None else 0
        age = time.time() - self.key_created
        return {"created": _iso(self.key_created), "age_days": round(age / 86400, 1),
                "secret_changed": _iso(self.secret_changed) if self.secret_changed is not None else None,
                "rotate_after_days": round(rotate / 86400, 3) if rotate else None,
                "rotate_due": bool(rotate) and age > rotate}

    def distributions(self) -> dict[str, int]:
        try:
            conn = sqlite3.connect(f"file:{self.catalog_path}?mode=ro", uri=True, timeout=1)
            try:
                return distribution_counts(conn)
            finally:
                conn.close()
        except sqlite3.Error:
            return {"open": 0, "expired": 0, "closed": 0, "downloads": 0}

    def disk(self) -> dict[str, Any]:
        pct, used, total = disk_usage(self.data)
        j = self.janitor_cfg
        return {"percent": round(pct, 2), "used": used, "total": total,
                "warning": j.warning if j else None, "emergency": j.emergency if j else None}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _walk_folders(data: Path, plain_size) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in inventory(data, plain_size):
        if e.is_dir:
            continue
        parts = e.rel.split("/")
        if parts[0] == PRIVATE_DIR or len(parts) < 2:
            continue
        for folder in {parts[0], "/".join(parts[:2]) if len(parts) > 2 else parts[0]}:
            c = out.setdefault(folder, [0, 0])
            c[0] += 1
            c[1] += e.size
    return out


def snapshot(s: Sources) -> dict[str, Any]:
    """The numbers as one JSON-able document (stats.json's body)."""
    counts, hist = (s.ops or OpStats()).view()
    ops: dict[str, dict[str, int]] = {}
    for (op, result), n in counts.items():
        ops.setdefault(op, {})[result] = n
    policy = dict(s.decisions) if s.decisions is not None else {}
    j = s.janitor
    return {
        "uptime_s": round(time.time() - s.started, 3),
        "open_files": len(s.core.handles) if s.core is not None else 0,
        "inodes_known": len(s.core.nodes) if s.core is not None else 0,
        "damaged_reads": s.core.damage_count if s.core is not None else 0,
        "audit_records": s.audit.count if s.audit is not None else None,
        "audit_verify": s.audit_verify,
        "policy": policy,
        "task_failures": dict(s.failures.counts),
        "ops": ops,
        "op_seconds": {op: h[-1] / 1e9 for op, h in hist.items()},  # time in the handler, in all
        "bytes": {"read": s.ops.read if s.ops else 0, "written": s.ops.written if s.ops else 0},
        "folders": {k: {"files": v[0], "bytes": v[1]} for k, v in sorted(s.folders().items())},
        "disk": s.disk(),
        "validation": {"ok": policy.get("commit", 0), "quarantined": policy.get("quarantine", 0)},
        "quarantine_files": s.quarantine(),
        "distributions": s.distributions(),
        "janitor": None if j is None else {
            "running": j.running, "runs": j.totals["runs"], "done": j.totals["done"],
            "skipped": j.totals["skipped"], "freed": j.totals["freed"],
            "last": {k: j.last[k] for k in ("summary", "seconds", "trigger") if k in j.last},
        },
        "alerts": s.alerts.active() if s.alerts is not None else [],
        "refusals": s.refusals.listing() if s.refusals is not None else [],
        "key": s.key(),
        "transport": s.transport() if s.transport is not None else None,
    }


class Collector:
    """A prometheus_client collector over `Sources`, read at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self.s = sources

    def _family(self, name: str):
        kind, doc, labels = METRICS[name]
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}[kind]
        short = name[: -len("_total")] if kind == "counter" else name
        return cls(short, doc, labels=list(labels))

    def collect(self):
        snap = snapshot(self.s)
        counts, hist = (self.s.ops or OpStats()).view()
        f = self._family("seldonfs_build_info")
        f.add_metric([__version__, platform.python_version()], 1)
        yield f
        yield self._one("seldonfs_start_time_seconds", self.s.started)
        if snap["transport"] is not None:
            f = self._family("seldonfs_transport_info")
            f.add_metric([snap["transport"]["kind"]], 1)
            yield f
        f = self._family("seldonfs_operations_total")
        for (op, result), n in sorted(counts.items()):
            f.add_metric([op, result.lower()], n)  # stats.json and the audit chain keep "OK", "ENOENT"
        yield f
        f = self._family("seldonfs_operation_seconds")
        for op, h in sorted(hist.items()):
            cum, buckets = 0, []
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), h[:-1]):
                cum += n
                buckets.append((bound, cum))
            f.add_metric([op], buckets, h[-1] / 1e9)
        yield f
        f = self._family("seldonfs_bytes_total")
        f.add_metric(["read"], snap["bytes"]["read"])
        f.add_metric(["written"], snap["bytes"]["written"])
        yield f
        yield self._one("seldonfs_open_files", snap["open_files"])
        files, size = self._family("seldonfs_folder_files"), self._family("seldonfs_folder_bytes")
        for folder, v in snap["folders"].items():
            label = shown(folder)  # a name that is not UTF-8 would fail the whole scrape
            files.add_metric([label], v["files"])
            size.add_metric([label], v["bytes"])
        yield files
        yield size
        yield self._one("seldonfs_disk_used_ratio", snap["disk"]["percent"] / 100)
        f = self._family("seldonfs_disk_bytes")
        f.add_metric(["used"], snap["disk"]["used"])
        f.add_metric(["total"], snap["disk"]["total"])
        yield f
        f = self._family("seldonfs_validation_total")
        for verdict, n in snap["validation"].items():
            f.add_metric([verdict], n)
        yield f
        yield self._one("seldonfs_quarantine_files", snap["quarantine_files"])
        f = self._family("seldonfs_distribution_records")
        for state in ("open", "expired", "closed"):
            f.add_metric([state], snap["distributions"][state])
        yield f
        yield self._one("seldonfs_distribution_downloads", snap["distributions"]["downloads"])
        j = snap["janitor"] or {"runs": 0, "done": 0, "skipped": 0, "freed": 0}
        yield self._one("seldonfs_janitor_runs_total", j["runs"])
        f = self._family("seldonfs_janitor_actions_total")
        f.add_metric(["done"], j["done"])
        f.add_metric(["skipped"], j["skipped"])
        yield f
        yield self._one("seldonfs_janitor_freed_bytes_total", j["freed"])
        yield self._one("seldonfs_audit_records_total", snap["audit_records"] or 0)
        v = snap["audit_verify"]
        yield self._one("seldonfs_audit_verified_records", v["records"] if v else 0)
        yield self._one("seldonfs_audit_chain_intact", -1 if v is None else int(v["intact"]))
        yield self._one("seldonfs_integrity_errors_total", snap["damaged_reads"])
        f = self._family("seldonfs_alerts_active")
        for a in snap["alerts"]:
            f.add_metric([a["kind"]], 1)
        yield f

    def _one(self, name: str, value: float):
        f = self._family(name)
        f.add_metric([], value)
        return f


def registry(sources: Sources) -> CollectorRegistry:
    """The mount's metrics, and the daemon process's (process_*: resident
    memory, CPU seconds, open and allowed descriptors, start time; read
    from /proc/self at each scrape by prometheus_client)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(sources))
    ProcessCollector(registry=reg)
    return reg
