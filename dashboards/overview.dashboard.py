"""Overview: the last sweep of each model, one row per model, and the host's RAM now.

Generated into llm-probe-overview.json by `python dashboards/generate.py --out dashboards/`.
"""

import sys
from pathlib import Path

# Loaded by file path (generate.py, grafanalib's generate-dashboard): make the sibling
# module importable.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import common as c  # noqa: E402
from grafanalib.formatunits import PERCENT_UNIT, SECONDS, SHORT  # noqa: E402

grid = c.Grid()

# --- the exporter and its host ----------------------------------------------------------
grid.row("Exporter and host")
grid.add(
    c.stat(
        "Host RAM used",
        "Host memory used ratio, (total - available) / total, read at scrape time. It turns "
        "red at the configured probe.memory_limit (llm_probe_memory_limit_ratio): above it "
        "the memory guard aborts a running level.",
        [
            c.target(c.host_sel("llm_probe_host_memory_used_ratio"), "used"),
            c.target(c.host_sel("llm_probe_memory_limit_ratio"), "limit"),
        ],
        PERCENT_UNIT,
        thresholds=c.steps("green", (0.9, "red")),
        transformations=[c.limit_as_threshold("B")],
        color_mode="background",
        graph_mode="area",
        extra={"fieldConfig": {"defaults": {"min": 0, "max": 1}}},
    ),
    w=6,
    h=6,
)
grid.add(
    c.host_ram_against_limit(
        "Host memory used ratio over time (solid) and the configured probe.memory_limit "
        "(dashed red): a sweep level whose peak crosses the limit fails and is aborted."
    ),
    w=12,
    h=6,
)
grid.add(
    c.stat(
        "Config reload",
        "Whether the last load or reload of the configuration file succeeded "
        "(llm_probe_config_last_reload_successful). After a failed reload the exporter "
        "keeps running the previous configuration.",
        [c.target(c.host_sel("llm_probe_config_last_reload_successful"))],
        SHORT,
        mappings=c.value_text(("1", "OK", "green"), ("0", "failed", "red")),
        color_mode="background",
    ),
    w=3,
    h=6,
)
grid.add(
    c.stat(
        "Exporter version",
        "The llm-probe-exporter version of the selected instance (llm_probe_build_info).",
        [c.target(c.host_sel("llm_probe_build_info"), "{{version}}")],
        SHORT,
        text_mode="name",
    ),
    w=3,
    h=6,
)

# --- one row per model ------------------------------------------------------------------
grid.row("Model $model", repeat="model")
grid.add(
    c.stat(
        "Max safe concurrency",
        "Highest number of concurrent users that passed with every lower level passing, in "
        "the last completed sweep (llm_probe_max_safe_concurrency). 0: even 1 user failed.",
        [c.target(c.sel("llm_probe_max_safe_concurrency"), "{{server}}")],
        SHORT,
        thresholds=c.steps("red", (1, "green")),
        decimals=0,
    ),
    w=5,
    h=5,
)
grid.add(
    c.stat(
        "Limit reached",
        "Whether a tested level failed in the last sweep (llm_probe_sweep_limit_reached). "
        "'not reached' means every level passed: the real limit is above the highest level "
        "tested, so the max safe concurrency is a lower bound.",
        [c.target(c.sel("llm_probe_sweep_limit_reached"), "{{server}}")],
        SHORT,
        mappings=c.value_text(("1", "reached", "orange"), ("0", "not reached", "green")),
    ),
    w=5,
    h=5,
)
grid.add(
    c.stat(
        "Up",
        "Whether the last heartbeat (one small request every schedule.heartbeat) succeeded "
        "(llm_probe_up).",
        [c.target(c.sel("llm_probe_up"), "{{server}}")],
        SHORT,
        mappings=c.up_down(),
        color_mode="background",
    ),
    w=4,
    h=5,
)
grid.add(
    c.stat(
        "Last sweep",
        "Time since the last completed sweep of the model finished "
        "(time() - llm_probe_sweep_completed_timestamp_seconds). Every panel below shows "
        "that sweep.",
        [
            c.target(
                f"time() - {c.sel('llm_probe_sweep_completed_timestamp_seconds')}", "{{server}}"
            )
        ],
        SECONDS,
        no_value="no sweep yet",
    ),
    w=5,
    h=5,
)
grid.add(
    c.stat(
        "Sweep running",
        "Whether a sweep of the model is running now (llm_probe_sweep_running). Sweeps run "
        "one at a time per exporter; the panels below change when it completes.",
        [c.target(c.sel("llm_probe_sweep_running"), "{{server}}")],
        SHORT,
        mappings=c.value_text(("1", "sweeping", "blue"), ("0", "idle", "text")),
    ),
    w=5,
    h=5,
)
grid.add(
    c.per_level_barchart(
        "Response time per level",
        "Mean and p95 response time of the successful requests at each concurrency level of "
        "the last sweep (llm_probe_sweep_latency_seconds): how answers slow down as users "
        "are added. With the same model on several selected servers, the highest value.",
        SECONDS,
        [
            ("mean", c.sel("llm_probe_sweep_latency_seconds", statistic="mean")),
            ("p95", c.sel("llm_probe_sweep_latency_seconds", statistic="p95")),
        ],
        colors={"mean": "blue", "p95": "orange"},
    ),
    w=12,
    h=9,
)
grid.add(
    c.per_level_barchart(
        "Outcomes per level",
        "Successful, failed and timed-out requests at each concurrency level of the last "
        "sweep (llm_probe_sweep_successes, _errors, _timeouts; their sum is the level's "
        "requests). With the same model on several selected servers, the highest value.",
        SHORT,
        [
            ("successes", c.sel("llm_probe_sweep_successes")),
            ("errors", c.sel("llm_probe_sweep_errors")),
            ("timeouts", c.sel("llm_probe_sweep_timeouts")),
        ],
        stacking="normal",
        colors={"successes": "green", "errors": "red", "timeouts": "orange"},
    ),
    w=12,
    h=9,
)
grid.add(
    c.per_level_barchart(
        "Host RAM per level",
        "Host memory used ratio at the start, the end and the peak of each concurrency level "
        "of the last sweep (llm_probe_sweep_memory_used_ratio), against the configured "
        "limit (dashed line, llm_probe_memory_limit_ratio): a peak above it fails the level.",
        PERCENT_UNIT,
        [
            ("start", c.sel("llm_probe_sweep_memory_used_ratio", phase="start")),
            ("end", c.sel("llm_probe_sweep_memory_used_ratio", phase="end")),
            ("peak", c.sel("llm_probe_sweep_memory_used_ratio", phase="peak")),
        ],
        colors={"start": "green", "end": "blue", "peak": "purple"},
        max_value=1,
        memory_limit=True,
    ),
    w=12,
    h=9,
)
grid.add(
    c.per_level_table(
        "Levels of the last sweep",
        "The last sweep level by level, like the report: requests, outcomes, response time, "
        "memory peak and whether the level passed its rules (llm_probe_sweep_*). The sweep "
        "stops at the first failing level.",
        [
            ("requests", SHORT, c.sel("llm_probe_sweep_requests")),
            ("successes", SHORT, c.sel("llm_probe_sweep_successes")),
            ("errors", SHORT, c.sel("llm_probe_sweep_errors")),
            ("timeouts", SHORT, c.sel("llm_probe_sweep_timeouts")),
            ("mean", SECONDS, c.sel("llm_probe_sweep_latency_seconds", statistic="mean")),
            ("p95", SECONDS, c.sel("llm_probe_sweep_latency_seconds", statistic="p95")),
            ("memory peak", PERCENT_UNIT, c.sel("llm_probe_sweep_memory_used_ratio", phase="peak")),
            ("passed", SHORT, c.sel("llm_probe_sweep_level_passed")),
        ],
        mappings={"passed": c.value_text(("1", "passed", "green"), ("0", "failed", "red"))},
    ),
    w=12,
    h=9,
)

dashboard = c.dashboard(
    title="LLM probe / Overview",
    uid="llm-probe-overview",
    description="The last concurrency sweep of each model: max safe concurrency, response "
    "time, outcomes and host RAM per level.",
    grid=grid,
    time_from="now-6h",
)
