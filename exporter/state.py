"""The latest results of each model: the one source of truth that /metrics, the API and
the snapshot read, persisted atomically under `state_dir` so a restart keeps them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from exporter.files import atomic_write
from exporter.logs import fields, log
from exporter.results import ModelResult, ResultsError, results_from_json, results_to_json

STATE_FILE = "results.json"
Key = tuple[str, str]  # (server, model)


class ResultsStore:
    """Latest completed sweep per (server, model). Readers get an immutable mapping."""

    def __init__(self, state_dir: str | Path | None) -> None:
        self.path = Path(state_dir) / STATE_FILE if state_dir else None
        self._latest: Mapping[Key, ModelResult] = MappingProxyType({})
        self._write_lock = asyncio.Lock()

    @property
    def latest(self) -> Mapping[Key, ModelResult]:
        return self._latest

    def ordered(self, keys: Iterable[Key]) -> list[ModelResult]:
        """Results of the given targets, in that order (targets never swept are left out)."""
        latest = self._latest
        return [latest[k] for k in keys if k in latest]

    def load(self) -> int:
        """Read the persisted results (at start-up, before serving). Returns how many."""
        if self.path is None or not self.path.exists():
            return 0
        try:
            results = results_from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ResultsError) as exc:
            log.warning(
                "state file unreadable, starting empty",
                extra=fields(path=str(self.path), error=str(exc)),
            )
            return 0
        self._latest = MappingProxyType({(r.server, r.model): r for r in results})
        return len(results)

    async def publish(self, result: ModelResult) -> None:
        """Make `result` the latest of its model and persist the whole set."""
        latest = dict(self._latest)
        latest[(result.server, result.model)] = result
        self._latest = MappingProxyType(latest)
        await self._persist()

    def retain(self, keys: Iterable[Key]) -> None:
        """Forget results of targets no longer configured (after a reload)."""
        wanted = set(keys)
        self._latest = MappingProxyType({k: v for k, v in self._latest.items() if k in wanted})

    async def _persist(self) -> None:
        if self.path is None:
            return
        text = json.dumps(results_to_json(list(self._latest.values())), indent=2) + "\n"
        async with self._write_lock:
            await asyncio.to_thread(atomic_write, self.path, text)
