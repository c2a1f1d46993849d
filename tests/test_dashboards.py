"""The Grafana dashboards: the committed JSON is what the grafanalib definitions generate,
Grafana's own published schema accepts it (tests/dashboard_schema, run with node), and every
query filters by the dashboard variables and names only metrics the README documents."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "dashboards"
SCHEMA_CHECK = REPO / "tests" / "dashboard_schema"
# Dashboards saved by real Grafana instances, used to calibrate the schema check. They live
# beside the repository (../shared), not in it; a clone without them skips that one test.
GRAFANA_EXPORTS = Path(__file__).resolve().parents[2] / "shared" / "grafana-exports"

REGENERATE = "python dashboards/generate.py --out dashboards/"
UIDS = {
    "llm-probe-overview.json": "llm-probe-overview",
    "llm-probe-trends.json": "llm-probe-trends",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UNITS = {"s", "percentunit", "short"}

Json = dict[str, Any]
Check = Callable[[list[Path]], subprocess.CompletedProcess[str]]


def load_generate() -> ModuleType:
    """dashboards/generate.py, imported by file path the way the CLI imports it."""
    spec = importlib.util.spec_from_file_location("llm_probe_generate", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generate()


def readme_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the README's metric table; a histogram adds its series."""
    row = re.compile(r"^\| `(llm_probe_[a-z_]+)` \| ([^|]+) \| ([^|]+) \|", re.MULTILINE)
    metrics: dict[str, tuple[str, set[str]]] = {}
    for name, kind, labels in row.findall((REPO / "README.md").read_text(encoding="utf-8")):
        label_set = {x.strip() for x in labels.split(",")} - {"—", ""}
        metrics[name] = (kind.strip(), label_set)
        if kind.strip() == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                metrics[name + suffix] = ("histogram", label_set | {"le"})
    assert len(metrics) > 20, "the README metric table was not found"
    return metrics


def panels(dashboard: Json) -> Iterator[Json]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def committed(name: str) -> Json:
    data: Json = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return data


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dashboards")
    return {p.name: p for p in gen.generate(out)}


@pytest.fixture(scope="session")
def schema_check() -> Check:
    """Runs tests/dashboard_schema/check.mjs; installs its npm packages on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are needed to check the dashboards against Grafana's schema "
            "(tests/dashboard_schema): install Node.js 18 or later (Debian: apt-get install "
            "nodejs npm)"
        )
    # npm writes node_modules/.package-lock.json last: without it the install is incomplete.
    if not (SCHEMA_CHECK / "node_modules" / ".package-lock.json").exists():
        done = subprocess.run(
            [npm, "ci", "--prefix", str(SCHEMA_CHECK), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.fail(
                f"npm ci --prefix tests/dashboard_schema failed:\n{done.stdout}{done.stderr}"
            )

    def run(files: list[Path]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node, str(SCHEMA_CHECK / "check.mjs"), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


# --------------------------------------------------------------------------- generation


def test_committed_json_is_what_the_definitions_generate(generated: dict[str, Path]) -> None:
    assert sorted(generated) == sorted(UIDS)
    on_disk = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert on_disk == sorted(UIDS), f"unexpected files in dashboards/: run `{REGENERATE}`"
    for name, path in generated.items():
        if path.read_bytes() != (DASHBOARDS / name).read_bytes():
            pytest.fail(
                f"dashboards/{name} is not what the definitions generate: run `{REGENERATE}`"
            )


def test_generation_is_deterministic_and_leaves_the_interpreter_alone(tmp_path: Path) -> None:
    path_before, modules_before = list(sys.path), set(sys.modules)
    first = {p.name: p.read_bytes() for p in gen.generate(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in gen.generate(tmp_path / "b")}
    assert first == second
    assert all(text.endswith(b"}\n") for text in first.values())
    assert sys.path == path_before
    assert "common" not in set(sys.modules) - modules_before


def test_main_writes_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(UIDS)
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in sorted(UIDS)]


# --------------------------------------------------------------------------- the schema check


def test_generated_dashboards_pass_the_schema_check(
    schema_check: Check, generated: dict[str, Path]
) -> None:
    done = schema_check(sorted(generated.values()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert "2 passed, 0 failed" in done.stderr


def test_real_grafana_exports_pass_the_schema_check(schema_check: Check) -> None:
    if not GRAFANA_EXPORTS.is_dir():
        pytest.skip(f"no calibration exports at {GRAFANA_EXPORTS} (they are not part of the repo)")
    exports = sorted(GRAFANA_EXPORTS.glob("*.json"))
    assert exports, f"no *.json in {GRAFANA_EXPORTS}"
    done = schema_check(exports)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(exports)} passed, 0 failed" in done.stderr


def _first(dashboard: Json, kind: str) -> Json:
    return next(p for p in panels(dashboard) if p["type"] == kind)


def _break_threshold(d: Json) -> None:
    _first(d, "stat")["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["value"] = "null"


def _break_rows(d: Json) -> None:
    d["rows"] = [{"title": "legacy", "panels": [], "collapse": False}]


def _break_graph(d: Json) -> None:
    _first(d, "timeseries")["type"] = "graph"


def _break_singlestat(d: Json) -> None:
    _first(d, "stat")["type"] = "singlestat"


def _break_panel_datasource(d: Json) -> None:
    _first(d, "barchart")["datasource"] = "Prometheus"


def _break_target_datasource(d: Json) -> None:
    _first(d, "table")["targets"][0]["datasource"] = "Prometheus"


def _break_schema_version(d: Json) -> None:
    d["schemaVersion"] = 16


def _break_grid_pos(d: Json) -> None:
    del _first(d, "barchart")["gridPos"]


def _break_option(d: Json) -> None:
    _first(d, "barchart")["options"]["stacking"] = "stacked"


def _collapse_first_row(d: Json) -> Json:
    """Collapse the first row: its panels move inside it, as Grafana saves a collapsed row."""
    top = d["panels"]
    end = next(i for i, p in enumerate(top[1:], 1) if p["type"] == "row")
    top[0]["collapsed"], top[0]["panels"] = True, top[1:end]
    del top[1:end]
    first: Json = top[0]["panels"][0]
    return first


def _break_inside_collapsed_row(d: Json) -> None:
    _collapse_first_row(d)["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["value"] = "null"


# name -> (how to break the overview dashboard, a text its error line must contain)
BREAKAGES: dict[str, tuple[Callable[[Json], None], str]] = {
    "threshold-null-string": (_break_threshold, '/steps/0/value: must be number,null, got "null"'),
    "rows-array": (_break_rows, "/rows: legacy `rows` layout"),
    "graph-panel": (_break_graph, 'legacy Angular panel type "graph"'),
    "singlestat-panel": (_break_singlestat, 'legacy Angular panel type "singlestat"'),
    "panel-datasource-string": (
        _break_panel_datasource,
        '/datasource: must be object, got "Prometheus"',
    ),
    "target-datasource-string": (
        _break_target_datasource,
        '/targets/0/datasource: datasource must be a reference object {"type": ..., "uid": ...}, '
        'got "Prometheus"',
    ),
    "schema-version-16": (_break_schema_version, "/schemaVersion: schemaVersion 16 is legacy"),
    "no-grid-pos": (_break_grid_pos, "panel has no gridPos"),
    "inside-collapsed-row": (
        _break_inside_collapsed_row,
        "/panels/0/panels/0/fieldConfig/defaults/thresholds/steps/0/value: must be number,null",
    ),
    "bad-option-enum": (
        _break_option,
        "/options/stacking: must be equal to one of the allowed values",
    ),
}


def test_broken_dashboards_fail_the_schema_check(schema_check: Check, tmp_path: Path) -> None:
    files = []
    for name, (breaks, _) in BREAKAGES.items():
        dashboard = committed("llm-probe-overview.json")
        breaks(dashboard)
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(dashboard), encoding="utf-8")
    # grafanalib's own encoding of the same definitions, before generate.py modernizes it
    raw = gen.to_dict(gen.load_definition(DASHBOARDS / "overview.dashboard.py"))
    files.append(tmp_path / "grafanalib-raw.json")
    files[-1].write_text(json.dumps(raw), encoding="utf-8")

    done = schema_check(files)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"0 passed, {len(files)} failed" in done.stderr
    lines = done.stdout.splitlines()
    for name, (_, expected) in BREAKAGES.items():
        mine = [line for line in lines if line.startswith(f"{tmp_path / name}.json: ")]
        assert any(expected in line for line in mine), f"{name}: {expected!r} not in {mine}"
    raw_lines = [line for line in lines if line.startswith(f"{files[-1]}: ")]
    assert any('got "null"' in line for line in raw_lines), raw_lines
    assert any(": /rows: legacy `rows` layout" in line for line in raw_lines), raw_lines


def test_forms_real_grafana_saves_pass_the_schema_check(
    schema_check: Check, tmp_path: Path
) -> None:
    """The relaxations of check.mjs, without the calibration exports: forms seen in them."""
    d = committed("llm-probe-overview.json")
    d["__inputs"], d["__requires"] = [], [{"type": "grafana", "id": "grafana", "version": "11.6.1"}]
    d["gnetId"] = None
    d["links"] = [{"title": "Docs", "type": "link", "url": "https://example.com"}]
    d["templating"]["list"][1]["current"] = {}
    d["schemaVersion"] = 41
    inner = _collapse_first_row(d)
    del inner["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["value"]
    inner["timeFrom"] = None
    inner["datasource"]["default"] = True
    table = _first(d, "table")
    table["options"]["footer"] = {"fields": "", "reducer": ["sum"], "show": False}
    path = tmp_path / "as-grafana-saves-it.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    done = schema_check([path])
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_usage_errors(schema_check: Check, tmp_path: Path) -> None:
    assert schema_check([]).returncode == 2
    bad = tmp_path / "not-json.json"
    bad.write_text("{", encoding="utf-8")
    done = schema_check([bad])
    assert done.returncode == 1
    assert done.stdout.startswith(f"{bad}: /: cannot read a JSON document")


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", sorted(UIDS))
def test_dashboard_is_current_grafana_json(name: str) -> None:
    text = (DASHBOARDS / name).read_text(encoding="utf-8")
    d = json.loads(text)
    assert d["uid"] == UIDS[name]
    assert d["schemaVersion"] >= 39
    assert "rows" not in d
    assert '"null"' not in text
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    for panel in panels(d):
        where = f"{name}: panel {panel.get('title')!r}"
        assert panel["type"] not in {"graph", "singlestat", "table-old"}, where
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, where
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
        if panel["type"] == "row":
            continue
        assert panel.get("description", "").strip(), f"{where} has no description"
        assert panel["datasource"] == DATASOURCE, where
        assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, f"{where}: unit"
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in UNITS, where
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0]["value"] is None, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert target["refId"], where


@pytest.mark.parametrize("name", sorted(UIDS))
def test_variables(name: str) -> None:
    variables = {v["name"]: v for v in committed(name)["templating"]["list"]}
    assert list(variables) == ["datasource", "instance", "server", "model"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["query"]["query"] == "label_values(llm_probe_build_info, instance)"
    assert instance["datasource"] == DATASOURCE
    for label in ("server", "model"):
        v = variables[label]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], label
        assert v["datasource"] == DATASOURCE
        assert re.fullmatch(
            rf"label_values\(llm_probe_[a-z_]+\{{.*\}}, {label}\)", v["query"]["query"]
        )


SELECTOR = re.compile(r"\b(llm_probe_[a-z_]+)\b(\{[^}]*\})?")


@pytest.mark.parametrize("name", sorted(UIDS))
def test_queries_use_documented_metrics_filtered_by_the_variables(name: str) -> None:
    metrics = readme_metrics()
    exprs = [t["expr"] for p in panels(committed(name)) for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        found = SELECTOR.findall(expr)
        assert found, expr
        for metric, selector in found:
            assert metric in metrics, f"{metric} is not in the README metric table: {expr}"
            assert selector, f"{metric} without label matchers: {expr}"
            labels = metrics[metric][1]
            assert 'instance=~"$instance"' in selector, expr
            for label in ("server", "model"):
                if label in labels:
                    assert f'{label}=~"${label}"' in selector, expr


@pytest.mark.parametrize("name", sorted(UIDS))
def test_units_follow_the_metrics(name: str) -> None:
    for panel in panels(committed(name)):
        if panel["type"] in {"row", "table"}:
            continue
        metrics = {m for t in panel["targets"] for m, _ in SELECTOR.findall(t["expr"])}
        unit = panel["fieldConfig"]["defaults"]["unit"]
        if all(m.endswith("_ratio") for m in metrics):
            assert unit == "percentunit", panel["title"]
        elif all(re.search(r"_seconds(_bucket)?$", m) for m in metrics):
            assert unit == "s", panel["title"]
        else:
            assert unit == "short", panel["title"]


def test_overview_has_a_row_per_model() -> None:
    d = committed("llm-probe-overview.json")
    rows = [p for p in d["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == [None, "model"]
    titles = {p["title"]: p for p in panels(d)}
    for title in (
        "Max safe concurrency",
        "Limit reached",
        "Up",
        "Last sweep",
        "Host RAM used",
        "Response time per level",
        "Outcomes per level",
        "Host RAM per level",
    ):
        assert title in titles
    assert titles["Last sweep"]["targets"][0]["expr"].startswith(
        "time() - llm_probe_sweep_completed_timestamp_seconds{"
    )
    latency = titles["Response time per level"]
    assert latency["type"] == "barchart" and latency["options"]["xField"] == "concurrency"
    assert [t["format"] for t in latency["targets"]] == ["table", "table"]
    assert 'statistic="mean"' in latency["targets"][0]["expr"]
    assert 'statistic="p95"' in latency["targets"][1]["expr"]
    # the configured memory limit drives the thresholds (config from query results)
    for title in ("Host RAM used", "Host RAM per level"):
        transformation = titles[title]["transformations"][0]
        assert transformation["id"] == "configFromData"
        ref = transformation["options"]["configRefId"]
        limit = next(t for t in titles[title]["targets"] if t["refId"] == ref)
        assert limit["expr"] == 'llm_probe_memory_limit_ratio{instance=~"$instance"}'


def test_trends_quantiles_come_from_the_histogram() -> None:
    exprs = [
        t["expr"] for p in panels(committed("llm-probe-trends.json")) for t in p.get("targets", [])
    ]
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le, model, server) (rate(llm_probe_request_duration_"
            'seconds_bucket{instance=~"$instance", server=~"$server", model=~"$model"}'
            "[$__rate_interval])))"
        ) in exprs
    assert any("increase(llm_probe_errors_total{" in e and "reason" in e for e in exprs)
    assert any(e.startswith("llm_probe_heartbeat_latency_seconds{") for e in exprs)


# --------------------------------------------------------------------------- panel_queries


def test_panel_queries_fill_in_the_variables() -> None:
    d = committed("llm-probe-overview.json")
    queries = gen.panel_queries(d)
    assert len(queries) == sum(len(p.get("targets", [])) for p in panels(d))
    assert all("$" not in expr for _, expr in queries)
    assert ("Up", 'llm_probe_up{instance=~".+", server=~".+", model=~".+"}') in queries

    concrete = gen.panel_queries(
        committed("llm-probe-trends.json"), {"model": "phi4_fast", "__rate_interval": "5m"}
    )
    quantile = next(e for t, e in concrete if t == "Request duration quantiles")
    assert 'model=~"phi4_fast"' in quantile and "[5m]" in quantile

    with pytest.raises(ValueError, match=r"no value for \$unknown"):
        gen.panel_queries({"panels": [{"title": "x", "targets": [{"expr": "up{a=~'$unknown'}"}]}]})


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install -y prometheus) to parse the dashboards' PromQL"
        )
    exprs = [expr for name in sorted(UIDS) for _, expr in gen.panel_queries(committed(name))]
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "queries.rules.yml"
    path.write_text(
        json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8"
    )
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
