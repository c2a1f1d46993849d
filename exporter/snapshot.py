"""The periodic markdown snapshot: the report of the latest results, written atomically,
with the last `keep` dated copies beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from exporter.config import SnapshotConfig
from exporter.files import atomic_write
from exporter.report import render_report
from exporter.results import ModelResult


def render_snapshot(
    results: Sequence[ModelResult], config: SnapshotConfig, notes: Sequence[str] = ()
) -> str:
    if not results:
        title = (
            "# Pruebas de Concurrencia por Modelo"
            if config.lang == "es"
            else ("# Concurrency Tests per Model")
        )
        waiting = (
            "Todavía no hay ningún barrido completo." if config.lang == "es"
            else "No sweep has completed yet."
        )  # fmt: skip
        return f"{title}\n\n{waiting}\n"
    return render_report(results, lang=config.lang, notes=notes, generated_at=datetime.now(UTC))


def dated_name(path: Path, when: datetime) -> Path:
    return path.with_name(f"{path.stem}-{when.strftime('%Y%m%dT%H%M%SZ')}{path.suffix}")


def write_snapshot(text: str, config: SnapshotConfig, when: datetime | None = None) -> Path:
    """Write the snapshot and a dated copy; prune dated copies beyond `keep`. Blocking:
    call it through a thread."""
    path = Path(config.path)
    atomic_write(path, text)
    if config.keep > 0:
        atomic_write(dated_name(path, when or datetime.now(UTC)), text)
        copies = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))
        for old in copies[: -config.keep]:
            old.unlink(missing_ok=True)
    return path


async def write_snapshot_async(text: str, config: SnapshotConfig) -> Path:
    return await asyncio.to_thread(write_snapshot, text, config)
