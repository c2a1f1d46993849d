"""/metrics: the metric contract of DESIGN.md on a private registry.

Sweep gauges are built on every scrape from the latest immutable results (no I/O, no
blocking); live counters and the request-duration histogram are updated as requests
complete; host memory is read at scrape time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.backends import ERROR_REASONS, Outcome
from exporter.memory import host_memory_used_ratio
from exporter.results import ModelResult

# `_created` series double every counter and no dashboard or alert here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Sized for LLM answers: from a cached one-token reply to a long generation.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120)
LAST_SWEEP = "From the last completed sweep, not measured at scrape time."
SWEEP_RESULTS = ("completed", "aborted", "failed")
DEFERRED_REASONS = ("server_busy", "slow_heartbeat")


class SweepCollector(Collector):
    """Gauges of the latest completed sweep of each configured model."""

    def __init__(self, results: Callable[[], Sequence[ModelResult]]) -> None:
        self._results = results

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # built per scrape; nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        results = self._results()
        by_level = ["model", "server", "concurrency"]
        per_model = ["model", "server"]

        def family(name: str, help_text: str, labels: Sequence[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, f"{help_text} {LAST_SWEEP}", labels=labels)

        requests = family("llm_probe_sweep_requests", "Requests sent at a level.", by_level)
        successes = family("llm_probe_sweep_successes", "Successful requests at a level.", by_level)
        errors = family(
            "llm_probe_sweep_errors", "Failed requests (not timeouts) at a level.", by_level
        )
        timeouts = family("llm_probe_sweep_timeouts", "Timed-out requests at a level.", by_level)
        errors_by_reason = family(
            "llm_probe_sweep_errors_by_reason",
            "Failed requests at a level, by reason.",
            [*by_level, "reason"],
        )
        latency = family(
            "llm_probe_sweep_latency_seconds",
            "Response time of successful requests at a level (mean, p50, p95, p99, max).",
            [*by_level, "statistic"],
        )
        ttft = family(
            "llm_probe_sweep_ttft_seconds",
            "Time to first token of streamed successes at a level (mean, p95).",
            [*by_level, "statistic"],
        )
        tokens = family(
            "llm_probe_sweep_output_tokens_per_second",
            "Output tokens of a level's successes per second of the level.",
            by_level,
        )
        memory = family(
            "llm_probe_sweep_memory_used_ratio",
            "Host memory used ratio at a level's start, end and peak.",
            [*by_level, "phase"],
        )
        rss = family(
            "llm_probe_sweep_server_rss_peak_bytes",
            "Peak RSS of the model server's process during a level.",
            by_level,
        )
        passed = family(
            "llm_probe_sweep_level_passed", "1 if the level passed its rules.", by_level
        )
        queue = family(
            "llm_probe_sweep_server_queue_peak",
            "Peak of requests waiting in the server's own queue during a level (its metrics).",
            by_level,
        )
        server_running = family(
            "llm_probe_sweep_server_running_peak",
            "Peak of requests the server itself reported running during a level.",
            by_level,
        )
        kv_cache = family(
            "llm_probe_sweep_server_kv_cache_usage_peak",
            "Peak KV-cache usage ratio the server reported during a level (vLLM).",
            by_level,
        )
        loaded = family(
            "llm_probe_sweep_model_loaded_before",
            "1 if the model was already in memory before the sweep (Ollama /api/ps).",
            per_model,
        )
        model_size = family(
            "llm_probe_model_size_bytes",
            "Size of the loaded model in memory (Ollama /api/ps).",
            per_model,
        )
        max_safe = family(
            "llm_probe_max_safe_concurrency",
            "Highest level that passed with every lower level passing (0: level 1 failed).",
            per_model,
        )
        limit = family(
            "llm_probe_sweep_limit_reached",
            "1 if a tested level failed (the limit is within the range), 0 if all passed.",
            per_model,
        )
        mean_successes = family(
            "llm_probe_sweep_mean_successes", "Successes averaged over the levels run.", per_model
        )
        completed = family(
            "llm_probe_sweep_completed_timestamp_seconds",
            "Unix time the sweep finished.",
            per_model,
        )
        duration = family(
            "llm_probe_sweep_duration_seconds", "Wall time the sweep took.", per_model
        )
        cold = family(
            "llm_probe_sweep_cold_start_seconds",
            "Time of the warm-up request (the server's load time when it reports one).",
            per_model,
        )
        for r in results:
            m = [r.model, r.server]
            for lv in r.levels:
                c = [*m, str(lv.concurrency)]
                requests.add_metric(c, lv.requests)
                successes.add_metric(c, lv.successes)
                errors.add_metric(c, lv.errors)
                timeouts.add_metric(c, lv.timeouts)
                for reason, count in sorted(lv.errors_by_reason.items()):
                    errors_by_reason.add_metric([*c, reason], count)
                for stat, value in (
                    ("mean", lv.latency_mean_s),
                    ("p50", lv.latency_p50_s),
                    ("p95", lv.latency_p95_s),
                    ("p99", lv.latency_p99_s),
                    ("max", lv.latency_max_s),
                ):
                    if value is not None:
                        latency.add_metric([*c, stat], value)
                for stat, value in (("mean", lv.ttft_mean_s), ("p95", lv.ttft_p95_s)):
                    if value is not None:
                        ttft.add_metric([*c, stat], value)
                if lv.output_tokens_per_s is not None:
                    tokens.add_metric(c, lv.output_tokens_per_s)
                memory.add_metric([*c, "start"], lv.memory_start_ratio)
                memory.add_metric([*c, "end"], lv.memory_end_ratio)
                memory.add_metric([*c, "peak"], lv.memory_peak_ratio)
                if lv.server_rss_peak_bytes is not None:
                    rss.add_metric(c, lv.server_rss_peak_bytes)
                passed.add_metric(c, 1 if lv.passed else 0)
                if lv.server_waiting_peak is not None:
                    queue.add_metric(c, lv.server_waiting_peak)
                if lv.server_running_peak is not None:
                    server_running.add_metric(c, lv.server_running_peak)
                if lv.server_kv_cache_usage_peak is not None:
                    kv_cache.add_metric(c, lv.server_kv_cache_usage_peak)
            max_safe.add_metric(m, r.max_safe_concurrency)
            limit.add_metric(m, 1 if r.limit_reached else 0)
            mean_successes.add_metric(m, r.mean_successes)
            completed.add_metric(m, r.finished_at.timestamp())
            duration.add_metric(m, (r.finished_at - r.started_at).total_seconds())
            if r.cold_start_s is not None:
                cold.add_metric(m, r.cold_start_s)
            if r.loaded_before is not None:
                loaded.add_metric(m, 1 if r.loaded_before else 0)
            if r.model_size_bytes is not None:
                model_size.add_metric(m, r.model_size_bytes)
        yield from (
            requests, successes, errors, timeouts, errors_by_reason, latency, ttft, tokens,
            memory, rss, queue, server_running, kv_cache, passed, max_safe, limit,
            mean_successes, completed, duration, cold, loaded, model_size,
        )  # fmt: skip


class HostCollector(Collector):
    """Host memory, read at scrape time (a /proc read: microseconds)."""

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "llm_probe_host_memory_used_ratio",
            "Host memory used ratio (total - available) / total, read at scrape time.",
        )
        g.add_metric([], host_memory_used_ratio())
        yield g


class ExporterMetrics:
    """Every metric the exporter serves, on its own registry."""

    def __init__(self, results: Callable[[], Sequence[ModelResult]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ["model", "server"]
        self.requests = Counter(
            "llm_probe_requests", "Sweep requests completed (any outcome).", labels, registry=r
        )
        self.timeouts = Counter(
            "llm_probe_timeouts", "Sweep requests that timed out.", labels, registry=r
        )
        self.errors = Counter(
            "llm_probe_errors",
            "Sweep requests that failed, by reason.",
            [*labels, "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "llm_probe_request_duration_seconds",
            "Response time of successful sweep requests.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.up = Gauge(
            "llm_probe_up", "1 if the last heartbeat to the model succeeded.", labels, registry=r
        )
        self.heartbeat_latency = Gauge(
            "llm_probe_heartbeat_latency_seconds",
            "Response time of the last heartbeat request.",
            labels,
            registry=r,
        )
        self.heartbeat_timestamp = Gauge(
            "llm_probe_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat.",
            labels,
            registry=r,
        )
        self.sweep_running = Gauge(
            "llm_probe_sweep_running", "1 while a sweep of the model runs.", labels, registry=r
        )
        self.sweeps = Counter(
            "llm_probe_sweeps",
            "Sweeps ended, by result (completed, aborted, failed).",
            [*labels, "result"],
            registry=r,
        )
        self.deferred = Counter(
            "llm_probe_sweeps_deferred",
            "Sweeps put off because the server was busy with other traffic, by reason.",
            [*labels, "reason"],
            registry=r,
        )
        self.memory_limit = Gauge(
            "llm_probe_memory_limit_ratio",
            "The configured host memory limit (probe.memory_limit).",
            registry=r,
        )
        self.reload_ok = Gauge(
            "llm_probe_config_last_reload_successful",
            "1 if the last configuration load succeeded.",
            registry=r,
        )
        self.reload_time = Gauge(
            "llm_probe_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            registry=r,
        )
        build = Gauge("llm_probe_build_info", "Version of the exporter.", ["version"], registry=r)
        build.labels(__version__).set(1)
        r.register(SweepCollector(results))
        r.register(HostCollector())
        self._targets: set[tuple[str, str]] = set()

    def set_targets(self, targets: Iterable[tuple[str, str]], memory_limit: float) -> None:
        """(server, model) pairs now configured: their series exist from start, removed
        ones disappear."""
        wanted = set(targets)
        for server, model in self._targets - wanted:
            for metric in (self.requests, self.timeouts, self.duration, self.up,
                           self.heartbeat_latency, self.heartbeat_timestamp,
                           self.sweep_running):  # fmt: skip
                _remove(metric, model, server)
            for reason in ERROR_REASONS:
                _remove(self.errors, model, server, reason)
            for result in SWEEP_RESULTS:
                _remove(self.sweeps, model, server, result)
            for why in DEFERRED_REASONS:
                _remove(self.deferred, model, server, why)
        for server, model in wanted - self._targets:
            self.requests.labels(model, server)
            self.timeouts.labels(model, server)
            self.duration.labels(model, server)
            self.up.labels(model, server).set(0)
            self.sweep_running.labels(model, server).set(0)
            for reason in ERROR_REASONS:
                self.errors.labels(model, server, reason)
            for result in SWEEP_RESULTS:
                self.sweeps.labels(model, server, result)
            for why in DEFERRED_REASONS:
                self.deferred.labels(model, server, why)
        self._targets = wanted
        self.memory_limit.set(memory_limit)

    def record_request(self, server: str, model: str, outcome: Outcome) -> None:
        self.requests.labels(model, server).inc()
        if outcome.kind == "timeout":
            self.timeouts.labels(model, server).inc()
        elif outcome.kind == "error":
            self.errors.labels(model, server, outcome.reason or "unknown").inc()
        else:
            self.duration.labels(model, server).observe(outcome.latency_s)

    def record_heartbeat(self, server: str, model: str, outcome: Outcome) -> None:
        self.up.labels(model, server).set(1 if outcome.ok else 0)
        self.heartbeat_latency.labels(model, server).set(outcome.latency_s)
        self.heartbeat_timestamp.labels(model, server).set(time.time())

    def record_reload(self, ok: bool) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(time.time())


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
