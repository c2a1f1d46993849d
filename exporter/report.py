"""The markdown report of sweeps: the seed's Spanish document (or its English twin) from results.

`render_report` is a pure function of `ModelResult`s. With `lang="es"`, `details=False` and
`chart=False` it reproduces the hand-made seed report line for line; the extras (verdict,
timestamps, percentiles, chart) only ever add whole lines around the seed's blocks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from exporter.durations import format_seconds
from exporter.results import (
    STOP_ERRORS,
    STOP_LATENCY,
    STOP_MEMORY,
    STOP_NO_REQUESTS,
    LevelResult,
    ModelResult,
    Plan,
)

LANGS = ("en", "es")

_T = TypeVar("_T")

# The seed's separator is not derived from its header (one dash too many under
# "Tiempo Resp. (s)"), so it is kept verbatim rather than computed.
_ES_TABLE_HEADER = (
    "| Usuarios | Solicitudes | Éxito | Errores | Timeouts | Tiempo Resp. (s) "
    "| Memoria Inicial | Memoria Final |"
)
_ES_TABLE_SEPARATOR = (
    "|----------|-------------|-------|---------|----------|-------------------"
    "|-----------------|---------------|"
)


@dataclass(frozen=True)
class _Texts:
    """Every phrase of the report in one language; `{}` fields are filled by the renderer."""

    title: str
    intro: str  # {where}: " en el servidor `x`" or "" when no server is known
    on_server: str
    on_servers: str
    and_: str
    generated: str
    server_line: str
    model_heading: str
    table_header: str
    table_separator: str | None  # None: derive it from the header
    conclusion_heading: str
    max_safe: str
    mean_successes: str
    no_limit: str
    no_levels: str
    not_run: str
    limit_at: str
    memory_reason: str
    errors_reason: str
    reasons: str
    latency_reason: str
    latency_no_objective: str
    no_requests_reason: str
    unknown_reason: str
    aborted: str
    warmup_error: str
    user_one: str
    user_many: str
    error_one: str
    error_many: str
    timeout_one: str
    timeout_many: str
    request_one: str
    request_many: str
    details_heading: str
    measured: str
    cold_start: str
    details_header: tuple[str, ...]
    server_header: tuple[str, str, str]  # running peak, queue peak, RSS peak
    loaded_before: str
    yes: str
    no: str
    chart_title: str
    chart_x: str
    chart_y: str
    chart_lines_note: str
    chart_zero_note: str
    chart_skipped: str
    summary_heading: str
    summary_intro: str
    summary_memory: str
    summary_memory_per_model: str
    summary_for: str
    summary_performance: str
    summary_latency: str
    methodology_heading: str
    duration: str
    interval: str
    timeout: str
    levels: str
    memory_limit: str
    max_error_ratio: str
    latency_objective: str
    streaming: str
    streaming_off: str
    second_one: str
    second_many: str
    fixed_methodology: tuple[str, ...]
    no_results: str
    server_config_heading: str


_ES = _Texts(
    title="# Pruebas de Concurrencia por Modelo",
    intro="Este informe detalla las pruebas de concurrencia realizadas para cada modelo "
    "disponible{where}.",
    on_server=" en el servidor {}",
    on_servers=" en los servidores {}",
    and_=" y ",
    generated="_Generado: {}_",
    server_line="Servidor: {}",
    model_heading="## Modelo: {}",
    table_header=_ES_TABLE_HEADER,
    table_separator=_ES_TABLE_SEPARATOR,
    conclusion_heading="### Conclusión para {}:",
    max_safe="- Número máximo seguro de usuarios concurrentes: **{}**",
    mean_successes="- Tasa promedio de éxito: **{}** solicitudes por prueba",
    no_limit="- No se alcanzó el límite: todos los niveles probados pasaron (hasta {})",
    no_levels="- No se probó ningún nivel",
    not_run="; no se ejecutaron los niveles {} del plan",
    limit_at="- Límite alcanzado con {}: {}",
    memory_reason="memoria pico {} > límite {}",
    errors_reason="{} de {}{}, {} > permitido {}",
    reasons=" (motivos: {})",
    latency_reason="p95 {} s > objetivo {} s",
    latency_no_objective="p95 {} s sobre el objetivo",
    no_requests_reason="no se completó ninguna solicitud",
    unknown_reason="el nivel falló (motivo: {})",
    aborted="; nivel abortado",
    warmup_error="- Error en la solicitud de calentamiento: {}",
    user_one="usuario",
    user_many="usuarios",
    error_one="error",
    error_many="errores",
    timeout_one="timeout",
    timeout_many="timeouts",
    request_one="solicitud",
    request_many="solicitudes",
    details_heading="### Detalles de {}",
    measured="- Medido: {}",
    cold_start="- Arranque en frío: {} s",
    server_header=("Servidor: en curso (pico)", "Servidor: en cola (pico)", "RSS servidor (pico)"),
    loaded_before="- Modelo cargado antes del barrido: {}",
    details_header=(
        "Usuarios",
        "p50 (s)",
        "p95 (s)",
        "p99 (s)",
        "Máx. (s)",
        "TTFT media (s)",
        "TTFT p95 (s)",
        "Tokens/s",
        "Memoria pico",
        "Errores por motivo",
        "Abortado",
    ),
    yes="sí",
    no="no",
    chart_title="{}: tiempo de respuesta vs usuarios",
    chart_x="Usuarios",
    chart_y="Tiempo de respuesta (s)",
    chart_lines_note="_Líneas: tiempo de respuesta medio y p95._",
    chart_zero_note="_Los niveles sin respuestas exitosas ({}) se muestran como 0._",
    chart_skipped="_Sin gráfico: ningún nivel tuvo respuestas exitosas._",
    summary_heading="## Resumen General",
    summary_intro="Las pruebas de concurrencia se realizaron con el objetivo de determinar:",
    summary_memory="- El número máximo de usuarios concurrentes que puede manejar cada modelo "
    "sin exceder el {} de uso de RAM",
    summary_memory_per_model="- El número máximo de usuarios concurrentes que puede manejar "
    "cada modelo sin exceder su límite de uso de RAM ({})",
    summary_for="{} para {}",
    summary_performance="- El rendimiento del modelo bajo carga concurrente",
    summary_latency="- El tiempo promedio de respuesta bajo diferentes niveles de concurrencia",
    methodology_heading="### Metodología",
    duration="Duración de cada prueba: {}",
    interval="Intervalo entre solicitudes: {}",
    timeout="Timeout de solicitud: {}",
    levels="Niveles de concurrencia: {}",
    memory_limit="Límite de uso de RAM: {}",
    max_error_ratio="Proporción máxima de errores: {}",
    latency_objective="Objetivo de latencia p95: {}",
    streaming="Streaming: sí, hasta {} tokens por respuesta",
    streaming_off="Streaming: no, hasta {} tokens por respuesta",
    second_one="segundo",
    second_many="segundos",
    fixed_methodology=(
        "- Cada usuario envía solicitudes concurrentes al mismo modelo",
        "- Se monitorea el uso de memoria durante todas las pruebas",
    ),
    no_results="_No hay resultados de ningún modelo._",
    server_config_heading="### Configuración del Servidor",
)

_EN = _Texts(
    title="# Concurrency Tests per Model",
    intro="This report details the concurrency tests run for each model available{where}.",
    on_server=" on the server {}",
    on_servers=" on the servers {}",
    and_=" and ",
    generated="_Generated: {}_",
    server_line="Server: {}",
    model_heading="## Model: {}",
    table_header="| Users | Requests | Success | Errors | Timeouts | Resp. Time (s) "
    "| Initial Memory | Final Memory |",
    table_separator=None,
    conclusion_heading="### Conclusion for {}:",
    max_safe="- Maximum safe concurrent users: **{}**",
    mean_successes="- Mean successes: **{}** requests per test",
    no_limit="- No limit reached: every tested level passed (up to {})",
    no_levels="- No level was tested",
    not_run="; planned levels {} were not run",
    limit_at="- Limit reached at {}: {}",
    memory_reason="memory peak {} > limit {}",
    errors_reason="{} of {}{}, {} > allowed {}",
    reasons=" (reasons: {})",
    latency_reason="p95 {} s > objective {} s",
    latency_no_objective="p95 {} s above the objective",
    no_requests_reason="no request completed",
    unknown_reason="the level failed (reason: {})",
    aborted="; level aborted",
    warmup_error="- Warm-up request failed: {}",
    user_one="user",
    user_many="users",
    error_one="error",
    error_many="errors",
    timeout_one="timeout",
    timeout_many="timeouts",
    request_one="request",
    request_many="requests",
    details_heading="### Details for {}",
    measured="- Measured: {}",
    cold_start="- Cold start: {} s",
    server_header=("Server running (peak)", "Server queue (peak)", "Server RSS (peak)"),
    loaded_before="- Model loaded before the sweep: {}",
    details_header=(
        "Users",
        "p50 (s)",
        "p95 (s)",
        "p99 (s)",
        "Max (s)",
        "TTFT mean (s)",
        "TTFT p95 (s)",
        "Tokens/s",
        "Peak Memory",
        "Errors by reason",
        "Aborted",
    ),
    yes="yes",
    no="no",
    chart_title="{}: response time vs users",
    chart_x="Users",
    chart_y="Response time (s)",
    chart_lines_note="_Lines: mean and p95 response time._",
    chart_zero_note="_Levels with no successful response ({}) are plotted as 0._",
    chart_skipped="_No chart: no level had a successful response._",
    summary_heading="## Summary",
    summary_intro="The concurrency tests set out to determine:",
    summary_memory="- The maximum number of concurrent users each model can handle "
    "without exceeding {} RAM usage",
    summary_memory_per_model="- The maximum number of concurrent users each model can handle "
    "without exceeding its RAM usage limit ({})",
    summary_for="{} for {}",
    summary_performance="- The model's performance under concurrent load",
    summary_latency="- The mean response time at different concurrency levels",
    methodology_heading="### Methodology",
    duration="Duration of each test: {}",
    interval="Interval between requests: {}",
    timeout="Request timeout: {}",
    levels="Concurrency levels: {}",
    memory_limit="RAM usage limit: {}",
    max_error_ratio="Maximum error ratio: {}",
    latency_objective="p95 latency objective: {}",
    streaming="Streaming: yes, up to {} tokens per answer",
    streaming_off="Streaming: no, up to {} tokens per answer",
    second_one="second",
    second_many="seconds",
    fixed_methodology=(
        "- Each user sends concurrent requests to the same model",
        "- Memory usage is monitored throughout all tests",
    ),
    no_results="_No model results._",
    server_config_heading="### Server Configuration",
)

_TEXTS = {"es": _ES, "en": _EN}


def render_report(
    models: Sequence[ModelResult],
    *,
    lang: str = "en",
    notes: Sequence[str] = (),
    generated_at: datetime | None = None,
    chart: bool = True,
    details: bool = True,
) -> str:
    """The markdown report of `models`, ending with exactly one newline.

    `notes` become the "server configuration" bullets (section omitted when empty);
    `details=False, chart=False` gives only what the seed document has.
    """
    if lang not in _TEXTS:
        raise ValueError(f"unknown report language {lang!r} (expected one of {', '.join(LANGS)})")
    t = _TEXTS[lang]
    servers = _unique(m.server for m in models if m.server)

    out: list[str] = [t.title, "", t.intro.format(where=_where(t, servers)), ""]
    if generated_at is not None:
        out += [t.generated.format(_utc(generated_at).strftime("%Y-%m-%d %H:%M:%S UTC")), ""]
    if not models:
        out += [t.no_results, ""]

    for model in models:
        out += _model_section(t, model, several_servers=len(servers) > 1, details=details)
        if chart:
            out += _chart(t, model)

    out += _summary(t, models, details=details)
    if notes:
        out += [t.server_config_heading, ""]
        out += [f"- {_one_line(note)}" for note in notes]
    return "\n".join(out).rstrip("\n") + "\n"


# --- one model --------------------------------------------------------------------------


def _model_section(t: _Texts, m: ModelResult, *, several_servers: bool, details: bool) -> list[str]:
    out = [t.model_heading.format(m.model), ""]
    if several_servers:
        # The intro names every server; say which one this model lives on.
        out += [t.server_line.format(_code(m.server)), ""]
    out += _table(t.table_header, t.table_separator, [_seed_row(lv) for lv in m.levels])
    out += ["", t.conclusion_heading.format(m.model), t.max_safe.format(m.max_safe_concurrency)]
    if details:
        # Right under the max-safe number, because it qualifies it ("20" may mean "20 or more").
        out.append(_verdict(t, m))
        if m.warmup_error:
            out.append(t.warmup_error.format(_code(m.warmup_error)))
    out += [t.mean_successes.format(f"{m.mean_successes:.1f}"), ""]
    if details:
        out += _details(t, m)
    return out


def _seed_row(lv: LevelResult) -> list[str]:
    return [
        str(lv.concurrency),
        str(lv.requests),
        str(lv.successes),
        str(lv.errors),
        str(lv.timeouts),
        _seconds_cell(lv.latency_mean_s if lv.successes else None),
        _ratio_pct(lv.memory_start_ratio),
        _ratio_pct(lv.memory_end_ratio),
    ]


def _verdict(t: _Texts, m: ModelResult) -> str:
    failed = m.first_failed
    if failed is None:
        if not m.levels:
            return t.no_levels
        line = t.no_limit.format(_count(t, m.max_safe_concurrency, t.user_one, t.user_many))
        ran = {lv.concurrency for lv in m.levels}
        # A sweep cut short (shutdown, abort) passed what it ran, but did not test the rest.
        missing = [lvl for lvl in m.plan.levels if lvl not in ran]
        if missing:
            line += t.not_run.format(", ".join(str(x) for x in missing))
        return line
    why = _why_failed(t, failed, m.plan)
    if failed.aborted:
        why += t.aborted
    return t.limit_at.format(_count(t, failed.concurrency, t.user_one, t.user_many), why)


def _why_failed(t: _Texts, lv: LevelResult, plan: Plan) -> str:
    reason = lv.stop_reason
    if reason == STOP_MEMORY:
        return t.memory_reason.format(
            _ratio_pct(lv.memory_peak_ratio), _limit_pct(plan.memory_limit_ratio)
        )
    if reason == STOP_ERRORS:
        parts = []
        if lv.errors or not lv.timeouts:
            parts.append(_count(t, lv.errors, t.error_one, t.error_many))
        if lv.timeouts:
            parts.append(_count(t, lv.timeouts, t.timeout_one, t.timeout_many))
        reasons = t.reasons.format(_reasons(lv)) if lv.errors_by_reason else ""
        share = lv.failures / lv.requests if lv.requests else 0.0
        return t.errors_reason.format(
            " + ".join(parts),
            _count(t, lv.requests, t.request_one, t.request_many),
            reasons,
            _ratio_pct(share),
            _limit_pct(plan.max_error_ratio),
        )
    if reason == STOP_LATENCY:
        p95 = _seconds_cell(lv.latency_p95_s)
        if plan.latency_p95_max_s is None:
            return t.latency_no_objective.format(p95)
        return t.latency_reason.format(p95, format_seconds(plan.latency_p95_max_s))
    if reason == STOP_NO_REQUESTS:
        return t.no_requests_reason
    return t.unknown_reason.format(reason or "-")


def _details(t: _Texts, m: ModelResult) -> list[str]:
    out = [t.details_heading.format(m.model), "", t.measured.format(_span(m))]
    if m.cold_start_s is not None:
        out.append(t.cold_start.format(f"{m.cold_start_s:.2f}"))
    if m.loaded_before is not None:
        size = f" ({_mib(m.model_size_bytes)})" if m.model_size_bytes else ""
        out.append(t.loaded_before.format((t.yes if m.loaded_before else t.no) + size))
    out.append("")
    # The server's own view, when it gave one: queueing in the server vs slower service.
    extra = [
        (i, head)
        for i, head in enumerate(t.server_header)
        if any(_server_cell(lv, i) != "-" for lv in m.levels)
    ]
    rows = [
        [
            str(lv.concurrency),
            _seconds_cell(lv.latency_p50_s),
            _seconds_cell(lv.latency_p95_s),
            _seconds_cell(lv.latency_p99_s),
            _seconds_cell(lv.latency_max_s),
            _seconds_cell(lv.ttft_mean_s),
            _seconds_cell(lv.ttft_p95_s),
            "-" if _missing(lv.output_tokens_per_s) else f"{lv.output_tokens_per_s:.1f}",
            _ratio_pct(lv.memory_peak_ratio),
            _reasons(lv) if lv.errors_by_reason else "-",
            t.yes if lv.aborted else t.no,
            *(_server_cell(lv, i) for i, _ in extra),
        ]
        for lv in m.levels
    ]
    header = (*t.details_header, *(head for _, head in extra))
    out += _table(_header_line(header), None, rows)
    out.append("")
    return out


def _server_cell(lv: LevelResult, column: int) -> str:
    value = (lv.server_running_peak, lv.server_waiting_peak, lv.server_rss_peak_bytes)[column]
    if value is None:
        return "-"
    return _mib(int(value)) if column == 2 else f"{value:g}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


# --- chart ------------------------------------------------------------------------------


def _chart(t: _Texts, m: ModelResult) -> list[str]:
    """A mermaid xychart of response time against users (GitHub renders it)."""
    if not m.levels:
        return []
    means = [lv.latency_mean_s if lv.successes else None for lv in m.levels]
    if all(_missing(x) for x in means):
        return [t.chart_skipped, ""]
    p95s = [lv.latency_p95_s if lv.successes else None for lv in m.levels]
    with_p95 = any(not _missing(x) for x in p95s)
    top = _nice_ceiling(max(x for x in (*means, *p95s) if x is not None and not math.isnan(x)))
    title = _mermaid_text(t.chart_title.format(m.model))
    out = [
        "```mermaid",
        "xychart-beta",
        f'    title "{title}"',
        f'    x-axis "{t.chart_x}" [{", ".join(str(lv.concurrency) for lv in m.levels)}]',
        f'    y-axis "{t.chart_y}" 0 --> {format_seconds(top)}',
        f"    line [{_chart_values(means)}]",
    ]
    if with_p95:
        out.append(f"    line [{_chart_values(p95s)}]")
    out += ["```", ""]
    # xychart has no legend and no gaps: say what the lines are and which zeros are fake.
    if with_p95:
        out += [t.chart_lines_note, ""]
    empty = [lv for lv, x in zip(m.levels, means, strict=True) if _missing(x)]
    if empty:
        users = ", ".join(str(lv.concurrency) for lv in empty)
        out += [t.chart_zero_note.format(f"{users} {t.user_many}"), ""]
    return out


def _chart_values(values: Sequence[float | None]) -> str:
    return ", ".join("0" if _missing(x) else f"{x:.2f}" for x in values)


def _nice_ceiling(x: float) -> float:
    """Round the axis top up to a multiple of half a power of ten (22.19 -> 25, 1.73 -> 2)."""
    if x <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(x)) / 2
    return round(math.ceil(x / step - 1e-9) * step, 6)


def _mermaid_text(text: str) -> str:
    # A `"` ends mermaid's quoted string and a newline ends the statement.
    return _one_line(text).replace('"', "'")


# --- summary ----------------------------------------------------------------------------


def _summary(t: _Texts, models: Sequence[ModelResult], *, details: bool) -> list[str]:
    out = [t.summary_heading, "", t.summary_intro, "", _memory_goal(t, models)]
    out += [t.summary_performance, t.summary_latency, "", t.methodology_heading, ""]
    out += _methodology(t, models, details=details)
    out += list(t.fixed_methodology)
    out.append("")
    return out


def _memory_goal(t: _Texts, models: Sequence[ModelResult]) -> str:
    limits = _unique(m.plan.memory_limit_ratio for m in models)
    if len(limits) == 1:
        return t.summary_memory.format(_limit_pct(limits[0]))
    if not limits:
        return t.summary_memory.format(_limit_pct(0.9))  # no sweep: the documented default
    per_limit = [
        t.summary_for.format(
            _limit_pct(limit),
            ", ".join(m.model for m in models if m.plan.memory_limit_ratio == limit),
        )
        for limit in limits
    ]
    return t.summary_memory_per_model.format("; ".join(per_limit))


def _methodology(t: _Texts, models: Sequence[ModelResult], *, details: bool) -> list[str]:
    # Group by what is printed, not by the whole Plan: plans differing only in a field the
    # report does not show would otherwise yield identical-looking groups.
    groups: dict[tuple[str, ...], list[str]] = {}
    for m in models:
        groups.setdefault(_plan_lines(t, m.plan, details=details), []).append(m.model)
    if len(groups) == 1:
        (lines,) = groups
        return [f"- {line}" for line in lines]
    out = []
    for lines, names in groups.items():
        out.append(f"- {', '.join(names)}:")
        out += [f"  - {line}" for line in lines]
    return out


def _plan_lines(t: _Texts, plan: Plan, *, details: bool) -> tuple[str, ...]:
    lines = [
        t.duration.format(_seconds_phrase(t, plan.duration_s)),
        t.interval.format(_seconds_phrase(t, plan.interval_s)),
        t.timeout.format(_seconds_phrase(t, plan.timeout_s)),
    ]
    if details:
        lines += [
            t.levels.format(", ".join(str(x) for x in plan.levels)),
            t.memory_limit.format(_limit_pct(plan.memory_limit_ratio)),
            t.max_error_ratio.format(_limit_pct(plan.max_error_ratio)),
        ]
        if plan.latency_p95_max_s is not None:
            lines.append(t.latency_objective.format(_seconds_phrase(t, plan.latency_p95_max_s)))
        lines.append((t.streaming if plan.stream else t.streaming_off).format(plan.max_tokens))
    return tuple(lines)


# --- formatting helpers -----------------------------------------------------------------


def _table(header: str, separator: str | None, rows: Iterable[Sequence[str]]) -> list[str]:
    out = [header, separator or _separator_for(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    return out


def _header_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _separator_for(header: str) -> str:
    cells = header.strip().strip("|").split("|")
    return "|" + "|".join("-" * len(cell) for cell in cells) + "|"


def _missing(x: float | None) -> bool:
    return x is None or math.isnan(x)


def _seconds_cell(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def _ratio_pct(ratio: float) -> str:
    """A measured ratio as the seed writes it: 0.14 -> 14.0%."""
    return f"{ratio * 100:.1f}%"


def _limit_pct(ratio: float) -> str:
    """A configured ratio without noise: 0.9 -> 90%, 0.855 -> 85.5%."""
    return f"{format_seconds(ratio * 100)}%"  # format_seconds is our shortest-number form


def _seconds_phrase(t: _Texts, seconds: float) -> str:
    return f"{format_seconds(seconds)} {t.second_one if seconds == 1 else t.second_many}"


def _count(t: _Texts, n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _reasons(lv: LevelResult) -> str:
    return ", ".join(
        f"{_cell_text(reason)} {n}" for reason, n in sorted(lv.errors_by_reason.items())
    )


def _span(m: ModelResult) -> str:
    start, end = _utc(m.started_at), _utc(m.finished_at)
    if start.date() == end.date():
        return f"{start:%Y-%m-%d %H:%M:%S}–{end:%H:%M:%S} UTC"
    return f"{start:%Y-%m-%d %H:%M:%S} – {end:%Y-%m-%d %H:%M:%S} UTC"


def _utc(ts: datetime) -> datetime:
    # Naive timestamps are UTC, as results.parse_timestamp reads them.
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)


def _where(t: _Texts, servers: Sequence[str]) -> str:
    if not servers:
        return ""
    names = [_code(s) for s in servers]
    if len(names) == 1:
        return t.on_server.format(names[0])
    return t.on_servers.format(", ".join(names[:-1]) + t.and_ + names[-1])


_WHITESPACE = re.compile(r"\s+")


def _one_line(text: str) -> str:
    # Free text (notes, error messages) must not break the line-based markdown structure.
    return _WHITESPACE.sub(" ", text).strip()


def _code(text: str) -> str:
    # Inline code cannot hold a backtick; the server name or error is still readable with '.
    return "`" + _one_line(text).replace("`", "'") + "`"


def _cell_text(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _unique(items: Iterable[_T]) -> list[_T]:
    seen: list[_T] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
