"""Building blocks shared by the llm-probe dashboards: variables, selectors, panels, layout.

Everything here returns grafanalib objects; dashboards/generate.py turns them into the
JSON a current Grafana writes (see `modernize` there for what grafanalib gets wrong).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attr
import grafanalib.core as G
from grafanalib.formatunits import PERCENT_UNIT

SCHEMA_VERSION = 39  # what Grafana 11.0-11.2 writes; 11.3+ and 12 migrate it on load
TAGS = ["llm-probe"]
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

# Label matchers. Host-level metrics (no model/server labels) only get the instance one.
HOST = 'instance=~"$instance"'
MODEL = 'instance=~"$instance", server=~"$server", model=~"$model"'

GRID_WIDTH = 24

Json = dict[str, Any]


def sel(metric: str, **labels: str) -> str:
    """`metric{instance=~"$instance", server=~"$server", model=~"$model", k="v"...}`."""
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{MODEL}{extra}}}"


def host_sel(metric: str) -> str:
    return f"{metric}{{{HOST}}}"


# --- variables --------------------------------------------------------------------------


def _label_values(metric_selector: str, label: str) -> Json:
    # The object form Grafana 11's Prometheus variable editor saves.
    return {
        "query": f"label_values({metric_selector}, {label})",
        "refId": f"Prometheus-{label}-Variable-Query",
    }


def variables() -> list[Any]:
    """`datasource`, `instance` (one exporter), `server` and `model` (multi, with All)."""
    return [
        G.Template(
            name="datasource",
            label="Data source",
            query="prometheus",
            type="datasource",
            regex="",
        ),
        _query_variable("instance", "Exporter", "llm_probe_build_info", multi=False),
        _query_variable("server", "Server", f"llm_probe_up{{{HOST}}}", multi=True),
        _query_variable("model", "Model", f'llm_probe_up{{{HOST}, server=~"$server"}}', multi=True),
    ]


def _query_variable(name: str, label: str, metric_selector: str, *, multi: bool) -> Any:
    """A variable holding the values of label `name` (multi: several, with All)."""
    return G.Template(
        name=name,
        label=label,
        query=_label_values(metric_selector, name),
        dataSource=DATASOURCE,
        includeAll=multi,
        multi=multi,
        refresh=G.REFRESH_ON_TIME_RANGE_CHANGE,
        sort=G.SORT_ALPHA_ASC,
        regex="",
    )


# --- targets ----------------------------------------------------------------------------


def target(expr: str, legend: str = "__auto", *, instant: bool = False, table: bool = False) -> Any:
    """A Prometheus query. `table` implies an instant query (one row per series)."""
    return G.Target(
        expr=expr,
        legendFormat=legend,
        instant=instant or table,
        format=G.TABLE_TARGET_FORMAT if table else G.TIME_SERIES_TARGET_FORMAT,
        datasource=DATASOURCE,
    )


def with_ref_ids(targets: Sequence[Any]) -> list[Any]:
    return [attr.evolve(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)]


# --- field config pieces ------------------------------------------------------------------


def steps(base: str, *above: tuple[float, str]) -> list[Any]:
    """Threshold steps: the base colour, then (value, colour) in increasing order."""
    out = [G.Threshold(base, 0, 0.0)]
    out += [G.Threshold(color, i, float(value)) for i, (value, color) in enumerate(above, 1)]
    return out


def value_text(*items: tuple[str, str, str]) -> list[Any]:
    """Value mappings from (value, text, colour)."""
    return [G.StatValueMappings(*(G.StatValueMappingItem(t, v, c) for v, t, c in items))]


def up_down() -> list[Any]:
    """Value mappings for `llm_probe_up`: 1 up (green), 0 down (red)."""
    return value_text(("1", "up", "green"), ("0", "down", "red"))


def by_name(name: str, **props: Any) -> Json:
    return _override({"id": "byName", "options": name}, props)


def by_ref_id(ref_id: str, **props: Any) -> Json:
    return _override({"id": "byFrameRefID", "options": ref_id}, props)


def _override(matcher: Json, props: dict[str, Any]) -> Json:
    return {
        "matcher": matcher,
        "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()],
    }


def fixed(color: str) -> Json:
    return {"mode": "fixed", "fixedColor": color}


def _limit_line() -> Json:
    """Override for the configured memory limit drawn next to a used ratio (query B)."""
    return by_ref_id(
        "B",
        color=fixed("red"),
        custom__lineStyle={"fill": "dash", "dash": [10, 10]},
        custom__fillOpacity=0,
    )


def limit_as_threshold(ref_id: str) -> Json:
    """Config-from-query transformation: query `ref_id` (legend `limit`) becomes threshold 1."""
    return {
        "id": "configFromData",
        "options": {
            "configRefId": ref_id,
            "mappings": [{"fieldName": "limit", "handlerKey": "threshold1", "reducerId": "last"}],
        },
    }


# --- panels -----------------------------------------------------------------------------


def stat(
    title: str,
    description: str,
    targets: Sequence[Any],
    unit: str,
    *,
    thresholds: list[Any] | None = None,
    mappings: Iterable[Any] = (),
    color_mode: str = "value",
    graph_mode: str = "none",
    no_value: str = "no data",
    text_mode: str = "auto",
    transformations: Sequence[Json] = (),
    decimals: int | None = None,
    extra: Json | None = None,
) -> Any:
    return G.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=with_ref_ids(targets),
        format=unit,
        decimals=decimals,
        thresholds=thresholds or steps("text"),
        mappings=list(mappings),
        colorMode=color_mode,
        graphMode=graph_mode,
        noValue=no_value,
        textMode=text_mode,
        reduceCalc="lastNotNull",
        transformations=list(transformations),
        maxDataPoints=None,
        extraJson=_deep_merge(
            {"fieldConfig": {"defaults": {"color": {"mode": "thresholds"}}}}, extra
        ),
    )


def timeseries(
    title: str,
    description: str,
    targets: Sequence[Any],
    unit: str,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    draw_style: str = "line",
    interpolation: str = "linear",
    fill: int = 10,
    overrides: Sequence[Json] = (),
    thresholds: list[Any] | None = None,
    thresholds_style: str = "off",
    legend_calcs: Sequence[str] = ("lastNotNull", "max"),
    no_value: str | None = None,
    stacking: str = "none",
    legend_sort: str | None = None,
) -> Any:
    """A time series panel; `legend_sort` names a legend column (e.g. "Total") to sort by,
    highest first."""
    defaults: Json = {"min": min_value, "max": max_value}
    if no_value is not None:
        defaults["noValue"] = no_value
    legend: Json = {"showLegend": True}
    if legend_sort is not None:
        legend |= {"sortBy": legend_sort, "sortDesc": True}
    return G.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=with_ref_ids(targets),
        unit=unit,
        drawStyle=draw_style,
        lineInterpolation=interpolation,
        fillOpacity=fill,
        showPoints="never" if draw_style == "line" else "auto",
        spanNulls=False,
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=list(legend_calcs),
        tooltipMode="multi",
        tooltipSort="desc",
        overrides=list(overrides),
        thresholds=thresholds or steps("green"),
        thresholdsStyleMode=thresholds_style,
        stacking={"mode": stacking, "group": "A"},
        maxDataPoints=None,
        extraJson={
            "fieldConfig": {"defaults": defaults},
            "options": {"legend": legend},
        },
    )


def host_ram_against_limit(description: str) -> Any:
    """Host memory used ratio over time (query A) and the configured limit (query B, dashed)."""
    return timeseries(
        "Host RAM used against the limit",
        description,
        [
            target(host_sel("llm_probe_host_memory_used_ratio"), "used"),
            target(host_sel("llm_probe_memory_limit_ratio"), "limit"),
        ],
        PERCENT_UNIT,
        min_value=0,
        max_value=1,
        overrides=[_limit_line()],
    )


def state_timeline(
    title: str, description: str, targets: Sequence[Any], *, mappings: Iterable[Any]
) -> Any:
    return G.StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=with_ref_ids(targets),
        mappings=list(mappings),
        thresholds=steps("text"),
        colorMode="thresholds",
        showValue="never",
        mergeValues=True,
        rowHeight=0.8,
        fillOpacity=80,
        maxDataPoints=None,
        extraJson={
            "fieldConfig": {"defaults": {"unit": "short"}},
            "options": {"legend": {"showLegend": True}},
        },
    )


def _per_level_transformations(names: dict[str, str], back_to_string: bool) -> list[Json]:
    """Instant table queries, one per statistic, `max by (concurrency)`, into one frame.

    `merge` joins the frames on `concurrency`; `organize` names the value columns (the
    Prometheus data source calls them `Value #A`, `Value #B`... when a panel has several
    table queries) and drops Time; the label is a string, so it is sorted as a number
    (1, 2, 4, 8, 12 rather than 1, 12, 16, 2) and, for bar charts, turned back into the
    category string the x axis needs.
    """
    order = {"concurrency": 0} | {name: i for i, name in enumerate(names.values(), 1)}
    out: list[Json] = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True},
                "indexByName": order,
                "renameByName": {f"Value #{ref}": name for ref, name in names.items()},
            },
        },
        _convert("number"),
        {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "concurrency"}]}},
    ]
    if back_to_string:
        out.append(_convert("string"))
    return out


def _convert(to: str) -> Json:
    return {
        "id": "convertFieldType",
        "options": {
            "conversions": [{"targetField": "concurrency", "destinationType": to}],
            "fields": {},
        },
    }


def _per_level_targets(series: Sequence[tuple[str, str]]) -> tuple[list[Any], dict[str, str]]:
    targets = with_ref_ids(
        [target(f"max by (concurrency) ({expr})", table=True) for _, expr in series]
    )
    names = {t.refId: name for t, (name, _) in zip(targets, series, strict=True)}
    return targets, names


def per_level_barchart(
    title: str,
    description: str,
    unit: str,
    series: Sequence[tuple[str, str]],
    *,
    stacking: str = "none",
    colors: dict[str, str] | None = None,
    max_value: float | None = None,
    memory_limit: bool = False,
) -> Any:
    """Bars of the last sweep: x = concurrency (users), one bar per (name, expr) series."""
    targets, names = _per_level_targets(series)
    transformations = _per_level_transformations(names, back_to_string=True)
    thresholds = steps("transparent")
    if memory_limit:
        # The configured limit becomes a dashed threshold line (0.9, the default, until
        # the query answers).
        limit = attr.evolve(
            target(host_sel("llm_probe_memory_limit_ratio"), "limit", instant=True),
            refId=chr(ord("A") + len(targets)),
        )
        targets.append(limit)
        transformations.insert(0, limit_as_threshold(limit.refId))
        thresholds = steps("transparent", (0.9, "red"))
    return G.BarChart(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        orientation="vertical",
        stacking=stacking,
        showValue="auto",
        groupWidth=0.7,
        barWidth=0.9,
        tooltipMode="multi",
        legendDisplayMode="list",
        legendPlacement="bottom",
        fillOpacity=80,
        colorMode="palette-classic",
        thresholdsMode="absolute",
        thresholdSteps=thresholds,
        overrides=[by_name(n, color=fixed(c)) for n, c in (colors or {}).items()],
        transformations=transformations,
        maxDataPoints=None,
        extraJson={
            "options": {"xField": "concurrency", "xTickLabelRotation": 0, "fullHighlight": False},
            "fieldConfig": {
                "defaults": {
                    "unit": unit,
                    "min": 0,
                    "max": max_value,
                    "custom": {
                        "axisLabel": "",
                        "thresholdsStyle": {"mode": "dashed" if memory_limit else "off"},
                    },
                }
            },
        },
    )


def per_level_table(
    title: str,
    description: str,
    columns: Sequence[tuple[str, str, str]],
    *,
    mappings: dict[str, list[Any]] | None = None,
) -> Any:
    """A table of the last sweep, one row per level; columns are (name, unit, expr)."""
    targets, names = _per_level_targets([(name, expr) for name, _, expr in columns])
    mappings = mappings or {}
    overrides = [by_name("concurrency", unit="short", displayName="users")]
    for name, unit, _ in columns:
        if name in mappings:
            props = {"mappings": mappings[name], "custom__cellOptions": {"type": "color-text"}}
            overrides.append(by_name(name, unit=unit, **props))
        else:
            overrides.append(by_name(name, unit=unit))
    return G.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit="short",
        overrides=overrides,
        transformations=_per_level_transformations(names, back_to_string=False),
        maxDataPoints=None,
        thresholds=steps("text"),
        extraJson={
            "options": {"cellHeight": "sm", "footer": {"show": False}},
            "fieldConfig": {"defaults": {"custom": {"cellOptions": {"type": "auto"}}}},
        },
    )


# --- layout -----------------------------------------------------------------------------


class Grid:
    """Places panels left to right in rows of 24 columns; a row panel starts a new line."""

    def __init__(self) -> None:
        self.panels: list[Any] = []
        self._x = 0
        self._y = 0
        self._line_height = 0

    def _new_line(self) -> None:
        self._y += self._line_height
        self._x = 0
        self._line_height = 0

    def row(self, title: str, *, repeat: str | None = None) -> None:
        self._new_line()
        self.panels.append(
            G.RowPanel(
                title=title,
                collapsed=False,
                gridPos=G.GridPos(h=1, w=GRID_WIDTH, x=0, y=self._y),
                repeat=G.Repeat(variable=repeat),
            )
        )
        self._y += 1

    def add(self, panel: Any, w: int, h: int) -> None:
        if self._x + w > GRID_WIDTH:
            self._new_line()
        self.panels.append(attr.evolve(panel, gridPos=G.GridPos(h=h, w=w, x=self._x, y=self._y)))
        self._x += w
        self._line_height = max(self._line_height, h)


# --- the dashboard ----------------------------------------------------------------------

BUILTIN_ANNOTATION: Json = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def dashboard(
    *,
    title: str,
    uid: str,
    description: str,
    grid: Grid,
    time_from: str,
    refresh: str = "1m",
) -> Any:
    return G.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=TAGS,
        editable=True,
        graphTooltip=G.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        schemaVersion=SCHEMA_VERSION,
        time=G.Time(time_from, "now"),
        timePicker=G.TimePicker(
            refreshIntervals=["30s", "1m", "5m", "15m", "30m", "1h"], timeOptions=[]
        ),
        timezone="browser",
        refresh=refresh,
        annotations=G.Annotations(list=[BUILTIN_ANNOTATION]),
        templating=G.Templating(list=variables()),
        links=[
            G.DashboardLink(
                title="llm-probe dashboards",
                type="dashboards",
                tags=TAGS,
                asDropdown=False,
                includeVars=True,
                keepTime=True,
                icon="external link",
            )
        ],
        panels=grid.panels,
    ).auto_panel_ids()


def _deep_merge(base: Json, extra: Json | None) -> Json:
    out = dict(base)
    for k, v in (extra or {}).items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out
