"""Metrics: every Prometheus series the server exports, declared once, on ``prometheus-client``.

Vault's names where Vault has the metric (docs/operations.md#metrics lists them all):
timers (``vault_core_handle_request``, ``vault_core_handle_login_request``,
``vault_route_<operation>_<mount>``, ``vault_token_lookup``, ``vault_token_revoke``,
``vault_audit_log_request``/``_response``) are histograms in **milliseconds**, Vault's unit,
so ``_count`` and ``_sum`` mean what they mean in Vault; counters named ``vault_*`` are
exported without the ``_total`` suffix, as Vault exports them. authmount's own series
(``authmount_*``) follow Prometheus' conventions (seconds, ``_total``).

With ``--workers`` the supervisor gives every worker one ``PROMETHEUS_MULTIPROC_DIR``
(prometheus-client's multi-process mode, chosen when that variable is set before this module
is imported): each worker writes its values to files there, and ``sys/metrics`` answered by
any worker adds up all of them. A worker writes its request path's observations there at
most ``SHARED_FLUSH_DELAY`` after making them (at once when it answers the scrape itself).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import prometheus_client
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from server.mounts import MountTable
    from server.tokens.entry import TokenEntry
    from server.tokens.store import TokenStore

__all__ = [
    "CONTENT_TYPE", "MULTIPROCESS", "REGISTRY", "exposition", "metrics_json", "ms_since", "route_timer", "ttl_bucket", "MountEvents", "count_login",
    "Observer", "flush_pending", "token_created", "storage_failed", "storage_failure", "storage_recovered", "process_exit", "usage_gauges", "set_usage",
]

log = structlog.get_logger("authmount.telemetry")

#: prometheus-client's multi-process mode (``--workers``): values live in files shared by the workers.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
#: The text format Vault serves (``version=0.0.4``).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series (Vault has none)
REGISTRY = CollectorRegistry(auto_describe=True)


class _Pending(Collector):
    """Registered first, so every read of REGISTRY (a scrape, ``get_sample_value``, a
    collector of the operator's) adds the request path's pending counts before the
    values are read: deferring them stays invisible (``flush_pending``)."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        flush_pending()
        return []


REGISTRY.register(_Pending())
if not MULTIPROCESS:  # process_* and python_* series (per process: not in multi-process mode)
    prometheus_client.ProcessCollector(registry=REGISTRY)
    prometheus_client.PlatformCollector(registry=REGISTRY)
    prometheus_client.GCCollector(registry=REGISTRY)

#: Milliseconds (Vault's timer unit).
MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
NAMESPACE = "root"


def _ms(name: str, doc: str) -> Histogram:
    return Histogram(name, doc + " (milliseconds).", buckets=MS_BUCKETS, registry=REGISTRY)


# -- the request path's series: counted in plain Python, added up at each scrape ---------------------
class Observer(Protocol):
    """What the request path calls on a timer: a Histogram, or its ``_PendingTimer``."""

    def observe(self, amount: float) -> None: ...


#: Timers and counter children with observations not yet added to prometheus-client's values.
_PENDING_TIMERS: list[_PendingTimer] = []
_PENDING_COUNTS: dict[Any, int] = {}


#: Multi-process mode (``--workers``): the longest a worker keeps the request path's
#: observations before writing them to the shared files, where another worker's scrape
#: reads them. Written one at a time they cost 26 us of CPU per login (two timers and two
#: counters, each a locked write to a memory-mapped file; docs/performance.md, round eight).
SHARED_FLUSH_DELAY = 0.1
_flush_scheduled = False


class _PendingTimer:
    """A histogram observed on the event loop's request path: an observation is a bucket
    index (``bisect``) and two additions to plain Python numbers; ``flush_pending`` adds them
    to the Histogram's values (one locked add per bucket that moved) before every exposition,
    and with ``--workers`` also ``SHARED_FLUSH_DELAY`` after the first one waiting.
    prometheus-client's ``observe`` takes a lock per value it moves (in multi-process mode a
    write to a memory-mapped file) and walks the bucket bounds in Python, for each of the 2-3
    timers of every request. Not thread-safe: only the event loop's thread observes these
    timers (the SQLite writer thread's ``STORAGE_COMMIT`` is a plain Histogram)."""

    __slots__ = ("histogram", "_bounds", "_counts", "_sum", "_pending")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._bounds = tuple(histogram._upper_bounds)  # ends with +Inf: every value has a bucket
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, as Histogram.observe's ``amount <= bound``.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        if not self._pending:
            self._pending = True
            _PENDING_TIMERS.append(self)
            if MULTIPROCESS and not _flush_scheduled:
                _schedule_flush()

    def flush(self) -> None:
        counts, total = self._counts, self._sum
        self._counts, self._sum, self._pending = [0] * len(counts), 0.0, False
        buckets = self.histogram._buckets
        for i, count in enumerate(counts):
            if count:
                buckets[i].inc(count)
        self.histogram._sum.inc(total)


def _request_timer(histogram: Histogram) -> Observer:
    """``histogram`` observed through a ``_PendingTimer``."""
    return _PendingTimer(histogram)


def _count(child: Any) -> None:
    """``child.inc()`` (a labelled Counter child), added at the next exposition (with
    ``--workers``, at the latest ``SHARED_FLUSH_DELAY`` later). Event loop thread only."""
    _PENDING_COUNTS[child] = _PENDING_COUNTS.get(child, 0) + 1
    if MULTIPROCESS and not _flush_scheduled:
        _schedule_flush()


def _schedule_flush() -> None:
    """Multi-process mode: ``flush_pending`` in ``SHARED_FLUSH_DELAY`` seconds (at once
    outside an event loop), one timer for whatever waits by then."""
    global _flush_scheduled
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush_pending()
        return
    _flush_scheduled = True
    loop.call_later(SHARED_FLUSH_DELAY, flush_pending)


def flush_pending() -> None:
    """Add the request path's pending observations and increments to prometheus-client's
    values (``exposition`` and ``metrics_json`` call it first, so a scrape sees every request
    answered before it)."""
    global _flush_scheduled
    _flush_scheduled = False  # a timer still due finds nothing, or what came after this
    timers = _PENDING_TIMERS[:]
    _PENDING_TIMERS.clear()
    for timer in timers:
        timer.flush()
    counts = list(_PENDING_COUNTS.items())
    _PENDING_COUNTS.clear()
    for child, count in counts:
        child.inc(count)


# -- Vault's names ------------------------------------------------------------------------------
HANDLE_REQUEST = _request_timer(_ms("vault_core_handle_request", "Time to handle a request that carries a token"))
HANDLE_LOGIN_REQUEST = _request_timer(
    _ms("vault_core_handle_login_request", "Time to handle a login-type request (no token)"))
TOKEN_LOOKUP = _request_timer(_ms("vault_token_lookup", "Time to look up a token"))
TOKEN_REVOKE = _request_timer(_ms("vault_token_revoke", "Time to revoke a token and its children"))
AUDIT_LOG_REQUEST = _request_timer(
    _ms("vault_audit_log_request", "Time to write a request entry to every audit device"))
AUDIT_LOG_RESPONSE = _request_timer(
    _ms("vault_audit_log_response", "Time to write a response entry to every audit device"))
AUDIT_LOG_REQUEST_FAILURE = Counter(
    "vault_audit_log_request_failure", "Request entries no audit device could record (the request failed).",
    registry=REGISTRY,
)
AUDIT_LOG_RESPONSE_FAILURE = Counter(
    "vault_audit_log_response_failure", "Response entries no audit device could record (the request failed).",
    registry=REGISTRY,
)
QUOTA_VIOLATIONS = Counter(
    "vault_quota_rate_limit_violation", "Requests refused by a rate limit quota (sys/quotas/rate-limit), by quota.",
    ["name"], registry=REGISTRY,
)
TOKEN_CREATION = Counter(
    "vault_token_creation", "Tokens created, by auth method, mount, creation TTL bucket and token type.",
    ["auth_method", "mount_point", "creation_ttl", "token_type", "namespace"], registry=REGISTRY,
)
# Usage gauges: set by one process (worker 0) every ``telemetry.usage_gauge_period``.
TOKEN_COUNT = Gauge("vault_token_count", "Live tokens in storage (service tokens).", ["namespace"],
                    registry=REGISTRY, multiprocess_mode="livemax")
TOKEN_COUNT_BY_AUTH = Gauge("vault_token_count_by_auth", "Live tokens by the auth method that created them.",
                            ["auth_method", "namespace"], registry=REGISTRY, multiprocess_mode="livemax")
TOKEN_COUNT_BY_POLICY = Gauge("vault_token_count_by_policy", "Live tokens by policy (a token counts once per policy).",
                              ["policy", "namespace"], registry=REGISTRY, multiprocess_mode="livemax")
TOKEN_COUNT_BY_TTL = Gauge("vault_token_count_by_ttl", "Live tokens by creation TTL bucket.",
                           ["creation_ttl", "namespace"], registry=REGISTRY, multiprocess_mode="livemax")
EXPIRE_NUM_LEASES = Gauge("vault_expire_num_leases", "Tokens that expire (every live token but those without TTL).",
                          registry=REGISTRY, multiprocess_mode="livemax")

# -- authmount's own ----------------------------------------------------------------------------
LOGINS = Counter(
    "authmount_logins", "Logins (JWT login and OIDC callback) by mount, role and outcome: 'success' or the "
    "reason code of the refusal (docs/troubleshooting.md).", ["mount", "role", "outcome"], registry=REGISTRY,
)
RATE_LIMITED = Counter("authmount_rate_limited", "Requests refused with 429 by a login limit, by mount and limit.",
                       ["mount", "limit"], registry=REGISTRY)
KEY_FETCHES = Counter("authmount_key_fetches", "Fetches of JWKS and discovery documents by mount, kind and result.",
                      ["mount", "kind", "result"], registry=REGISTRY)
KEY_CACHE_HITS = Counter("authmount_key_cache_hits", "Signature checks served from a cached remote key set.",
                         ["mount"], registry=REGISTRY)
KEY_SET_FETCHED = Gauge(
    "authmount_key_set_fetched_timestamp_seconds", "When the key set in use was fetched (Unix time; with "
    "--workers the oldest of the workers' sets). Its age is time() minus this.", ["mount", "url"],
    registry=REGISTRY, multiprocess_mode="livemin",
)
OIDC_FLOWS = Counter(
    "authmount_oidc_flows", "OIDC flows by mount and stage: started (auth_url), completed (the callback or oidc/poll "
    "issued a token), failed (refused), expired (a callback or poll with an expired, forged or used state).",
    ["mount", "stage"], registry=REGISTRY,
)
STORAGE_UNAVAILABLE = Counter("authmount_storage_unavailable", "Requests answered 503 because storage failed, by "
                              "reason.", ["reason"], registry=REGISTRY)
STORAGE_COMMIT = Histogram(
    "authmount_storage_commit_seconds", "Time of one storage commit (SQLite: one group commit).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=REGISTRY,
)
STORAGE_BATCH = Histogram("authmount_storage_commit_batch_size", "Writes per SQLite group commit.",
                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=REGISTRY)
AUDIT_DEVICE_FAILURES = Counter("authmount_audit_device_failures", "Entries an audit device failed to write.",
                                ["device"], registry=REGISTRY)
SNAPSHOTS = Counter("authmount_snapshots", "Snapshots through sys/storage/raft/snapshot by result: ok (sent whole), "
                    "failed (not built), cut (the client left before the end).", ["result"], registry=REGISTRY)
SNAPSHOT_SENT = Gauge(
    "authmount_snapshot_last_success_timestamp_seconds", "When the last snapshot was sent whole (Unix time; with "
    "--workers the latest of the workers'). Alert on time() minus this.", registry=REGISTRY,
    multiprocess_mode="max",
)


_LOGIN_COUNTERS: dict[tuple[str, str, str], Any] = {}


def count_login(mount: str, role: str, outcome: str) -> None:
    """``authmount_logins_total{mount, role, outcome}`` + 1 (labelled children cached: a
    ``labels()`` call per login cost more than the increment)."""
    key = (mount, role, outcome)
    child = _LOGIN_COUNTERS.get(key)
    if child is None:
        if len(_LOGIN_COUNTERS) >= 10_000:
            _LOGIN_COUNTERS.clear()
        child = _LOGIN_COUNTERS[key] = LOGINS.labels(mount, role, outcome)
    _count(child)


def ms_since(start: float) -> float:
    """Milliseconds since ``time.perf_counter()`` was ``start``."""
    return (time.perf_counter() - start) * 1000.0


# -- vault_route_<operation>_<mount> --------------------------------------------------------------
_ROUTES: dict[tuple[str, str], Observer] = {}
_MAX_ROUTES = 1000
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


def route_timer(operation: str, mount_point: str) -> Observer | None:
    """The ``vault_route_<operation>_<mount>`` timer (``vault_route_update_auth_jwt_`` for a
    write to ``auth/jwt/``), made on first use; None past ``_MAX_ROUTES`` names."""
    key = (operation, mount_point)
    timer = _ROUTES.get(key)
    if timer is None:
        if len(_ROUTES) >= _MAX_ROUTES:
            return None
        name = "vault_route_" + _NOT_NAME.sub("_", f"{operation}_{mount_point}")
        timer = _ROUTES[key] = _request_timer(_ms(name, f"Time to handle {operation} requests to {mount_point}"))
    return timer


# -- what auth methods report (plugin.framework.Events) ------------------------------------------------
class MountEvents:
    """The ``Events`` of one mount (``auth/<path>``): key fetches, cache hits, OIDC flows."""

    __slots__ = ("mount", "_hits")

    def __init__(self, mount_point: str) -> None:
        self.mount = mount_point
        self._hits = KEY_CACHE_HITS.labels(mount_point)

    def key_fetch(self, kind: str, ok: bool) -> None:
        KEY_FETCHES.labels(self.mount, kind, "ok" if ok else "error").inc()

    def key_cache_hit(self) -> None:
        _count(self._hits)

    def key_set_fetched(self, url: str, at: float) -> None:
        KEY_SET_FETCHED.labels(self.mount, url).set(at)

    def oidc_flow(self, stage: str) -> None:
        OIDC_FLOWS.labels(self.mount, stage).inc()


# -- tokens ------------------------------------------------------------------------------------------
_TTL_BUCKETS = ((60, "1m"), (600, "10m"), (1200, "20m"), (3600, "1h"), (7200, "2h"), (86400, "1d"),
                (2 * 86400, "2d"), (7 * 86400, "7d"), (30 * 86400, "30d"))


def ttl_bucket(ttl: int) -> str:
    """Vault's creation-TTL label: the smallest bucket holding ``ttl``; ``+Inf`` for none (0)."""
    if ttl <= 0:
        return "+Inf"
    for bound, label in _TTL_BUCKETS:
        if ttl <= bound:
            return label
    return "+Inf"


_CREATED: dict[tuple[str, str, int, str], Any] = {}


_CREATED_BY_PATH: dict[tuple[str, str, int, str], Any] = {}


def token_created(entry: TokenEntry, mounts: MountTable | None) -> None:
    """Count one token in ``vault_token_creation`` (``TokenStore``'s ``on_mint``)."""
    # The child, by what names it: (mount accessor, creation path) name one mount for good
    # (a mount enabled again at the path has a new accessor), so the longest-prefix match
    # runs once per mount, TTL and type. An entry without an accessor is matched every time.
    fast = (entry.mount_accessor, entry.path, entry.ttl, entry.type)
    child = _CREATED_BY_PATH.get(fast) if entry.mount_accessor else None
    if child is None:
        found = mounts.match(entry.path.removeprefix("auth/")) if mounts is not None and entry.path else None
        if found is not None:
            method, point = found[0].entry.type, "auth/" + found[0].entry.path
        else:
            method, point = "token", "auth/token/"
        key = (method, point, entry.ttl, entry.type)
        child = _CREATED.get(key)
        if child is None:  # labelled children cached: labels() cost more than the increment
            if len(_CREATED) >= 10_000:
                _CREATED.clear()
            child = _CREATED[key] = TOKEN_CREATION.labels(method, point, ttl_bucket(entry.ttl), entry.type, NAMESPACE)
        if entry.mount_accessor and found is not None and found[0].entry.accessor == entry.mount_accessor:
            if len(_CREATED_BY_PATH) >= 10_000:
                _CREATED_BY_PATH.clear()
            _CREATED_BY_PATH[fast] = child
    _count(child)


async def usage_gauges(tokens: TokenStore, mounts: MountTable, period: float) -> None:
    """Set the token gauges from a scan of every token, every ``period`` seconds (a task)."""
    while True:
        try:
            usage = await tokens.usage()
        except asyncio.CancelledError:
            raise
        except Exception:  # a failing scan must not stop the next ones
            log.exception("usage_gauges_failed")
        else:
            types = {m.entry.accessor: m.entry.type for m in mounts.mounts.values()}
            by_auth: dict[str, int] = {}
            for accessor, count in usage.by_accessor.items():
                method = types.get(accessor, "token")
                by_auth[method] = by_auth.get(method, 0) + count
            TOKEN_COUNT.labels(NAMESPACE).set(usage.total)
            EXPIRE_NUM_LEASES.set(usage.leases)
            for gauge, values in ((TOKEN_COUNT_BY_AUTH, by_auth), (TOKEN_COUNT_BY_POLICY, usage.by_policy),
                                  (TOKEN_COUNT_BY_TTL, usage.by_ttl)):
                set_usage(gauge, values)
        await asyncio.sleep(period)


#: The labels each usage gauge was last set for (multi-process mode, see ``set_usage``).
_USAGE_LABELS: dict[Gauge, set[str]] = {}


def set_usage(gauge: Gauge, values: Mapping[str, int]) -> None:
    """Set ``gauge`` to one series per label of ``values`` (and ``NAMESPACE``), dropping the
    series of labels that are gone. prometheus-client cannot drop a series in multi-process
    mode (``clear()`` warns and the value stays in the worker's file, so a policy whose last
    token expired kept its old count), so with ``--workers`` a gone label is set to 0."""
    if MULTIPROCESS:
        for label in _USAGE_LABELS.get(gauge, set()) - values.keys():
            gauge.labels(label, NAMESPACE).set(0)
        _USAGE_LABELS[gauge] = set(values)
    else:
        gauge.clear()
    for label, count in values.items():
        gauge.labels(label, NAMESPACE).set(count)


# -- storage ---------------------------------------------------------------------------------------
#: The reason of the last storage failure answered 503, until readiness saw storage work again.
_storage_failure = ""


def storage_failed(reason: str) -> None:
    """Count a storage failure answered 503; readiness probes storage until it works again."""
    global _storage_failure
    _storage_failure = reason
    STORAGE_UNAVAILABLE.labels(reason).inc()


def storage_failure() -> str:
    """The reason of a storage failure not yet followed by a successful probe, else ''."""
    return _storage_failure


def storage_recovered() -> None:
    """A readiness probe wrote to storage: the last failure is over."""
    global _storage_failure
    _storage_failure = ""


# -- exposition -------------------------------------------------------------------------------------
class _VaultNames(Collector):
    """Counters named ``vault_*`` without the ``_total`` suffix prometheus-client adds, as
    Vault exports them (``vault_token_creation{...} 3``)."""

    def __init__(self, source: Collector) -> None:
        self._source = source
        #: The counters renamed (their HELP and TYPE lines are fixed after rendering).
        self.renamed: set[str] = set()

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            if family.type == "counter" and family.name.startswith("vault_"):
                # one process: family "x", samples "x_total"; multi-process: family "x_total"
                base = family.name = family.name.removesuffix("_total")
                self.renamed.add(base)
                family.samples = [s._replace(name=base) if s.name == base + "_total" else s for s in family.samples]
            yield family


def _source() -> Collector:
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def exposition() -> bytes:
    """Every series in the Prometheus text format (``sys/metrics?format=prometheus``)."""
    flush_pending()
    names = _VaultNames(_source())
    text = generate_latest(names)
    # prometheus-client writes a counter's HELP and TYPE lines as "<name>_total" whatever the
    # sample is called: name Vault's counters as Vault does.
    for base in names.renamed:
        name = base.encode()
        text = text.replace(b"# HELP " + name + b"_total ", b"# HELP " + name + b" ")
        text = text.replace(b"# TYPE " + name + b"_total counter", b"# TYPE " + name + b" counter")
    return text


def metrics_json() -> dict[str, Any]:
    """``sys/metrics`` without ``format``: Vault's JSON shape (``Gauges``, ``Counters``,
    ``Samples``), names dotted as Vault's (``vault.core.handle_request``)."""
    gauges: list[dict[str, Any]] = []
    counters: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    flush_pending()
    for family in _VaultNames(_source()).collect():
        name = family.name.replace("_", ".", 2) if family.name.startswith("vault_") else family.name
        if family.type in ("gauge", "counter", "unknown"):
            out = gauges if family.type != "counter" else counters
            for s in family.samples:
                item: dict[str, Any] = {"Name": name, "Labels": dict(s.labels)}
                if family.type == "counter":
                    item |= {"Count": s.value, "Sum": s.value}
                else:
                    item["Value"] = s.value
                out.append(item)
        elif family.type in ("histogram", "summary"):
            for labels, count, total in _series(family):
                samples.append({"Name": name, "Labels": labels, "Count": count, "Sum": total,
                                "Mean": total / count if count else 0.0})
    return {
        "Timestamp": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime()),
        "Gauges": gauges, "Counters": counters, "Samples": samples, "Points": [],
    }


def _series(family: Metric) -> Iterator[tuple[dict[str, str], float, float]]:
    """(labels, count, sum) of each series of a histogram or summary."""
    found: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for s in family.samples:
        labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("le", "quantile")))
        slot = found.setdefault(labels, [0.0, 0.0])
        if s.name.endswith("_count"):
            slot[0] = s.value
        elif s.name.endswith("_sum"):
            slot[1] = s.value
    for labels, (count, total) in found.items():
        yield dict(labels), count, total


def process_exit() -> None:
    """A worker stops: write what waits to its files and drop its live-gauge files
    (multi-process mode)."""
    if MULTIPROCESS:
        flush_pending()
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
