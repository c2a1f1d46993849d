"""The CLI as a user runs it: real processes, the simulator, files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, SimProcess

DATA = Path(__file__).parent / "data"

# The seed report, per level: requests (all successes) and mean response time (s).
SEED = {
    "phi4_fast": (
        [6, 12, 17, 21, 25, 29, 33],
        [1.58, 1.73, 3.53, 8.85, 13.49, 17.59, 22.19],
        20.4,
    ),
    "qwen_coder": (
        [7, 14, 26, 31, 35, 39, 43],
        [0.95, 1.02, 1.12, 4.47, 7.40, 10.18, 12.87],
        27.9,
    ),
}


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


@pytest.mark.slow
def test_probe_reproduces_the_seed_report(
    sim_process: Callable[..., SimProcess], tmp_path: Path
) -> None:
    """The seed profile at time scale 0.1 gives the seed's numbers (times ÷ 10)."""
    sim = sim_process("seed", time_scale=0.1)
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    proc = run(
        "probe",
        "--url", sim.url,
        "--api", "openai",
        "--server-name", "multi_model_server",
        "--model", "phi4_fast",
        "--model", "qwen_coder",
        "--duration", "2.5s",
        "--interval", "0.3s",
        "--timeout", "6s",
        "--json", str(out_json),
        "--markdown", str(out_md),
        "--lang", "es",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out_json.read_text())
    assert doc["schema"] == 1
    assert [m["model"] for m in doc["models"]] == ["phi4_fast", "qwen_coder"]
    for model in doc["models"]:
        requests, means, mean_successes = SEED[model["model"]]
        levels = model["levels"]
        assert [lv["concurrency"] for lv in levels] == [1, 2, 4, 8, 12, 16, 20]
        for lv, want_requests, want_mean in zip(levels, requests, means, strict=True):
            assert abs(lv["requests"] - want_requests) <= 1, (model["model"], lv)
            assert lv["successes"] == lv["requests"]
            assert lv["errors"] == lv["timeouts"] == 0
            assert lv["latency_mean_s"] == pytest.approx(want_mean / 10, rel=0.15)
            assert lv["passed"] is True
        assert model["max_safe_concurrency"] == 20
        assert model["limit_reached"] is False
        assert model["stop_reason"] is None
        # The seed's value (143/7, 195/7), within what ±1 request per level allows. (At
        # time scale 0.1 the seed model's last request of qwen_coder's 8+ user levels
        # starts only 15 ms before the deadline, so 42 or 43 both occur.)
        assert round(sum(requests) / 7, 1) == mean_successes
        assert model["mean_successes"] == pytest.approx(sum(requests) / 7, abs=1 + 1e-6)
        assert model["mean_successes"] == pytest.approx(
            sum(lv["successes"] for lv in levels) / 7, abs=1e-4
        )
    # stdout: the seed-style table and conclusions, in Spanish.
    assert "## Modelo: phi4_fast" in proc.stdout
    assert "| Usuarios | Solicitudes | Éxito | Errores | Timeouts |" in proc.stdout
    assert "- Número máximo seguro de usuarios concurrentes: **20**" in proc.stdout
    assert "- No se alcanzó el límite: todos los niveles probados pasaron (hasta 20 usuarios)" in (
        proc.stdout
    )
    assert "- Duración de cada prueba: 2.5 segundos" in proc.stdout
    # stderr: the progress display, one line per level at least.
    assert "phi4_fast: 20 users:" in proc.stderr
    assert "qwen_coder: max safe concurrency 20 (no limit reached)" in proc.stderr
    markdown = out_md.read_text()
    assert markdown.startswith("# Pruebas de Concurrencia por Modelo\n")
    assert "```mermaid\nxychart-beta" in markdown
    # The report can be rendered again from the JSON alone.
    again = run("snapshot", "--results", str(out_json), "--lang", "es")
    assert again.returncode == 0
    assert again.stdout == markdown


def test_snapshot_of_the_seed_numbers_is_the_seed_report(tmp_path: Path) -> None:
    seed = (DATA / "seed_report_es.md").read_text(encoding="utf-8")
    proc = run("snapshot", "--results", str(DATA / "seed_results.json"), "--lang", "es")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # Tables and conclusion lines exactly as in the seed, in the same order.
    for model in ("phi4_fast", "qwen_coder"):
        want = seed.split(f"## Modelo: {model}\n")[1].split("### Conclusión")[0].strip()
        start = lines.index(f"## Modelo: {model}")
        got = "\n".join(lines[start + 1 : start + 1 + 1 + 9]).strip()
        assert got == want
        i = lines.index(f"### Conclusión para {model}:")
        conclusion = [ln for ln in seed.splitlines() if ln.startswith("- ")]
        assert lines[i + 1] in conclusion and lines[i + 1].endswith("**20**")
    for line in seed.splitlines():
        if line.startswith("- Tasa promedio") or line.startswith("- Número máximo"):
            assert line in lines
    out = tmp_path / "snap.md"
    proc = run("snapshot", "--results", str(DATA / "seed_results.json"), "--out", str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    assert out.read_text().startswith("# Concurrency Tests per Model\n")


def test_snapshot_bad_results_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 7, "models": []}')
    proc = run("snapshot", "--results", str(bad))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"llm-probe-exporter: error: {bad}: results: unsupported schema 7 (expected 1)\n"
    )
    bad.write_text("{not json")
    proc = run("snapshot", "--results", str(bad))
    assert proc.returncode == 2 and "not JSON" in proc.stderr
    proc = run("snapshot", "--results", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_probe_from_config_against_a_refusing_server_still_exits_0(tmp_path: Path) -> None:
    """A sweep that ran exits 0 whatever it found; the errors are in the results."""
    from tests.conftest import free_port

    config = tmp_path / "c.yaml"
    config.write_text(
        "servers:\n"
        "  - name: gone\n"
        f"    url: http://127.0.0.1:{free_port()}\n"
        "    models: [phi4_fast]\n"
        "probe: {levels: [1, 2], duration: 0.3s, interval: 0s}\n"
    )
    out = tmp_path / "r.json"
    proc = run("probe", "--config", str(config), "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    model = json.loads(out.read_text())["models"][0]
    assert model["warmup_error"] == "connect"
    assert model["max_safe_concurrency"] == 0
    assert model["stop_reason"] == "error_ratio"
    assert model["levels"][0]["errors_by_reason"]["connect"] == model["levels"][0]["requests"]
    assert len(model["levels"]) == 1


def test_probe_config_selects_models_and_applies_flag_overrides(
    sim_process: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_process("seed", time_scale=0.1)
    example = (REPO / "deploy/examples/seed.yaml").read_text()
    config = tmp_path / "seed.yaml"
    import psutil

    assert sim.proc is not None
    name = psutil.Process(sim.proc.pid).name()
    config.write_text(
        example.replace("http://127.0.0.1:8000", sim.url).replace(
            "    api: openai\n", f"    api: openai\n    process_name: {name}\n"
        )
    )
    out = tmp_path / "r.json"
    proc = run(
        "probe", "--config", str(config), "--model", "qwen_coder", "--levels", "1,2",
        "--duration", "0.5s", "--interval", "0.1s", "--json", str(out), "--no-stream",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    models = json.loads(out.read_text())["models"]
    assert [m["model"] for m in models] == ["qwen_coder"]
    assert models[0]["server"] == "multi_model_server"
    assert models[0]["plan"]["levels"] == [1, 2] and models[0]["plan"]["stream"] is False
    assert models[0]["levels"][0]["ttft_mean_s"] is None  # not streamed
    # The simulator's own RSS, sampled with host memory (process_name).
    assert models[0]["levels"][0]["server_rss_peak_bytes"] > 10 * 2**20
    # The config's notes end up in the report's server configuration section.
    assert "### Configuración del Servidor" in proc.stdout
    assert "- Optimizaciones ARM Axion aplicadas" in proc.stdout


def test_console_script_and_version() -> None:
    exe = Path(sys.executable).parent / "llm-probe-exporter"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("llm-probe-exporter ")
    proc = run("probe")
    assert proc.returncode == 2
    assert "probe needs --config FILE, or --url URL and at least one --model" in proc.stderr
