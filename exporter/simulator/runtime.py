"""Live state of one simulated model: FIFO slots, lazy loading, idle unload, faults, counters.

Timing is deadline-based on the loop clock so a long run does not drift: when a
request finishes at its deadline, the slot is handed to the next waiter *as of
that deadline*, and the waiter's service time counts from there. That is what
makes the simulator reproduce the seed report's request counts exactly.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections import deque
from dataclasses import asdict, dataclass

from exporter.simulator.memory import Allocation, MemoryPool
from exporter.simulator.profiles import FaultProfile, ModelProfile


class Fault(enum.Enum):
    """What a request is going to suffer, decided when it arrives."""

    NONE = "none"
    ERROR = "error"
    HANG = "hang"
    MALFORMED = "malformed"
    TRUNCATE = "truncate"
    DROP = "drop"


async def sleep_until(deadline: float) -> None:
    """Sleep until the loop clock reaches ``deadline`` (no-op when it already has)."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


@dataclass
class ModelStats:
    """Counters shown at ``/-/sim/stats``."""

    requests: int = 0
    served: int = 0
    rejected: int = 0
    errors: int = 0
    hung: int = 0
    malformed: int = 0
    truncated: int = 0
    dropped: int = 0
    cancelled: int = 0
    loads: int = 0
    unloads: int = 0
    peak_active: int = 0
    peak_queued: int = 0


class Lease:
    """One slot held by one request; ``start`` is when its service (logically) began."""

    def __init__(self, runtime: ModelRuntime, start: float) -> None:
        self._runtime = runtime
        self.start = start
        self._released = False

    def release(self, at: float | None = None) -> None:
        """Give the slot back as of loop time ``at`` (never later than now); idempotent."""
        if self._released:
            return
        self._released = True
        now = asyncio.get_running_loop().time()
        self._runtime._release_slot(now if at is None else min(at, now))


class ModelRuntime:
    """Everything that changes while one model is being served."""

    def __init__(self, profile: ModelProfile, pool: MemoryPool, time_scale: float) -> None:
        self.profile = profile
        self.faults = profile.faults
        self.stats = ModelStats()
        self.active = 0
        self.loaded = False
        self._pool = pool
        self._scale = time_scale
        self._rng = random.Random(profile.faults.seed)
        self._free = profile.parallel
        # An explicit queue, not a Semaphore: waiters must be served strictly in
        # arrival order. Each entry: (future resolved with the hand-over time, arrival).
        self._waiters: deque[tuple[asyncio.Future[float], float]] = deque()
        self._load_task: asyncio.Task[float] | None = None
        self._resident: Allocation | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def loading(self) -> bool:
        return self._load_task is not None

    def scaled(self, seconds: float) -> float:
        return seconds * self._scale

    def service_seconds(self, tokens: int) -> float:
        """Time a request holds its slot to produce ``tokens`` tokens."""
        return self.scaled(self.profile.service_time + tokens * self.profile.token_time)

    def set_faults(self, faults: FaultProfile) -> None:
        self.faults = faults
        # A fresh RNG, so a test that sets faults gets the same decisions every run.
        self._rng = random.Random(faults.seed)

    # --- arrival

    def arrive(self) -> None:
        self.stats.requests += 1
        self._cancel_idle_timer()

    def queue_full(self) -> bool:
        """Whether a request arriving now must be turned away (``faults.queue_limit``)."""
        limit = self.faults.queue_limit
        must_wait = self._free == 0 or bool(self._waiters)
        return limit is not None and must_wait and len(self._waiters) >= limit

    def decide_fault(self) -> Fault:
        faults = self.faults
        # Always draw the same number of values so one ratio's setting does not
        # shift the decisions of another.
        draws = [self._rng.random() for _ in range(5)]
        for draw, ratio, fault in zip(
            draws,
            (
                faults.error_ratio,
                faults.hang_ratio,
                faults.malformed_ratio,
                faults.truncate_ratio,
                faults.drop_ratio,
            ),
            (Fault.ERROR, Fault.HANG, Fault.MALFORMED, Fault.TRUNCATE, Fault.DROP),
            strict=True,
        ):
            if draw < ratio:
                return fault
        return Fault.NONE

    # --- slots

    async def acquire(self) -> Lease:
        """Wait (FIFO) for a slot."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._occupy()
            return Lease(self, now)
        waiter: asyncio.Future[float] = loop.create_future()
        self._waiters.append((waiter, now))
        self.stats.peak_queued = max(self.stats.peak_queued, len(self._waiters))
        try:
            start = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self._release_slot(loop.time())
            else:
                self._remove_waiter(waiter)
            raise
        return Lease(self, start)

    def _occupy(self) -> None:
        self.active += 1
        self.stats.peak_active = max(self.stats.peak_active, self.active)

    def _remove_waiter(self, waiter: asyncio.Future[float]) -> None:
        for entry in self._waiters:
            if entry[0] is waiter:
                self._waiters.remove(entry)
                return

    def _release_slot(self, at: float) -> None:
        self.active -= 1
        while self._waiters:
            waiter, arrival = self._waiters.popleft()
            if not waiter.done():
                # Hand the slot over directly (it never becomes free), so nobody
                # arriving meanwhile can overtake the queue. Service cannot start
                # before the waiter arrived, even if it arrived during the wake-up lag.
                self._occupy()
                waiter.set_result(max(at, arrival))
                return
        self._free += 1
        self._schedule_idle_unload()

    # --- loading

    async def ensure_loaded(self, start: float) -> float:
        """Load the model if needed; the loop time its service can start."""
        if self.loaded:
            return start
        if self._load_task is None and not self.profile.load_delay and not self.profile.resident_mb:
            # Nothing to wait for or allocate: load at once, without a task hop that
            # would start the service a few microseconds late.
            self._mark_loaded(None)
            return start
        if self._load_task is None:
            self._load_task = asyncio.create_task(self._load(start), name=f"load {self.name}")
        # shield: a client giving up does not abort a load other requests wait for
        done_at = await asyncio.shield(self._load_task)
        return max(start, done_at)

    async def _load(self, start: float) -> float:
        loop = asyncio.get_running_loop()
        try:
            resident = await self._pool.allocate(self.name, self.profile.resident_mb)
            deadline = start + self.scaled(self.profile.load_delay)
            late = loop.time() >= deadline  # allocating took longer than the load delay
            try:
                await sleep_until(deadline)
            except BaseException:
                resident.release()
                raise
            self._mark_loaded(resident)
            return loop.time() if late else deadline
        finally:
            self._load_task = None

    def _mark_loaded(self, resident: Allocation | None) -> None:
        self._resident = resident
        self.loaded = True
        self.stats.loads += 1

    def unload(self) -> bool:
        """Free the resident memory; the next request loads again. False if not loaded."""
        if not self.loaded or self._load_task is not None:
            return False
        self._cancel_idle_timer()
        self.loaded = False
        self.stats.unloads += 1
        if self._resident is not None:
            self._resident.release()
            self._resident = None
        return True

    def expires_in(self) -> float | None:
        """Seconds until an idle unload (None: never); while busy, the full idle time."""
        if self.profile.idle_unload is None:
            return None
        idle = self.scaled(self.profile.idle_unload)
        if self._idle_since is None:
            return idle
        return max(0.0, self._idle_since + idle - asyncio.get_running_loop().time())

    def _schedule_idle_unload(self) -> None:
        if (
            self.profile.idle_unload is None
            or not self.loaded
            or self.active
            or self._waiters
            or self._idle_handle is not None
        ):
            return
        loop = asyncio.get_running_loop()
        self._idle_since = loop.time()
        self._idle_handle = loop.call_later(
            self.scaled(self.profile.idle_unload), self._on_idle_timeout
        )

    def _on_idle_timeout(self) -> None:
        self._idle_handle = None
        self._idle_since = None
        if not self.active and not self._waiters:
            self.unload()

    def _cancel_idle_timer(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self._idle_since = None

    # --- views and teardown

    def snapshot(self) -> dict[str, object]:
        """The ``/-/sim/stats`` entry of this model."""
        return {
            "active": self.active,
            "queued": self.queued,
            "loaded": self.loaded,
            "loading": self.loading,
            "parallel": self.profile.parallel,
            "allocated_mb": round(self._pool.used_mb(self.name), 3),
            **asdict(self.stats),
        }

    def close(self) -> None:
        """Drop timers, loads and waiters, free resident memory (server shutdown)."""
        self._cancel_idle_timer()
        if self._load_task is not None:
            self._load_task.cancel()
        for waiter, _ in self._waiters:
            waiter.cancel()
        self._waiters.clear()
        if self._resident is not None:
            self._resident.release()
            self._resident = None
        self.loaded = False
