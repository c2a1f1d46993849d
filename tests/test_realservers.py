"""Sweeps against real llama.cpp servers (built from PyPI's llama-cpp-python, cached
outside the repo), with a tiny model the tests write themselves: the engine's shapes and
outcomes on the real thing, and the server's own signals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.config import ModelConfig, ServerConfig, config_from_dict
from exporter.results import ModelResult
from exporter.sweep import run_sweep
from tests.realservers.servers import LlamaCppPythonServer, LlamaServer, RealServer
from tests.realservers.tiny_model import WIDE, write_tiny_model

pytestmark = pytest.mark.realserver

MAX_TOKENS = 32


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


def sweep(
    real: RealServer, api: str = "openai", tmp: Path | None = None, **probe: Any
) -> ModelResult:
    server_doc: dict[str, Any] = {
        "name": "real",
        "url": real.url,
        "api": api,
        "models": [{"name": "tiny", "id": real.model_id}],
    }
    if tmp is not None:  # the server's RSS, from a pid file
        (tmp / "server.pid").write_text(f"{real.pid}\n")
        server_doc["pid_file"] = str(tmp / "server.pid")
    plan = {"levels": [1, 2, 4], "duration": "3s", "interval": 0, "timeout": "60s",
            "max_tokens": MAX_TOKENS, "stream": True, **probe}  # fmt: skip
    config = config_from_dict({"servers": [server_doc], "probe": plan})
    server: ServerConfig
    model: ModelConfig
    server, model = config.targets()[0]
    return asyncio.run(run_sweep(server, model))


def means(result: ModelResult) -> dict[int, float]:
    return {lv.concurrency: lv.latency_mean_s or 0.0 for lv in result.levels}


@pytest.fixture(scope="module")
def serial_server(model_file: Path) -> Iterator[LlamaCppPythonServer]:
    with LlamaCppPythonServer(model_file, interrupt=False) as server:
        yield server


def test_llama_cpp_python_serves_users_one_after_another(
    serial_server: LlamaCppPythonServer, tmp_path: Path
) -> None:
    """One request at a time, FIFO: mean response time grows about linearly with users."""
    result = sweep(serial_server, tmp=tmp_path)
    for lv in result.levels:
        assert lv.errors == lv.timeouts == 0, lv.errors_by_reason
        assert lv.successes == lv.requests > 0
        # Every answer is exactly max_tokens tokens (the server's own usage count).
        assert lv.output_tokens == MAX_TOKENS * lv.successes
        assert lv.ttft_mean_s is not None and lv.latency_mean_s is not None
        assert 0 < lv.ttft_mean_s < lv.latency_mean_s
        assert lv.server_rss_peak_bytes is not None and lv.server_rss_peak_bytes > 10 * 2**20
    m = means(result)
    # Closed loop, interval 0, one slot: each user waits for the N-1 others.
    assert 1.5 < m[2] / m[1] < 3.0, m
    assert 3.0 < m[4] / m[1] < 6.0, m
    assert result.max_safe_concurrency == 4 and not result.limit_reached


def test_llama_cpp_python_interrupts_are_truncated_answers(model_file: Path) -> None:
    """Its default cuts a running stream off when a new request arrives — and still ends it
    with `data: [DONE]` and HTTP 200. Those are errors (`truncated`), never successes."""
    with LlamaCppPythonServer(model_file, interrupt=True) as server:
        result = sweep(server, levels=[2], duration="3s")
    level = result.levels[0]
    assert level.errors_by_reason.get("truncated", 0) > 0, level
    # Whatever did succeed is a whole answer.
    assert level.output_tokens == MAX_TOKENS * level.successes
    assert result.stop_reason == "error_ratio"


@pytest.fixture(scope="module")
def batching_server(model_file: Path) -> Iterator[LlamaServer]:
    with LlamaServer(model_file, parallel=4, metrics=True) as server:
        yield server


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("wide") / "wide.gguf", shape=WIDE)


def test_llama_server_batching_shows_with_enough_weights(wide_model: Path) -> None:
    """With ~56 MB of weights per token (memory-bound on a CPU), four slots decode four
    users for much less than four times the cost of one; beyond four, users queue."""
    with LlamaServer(wide_model, parallel=4, metrics=True) as server:
        result = sweep(server, api="llamacpp", levels=[1, 2, 4, 8], duration="4s")
    for lv in result.levels:
        assert lv.errors == lv.timeouts == 0, lv.errors_by_reason
        assert lv.output_tokens == MAX_TOKENS * lv.successes
    m = means(result)
    by = {lv.concurrency: lv for lv in result.levels}
    assert m[4] < 0.75 * 4 * m[1], m  # batched: well below serial service (4 x)
    assert m[8] > 1.5 * m[4], m  # eight users on four slots: the rest wait
    assert by[4].server_running_peak == 4 and (by[4].server_waiting_peak or 0) == 0
    assert by[8].server_running_peak == 4 and (by[8].server_waiting_peak or 0) >= 1


def test_llama_server_batches_four_and_closes_after_streams(
    batching_server: LlamaServer,
) -> None:
    """--parallel 4, streaming, interval 0: 0 errors at every level although the server
    closes each connection after a streamed answer while sending Keep-Alive; the server's
    own metrics show four running at once and the rest queued.

    (Response time is not flat up to 4 users with this model: its per-token compute is
    so small that the server's per-sequence work — sampling, detokenising, streaming —
    dominates, so batching saves nothing; the WIDE model below shows that shape.)"""
    result = sweep(batching_server, api="llamacpp", levels=[1, 2, 4, 8], duration="4s")
    for lv in result.levels:
        assert lv.errors == lv.timeouts == 0, lv.errors_by_reason
        assert lv.successes == lv.requests > lv.concurrency
        assert lv.output_tokens == MAX_TOKENS * lv.successes
    m = means(result)
    assert m[8] > 1.5 * m[4], m  # eight users on four slots: queueing
    by = {lv.concurrency: lv for lv in result.levels}
    assert by[8].server_running_peak == 4  # the server ran four at a time ...
    assert (by[8].server_waiting_peak or 0) >= 1  # ... and queued the rest
    assert (by[1].server_waiting_peak or 0) == 0
    assert result.max_safe_concurrency == 8
