"""Real memory for the simulator: resident pages a RAM monitor can see, under one hard cap.

The exporter watches host memory (psutil) while it sweeps, so the simulator's
"model weights" and "KV cache" must really occupy RAM: buffers are allocated and
every page is touched. The pool never hands out more than its cap in total; a
request that does not fit gets what is left (possibly nothing).
"""

from __future__ import annotations

import asyncio
import logging

MIB = 1024 * 1024
_PAGE = 4096
# Above this, allocating and touching pages takes milliseconds: do it off the loop.
_THREAD_THRESHOLD = 4 * MIB

log = logging.getLogger(__name__)


def _materialise(size: int) -> bytearray:
    buffer = bytearray(size)
    # bytearray() gets zeroed pages from the OS that are only mapped when written;
    # one write per page makes them count as resident memory.
    buffer[::_PAGE] = b"\x01" * ((size + _PAGE - 1) // _PAGE)
    return buffer


class Allocation:
    """Bytes reserved from a pool for one owner; ``release()`` gives them back (idempotent)."""

    def __init__(self, pool: MemoryPool, owner: str, size: int) -> None:
        self._pool = pool
        self.owner = owner
        self.size = size
        self._buffer: bytearray | None = None
        self.released = False

    @property
    def mb(self) -> float:
        return self.size / MIB

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self._buffer = None
        self._pool._give_back(self)


class MemoryPool:
    """All memory the simulator allocates, capped at ``cap_mb`` in total."""

    def __init__(self, cap_mb: float) -> None:
        self._cap = max(0, int(cap_mb * MIB))
        self._used = 0
        self._by_owner: dict[str, int] = {}
        self._live: set[Allocation] = set()

    @property
    def cap_mb(self) -> float:
        return self._cap / MIB

    def used_mb(self, owner: str | None = None) -> float:
        used = self._used if owner is None else self._by_owner.get(owner, 0)
        return used / MIB

    async def allocate(self, owner: str, mb: float) -> Allocation:
        """Reserve and touch up to ``mb`` MiB (clamped to what is left under the cap)."""
        # Reserve synchronously, before any await, so concurrent requests cannot
        # together overshoot the cap.
        size = max(0, min(int(mb * MIB), self._cap - self._used))
        allocation = Allocation(self, owner, size)
        self._used += size
        self._by_owner[owner] = self._by_owner.get(owner, 0) + size
        self._live.add(allocation)
        if size == 0:
            return allocation
        try:
            if size > _THREAD_THRESHOLD:
                buffer = await asyncio.to_thread(_materialise, size)
            else:
                buffer = _materialise(size)
        except MemoryError:
            log.warning("simulator could not allocate %.1f MiB for %s", size / MIB, owner)
            allocation.release()
            return Allocation(self, owner, 0)
        except BaseException:
            allocation.release()
            raise
        if not allocation.released:  # release_all() may have run while we were in the thread
            allocation._buffer = buffer
        return allocation

    def release_all(self) -> None:
        for allocation in list(self._live):
            allocation.release()

    def _give_back(self, allocation: Allocation) -> None:
        if allocation not in self._live:
            return
        self._live.discard(allocation)
        self._used -= allocation.size
        self._by_owner[allocation.owner] -= allocation.size
