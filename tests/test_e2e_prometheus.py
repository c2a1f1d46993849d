"""End to end with real components on 127.0.0.1: simulator → exporter (`serve`) → a real
Prometheus (Debian's package) loaded with the shipped rules → a real Alertmanager
(Debian's `prometheus-alertmanager`) → a webhook receiver inside this test.

The shipped alerts wait a while (`for:`) before firing, as production alerts should;
this test loads a copy of `deploy/prometheus/alerts.yml` whose `for:` is 1 s, so that a
fault makes its alert fire within seconds. Expressions, labels and annotations are the
shipped ones.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import (
    REPO,
    ServeProcess,
    SimProcess,
    free_port,
    stop_process,
    until,
    wait_for_port,
)

pytestmark = pytest.mark.slow

MODELS = ("phi4_fast", "qwen_coder")
TIMEOUT_ALERT = "LLMProbeSweepTimeouts"
MEMORY_ALERT = "LLMProbeHostMemoryHigh"


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(
        f"{' or '.join(names)} not found: install Debian's prometheus and "
        "prometheus-alertmanager packages (make deps)"
    )


class Webhook:
    """An Alertmanager webhook receiver: keeps every notification it gets."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, name: str, status: str, **labels: str) -> list[dict[str, Any]]:
        return [
            alert
            for n in self.notifications
            for alert in n.get("alerts", [])
            if alert["labels"].get("alertname") == name
            and alert["status"] == status
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Daemon:
    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(
            args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        stop_process(self.proc)


def short_for_rules(src: Path, dst: Path) -> list[str]:
    """Copy the shipped alert rules with every `for:` cut to 1 s; returns alert names."""
    doc = yaml.safe_load(src.read_text())
    names = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                names.append(rule["alert"])
                if "for" in rule:
                    rule["for"] = "1s"
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return names


@pytest.fixture
def stack(
    tmp_path: Path,
    sim_process: Callable[..., SimProcess],
    serve_process: Callable[..., ServeProcess],
) -> Iterator[dict[str, Any]]:
    prometheus_bin = binary("prometheus")
    alertmanager_bin = binary("prometheus-alertmanager", "alertmanager")
    sim = sim_process("seed", time_scale=0.02)
    total_mb = psutil.virtual_memory().total / 2**20
    used = (psutil.virtual_memory().total - psutil.virtual_memory().available) / 2**20
    # The limit sits 500 MB above what the host uses now; the test pushes 1 GB.
    limit = (used + 500) / total_mb
    config = tmp_path / "exporter.yaml"
    config.write_text(
        "servers:\n"
        "  - name: multi_model_server\n"
        f"    url: {sim.url}\n"
        f"    models: [{', '.join(MODELS)}]\n"
        "probe: {levels: [1, 2], duration: 0.4s, interval: 0.05s, timeout: 1s, "
        f"memory_limit: {limit:.6f}}}\n"
        "schedule: {sweep: 6s, heartbeat: 0.5s, run_on_start: true}\n"
        f"snapshot: {{path: {tmp_path}/snapshot.md}}\n"
        f"state_dir: {tmp_path}/state\n"
    )
    exporter = serve_process(config)
    hook = Webhook()
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "am.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "test",
                    "group_by": ["alertname", "model"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "test",
                        "webhook_configs": [
                            {"url": f"http://127.0.0.1:{hook.port}/", "send_resolved": True}
                        ],
                    }
                ],
            }
        )
    )
    alertmanager = Daemon(
        [
            alertmanager_bin,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        am_port,
        tmp_path / "alertmanager.log",
    )
    rules_dir = REPO / "deploy" / "prometheus"
    alert_names = short_for_rules(rules_dir / "alerts.yml", tmp_path / "alerts.yml")
    shutil.copy(rules_dir / "rules.yml", tmp_path / "rules.yml")
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml", "rules.yml"],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "llm-probe-exporter",
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
        )
    )
    prometheus = Daemon(
        [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--rules.alert.resend-delay=1s",
        ],
        prom_port,
        tmp_path / "prometheus.log",
    )
    try:
        wait_for_port(am_port, 60)
        wait_for_port(prom_port, 60)
        yield {
            "sim": sim,
            "exporter": exporter,
            "hook": hook,
            "prom": f"http://127.0.0.1:{prom_port}",
            "alerts": alert_names,
            "limit": limit,
            "logs": (tmp_path / "prometheus.log", tmp_path / "alertmanager.log"),
        }
    finally:
        prometheus.stop()
        alertmanager.stop()
        hook.close()


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        doc = json.loads(response.read())
    assert doc["status"] == "success", (expr, doc)
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def sim_faults(sim: SimProcess, model: str, **faults: Any) -> None:
    request = urllib.request.Request(
        f"{sim.url}/-/sim/models/{model}/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).read()


def dashboard_queries() -> list[tuple[str, str, str]]:
    spec = importlib.util.spec_from_file_location("generate", REPO / "dashboards" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = {
        "datasource": "prometheus",
        "instance": ".+",
        "server": "multi_model_server",
        "model": "phi4_fast",
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "1h",
    }
    out = []
    for path in sorted((REPO / "dashboards").glob("*.json")):
        for title, expr in module.panel_queries(json.loads(path.read_text()), values):
            out.append((path.name, title, expr))
    return out


def test_dashboards_queries_return_data_and_alerts_fire_and_resolve(
    stack: dict[str, Any],
) -> None:
    prom, hook, sim = stack["prom"], stack["hook"], stack["sim"]
    assert {TIMEOUT_ALERT, MEMORY_ALERT} <= set(stack["alerts"])
    # Prometheus scrapes the exporter and has a completed sweep of both models.
    until(
        lambda: len(query(prom, "llm_probe_sweep_completed_timestamp_seconds")) == 2,
        timeout_s=90,
    )
    time.sleep(3)  # a few more scrapes, so rate() and increase() have two points
    # Every PromQL expression of every dashboard panel returns data.
    queries = dashboard_queries()
    assert len(queries) >= 10
    empty = [(d, t, e) for d, t, e in queries if not query(prom, e)]
    assert empty == [], f"dashboard queries without data: {empty}"

    # Timeouts: the simulator hangs every request; the next sweeps time out.
    for model in MODELS:
        sim_faults(sim, model, hang_ratio=1.0)
    firing = until(lambda: hook.alerts(TIMEOUT_ALERT, "firing"), timeout_s=90)
    assert firing[0]["labels"]["severity"]
    assert firing[0]["labels"]["model"] in MODELS
    assert firing[0]["labels"]["model"] in firing[0]["annotations"]["description"]
    assert firing[0]["annotations"]["runbook_url"]
    for model in MODELS:
        sim_faults(sim, model, hang_ratio=0.0)
    until(lambda: hook.alerts(TIMEOUT_ALERT, "resolved"), timeout_s=90)

    # Host memory over the configured limit (just above current use): allocate, then free.
    # (the critical one: its warning twin, 5 points below the limit, fires from the start)
    assert not hook.alerts(MEMORY_ALERT, "firing", severity="critical")
    ballast = bytearray(1024 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    try:
        firing = until(
            lambda: hook.alerts(MEMORY_ALERT, "firing", severity="critical"), timeout_s=60
        )
        assert "%" in firing[0]["annotations"]["description"]
    finally:
        del ballast
    until(lambda: hook.alerts(MEMORY_ALERT, "resolved", severity="critical"), timeout_s=60)
    # The exporter answered every scrape, all along.
    assert query(prom, 'min_over_time(up{job="llm-probe-exporter"}[10m])')[0]["value"][1] == "1"
