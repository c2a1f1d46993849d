"""`serve` as a user runs it: real exporter and simulator processes on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO,
    ServeProcess,
    SimProcess,
    free_port,
    gauge,
    metric,
    parse_metrics,
    scrape,
    until,
)

SweepStarter = Callable[..., ServeProcess]


def write_config(
    tmp_path: Path,
    url: str,
    *,
    models: tuple[str, ...] = ("phi4_fast", "qwen_coder"),
    probe: str = "{levels: [1, 2], duration: 0.4s, interval: 0.05s, timeout: 5s}",
    schedule: str = "{sweep: 1h, heartbeat: 0.5s, run_on_start: true}",
    lang: str = "en",
    name: str = "config.yaml",
) -> Path:
    path = tmp_path / name
    path.write_text(
        "servers:\n"
        "  - name: multi_model_server\n"
        f"    url: {url}\n"
        f"    models: [{', '.join(models)}]\n"
        f"probe: {probe}\n"
        f"schedule: {schedule}\n"
        f"snapshot: {{path: {tmp_path / 'reports' / 'snapshot.md'}, lang: {lang}, keep: 3}}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    return path


def results_of(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(scrape(url + "/api/v1/results"))
    return doc


def swept(url: str, n: int) -> dict[str, Any] | None:
    doc = results_of(url)
    return doc if len(doc["models"]) >= n else None


def test_sweep_gauges_equal_results_json_and_snapshot(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.1)
    exporter = serve_process(write_config(tmp_path, sim.url))
    doc = until(lambda: swept(exporter.url, 2), timeout_s=60)
    samples = parse_metrics(scrape(exporter.url + "/metrics"))
    snapshot = scrape(exporter.url + "/snapshot")
    on_disk = (tmp_path / "reports" / "snapshot.md").read_text()
    assert snapshot == on_disk
    for m in doc["models"]:
        ms = {"model": m["model"], "server": "multi_model_server"}
        assert metric(samples, "llm_probe_max_safe_concurrency", **ms) == m["max_safe_concurrency"]
        assert metric(samples, "llm_probe_sweep_limit_reached", **ms) == int(m["limit_reached"])
        assert metric(samples, "llm_probe_sweep_mean_successes", **ms) == pytest.approx(
            m["mean_successes"], abs=1e-4
        )
        finished = metric(samples, "llm_probe_sweep_completed_timestamp_seconds", **ms)
        assert finished is not None
        assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)) == m["finished_at"]
        rows = table_rows(snapshot, m["model"])
        assert len(rows) == len(m["levels"]) == 2
        for lv, row in zip(m["levels"], rows, strict=True):
            lbl = {**ms, "concurrency": str(lv["concurrency"])}
            for field in ("requests", "successes", "errors", "timeouts"):
                assert metric(samples, f"llm_probe_sweep_{field}", **lbl) == lv[field]
            for stat in ("mean", "p50", "p95", "p99", "max"):
                value = metric(samples, "llm_probe_sweep_latency_seconds", **lbl, statistic=stat)
                assert value == pytest.approx(lv[f"latency_{stat}_s"], abs=1e-5)
            for phase in ("start", "end", "peak"):
                value = metric(samples, "llm_probe_sweep_memory_used_ratio", **lbl, phase=phase)
                assert value == pytest.approx(lv[f"memory_{phase}_ratio"], abs=1e-5)
            # | Users | Requests | Success | Errors | Timeouts | Resp. Time | Mem start | end |
            assert row == [
                str(lv["concurrency"]),
                str(lv["requests"]),
                str(lv["successes"]),
                str(lv["errors"]),
                str(lv["timeouts"]),
                f"{lv['latency_mean_s']:.2f}",
                f"{lv['memory_start_ratio'] * 100:.1f}%",
                f"{lv['memory_end_ratio'] * 100:.1f}%",
            ]
        assert f"- Maximum safe concurrent users: **{m['max_safe_concurrency']}**" in snapshot
    assert "```mermaid\nxychart-beta" in snapshot
    # Live counters add up to the sweeps' requests (warm-ups are not counted).
    for m in doc["models"]:
        total = metric(
            samples, "llm_probe_requests_total", model=m["model"], server="multi_model_server"
        )
        assert total == sum(lv["requests"] for lv in m["levels"])
    assert metric(samples, "llm_probe_memory_limit_ratio") == 0.9
    assert metric(samples, "llm_probe_build_info", version="0.1.0") == 1
    assert 0 < (metric(samples, "llm_probe_host_memory_used_ratio") or 0) < 1
    # The real promtool accepts the exposition without a word.
    text = scrape(exporter.url + "/metrics")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    # Dated copies beside the snapshot.
    copies = sorted((tmp_path / "reports").glob("snapshot-*.md"))
    assert 1 <= len(copies) <= 3


def table_rows(markdown: str, model: str) -> list[list[str]]:
    section = markdown.split(f"## Model: {model}\n", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    rows = []
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if not cells[0].isdigit():
            break
        rows.append(cells)
    return rows


def test_series_exist_before_any_sweep(serve_process: SweepStarter, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        schedule="{sweep: 1h, heartbeat: 30s, run_on_start: false}",
    )
    exporter = serve_process(config)
    samples = until(lambda: parse_metrics(scrape(exporter.url + "/metrics")))
    for model in ("phi4_fast", "qwen_coder"):
        ms = {"model": model, "server": "multi_model_server"}
        assert metric(samples, "llm_probe_up", **ms) == 0
        assert metric(samples, "llm_probe_requests_total", **ms) == 0
        assert metric(samples, "llm_probe_timeouts_total", **ms) == 0
        assert metric(samples, "llm_probe_errors_total", **ms, reason="connect") == 0
        assert metric(samples, "llm_probe_sweep_running", **ms) == 0
        assert metric(samples, "llm_probe_max_safe_concurrency", **ms) is None  # no sweep yet
    assert scrape(exporter.url + "/-/healthy") == "OK\n"
    assert scrape(exporter.url + "/-/ready") == "Ready\n"
    assert "No sweep has completed yet." in scrape(exporter.url + "/snapshot")
    assert results_of(exporter.url) == {"schema": 1, "models": []}
    page = scrape(exporter.url + "/")
    assert "llm-probe-exporter" in page and "waiting for first sweep" in page


def test_heartbeat_follows_the_server(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.01)
    config = write_config(
        tmp_path, sim.url, models=("qwen_coder",),
        schedule="{sweep: 1h, heartbeat: 0.5s, run_on_start: false}",
    )  # fmt: skip
    exporter = serve_process(config)
    labels = {"model": "qwen_coder", "server": "multi_model_server"}

    def up() -> tuple[float | None, float | None]:
        samples = parse_metrics(scrape(exporter.url + "/metrics"))
        return (
            metric(samples, "llm_probe_up", **labels),
            metric(samples, "llm_probe_heartbeat_timestamp_seconds", **labels),
        )

    until(lambda: up()[0] == 1)
    sim.stop()
    beats: set[float] = set()

    def down() -> bool:
        value, beat = up()  # /metrics keeps answering with the model gone
        if beat is not None:
            beats.add(beat)
        return value == 0

    until(down, timeout_s=30, every_s=0.05)
    # The first or second heartbeat after the kill said so.
    assert len(beats) <= 3
    restarted = SimProcess(["--profile", "seed", "--time-scale", "0.01"])
    restarted.port, restarted.url = sim.port, sim.url
    restarted.start()
    try:
        until(lambda: up()[0] == 1, timeout_s=30)
    finally:
        restarted.stop()
    assert exporter.logged("model down") and exporter.logged("model up", count=2)


def test_one_sweep_at_a_time_and_scrapes_answer_during_a_20_user_level(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.1)
    config = write_config(
        tmp_path, sim.url, probe="{levels: [20], duration: 2s, interval: 0s, timeout: 10s}"
    )
    exporter = serve_process(config)
    running_seen = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        samples = parse_metrics(scrape(exporter.url + "/metrics"))
        running = [
            metric(samples, "llm_probe_sweep_running", model=m, server="multi_model_server")
            for m in ("phi4_fast", "qwen_coder")
        ]
        assert sum(v or 0 for v in running) <= 1  # never two sweeps at once
        running_seen += sum(v or 0 for v in running) == 1
        if len(results_of(exporter.url)["models"]) == 2:
            break
        time.sleep(0.1)
    assert running_seen >= 5  # /metrics answered all along while 20 users ran
    # The log shows the sweeps strictly one after the other.
    assert exporter.logged("sweep done", count=2)
    events = [m for m in exporter.messages() if m in ("sweep started", "sweep done")]
    assert events == ["sweep started", "sweep done"] * 2


def test_reload_keeps_the_old_config_when_broken_and_applies_a_good_one(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.01)
    schedule = "{sweep: 1h, heartbeat: 0.5s, run_on_start: false}"
    config = write_config(tmp_path, sim.url, models=("phi4_fast",), schedule=schedule)
    exporter = serve_process(config)

    def up(model: str) -> float | None:
        return gauge(exporter.url, "llm_probe_up", model=model, server="multi_model_server")

    until(lambda: up("phi4_fast") == 1)
    good = config.read_text()
    config.write_text(good.replace("duration: 0.4s", "duration: 0.4x"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(exporter.url + "/-/reload", data=b"")
    assert refused.value.code == 500
    body = json.loads(refused.value.read())
    assert body["status"] == "error"
    assert "probe.duration: '0.4x' is not a duration" in body["message"]
    samples = parse_metrics(scrape(exporter.url + "/metrics"))
    assert metric(samples, "llm_probe_config_last_reload_successful") == 0
    assert up("phi4_fast") == 1  # the running config goes on
    # A good config: the added model appears (and is heartbeaten).
    config.write_text(good.replace("models: [phi4_fast]", "models: [phi4_fast, qwen_coder]"))
    assert json.loads(scrape(exporter.url + "/-/reload", data=b""))["status"] == "success"
    samples = parse_metrics(scrape(exporter.url + "/metrics"))
    assert metric(samples, "llm_probe_config_last_reload_successful") == 1
    until(lambda: up("qwen_coder") == 1)
    # SIGHUP does the same: remove a model again.
    config.write_text(good)
    exporter.signal(signal.SIGHUP)
    until(lambda: up("qwen_coder") is None)
    assert exporter.logged("config reloaded", count=2)
    assert exporter.messages().count("config reloaded") == 2
    assert exporter.logged("config reload failed, keeping the running config")


def test_sigterm_during_a_sweep_exits_0_and_publishes_nothing(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.1)
    quick = write_config(tmp_path, sim.url, models=("qwen_coder",))
    first = serve_process(quick)
    until(lambda: swept(first.url, 1))
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    state = tmp_path / "state" / "results.json"
    before = state.read_bytes()
    slow = write_config(
        tmp_path,
        sim.url,
        models=("qwen_coder",),
        probe="{levels: [1, 8], duration: 30s, interval: 0s, timeout: 20s}",
        name="slow.yaml",
    )
    second = serve_process(slow)
    until(
        lambda: (
            gauge(
                second.url,
                "llm_probe_sweep_running",
                model="qwen_coder",
                server="multi_model_server",
            )
            == 1
        )
    )
    time.sleep(1.0)  # well inside level 1
    sent = time.monotonic()
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    stopped_after = time.monotonic() - sent
    assert state.read_bytes() == before  # the aborted sweep was not published
    assert "sweep aborted, results not published" in second.messages()
    assert "exporter stopped" in second.messages()
    print(f"stopped {stopped_after:.2f}s after SIGTERM")


def test_restart_restores_the_last_results_with_their_timestamps(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.1)
    config = write_config(tmp_path, sim.url)
    first = serve_process(config)
    before = until(lambda: swept(first.url, 2))
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    sim.stop()  # nothing to sweep against: what comes back is the state file
    config.write_text(config.read_text().replace("run_on_start: true", "run_on_start: false"))
    second = serve_process(config)
    after = until(lambda: swept(second.url, 2))
    assert after == before
    samples = parse_metrics(scrape(second.url + "/metrics"))
    for m in before["models"]:
        stamp = metric(
            samples,
            "llm_probe_sweep_completed_timestamp_seconds",
            model=m["model"],
            server="multi_model_server",
        )
        assert stamp is not None
        assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)) == m["finished_at"]
    assert second.logged("results restored")


def test_bad_config_and_flags_stop_start_up_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers: []\n")
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--config", str(bad),
         "--web.listen-address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"llm-probe-exporter: error: {bad}: servers: must be a non-empty list\n"
    good = write_config(tmp_path, "http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--config", str(good),
         "--web.listen-address", "nowhere"],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--web.listen-address: 'nowhere' is not HOST:PORT" in proc.stderr


def test_readme_documents_every_metric_and_endpoint() -> None:
    from datetime import UTC, datetime

    from exporter.metrics import ExporterMetrics
    from exporter.results import LevelResult, ModelResult, Plan

    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `(llm_probe_[a-z_]+)`", readme, flags=re.M))
    # A result with every optional field set, so every sweep family has samples.
    level = LevelResult(
        concurrency=1, requests=1, successes=1, errors=0, timeouts=0, latency_mean_s=1,
        latency_p50_s=1, latency_p95_s=1, latency_p99_s=1, latency_max_s=1,
        memory_start_ratio=0.1, memory_end_ratio=0.1, memory_peak_ratio=0.1, passed=True,
        stop_reason=None, errors_by_reason={"http_5xx": 0}, ttft_mean_s=0.1, ttft_p95_s=0.1,
        output_tokens=1, output_tokens_per_s=1.0, server_rss_peak_bytes=1,
    )  # fmt: skip
    now = datetime.now(UTC)
    result = ModelResult("m", "s", now, now, Plan((1,), 1, 1, 1, 0.9), (level,), cold_start_s=1)
    metrics = ExporterMetrics(lambda: [result])
    metrics.set_targets([("s", "m")], 0.9)
    registered = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
    }
    assert registered - documented == set(), "metrics missing from the README's table"
    assert documented - registered == set(), "README documents metrics that do not exist"
    for endpoint in ("/metrics", "/-/healthy", "/-/ready", "/api/v1/results", "/snapshot",
                     "/-/reload"):  # fmt: skip
        assert f"`{endpoint}`" in readme


def test_demo_runs_sweeps_writes_a_snapshot_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--port", str(port), "--time-scale", "0.02",
         "--levels", "1,2", "--dir", str(tmp_path / "demo"), "--log.format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        snapshot = tmp_path / "demo" / "snapshot.md"
        until(
            lambda: snapshot.exists() and "## Model: qwen_coder" in snapshot.read_text(),
            timeout_s=120,
        )
        doc = results_of(f"http://127.0.0.1:{port}")
        assert [m["model"] for m in doc["models"]] == ["phi4_fast", "qwen_coder"]
        assert all(m["max_safe_concurrency"] == 2 for m in doc["models"])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/metrics" in out
    assert str(tmp_path / "demo" / "snapshot.md") in out
    assert '"msg": "exporter stopped"' in err


def test_api_key_never_appears_in_any_output(
    sim_process: Callable[..., SimProcess],
    serve_process: SweepStarter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-test-7f3a9c0e5b"
    monkeypatch.setenv("MMS_API_KEY", secret)
    sim = sim_process("seed", time_scale=0.01)
    config = write_config(tmp_path, sim.url, models=("qwen_coder",))
    config.write_text(
        config.read_text().replace("    url:", "    api_key_env: MMS_API_KEY\n    url:")
    )
    exporter = serve_process(config, "--log.level", "debug")
    until(lambda: swept(exporter.url, 1))
    outputs = [
        scrape(exporter.url + "/metrics"),
        scrape(exporter.url + "/api/v1/results"),
        scrape(exporter.url + "/snapshot"),
        scrape(exporter.url + "/"),
        (tmp_path / "state" / "results.json").read_text(),
        (tmp_path / "reports" / "snapshot.md").read_text(),
        "".join(exporter.raw),
    ]
    assert all(secret not in text for text in outputs)
    assert exporter.logged("sweep done")


def test_web_config_tls_and_basic_auth_protect_every_endpoint(
    serve_process: SweepStarter, tmp_path: Path
) -> None:
    import base64
    import ssl

    import bcrypt

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2",
         "-keyout", "server.key", "-out", "server.crt"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: {hashed}\n"
    )
    config = write_config(
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        schedule="{sweep: 1h, heartbeat: 1h, run_on_start: false}",
    )
    exporter = serve_process(config, "--web.config.file", str(web))
    tls = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
    https = f"https://127.0.0.1:{exporter.port}"
    auth = {"Authorization": "Basic " + base64.b64encode(b"prometheus:s3cret").decode()}
    import urllib.request

    def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(https + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, context=tls, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    status, body = until(lambda: get("/metrics", auth))
    assert status == 200 and "llm_probe_build_info" in body
    for path in ("/metrics", "/", "/-/healthy", "/api/v1/results", "/snapshot"):
        assert get(path)[0] == 401
        bad = {"Authorization": "Basic " + base64.b64encode(b"prometheus:nope").decode()}
        assert get(path, bad)[0] == 401
    with pytest.raises(OSError):  # plain HTTP to the TLS port gets no answer
        scrape(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
    # A bad web config stops start-up with one clear line.
    web.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--config", str(config),
         "--web.config.file", str(web), "--web.listen-address", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"llm-probe-exporter: error: {web}: tls_server_config.cert_file")
    assert proc.stderr.count("\n") == 1


class RealUsers:
    """Somebody else's traffic: `n` threads sending requests back to back to the server,
    until stopped (or for 60 s at most)."""

    def __init__(self, url: str, model: str, n: int) -> None:
        import threading

        self.stopped = threading.Event()
        self.body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        ).encode()
        self.url = url + "/v1/chat/completions"
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]

    def _loop(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stopped.is_set() and time.monotonic() < deadline:
            request = urllib.request.Request(
                self.url, data=self.body, headers={"Content-Type": "application/json"}
            )
            urllib.request.urlopen(request, timeout=30).read()

    def start(self) -> RealUsers:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_sweeps_yield_to_real_traffic(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    """While somebody else uses the server, the sweep is deferred (counted, logged) and
    retried later; once the server is idle it runs."""
    sim = sim_process("seed", time_scale=1.0)  # phi4_fast: one slot, 1.58 s per answer
    users = RealUsers(sim.url, "phi4_fast", 1).start()
    time.sleep(0.3)  # its first request is in service
    config = write_config(
        tmp_path,
        sim.url,
        models=("phi4_fast",),
        probe="{levels: [1], duration: 0.5s, interval: 0s, timeout: 10s, warmup: false}",
        schedule="{sweep: 1h, heartbeat: 1h, run_on_start: true, defer_retries: 10, "
        "defer_delay: 1s}",
    )
    config.write_text(config.read_text().replace("    url:", "    api: llamacpp\n    url:"))
    exporter = serve_process(config)
    labels = {"model": "phi4_fast", "server": "multi_model_server", "reason": "server_busy"}

    def deferred() -> float:
        return gauge(exporter.url, "llm_probe_sweeps_deferred_total", **labels) or 0

    try:
        until(lambda: deferred() >= 2, timeout_s=30)
        assert results_of(exporter.url)["models"] == []  # nothing ran while the user was there
    finally:
        users.stop()
    doc = until(lambda: swept(exporter.url, 1), timeout_s=30)
    assert doc["models"][0]["levels"][0]["successes"] >= 1
    assert exporter.logged("sweep deferred: the server is busy with other traffic")


def test_without_server_metrics_a_slow_heartbeat_defers_the_sweep(
    sim_process: Callable[..., SimProcess], serve_process: SweepStarter, tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.1)  # phi4_fast: one slot, 0.158 s per answer
    config = write_config(
        tmp_path,
        sim.url,
        models=("phi4_fast",),
        probe="{levels: [1], duration: 0.3s, interval: 0s, timeout: 10s, warmup: false, "
        "busy_latency_factor: 1.5}",
        schedule="{sweep: 3s, heartbeat: 0.25s, run_on_start: false, defer_retries: 50, "
        "defer_delay: 0.5s}",
    )
    exporter = serve_process(config)
    labels = {"model": "phi4_fast", "server": "multi_model_server"}

    def beat() -> float | None:
        return gauge(exporter.url, "llm_probe_heartbeat_timestamp_seconds", **labels)

    first = until(beat)
    until(lambda: (beat() or 0) > first + 0.7)  # a few idle heartbeats: the baseline
    users = RealUsers(sim.url, "phi4_fast", 3).start()

    def deferred() -> float:
        return gauge(exporter.url, "llm_probe_sweeps_deferred_total", **labels,
                     reason="slow_heartbeat") or 0  # fmt: skip

    try:
        until(lambda: deferred() >= 1, timeout_s=30)
    finally:
        users.stop()
    until(lambda: swept(exporter.url, 1), timeout_s=30)
    assert exporter.logged("sweep deferred: the server is busy with other traffic")
