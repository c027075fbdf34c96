"""Shared, typed state of one dump."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from core.images import ImageWriter, pb
from core.kernel import ptrace as pt
from core.kernel.tracer import Tracer
from core.remote import ServerAddress

if TYPE_CHECKING:
    from core.dump.twin import Twin


@dataclass
class DumpOptions:
    pid: int
    images_dir: Path
    leave_running: bool = False
    compress: bool = True
    server: ServerAddress | None = None   # send the image there instead of keeping it
    image_name: str | None = None
    prev: Path | None = None       # parent image: store only what changed since it
    predump: bool = False          # memory only, copied while the process runs on
    progress: TextIO | None = None  # where to draw a progress bar (a terminal), if anywhere
    # Remote fork: leave out of the image (closed in the copy, with a warning)
    # the sockets a copy cannot share or restore, instead of refusing them.
    drop_unshareable: bool = False
    # Remote fork: sigactions and brk are read from the twin after the release.
    state_from_twin: bool = False


@dataclass
class FrozenThread:
    tid: int
    regs: pt.Regs | None = None     # as found at freeze time, before any fix-up
    sigmask: int = 0


@dataclass
class ProcDump:
    """One process of the dumped tree."""

    pid: int
    threads: dict[int, FrozenThread] = field(default_factory=dict)   # seized, by tid
    proc: pb.ProcessImage = field(default_factory=pb.ProcessImage)
    # Dirty tracking: the userfaultfd's number in the process (-1: none), our
    # copy of it, whether this run made it, and per VMA start the ranges
    # written since the parent image (None: untracked, every page is fresh).
    tracking_fd: int = -1
    uffd: int = -1
    tracking_created: bool = False
    tracking_consumed: bool = False   # written bits were read and cleared by this run
    written: dict[int, list[tuple[int, int]] | None] = field(default_factory=dict)

    @property
    def leader(self) -> FrozenThread:
        return self.threads[self.pid]


@dataclass
class DumpContext:
    opts: DumpOptions
    tracer: Tracer
    writer: ImageWriter | None = None
    procs: dict[int, ProcDump] = field(default_factory=dict)   # the tree, parents first
    inventory: pb.Inventory = field(default_factory=pb.Inventory)
    warnings: list[str] = field(default_factory=list)
    prev_procs: dict[int, pb.ProcessImage] = field(default_factory=dict)  # parent image, by pid
    frozen_at: float = 0.0         # perf_counter when the freeze began
    killed_at: float = 0.0         # perf_counter when the SIGKILLs were sent (0: not killed)
    frozen_seconds: float = 0.0    # how long the process could not run
    twins: dict[int, Twin] = field(default_factory=dict)   # remote fork: by source PID
    # Remote fork: VmFlags by start, per PID, read before the freeze (reading
    # smaps walks the page tables: too slow to do frozen), checked afterwards.
    vmflags: dict[int, dict[int, set[str]]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.opts.pid

    @property
    def root(self) -> ProcDump:
        return self.procs[self.pid]
