"""The markdown report: the seed document reproduced exactly, and what it adds beyond it."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.report import LANGS, render_report
from exporter.results import (
    STOP_ERRORS,
    STOP_LATENCY,
    STOP_MEMORY,
    STOP_NO_REQUESTS,
    LevelResult,
    ModelResult,
    Plan,
    results_from_json,
)

DATA = Path(__file__).parent / "data"
# The hand-made report the project reproduces (a byte-for-byte copy of the seed document).
SEED_FILE = DATA / "seed_report_es.md"
SEED_NOTES = (
    "Configuración ligera con lazy loading activado",
    "Optimizaciones ARM Axion aplicadas",
    "Uso de CPU (no GPU) para inferencia",
)
PLAN = Plan(
    levels=(1, 2, 4, 8, 12, 16, 20),
    duration_s=25,
    interval_s=3,
    timeout_s=60,
    memory_limit_ratio=0.9,
)
T0 = datetime(2026, 12, 4, 8, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 12, 4, 8, 4, 10, tzinfo=UTC)


def seed_text() -> str:
    # The report ends with exactly one newline; the seed file has a trailing blank line.
    return SEED_FILE.read_text(encoding="utf-8").rstrip("\n") + "\n"


def seed_models() -> list[ModelResult]:
    return results_from_json(json.loads((DATA / "seed_results.json").read_text(encoding="utf-8")))


def level(concurrency: int, **kw: Any) -> LevelResult:
    fields: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": 10,
        "successes": 10,
        "errors": 0,
        "timeouts": 0,
        "latency_mean_s": 1.0,
        "latency_p50_s": 0.9,
        "latency_p95_s": 1.5,
        "latency_p99_s": 1.8,
        "latency_max_s": 2.0,
        "memory_start_ratio": 0.30,
        "memory_end_ratio": 0.31,
        "memory_peak_ratio": 0.32,
        "passed": True,
        "stop_reason": None,
    }
    fields.update(kw)
    return LevelResult(**fields)


def sweep(*levels: LevelResult, plan: Plan = PLAN, **kw: Any) -> ModelResult:
    fields: dict[str, Any] = {
        "model": "m1",
        "server": "srv",
        "started_at": T0,
        "finished_at": T1,
        "plan": plan,
        "levels": levels,
    }
    fields.update(kw)
    return ModelResult(**fields)


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(line == h for h in it) for line in needle)


def table_block(lines: list[str], heading: str) -> list[str]:
    """The consecutive `|` lines right after `heading` (skipping blank/non-table lines)."""
    start = lines.index(heading)
    i = next(j for j in range(start + 1, len(lines)) if lines[j].startswith("|"))
    block = []
    while i < len(lines) and lines[i].startswith("|"):
        block.append(lines[i])
        i += 1
    return block


def mermaid_blocks(text: str) -> list[str]:
    return re.findall(r"```mermaid\n(.*?)\n```", text, flags=re.S)


# --- the seed -----------------------------------------------------------------------------


def test_seed_results_render_exactly_the_seed_document() -> None:
    out = render_report(seed_models(), lang="es", notes=SEED_NOTES, details=False, chart=False)
    assert out == seed_text()


def test_seed_lines_survive_details_and_chart_in_order() -> None:
    seed_lines = seed_text().splitlines()
    out = render_report(
        seed_models(),
        lang="es",
        notes=SEED_NOTES,
        details=True,
        chart=True,
        generated_at=datetime(2026, 12, 4, 9, 0, tzinfo=UTC),
    )
    lines = out.splitlines()
    assert is_subsequence(seed_lines, lines)
    assert out.endswith("\n") and not out.endswith("\n\n")
    for model in ("phi4_fast", "qwen_coder"):
        heading = f"## Modelo: {model}"
        expected = table_block(seed_lines, heading)
        assert len(expected) == 9
        assert table_block(lines, heading) == expected
    assert len(mermaid_blocks(out)) == 2
    assert "_Generado: 2026-12-04 09:00:00 UTC_" in lines
    assert "- Medido: 2025-01-01 10:00:00–10:03:45 UTC" in lines


def test_seed_report_says_no_limit_was_reached_below_the_max_safe_line() -> None:
    lines = render_report(seed_models(), lang="es", chart=False).splitlines()
    i = lines.index("- Número máximo seguro de usuarios concurrentes: **20**")
    assert lines[i + 1] == (
        "- No se alcanzó el límite: todos los niveles probados pasaron (hasta 20 usuarios)"
    )
    assert lines[i + 2] == "- Tasa promedio de éxito: **20.4** solicitudes por prueba"


# --- English ------------------------------------------------------------------------------


def test_english_report_structure_and_numbers() -> None:
    plan = replace(PLAN, levels=(1, 2), duration_s=30, interval_s=2.5, timeout_s=45)
    model = sweep(
        level(1, requests=6, successes=6, latency_mean_s=1.58),
        level(2, requests=12, successes=12, latency_mean_s=1.734),
        plan=plan,
        model="phi4_fast",
    )
    out = render_report([model], lang="en", notes=["CPU only"], chart=False)
    lines = out.splitlines()
    assert lines[0] == "# Concurrency Tests per Model"
    assert lines[2] == (
        "This report details the concurrency tests run for each model available"
        " on the server `srv`."
    )
    assert "## Model: phi4_fast" in lines
    header = (
        "| Users | Requests | Success | Errors | Timeouts | Resp. Time (s) "
        "| Initial Memory | Final Memory |"
    )
    i = lines.index(header)
    assert re.fullmatch(r"\|(-+\|){8}", lines[i + 1])
    assert lines[i + 2] == "| 1 | 6 | 6 | 0 | 0 | 1.58 | 30.0% | 31.0% |"
    assert lines[i + 3] == "| 2 | 12 | 12 | 0 | 0 | 1.73 | 30.0% | 31.0% |"
    assert "### Conclusion for phi4_fast:" in lines
    assert "- Maximum safe concurrent users: **2**" in lines
    assert "- Mean successes: **9.0** requests per test" in lines
    assert "- No limit reached: every tested level passed (up to 2 users)" in lines
    for line in (
        "## Summary",
        "### Methodology",
        "- Duration of each test: 30 seconds",
        "- Interval between requests: 2.5 seconds",
        "- Request timeout: 45 seconds",
        "### Server Configuration",
        "- CPU only",
    ):
        assert line in lines
    assert "without exceeding 90% RAM usage" in out


def test_unknown_language_is_rejected() -> None:
    assert set(LANGS) == {"en", "es"}
    with pytest.raises(ValueError, match="fr"):
        render_report([], lang="fr")


def test_server_configuration_section_omitted_without_notes() -> None:
    out = render_report([sweep(level(1))], lang="es")
    assert "### Configuración del Servidor" not in out
    assert out.endswith("- Se monitorea el uso de memoria durante todas las pruebas\n")


def test_empty_results_still_render() -> None:
    out = render_report([], lang="en")
    assert "_No model results._" in out
    assert "### Methodology" in out


# --- verdicts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed", "plan", "expected"),
    [
        (
            level(4, memory_peak_ratio=0.912, passed=False, stop_reason=STOP_MEMORY, aborted=True),
            PLAN,
            "- Limit reached at 4 users: memory peak 91.2% > limit 90%; level aborted",
        ),
        (
            level(
                4,
                requests=20,
                successes=16,
                errors=3,
                timeouts=1,
                errors_by_reason={"http_5xx": 3},
                passed=False,
                stop_reason=STOP_ERRORS,
            ),
            PLAN,
            "- Limit reached at 4 users: 3 errors + 1 timeout of 20 requests"
            " (reasons: http_5xx 3), 20.0% > allowed 0%",
        ),
        (
            level(4, latency_p95_s=12.4, passed=False, stop_reason=STOP_LATENCY),
            replace(PLAN, latency_p95_max_s=10.0),
            "- Limit reached at 4 users: p95 12.40 s > objective 10 s",
        ),
        (
            level(
                4,
                requests=0,
                successes=0,
                latency_mean_s=None,
                passed=False,
                stop_reason=STOP_NO_REQUESTS,
            ),
            PLAN,
            "- Limit reached at 4 users: no request completed",
        ),
    ],
)
def test_failing_sweep_names_the_failed_level_and_why(
    failed: LevelResult, plan: Plan, expected: str
) -> None:
    model = sweep(level(1), level(2), failed, plan=plan)
    lines = render_report([model], lang="en", chart=False).splitlines()
    i = lines.index("- Maximum safe concurrent users: **2**")
    assert lines[i + 1] == expected
    assert not any(line.startswith("- No limit reached") for line in lines)


def test_failing_sweep_in_spanish_and_no_success_latency_dash() -> None:
    failed = level(
        4,
        requests=4,
        successes=0,
        errors=0,
        timeouts=4,
        latency_mean_s=None,
        latency_p50_s=None,
        latency_p95_s=None,
        latency_p99_s=None,
        latency_max_s=None,
        errors_by_reason={"timeout": 4},
        passed=False,
        stop_reason=STOP_ERRORS,
    )
    out = render_report([sweep(level(1), level(2), failed)], lang="es", chart=False)
    lines = out.splitlines()
    assert "| 4 | 4 | 0 | 0 | 4 | - | 30.0% | 31.0% |" in lines
    assert "| 4 | - | - | - | - | - | - | - | 32.0% | timeout 4 | no |" in lines
    assert (
        "- Límite alcanzado con 4 usuarios: 4 timeouts de 4 solicitudes"
        " (motivos: timeout 4), 100.0% > permitido 0%"
    ) in lines
    assert "- Número máximo seguro de usuarios concurrentes: **2**" in lines
    assert "No se alcanzó el límite" not in out


def test_level_one_failing_gives_zero_safe_users() -> None:
    failed = level(1, memory_peak_ratio=0.95, passed=False, stop_reason=STOP_MEMORY)
    lines = render_report([sweep(failed)], lang="es", chart=False).splitlines()
    assert "- Número máximo seguro de usuarios concurrentes: **0**" in lines
    assert "- Límite alcanzado con 1 usuario: memoria pico 95.0% > límite 90%" in lines


def test_sweep_cut_short_says_which_planned_levels_did_not_run() -> None:
    model = sweep(level(1), level(2), plan=replace(PLAN, levels=(1, 2, 4, 8)))
    out = render_report([model], lang="en", chart=False)
    assert (
        "- No limit reached: every tested level passed (up to 2 users);"
        " planned levels 4, 8 were not run"
    ) in out.splitlines()


def test_details_lines_cold_start_and_warmup_error() -> None:
    model = sweep(
        level(1, ttft_mean_s=0.25, ttft_p95_s=0.4, output_tokens_per_s=42.06),
        cold_start_s=4.2,
        warmup_error="HTTP 503:\nmodel `m1` loading",
    )
    lines = render_report([model], lang="en", chart=False).splitlines()
    assert "- Cold start: 4.20 s" in lines
    assert "- Warm-up request failed: `HTTP 503: model 'm1' loading`" in lines
    assert "- Measured: 2026-12-04 08:00:00–08:04:10 UTC" in lines
    assert "| 1 | 0.90 | 1.50 | 1.80 | 2.00 | 0.25 | 0.40 | 42.1 | 32.0% | - | no |" in lines
    es = render_report([model], lang="es", chart=False)
    assert "- Arranque en frío: 4.20 s" in es.splitlines()


def test_details_false_leaves_only_the_seed_shaped_parts() -> None:
    model = sweep(level(1), cold_start_s=4.2, warmup_error="boom")
    out = render_report([model], lang="en", chart=False, details=False)
    for absent in ("Cold start", "Warm-up", "Details for", "No limit reached", "Measured"):
        assert absent not in out


# --- summary and methodology ---------------------------------------------------------------


def test_memory_limit_and_seconds_are_formatted_plainly() -> None:
    plan = replace(PLAN, memory_limit_ratio=0.855, interval_s=1, timeout_s=2.5)
    out = render_report([sweep(level(1), plan=plan)], lang="es", details=False)
    lines = out.splitlines()
    assert "sin exceder el 85.5% de uso de RAM" in out
    assert "- Intervalo entre solicitudes: 1 segundo" in lines
    assert "- Timeout de solicitud: 2.5 segundos" in lines


def test_methodology_describes_each_distinct_plan() -> None:
    a = sweep(level(1), model="a")
    b = sweep(level(1), model="b", plan=replace(PLAN, duration_s=60, memory_limit_ratio=0.8))
    c = sweep(level(1), model="c")
    lines = render_report([a, b, c], lang="en", details=False).splitlines()
    i = lines.index("- a, c:")
    assert lines[i + 1 : i + 4] == [
        "  - Duration of each test: 25 seconds",
        "  - Interval between requests: 3 seconds",
        "  - Request timeout: 60 seconds",
    ]
    j = lines.index("- b:")
    assert lines[j + 1] == "  - Duration of each test: 60 seconds"
    assert any("its RAM usage limit (90% for a, c; 80% for b)" in line for line in lines)


def test_several_servers_are_all_named() -> None:
    models = [
        sweep(level(1), model="a", server="s1"),
        sweep(level(1), model="b", server="s2"),
        sweep(level(1), model="c", server="s3"),
    ]
    lines = render_report(models, lang="es", chart=False).splitlines()
    assert lines[2].endswith("en los servidores `s1`, `s2` y `s3`.")
    assert "Servidor: `s2`" in lines


# --- chart ----------------------------------------------------------------------------------


def test_mermaid_chart_of_mean_response_time() -> None:
    block = mermaid_blocks(render_report(seed_models(), lang="en"))[0]
    assert block.splitlines() == [
        "xychart-beta",
        '    title "phi4_fast: response time vs users"',
        '    x-axis "Users" [1, 2, 4, 8, 12, 16, 20]',
        '    y-axis "Response time (s)" 0 --> 25',
        "    line [1.58, 1.73, 3.53, 8.85, 13.49, 17.59, 22.19]",
    ]
    es = mermaid_blocks(render_report(seed_models(), lang="es"))[1]
    assert '    x-axis "Usuarios" [1, 2, 4, 8, 12, 16, 20]' in es.splitlines()
    assert '    title "qwen_coder: tiempo de respuesta vs usuarios"' in es.splitlines()


def test_mermaid_chart_p95_line_zero_note_and_quoted_title() -> None:
    failed = level(
        4,
        successes=0,
        errors=10,
        latency_mean_s=None,
        latency_p95_s=None,
        passed=False,
        stop_reason=STOP_ERRORS,
    )
    model = sweep(level(1), level(2, latency_mean_s=2.5, latency_p95_s=3.2), failed, model='a"b')
    out = render_report([model], lang="en")
    block = mermaid_blocks(out)[0].splitlines()
    assert block[1] == '    title "a\'b: response time vs users"'
    assert block[3] == '    y-axis "Response time (s)" 0 --> 3.5'
    assert block[4:] == ["    line [1.00, 2.50, 0]", "    line [1.50, 3.20, 0]"]
    assert "_Lines: mean and p95 response time._" in out
    assert "_Levels with no successful response (4 users) are plotted as 0._" in out


def test_no_chart_when_no_level_succeeded() -> None:
    failed = level(
        1, successes=0, errors=10, latency_mean_s=None, passed=False, stop_reason=STOP_ERRORS
    )
    out = render_report([sweep(failed)], lang="en")
    assert mermaid_blocks(out) == []
    assert "_No chart: no level had a successful response._" in out
    assert "```mermaid" not in render_report(seed_models(), lang="en", chart=False)
