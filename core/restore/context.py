"""Shared, typed state of one restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.images import ImageReader, pb
from core.images.workingset import ProcessPlan
from core.kernel.inject import Injector
from core.kernel.memory import ProcMem
from core.kernel.tracer import Tracer
from core.remote import ServerAddress
from lazy.daemon import DEFAULT_READ_AHEAD, LazyDaemon
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
    read_ahead: int = DEFAULT_READ_AHEAD   # largest read-ahead window (pages; 0: off)
    lazy_timeout: float = 30.0        # how long a lost page server may stay lost
    push_delay: float = 0.0           # seconds before the background push starts
    server: ServerAddress | None = None   # metadata and pages come from this page server
    image_name: str | None = None
    pidns: bool = False               # restore into a new PID namespace with an init of ours
    prefetch: bool = True             # lazy: push a recorded working set before the release
    record_working_set: bool = False  # lazy: record the faults into workingset.img
    record_window: float = 5.0        # ... for this long after the release (push held back)


@dataclass
class RestoreContext:
    """One restore: the whole tree."""

    opts: RestoreOptions
    tracer: Tracer
    reader: ImageReader | None = None
    inventory: pb.Inventory = field(default_factory=pb.Inventory)
    procs: list[ProcRestore] = field(default_factory=list)   # parents before children
    trampoline: int = 0                # code + scratch, at the same address in every process
    pipe_ends: dict[int, tuple[int, int]] = field(default_factory=dict)  # ino -> lazarus's fds
    # Unix socket inode -> lazarus's end of the pair made for it; the tree
    # inherits these at birth (a socket cannot be reopened through /proc).
    sockets: dict[int, int] = field(default_factory=dict)
    shmem_owner: dict[int, str] = field(default_factory=dict)  # shmem ino -> map_files path
    warnings: list[str] = field(default_factory=list)
    init_pid: int = 0                  # --pidns: the namespace's init, as lazarus sees it
    init_report: int = -1              # --pidns: where the init writes the root's wait status
    inventory_sha256: bytes = b""      # identifies the image for its working set

    @property
    def root(self) -> ProcRestore:
        return self.procs[0]

    def find(self, pid: int) -> ProcRestore | None:
        return next((p for p in self.procs if p.proc.pid == pid), None)

    @property
    def live(self) -> list[ProcRestore]:
        """The processes that will run (not the zombies)."""
        return [p for p in self.procs if not p.proc.zombie]


@dataclass
class ProcRestore:
    """One process of the restored tree."""

    tree: RestoreContext
    proc: pb.ProcessImage
    pid: int = 0                       # the restored process, once created
    thread_tids: list[int] = field(default_factory=list)   # its other threads, once made
    mem: ProcMem | None = None
    inj: Injector | None = None
    source: PageSource | None = None       # lazy restore: where pages come from
    push_source: PageSource | None = None  # lazy restore: a second channel for the bulk push
    daemon: LazyDaemon | None = None
    working_set: ProcessPlan | None = None     # lazy restore: recorded, to prefetch

    @property
    def opts(self) -> RestoreOptions:
        return self.tree.opts

    @property
    def tracer(self) -> Tracer:
        return self.tree.tracer

    @property
    def reader(self) -> ImageReader | None:
        return self.tree.reader

    @property
    def warnings(self) -> list[str]:
        return self.tree.warnings

    @property
    def trampoline(self) -> int:
        return self.tree.trampoline

    @property
    def scratch(self) -> int:
        return self.trampoline + SCRATCH_OFFSET


TRAMPOLINE_SIZE = 4 * 4096       # one page of code, the rest scratch for syscall buffers
SCRATCH_OFFSET = 4096
SCRATCH_SIZE = TRAMPOLINE_SIZE - SCRATCH_OFFSET
