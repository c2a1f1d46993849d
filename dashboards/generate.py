"""Generate the committed Grafana dashboard JSON from the grafanalib definitions.

    python dashboards/generate.py --out dashboards/

`generate(out_dir)` writes llm-probe-overview.json and llm-probe-trends.json from
overview.dashboard.py and trends.dashboard.py; `panel_queries(dashboard_json)` lists every
panel's PromQL with the dashboard variables filled in. Importing this module has no side
effects; it can be loaded by file path.
"""

from __future__ import annotations

import argparse
import json
import re
import runpy
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# (definition, output file): the definition's `dashboard` becomes the output.
DASHBOARDS: tuple[tuple[str, str], ...] = (
    ("overview.dashboard.py", "llm-probe-overview.json"),
    ("trends.dashboard.py", "llm-probe-trends.json"),
)

Json = dict[str, Any]


def generate(out_dir: Path) -> list[Path]:
    """Write every dashboard's JSON into `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for definition, name in DASHBOARDS:
        path = out_dir / name
        path.write_text(render(load_definition(HERE / definition)), encoding="utf-8")
        written.append(path)
    return written


def render(dashboard: Any) -> str:
    """A grafanalib Dashboard as the committed text: current-Grafana JSON, sorted keys."""
    return json.dumps(modernize(to_dict(dashboard)), sort_keys=True, indent=2) + "\n"


def load_definition(path: Path) -> Any:
    """The `dashboard` a *.dashboard.py file defines, leaving sys.path and sys.modules as
    they were (the definitions import their sibling `common.py` as `common`)."""
    saved_path = list(sys.path)
    saved_common = sys.modules.pop("common", None)
    try:
        return runpy.run_path(str(path))["dashboard"]
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("common", None)
        if saved_common is not None:
            sys.modules["common"] = saved_common


def to_dict(dashboard: Any) -> Json:
    """grafanalib's own encoding (what its generate-dashboard writes), as plain data."""
    from grafanalib._gen import DashboardEncoder

    data: Json = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return data


# --- post-processing: grafanalib 0.7.1's legacy output -> what Grafana 11 writes ------------
#
# grafanalib serialises every attribute it knows, including forms current Grafana no longer
# writes. What is fixed here (the definitions set everything else: schemaVersion, datasource
# references, gridPos, units, ...):
#   dashboard  `rows: []` (pre-5.0 layout), `__inputs: []`, `hideControls`, `sharedCrosshair`,
#              `style`, null `gnetId`/`id`; timepicker `time_options`
#   panels     thresholds: Threshold objects carry `op`/`yaxis`/`line`/`index` and write the
#              base step's value as the *string* "null" -> `{"color", "value": null}`;
#              Angular-era keys `error`, `editable`, `height`, `span`, `minSpan`; the old
#              table keys `columns`, `fontSize`, top-level `color`/`mappings`,
#              `custom.displayMode`; `fixedColor: "none"`; default-valued keys Grafana drops on
#              save (`links: []`, `transparent: false`, ...)
#   rows       a row panel gets every Panel key (targets, fieldConfig, datasource null, ...):
#              only the RowPanel keys are kept
#   targets    Graphite/legacy keys `query`, `target`, `metric`, `step`, `intervalFactor` (which
#              would still coarsen the query step), empty `interval`, `hide: false`; adds
#              `range` and `editorMode: "code"` as Grafana's query editor saves them
#   variables  `useTags`/`tagsQuery`/`tagValuesQuery`, interval-only `auto*` keys on other
#              types, a `current` of nulls (dropped: Grafana picks the default), `definition`
#              of a query variable (the query text Grafana shows)
#   everywhere null-valued keys (except a threshold base step's `value`, which must be null)

_DASHBOARD_DROP = ("__inputs", "rows", "hideControls", "sharedCrosshair", "style", "gnetId", "id")
_PANEL_DROP = ("error", "editable", "height", "span", "minSpan", "columns", "fontSize", "color")
_PANEL_DEFAULTS: Json = {
    "links": [],
    "transformations": [],
    "transparent": False,
    "hideTimeOverride": False,
    "maxPerRow": None,
    "repeatDirection": None,
}
_ROW_KEEP = ("collapsed", "gridPos", "id", "panels", "repeat", "title", "type")
_TARGET_DROP = ("query", "target", "metric", "step", "intervalFactor")
_VARIABLE_DROP = ("useTags", "tagsQuery", "tagValuesQuery")
_INTERVAL_ONLY = ("auto", "auto_min", "auto_count")


def modernize(raw: Json) -> Json:
    """grafanalib's dashboard dict as current Grafana writes it (see the list above)."""
    d = {k: v for k, v in raw.items() if k not in _DASHBOARD_DROP}
    d["timepicker"] = {k: v for k, v in d["timepicker"].items() if k != "time_options"}
    d["panels"] = [_panel(p) for p in d["panels"]]
    d["templating"] = {"list": [_variable(v) for v in d["templating"]["list"]]}
    cleaned: Json = _drop_nulls(d)
    return cleaned


def _panel(p: Json) -> Json:
    if p.get("type") == "row":
        row = {k: p[k] for k in _ROW_KEEP if k in p}
        row["panels"] = [_panel(inner) for inner in row.get("panels", [])]
        return row
    if p.get("type") == "table":
        p = {k: v for k, v in p.items() if k != "mappings"}
    out = {
        k: v
        for k, v in p.items()
        if k not in _PANEL_DROP and not (k in _PANEL_DEFAULTS and v == _PANEL_DEFAULTS[k])
    }
    defaults = out.get("fieldConfig", {}).get("defaults", {})
    if "thresholds" in defaults:
        defaults["thresholds"]["steps"] = [_step(s) for s in defaults["thresholds"]["steps"]]
    if defaults.get("color", {}).get("fixedColor") == "none":
        del defaults["color"]["fixedColor"]
    if out["type"] == "table":
        defaults.get("custom", {}).pop("displayMode", None)
    out["targets"] = [_target(t) for t in out.get("targets", [])]
    return out


def _step(step: Json) -> Json:
    base = step.get("index") == 0 or step.get("value") in ("null", None)
    return {"color": step["color"], "value": None if base else step["value"]}


def _target(t: Json) -> Json:
    out = {k: v for k, v in t.items() if k not in _TARGET_DROP}
    if out.get("interval") == "":
        del out["interval"]
    if out.get("hide") is False:
        del out["hide"]
    out["range"] = not out.get("instant", False)
    out["editorMode"] = "code"
    return out


def _variable(v: Json) -> Json:
    out = {k: val for k, val in v.items() if k not in _VARIABLE_DROP}
    if out.get("type") != "interval":
        for k in _INTERVAL_ONLY:
            out.pop(k, None)
    current = out.get("current")
    if isinstance(current, dict):
        if current.get("text") is None:
            del out["current"]
        else:
            out["current"] = {k: val for k, val in current.items() if k != "tags"}
    if out.get("type") == "query" and isinstance(out.get("query"), dict):
        out["definition"] = out["query"]["query"]
    return out


def _drop_nulls(node: Any, *, steps: bool = False, keep_value: bool = False) -> Any:
    """`node` without null-valued keys, except `value` in the items of a `steps` list: a
    threshold base step, whose null stands for -Infinity."""
    if isinstance(node, dict):
        return {
            k: _drop_nulls(v, steps=k == "steps")
            for k, v in node.items()
            if v is not None or (keep_value and k == "value")
        }
    if isinstance(node, list):
        return [_drop_nulls(v, keep_value=steps) for v in node]
    return node


# --- the queries, for tests that run them -----------------------------------------------

DEFAULT_VARIABLES: dict[str, str] = {
    "datasource": "prometheus",
    "instance": ".+",
    "server": ".+",
    "model": ".+",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def panel_queries(
    dashboard_json: Mapping[str, Any], variables: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, in dashboard order, with the
    dashboard variables replaced: DEFAULT_VARIABLES (`$model` -> `.+`, `$__rate_interval`
    -> `1m`, ...) updated with `variables` (e.g. {"model": "phi4_fast"}). A variable without
    a value raises ValueError, so an expression never reaches Prometheus half-filled."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    out = []
    for panel in _panels(dashboard_json):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if expr:
                out.append((str(panel.get("title", "")), _fill(expr, values, panel)))
    return out


def _panels(dashboard_json: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard_json.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _fill(expr: str, values: Mapping[str, str], panel: Mapping[str, Any]) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise ValueError(f"panel {panel.get('title')!r}: no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate the Grafana dashboard JSON from the grafanalib definitions."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE,
        help="directory to write the JSON into (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
