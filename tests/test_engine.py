"""The engine and sweep against the real simulator on 127.0.0.1: outcomes, rules, guard."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from exporter.backends import HttpClient, backend_for, new_session
from exporter.config import ModelConfig, ProbeSettings, ServerConfig, adhoc_config
from exporter.memory import host_memory_used_ratio
from exporter.results import STOP_ERRORS, STOP_LATENCY, STOP_MEMORY
from exporter.sweep import SweepDeferred, run_sweep, server_busy
from tests.conftest import SimFactory, free_port


def target(
    url: str, model: str = "m", api: str = "openai", **probe: Any
) -> tuple[ServerConfig, ModelConfig]:
    settings = ProbeSettings(**{"warmup": False, "timeout_s": 5.0, **probe})
    return adhoc_config(url, api, [model], settings, "sim").targets()[0]


def profile(**model: Any) -> dict[str, Any]:
    return {"server_name": "sim", "models": [{"name": "m", "service_time": "20ms", **model}]}


async def one(url: str, api: str = "openai", **probe: Any) -> Any:
    server, model = target(url, api=api, **probe)
    async with HttpClient(1) as client:
        return await backend_for(server, model).execute(client, model.probe.timeout_s)


@pytest.mark.parametrize("api", ["openai", "ollama"])
@pytest.mark.parametrize("stream", [True, False])
async def test_success_with_tokens_and_ttft(simulator: SimFactory, api: str, stream: bool) -> None:
    sim = await simulator(profile(service_time="100ms"))
    outcome = await one(sim.url, api=api, stream=stream, max_tokens=12)
    assert outcome.kind == "success", outcome
    assert outcome.output_tokens == 12
    assert outcome.latency_s >= 0.1
    if stream:
        assert outcome.ttft_s is not None and 0 < outcome.ttft_s < outcome.latency_s
    else:
        assert outcome.ttft_s is None


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_openai_completions_endpoint(simulator: SimFactory, endpoint: str) -> None:
    sim = await simulator(profile())
    outcome = await one(sim.url, endpoint=endpoint, max_tokens=5)
    assert (outcome.kind, outcome.output_tokens) == ("success", 5)


async def test_ollama_generate_endpoint(simulator: SimFactory) -> None:
    sim = await simulator(profile())
    outcome = await one(sim.url, api="ollama", endpoint="generate", max_tokens=7)
    assert (outcome.kind, outcome.output_tokens) == ("success", 7)


FAULTS = [
    ({"error_ratio": 1.0}, "error", "http_5xx"),
    ({"malformed_ratio": 1.0}, "error", "invalid_response"),
    ({"truncate_ratio": 1.0}, "error", "truncated"),
    ({"drop_ratio": 1.0}, "error", "disconnected"),
    ({"hang_ratio": 1.0}, "timeout", None),
]


@pytest.mark.parametrize("api", ["openai", "ollama"])
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("faults", "kind", "reason"), FAULTS, ids=[str(f[0]) for f in FAULTS])
async def test_each_fault_is_classified(
    simulator: SimFactory,
    api: str,
    stream: bool,
    faults: dict[str, Any],
    kind: str,
    reason: str | None,
) -> None:
    sim = await simulator(profile(faults=faults))
    outcome = await one(sim.url, api=api, stream=stream, timeout_s=0.5)
    assert (outcome.kind, outcome.reason) == (kind, reason), outcome


async def test_refused_and_unknown_model(simulator: SimFactory) -> None:
    refused = await one(f"http://127.0.0.1:{free_port()}")
    assert (refused.kind, refused.reason) == ("error", "connect")
    sim = await simulator(profile())
    server, model = target(sim.url, model="nope")
    async with HttpClient(1) as client:
        outcome = await backend_for(server, model).execute(client, 5)
    assert (outcome.kind, outcome.reason) == ("error", "http_4xx")


@pytest.mark.parametrize("status", [503, 429])
@pytest.mark.parametrize("api", ["openai", "ollama"])
async def test_full_queue_is_overloaded(simulator: SimFactory, status: int, api: str) -> None:
    sim = await simulator(
        profile(service_time="300ms", faults={"queue_limit": 1, "queue_full_status": status})
    )
    server, model = target(sim.url, api=api, levels=(4,), duration_s=0.2, interval_s=0)
    result = await run_sweep(server, model)
    level = result.levels[0]
    # One in service, one queued; the other two are turned away at once.
    assert level.errors_by_reason.get("overloaded", 0) >= 2
    assert level.successes >= 2
    assert result.stop_reason == STOP_ERRORS and result.max_safe_concurrency == 0


async def test_error_ratio_stops_the_sweep_at_the_first_failing_level(
    simulator: SimFactory,
) -> None:
    sim = await simulator(profile(parallel=1, service_time="50ms", faults={"queue_limit": 2}))
    server, model = target(sim.url, levels=(1, 2, 4, 8), duration_s=0.5, interval_s=0)
    result = await run_sweep(server, model)
    assert [lv.concurrency for lv in result.levels] == [1, 2, 4]  # never escalates past 4
    assert [lv.passed for lv in result.levels] == [True, True, False]
    assert result.max_safe_concurrency == 2
    assert result.limit_reached is True
    assert result.stop_reason == STOP_ERRORS
    assert result.levels[-1].errors_by_reason["overloaded"] > 0


async def test_allowed_error_ratio_lets_a_level_pass(simulator: SimFactory) -> None:
    sim = await simulator(profile(faults={"error_ratio": 0.2, "seed": 7}))
    server, model = target(
        sim.url, levels=(1, 2), duration_s=1.0, interval_s=0, max_error_ratio=0.6
    )
    result = await run_sweep(server, model)
    assert all(lv.passed for lv in result.levels)
    assert sum(lv.errors for lv in result.levels) > 0
    assert result.limit_reached is False and result.max_safe_concurrency == 2


async def test_latency_objective(simulator: SimFactory) -> None:
    sim = await simulator(profile(parallel=1, service_time="100ms"))
    server, model = target(
        sim.url, levels=(1, 4), duration_s=0.6, interval_s=0, latency_p95_max_s=0.25
    )
    result = await run_sweep(server, model)
    assert [lv.passed for lv in result.levels] == [True, False]
    assert result.stop_reason == STOP_LATENCY
    assert result.levels[1].latency_p95_s is not None and result.levels[1].latency_p95_s > 0.25
    assert result.max_safe_concurrency == 1


async def test_closed_loop_counts_and_accounting(simulator: SimFactory) -> None:
    sim = await simulator(profile(parallel=1, service_time="100ms"))
    server, model = target(sim.url, levels=(1, 3), duration_s=1.0, interval_s=0.2)
    result = await run_sweep(server, model)
    one_user, three = result.levels
    # 1 user: a request every 0.1 s + 0.2 s think time, new ones only before t0 + 1 s.
    assert one_user.requests == 4
    for lv in result.levels:
        assert lv.requests == lv.successes + lv.errors + lv.timeouts
        assert lv.latency_p50_s is not None and lv.latency_max_s is not None
        assert lv.latency_p50_s <= lv.latency_max_s
    # Three users start together on one FIFO slot: the third waits for two answers.
    assert three.latency_max_s is not None and three.latency_max_s >= 0.3
    assert three.latency_mean_s is not None and one_user.latency_mean_s is not None
    assert three.latency_mean_s > one_user.latency_mean_s
    assert result.mean_successes == (one_user.successes + three.successes) / 2


async def test_warm_up_measures_cold_start_and_is_not_counted(simulator: SimFactory) -> None:
    # A load 75 times longer than a request: a level-1 request that paid for it could not
    # be mistaken for one that did not, however busy the machine.
    sim = await simulator(profile(service_time="20ms", load_delay="1.5s"))
    server, model = target(sim.url, levels=(1,), duration_s=0.3, interval_s=0, warmup=True)
    result = await run_sweep(server, model)
    assert result.cold_start_s is not None and result.cold_start_s >= 1.5
    level = result.levels[0]
    # The load happened in the warm-up: no level-1 request paid for it.
    assert level.latency_max_s is not None and level.latency_max_s < 1.5
    stats = await sim_stats(sim.url)
    assert stats["m"]["requests"] == level.requests + 1


async def test_ollama_cold_start_is_the_server_reported_load_duration(
    simulator: SimFactory,
) -> None:
    # The warm-up request takes 0.3 s of loading plus 1 s of service; the cold start is the
    # server's 0.3 s of loading, not the client's 1.3 s round trip.
    sim = await simulator(profile(service_time="1s", load_delay="300ms"))
    server, model = target(sim.url, api="ollama", levels=(1,), duration_s=0.2, warmup=True)
    result = await run_sweep(server, model)
    assert result.cold_start_s is not None and 0.3 <= result.cold_start_s < 1.3


@pytest.mark.parametrize("users", [1, 8, 20])
async def test_close_after_stream_server_gives_no_errors(simulator: SimFactory, users: int) -> None:
    """llama-server closes each connection after a streamed answer yet says Keep-Alive."""
    sim = await simulator(
        profile(parallel=4, service_time="10ms", faults={"close_after_stream": True})
    )
    server, model = target(sim.url, levels=(users,), duration_s=1.5, interval_s=0, stream=True)
    result = await run_sweep(server, model)
    level = result.levels[0]
    assert level.errors == 0 and level.timeouts == 0, level.errors_by_reason
    assert level.successes == level.requests > users


async def test_memory_guard_aborts_the_level_that_crosses_the_limit(
    simulator: SimFactory,
) -> None:
    # 150 MB really allocated per request in service; the limit sits 450 MB above what
    # the host uses now: 1 and 2 users stay below it (by 300 and 150 MB), 4 users cross it.
    import psutil

    total_mb = psutil.virtual_memory().total / 2**20
    limit = host_memory_used_ratio() + 450 / total_mb
    sim = await simulator(
        {
            "server_name": "sim",
            "memory_cap_mb": 700,
            "models": [{"name": "m", "parallel": 8, "service_time": "3s", "per_request_mb": 150}],
        }
    )
    server, model = target(
        sim.url,
        levels=(1, 2, 4, 8),
        duration_s=3.0,
        interval_s=0,
        memory_limit=limit,
        memory_sample_interval_s=0.1,
        timeout_s=30,
    )
    result = await run_sweep(server, model)
    assert [lv.concurrency for lv in result.levels] == [1, 2, 4], [
        (lv.concurrency, lv.stop_reason, lv.memory_peak_ratio, limit, lv.errors_by_reason)
        for lv in result.levels
    ]
    crossed = result.levels[-1]
    assert crossed.aborted and not crossed.passed
    assert crossed.stop_reason == STOP_MEMORY == result.stop_reason
    assert crossed.memory_peak_ratio > limit
    # Aborted mid-request: the 4 requests in flight were cancelled, none completed.
    assert crossed.errors_by_reason == {"cancelled": 4}
    assert result.max_safe_concurrency == 2
    assert all(lv.memory_peak_ratio <= limit for lv in result.levels[:2])
    stats = await sim_stats(sim.url)
    assert stats["m"]["active"] == 0  # the cancelled requests freed their memory


async def sim_stats(url: str) -> dict[str, Any]:
    session = new_session(1)
    try:
        async with session.get(url + "/-/sim/stats") as response:
            doc: dict[str, Any] = await response.json()
    finally:
        await session.close()
    models = doc.get("models", doc)
    return models if isinstance(models, dict) else {m["name"]: m for m in models}


async def test_request_on_a_dead_pooled_connection_is_retried_on_a_fresh_one(
    simulator: SimFactory,
) -> None:
    """A connection the server closed is never an error; the backend learns to skip the pool."""
    sim = await simulator(profile(service_time="5ms", faults={"close_after_stream": True}))
    server, model = target(sim.url, stream=True)
    backend = backend_for(server, model)
    async with HttpClient(4) as client:
        outcomes = [await backend.execute(client, 5) for _ in range(30)]
        outcomes += await asyncio.gather(*(backend.execute(client, 5) for _ in range(12)))
    assert [o.reason for o in outcomes if not o.ok] == []
    assert backend.closes_after_stream is True
    stats = await sim_stats(sim.url)
    assert stats["m"]["served"] == 42  # each answered exactly once: no duplicate request


async def test_a_keep_alive_server_keeps_the_pool(simulator: SimFactory) -> None:
    sim = await simulator(profile(service_time="5ms"))
    server, model = target(sim.url, stream=True)
    backend = backend_for(server, model)
    async with HttpClient(4) as client:
        outcomes = [await backend.execute(client, 5) for _ in range(20)]
    assert all(o.ok for o in outcomes)
    assert backend.closes_after_stream is False


async def test_server_signals_show_queueing_in_the_server(simulator: SimFactory) -> None:
    """`api: llamacpp` reads the server's /metrics during each level: 1 running, 3 queued."""
    sim = await simulator(profile(parallel=1, service_time="200ms"))
    server, model = target(sim.url, api="llamacpp", levels=(1, 4), duration_s=1.0, interval_s=0)
    assert server.metrics_url == sim.url + "/metrics"
    result = await run_sweep(server, model)
    one_user, four = result.levels
    assert one_user.server_running_peak == 1 and one_user.server_waiting_peak == 0
    assert four.server_running_peak == 1  # one slot ...
    assert four.server_waiting_peak == 3  # ... and the other users wait in its queue
    doc = result.to_json()["levels"][1]
    assert (doc["server_running_peak"], doc["server_waiting_peak"]) == (1, 3)
    from exporter.report import render_report

    lines = render_report([result], lang="en").splitlines()
    header = next(ln for ln in lines if ln.startswith("| Users | p50 (s)"))
    assert header.endswith("| Server running (peak) | Server queue (peak) |")
    row4 = next(ln for ln in lines if ln.startswith("| 4 |") and ln.count("|") > 12)
    assert row4.endswith("| 1 | 3 |")


async def test_a_busy_server_makes_the_sweep_step_aside(simulator: SimFactory) -> None:
    sim = await simulator(profile(parallel=1, service_time="1.5s"))
    server, model = target(sim.url, api="llamacpp", levels=(1,), duration_s=0.2)
    # Somebody else's request is in service on the server.
    other = asyncio.create_task(one(sim.url, timeout_s=5))
    await until_async(lambda: sim_stats(sim.url), lambda s: s["m"]["active"] == 1)
    with pytest.raises(SweepDeferred) as deferred:
        await run_sweep(server, model, busy=lambda: server_busy(server))
    assert deferred.value.reason == "server_busy"
    assert "1 requests running or waiting" in deferred.value.detail
    assert (await other).ok
    # Idle again: the same sweep runs (and its own requests never count as "others").
    result = await run_sweep(server, model, busy=lambda: server_busy(server))
    assert result.levels[0].successes >= 1
    stats = await sim_stats(sim.url)
    assert stats["m"]["requests"] == 1 + result.levels[0].requests


async def test_ollama_ps_tells_cold_from_warm(simulator: SimFactory) -> None:
    sim = await simulator(profile(service_time="20ms", load_delay="100ms", resident_mb=8))
    server, model = target(sim.url, api="ollama", levels=(1,), duration_s=0.2, warmup=True)
    cold = await run_sweep(server, model)
    assert cold.loaded_before is False
    warm = await run_sweep(server, model)
    assert warm.loaded_before is True and warm.model_size_bytes == 8 * 2**20
    doc = warm.to_json()
    assert (doc["loaded_before"], doc["model_size_bytes"]) == (True, 8 * 2**20)


async def until_async(
    fetch: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], tries: int = 200
) -> Any:
    for _ in range(tries):
        value = await fetch()
        if ok(value):
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")
