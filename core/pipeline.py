"""The async stage runner shared by dump and restore.

A stage is an async function over a typed context. The runner times each
stage, records bytes it reports, and on failure runs the undo of every stage
that finished (and of the failing one), newest first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from core.errors import LazarusError

C = TypeVar("C")
FAIL_AFTER = "LAZARUS_TEST_FAIL_AFTER"

log = logging.getLogger("lazarus")


@dataclass(frozen=True)
class Stage(Generic[C]):
    name: str
    run: Callable[[C], Awaitable[int | None]]  # returns bytes moved, when that means something
    undo: Callable[[C], Awaitable[None]] | None = None


@dataclass
class StageTiming:
    name: str
    seconds: float
    nbytes: int | None


@dataclass
class PipelineStats:
    stages: list[StageTiming] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def format(self) -> str:
        lines = []
        for s in self.stages:
            extra = ""
            if s.nbytes is not None:
                rate = s.nbytes / s.seconds / 1e6 if s.seconds > 0 else 0.0
                extra = f"  {s.nbytes / 1e6:10.1f} MB  {rate:9.1f} MB/s"
            lines.append(f"  {s.name:<16} {s.seconds * 1000:9.1f} ms{extra}")
        lines.append(f"  {'total':<16} {self.total_seconds * 1000:9.1f} ms")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "stages": [{"name": s.name, "seconds": s.seconds, "bytes": s.nbytes}
                       for s in self.stages],
            "total_seconds": self.total_seconds,
        }


async def run_pipeline(stages: Sequence[Stage[C]], ctx: C) -> PipelineStats:
    stats = PipelineStats()
    started: list[Stage[C]] = []
    try:
        for stage in stages:
            started.append(stage)
            t0 = time.perf_counter()
            nbytes = await stage.run(ctx)
            stats.stages.append(StageTiming(stage.name, time.perf_counter() - t0, nbytes))
            log.info("stage %s done in %.1f ms", stage.name, stats.stages[-1].seconds * 1000)
            if os.environ.get(FAIL_AFTER) == stage.name:
                # Test hook: exercise the undo path after a given stage.
                raise LazarusError(f"failing after stage {stage.name} ({FAIL_AFTER} is set)")
    except BaseException:
        for stage in reversed(started):
            if stage.undo is None:
                continue
            try:
                await stage.undo(ctx)
            except Exception as exc:  # keep undoing the rest; report what failed
                log.warning("undo of stage %s failed: %s", stage.name, exc)
        raise
    return stats
