"""Trends: how capacity, response time, errors and RAM of each model change over days.

Generated into llm-probe-trends.json by `python dashboards/generate.py --out dashboards/`.
"""

import sys
from pathlib import Path
from typing import Any

# Loaded by file path (generate.py, grafanalib's generate-dashboard): make the sibling
# module importable.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import common as c  # noqa: E402
from grafanalib.formatunits import PERCENT_UNIT, SECONDS, SHORT  # noqa: E402

SERIES = "{{server}} / {{model}}"


def increase(metric: str, by: str = "server, model") -> str:
    return f"sum by ({by}) (increase({c.sel(metric)}[$__rate_interval]))"


def quantile(q: str) -> Any:
    return c.target(
        f"histogram_quantile({q}, sum by (le, model, server) "
        f"(rate({c.sel('llm_probe_request_duration_seconds_bucket')}[$__rate_interval])))",
        f"p{q[2:].ljust(2, '0')} {SERIES}",
    )


grid = c.Grid()

grid.row("Capacity")
grid.add(
    c.timeseries(
        "Max safe concurrency",
        "Max safe concurrency of each model after each sweep "
        "(llm_probe_max_safe_concurrency): a drop means the model now serves fewer users "
        "before failing, slowing past the objective or running the host out of RAM.",
        [c.target(c.sel("llm_probe_max_safe_concurrency"), SERIES)],
        SHORT,
        min_value=0,
        interpolation="stepAfter",
        fill=0,
    ),
    w=12,
    h=8,
)
grid.add(
    c.timeseries(
        "p95 response time per level",
        "p95 response time of the successful requests at each concurrency level, as measured "
        'by each sweep (llm_probe_sweep_latency_seconds{statistic="p95"}); the value holds '
        "until the next sweep.",
        [
            c.target(
                c.sel("llm_probe_sweep_latency_seconds", statistic="p95"),
                "{{model}} @ {{concurrency}} users ({{server}})",
            )
        ],
        SECONDS,
        min_value=0,
        interpolation="stepAfter",
        fill=0,
    ),
    w=12,
    h=8,
)

grid.row("Errors and timeouts")
grid.add(
    c.timeseries(
        "Timeouts",
        "Sweep requests that timed out, per interval (increase of llm_probe_timeouts_total).",
        [c.target(increase("llm_probe_timeouts_total"), SERIES)],
        SHORT,
        min_value=0,
        draw_style="bars",
        fill=80,
        legend_calcs=("sum", "max"),
    ),
    w=8,
    h=8,
)
grid.add(
    c.timeseries(
        "Errors by reason",
        "Sweep requests that failed, per interval and reason (increase of "
        "llm_probe_errors_total): connect, disconnected, http_4xx, http_5xx, overloaded, "
        "invalid_response, truncated, cancelled (memory guard). The legend is sorted by "
        "total, so the reasons that happened come first.",
        [
            c.target(
                increase("llm_probe_errors_total", "server, model, reason"),
                "{{reason}} " + SERIES,
            )
        ],
        SHORT,
        min_value=0,
        draw_style="bars",
        fill=80,
        stacking="normal",
        legend_calcs=("sum", "max"),
        legend_sort="Total",
    ),
    w=8,
    h=8,
)
grid.add(
    c.timeseries(
        "Sweeps and their requests",
        "Sweep requests completed with any outcome (increase of llm_probe_requests_total) "
        "and sweeps ended by result: completed, aborted, failed (llm_probe_sweeps_total), "
        "per interval.",
        [
            c.target(increase("llm_probe_requests_total"), "requests " + SERIES),
            c.target(
                increase("llm_probe_sweeps_total", "server, model, result"),
                "sweeps {{result}} " + SERIES,
            ),
        ],
        SHORT,
        min_value=0,
        draw_style="bars",
        fill=80,
        legend_calcs=("sum",),
    ),
    w=8,
    h=8,
)

grid.row("Response time")
grid.add(
    c.timeseries(
        "Request duration quantiles",
        "p50, p95 and p99 response time of successful sweep requests, from the histogram "
        "llm_probe_request_duration_seconds (buckets 0.05 s to 120 s). Sweep requests only "
        "happen during sweeps, so there are gaps between them.",
        [quantile("0.5"), quantile("0.95"), quantile("0.99")],
        SECONDS,
        min_value=0,
        fill=0,
    ),
    w=12,
    h=8,
)
grid.add(
    c.timeseries(
        "Heartbeat latency",
        "Response time of the last heartbeat, one small non-streamed request every "
        "schedule.heartbeat (llm_probe_heartbeat_latency_seconds); heartbeats pause while "
        "the server is being swept.",
        [c.target(c.sel("llm_probe_heartbeat_latency_seconds"), SERIES)],
        SECONDS,
        min_value=0,
        fill=0,
    ),
    w=12,
    h=8,
)

grid.row("Availability and memory")
grid.add(
    c.state_timeline(
        "Up",
        "Whether each model's heartbeat succeeded over time (llm_probe_up).",
        [c.target(c.sel("llm_probe_up"), SERIES)],
        mappings=c.up_down(),
    ),
    w=8,
    h=8,
)
grid.add(
    c.host_ram_against_limit(
        "Host memory used ratio over time (solid) and the configured probe.memory_limit "
        "(dashed red, llm_probe_memory_limit_ratio)."
    ),
    w=8,
    h=8,
)
grid.add(
    c.timeseries(
        "Memory peak per level",
        "Peak host memory used ratio of each concurrency level, as measured by each sweep "
        '(llm_probe_sweep_memory_used_ratio{phase="peak"}): RAM creeping up at the same '
        "number of users shows here first.",
        [
            c.target(
                c.sel("llm_probe_sweep_memory_used_ratio", phase="peak"),
                "{{model}} @ {{concurrency}} users ({{server}})",
            )
        ],
        PERCENT_UNIT,
        min_value=0,
        max_value=1,
        interpolation="stepAfter",
        fill=0,
    ),
    w=8,
    h=8,
)

dashboard = c.dashboard(
    title="LLM probe / Trends",
    uid="llm-probe-trends",
    description="How each model's max safe concurrency, response time, errors, timeouts and "
    "host RAM change from sweep to sweep, over days.",
    grid=grid,
    time_from="now-7d",
)
