"""Shared, typed state of one restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.images import ImageReader, pb
from core.kernel.inject import Injector
from core.kernel.memory import ProcMem
from core.kernel.tracer import Tracer
from core.remote import ServerAddress
from lazy.daemon import LazyDaemon
from lazy.source import PageSource


@dataclass
class RestoreOptions:
    images_dir: Path
    detach: bool = False
    pidfile: Path | None = None
    # dumped file identity (as `lazarus show` prints it, e.g. "pipe:[1234]" or
    # "/dev/pts/3") -> fd of lazarus to put in its place
    inherit_fds: dict[str, int] = field(default_factory=dict)
    write_method: str = "procmem"   # "procmem" (/proc/PID/mem) or "vmwritev"
    lazy: bool = False
    fault_around: int = 64            # pages served per fault
    lazy_timeout: float = 30.0        # how long a lost page server may stay lost
    push_delay: float = 0.0           # seconds before the background push starts
    server: ServerAddress | None = None   # metadata and pages come from this page server
    image_name: str | None = None


@dataclass
class RestoreContext:
    opts: RestoreOptions
    tracer: Tracer
    reader: ImageReader | None = None
    inventory: pb.Inventory = field(default_factory=pb.Inventory)
    proc: pb.ProcessImage = field(default_factory=pb.ProcessImage)
    pid: int = 0                       # the restored process, once created
    thread_tids: list[int] = field(default_factory=list)   # its other threads, once made
    mem: ProcMem | None = None
    inj: Injector | None = None
    trampoline: int = 0
    warnings: list[str] = field(default_factory=list)
    source: PageSource | None = None       # lazy restore: where pages come from
    push_source: PageSource | None = None  # lazy restore: a second channel for the bulk push
    daemon: LazyDaemon | None = None

    @property
    def scratch(self) -> int:
        return self.trampoline + SCRATCH_OFFSET


TRAMPOLINE_SIZE = 4 * 4096       # one page of code, the rest scratch for syscall buffers
SCRATCH_OFFSET = 4096
SCRATCH_SIZE = TRAMPOLINE_SIZE - SCRATCH_OFFSET
