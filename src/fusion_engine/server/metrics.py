"""Prometheus metrics, defined once, with labels from a closed set.

Hand-written on prometheus-client rather than Litestar's Prometheus plugin because the design
fixes the family names and labels (``fusion_*``, panel and model from config only). Under
gunicorn with several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker imports
prometheus-client, and ``/metrics`` sums every worker through ``MultiProcessCollector``; the
files there are reserved before use (``metrics_files``), so a full disk degrades metrics only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..results import PanelResponse
from .metrics_files import install as install_reserved_files

#: From tens of milliseconds (cache hits, fast models) to minutes (long fusions).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
AGREEMENT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.999, 1.0)
#: The gateway's own time per request: well under a millisecond when all is well.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
AD_HOC = "ad-hoc"
NO_PANEL = "-"
#: The key label of a request no key was checked for (health, metrics, an unauthenticated 401).
NO_KEY = "-"

Family = TypeVar("Family", Counter, Histogram)


class Children(Generic[Family]):
    """A family's labelled children, each looked up once.

    ``labels(...)`` takes a lock and validates its values on every call, several times per
    upstream call; the label values come from a closed set, so a dict of the children stays
    small.
    """

    def __init__(self, family: Family) -> None:
        self.family: Family = family
        self._known: dict[tuple[str, ...], Family] = {}

    def __call__(self, *values: str) -> Family:
        """The child for ``values``."""
        child = self._known.get(values)
        if child is None:
            child = self._known[values] = self.family.labels(*values)
        return child


class FileErrors(Collector):
    """``fusion_metrics_file_errors_total``: metric files that ran out of room.

    Exposed from process memory by the worker that answers the scrape (every worker shares the
    metrics filesystem, so a full one shows in all of them): a counter kept in the multiprocess
    files would be lost exactly when they are full.
    """

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "fusion_metrics_file_errors",
            "Metric files that ran out of room (their new label sets are not published); "
            "counted by the worker answering the scrape.",
        )
        family.add_metric([], self.count)
        yield family


class Metrics:
    """Every ``fusion_*`` family, registered in a registry of their own."""

    def __init__(
        self,
        *,
        known_models: Collection[str] = (),
        known_panels: Collection[str] = (),
        multiprocess_dir: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        #: Metric files of this worker that ran out of room. Kept in the process, not in a
        #: multiprocess file: those are what ran out of room.
        self.file_errors = FileErrors()
        if multiprocess_dir:
            # Before the first metric: a full directory must raise, not SIGBUS the worker.
            install_reserved_files(self._file_error)
        self.known_models = set(known_models)
        self.known_panels = set(known_panels)
        registry = self.registry
        self.requests = Counter(
            "fusion_requests_total", "Requests by route, panel, HTTP status and key name.",
            ["route", "panel", "status", "key"], registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "fusion_request_duration_seconds", "Time to the last byte of a reply.",
            ["route", "panel"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_requests = Counter(
            "fusion_upstream_requests_total", "Upstream calls by model and outcome.",
            ["model", "outcome"], registry=registry,
        )  # fmt: skip
        self.upstream_duration = Histogram(
            "fusion_upstream_duration_seconds", "Upstream call latency, retries included.",
            ["model"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_tokens = Counter(
            "fusion_upstream_tokens_total", "Tokens by model and kind (prompt, completion).",
            ["model", "kind"], registry=registry,
        )  # fmt: skip
        self.upstream_cost = Counter(
            "fusion_upstream_cost_usd_total", "Cost the providers reported, in USD.",
            ["model"], registry=registry,
        )  # fmt: skip
        self.cache_requests = Counter(
            "fusion_cache_requests_total", "Cache lookups by result (error: store unreachable).",
            ["result"], registry=registry,
        )  # fmt: skip
        self.inflight = Gauge(
            "fusion_inflight_requests", "Requests being served right now.",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.gateway_overhead = Histogram(
            "fusion_gateway_overhead_seconds",
            "The gateway's own share of a request: its time minus its upstream calls' (requests"
            " whose upstream time is known: fused, and non-streamed passthrough).",
            ["route"], buckets=OVERHEAD_BUCKETS, registry=registry,
        )  # fmt: skip
        self.agreement = Histogram(
            "fusion_agreement", "How much a panel's members agreed (0-1), per fresh fusion.",
            ["panel"], buckets=AGREEMENT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.config_reloads = Counter(
            "fusion_config_reloads_total", "Panel and judge reloads by result (ok, error).",
            ["result"], registry=registry,
        )  # fmt: skip
        self.key_spend = Counter(
            "fusion_key_spend_usd_total",
            "USD charged to each key name (members, judge, passthrough; estimated where a"
            " provider reported no cost).",
            ["key"], registry=registry,
        )  # fmt: skip
        self.key_budget = Gauge(
            "fusion_key_budget_usd", "Each key name's budget for its current period, in USD.",
            ["key"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.key_period_spend = Gauge(
            "fusion_key_period_spend_usd",
            "Each budgeted key name's spend in its current period, as last seen by a worker.",
            ["key"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        registry.register(self.file_errors)
        self._key_spend = Children(self.key_spend)
        self._requests = Children(self.requests)
        self._request_duration = Children(self.request_duration)
        self._upstream_requests = Children(self.upstream_requests)
        self._upstream_duration = Children(self.upstream_duration)
        self._upstream_tokens = Children(self.upstream_tokens)
        self._upstream_cost = Children(self.upstream_cost)
        self._agreement = Children(self.agreement)
        self._gateway_overhead = Children(self.gateway_overhead)
        self.cache_lookup = Children(self.cache_requests)

    def model_label(self, model: str) -> str:
        """A configured member or judge slug as is; anything a request made up is ``ad-hoc``."""
        return model if model in self.known_models else AD_HOC

    def panel_label(self, panel: str | None) -> str:
        """A loaded panel's name, or ``-``."""
        return panel if panel in self.known_panels else NO_PANEL

    def observe_request(
        self,
        route: str,
        panel: str,
        status: int,
        seconds: float,
        agreement: float | None,
        upstream_seconds: float | None = None,
        key: str = NO_KEY,
    ) -> None:
        """Record one routed request (``panel`` already a label; ``key`` the caller's key name,
        which comes from the config, never from a request); with ``upstream_seconds``, also the
        gateway's own share of it."""
        self._requests(route, panel, str(status), key).inc()
        self._request_duration(route, panel).observe(seconds)
        if upstream_seconds is not None:
            self._gateway_overhead(route).observe(max(seconds - upstream_seconds, 0.0))
        if agreement is not None:
            self._agreement(panel).observe(agreement)

    def observe_call(self, response: PanelResponse) -> None:
        """Record one member or judge call."""
        self.observe_upstream(self.model_label(response.model), response)

    def observe_upstream(self, label: str, response: PanelResponse) -> None:
        """Record one upstream call under ``label``."""
        outcome = "ok" if response.ok else (response.error_kind or "error")
        self._upstream_requests(label, outcome).inc()
        self._upstream_duration(label).observe(response.latency_ms / 1000)
        # ``> 0``: a counter raises on a negative increment, which a provider may report.
        if response.tokens_in > 0:
            self._upstream_tokens(label, "prompt").inc(response.tokens_in)
        if response.tokens_out > 0:
            self._upstream_tokens(label, "completion").inc(response.tokens_out)
        if response.cost_usd is not None and response.cost_usd > 0:
            self._upstream_cost(label).inc(response.cost_usd)

    def observe_spend(self, key: str, usd: float) -> None:
        """Count ``usd`` charged to the key name ``key``."""
        if usd > 0:
            self._key_spend(key).inc(usd)

    def _file_error(self, error: OSError) -> None:
        self.file_errors.count += 1

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition: every worker's values when running multiprocess (and the
        metric-file errors of the worker answering)."""
        registry = self.registry
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            registry.register(self.file_errors)
        return generate_latest(registry), CONTENT_TYPE_LATEST
