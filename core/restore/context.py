"""Shared, typed state of one restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.images import ImageReader, pb
from core.kernel.inject import Injector
from core.kernel.memory import ProcMem
from core.kernel.tracer import Tracer


@dataclass
class RestoreOptions:
    images_dir: Path
    detach: bool = False
    pidfile: Path | None = None
    # dumped file identity (as `lazarus show` prints it, e.g. "pipe:[1234]" or
    # "/dev/pts/3") -> fd of lazarus to put in its place
    inherit_fds: dict[str, int] = field(default_factory=dict)
    write_method: str = "procmem"   # "procmem" (/proc/PID/mem) or "vmwritev"


@dataclass
class RestoreContext:
    opts: RestoreOptions
    tracer: Tracer
    reader: ImageReader | None = None
    inventory: pb.Inventory = field(default_factory=pb.Inventory)
    proc: pb.ProcessImage = field(default_factory=pb.ProcessImage)
    pid: int = 0                       # the restored process, once created
    mem: ProcMem | None = None
    inj: Injector | None = None
    trampoline: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def scratch(self) -> int:
        return self.trampoline + SCRATCH_OFFSET


TRAMPOLINE_SIZE = 4 * 4096       # one page of code, the rest scratch for syscall buffers
SCRATCH_OFFSET = 4096
SCRATCH_SIZE = TRAMPOLINE_SIZE - SCRATCH_OFFSET
