"""Incremental dumps: the parent image, and dirty tracking between rounds.

A pre-dump creates a userfaultfd inside each process (it must serve the
process's own mm), registers the dumped VMAs for async write-protect and
leaves the fd open in the process at a high number, recorded in the image:
it keeps tracking after lazarus exits. Each later round takes the same fd
again (pidfd_getfd), asks PAGEMAP_SCAN which pages were written since the
previous round and write-protects them again in the same call. The final
dump does the same while the process is frozen, and does not record the fd
as a file of the process.
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

from core import procfs
from core.dump.context import DumpContext, ProcDump
from core.dump.freeze import freeze_process, thaw_process
from core.dump.injection import run_injected
from core.errors import LazarusError
from core.images import ImageError, ImageReader, pb
from core.kernel import constants as K
from core.kernel import dirty
from core.kernel.inject import Injector
from core.kernel.libc import syscall
from core.kernel.process import pidfd_open

log = logging.getLogger("lazarus")


F_DUPFD_CLOEXEC = 1030
TRACKING_FD_MIN = 900        # out of the way of the fds a program usually opens
UFFD_LINK = "anon_inode:[userfaultfd]"
# Shared memory is copied whole every round: its pages are shared with other
# processes whose writes one process's tracking would not see.
TRACKED_KINDS = (pb.Vma.ANON_PRIVATE, pb.Vma.FILE_PRIVATE)


# ------------------------------------------------------------ the parent image


def load_prev(ctx: DumpContext) -> None:
    """Read the parent image and check it was made of this very process."""
    prev = ctx.opts.prev
    if prev is None:
        return
    try:
        reader = ImageReader(prev)
        inv = reader.inventory()
        procs = reader.processes()
    except ImageError as exc:
        raise LazarusError(f"--prev {prev}: {exc}") from None
    if not inv.predump:
        raise LazarusError(f"--prev {prev} is not a pre-dump (made by `lazarus pre-dump`)")
    if inv.root_pid != ctx.pid:
        raise LazarusError(f"--prev {prev} is an image of PID {inv.root_pid}, not of PID "
                           f"{ctx.pid}")
    root = next((p for p in procs if p.pid == ctx.pid), None)
    try:
        start = procfs.read_stat(ctx.pid).start_time
    except (FileNotFoundError, ProcessLookupError):
        raise LazarusError(f"no process with PID {ctx.pid}") from None
    if root is None or not root.start_time or root.start_time != start:
        raise LazarusError(f"--prev {prev} was made of another process with PID {ctx.pid} "
                           "(it was restarted since): make a full dump instead")
    if ctx.opts.images_dir.resolve() == prev.resolve():
        raise LazarusError("--prev must name another directory than -D")
    for p in procs:
        if p.zombie or not p.start_time:
            continue
        try:
            alive = procfs.read_stat(p.pid).start_time == p.start_time
        except (FileNotFoundError, ProcessLookupError):
            alive = False
        if alive:    # a member restarted since is dumped whole, like a new one
            ctx.prev_procs[p.pid] = p
    ctx.inventory.parent = os.path.relpath(prev.resolve(), ctx.opts.images_dir.resolve())


def find_tracking_fd(pid: int) -> int:
    """A tracking userfaultfd a pre-dump left in the process (-1 if none):
    a userfaultfd in async write-protect mode, which fdinfo shows as
    "API: aa:FEATURES:IOCTLS". A full dump must not take it for a file of
    the process."""
    for fd in procfs.list_fds(pid):
        try:
            if os.readlink(procfs.proc(pid, "fd", str(fd))) != UFFD_LINK:
                continue
            api = procfs.read_fdinfo(pid, fd).extra.get("API", "")
        except OSError:
            continue
        parts = api.split(":")
        if len(parts) == 3 and int(parts[1], 16) & dirty.WP_FEATURES == dirty.WP_FEATURES:
            return fd
    return -1


def tracking_fd_of(ctx: DumpContext, pid: int) -> int:
    prev = ctx.prev_procs.get(pid)
    return prev.tracking_fd if prev is not None and prev.tracking_fd > 0 else -1


# ------------------------------------------------------------ injection


def create_tracking_fd(p: ProcDump) -> int:
    """userfaultfd() in the process, moved to a high fd number; returns it."""
    soft, _ = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
    # Below the process's fd limit, or the move fails.
    lowest = TRACKING_FD_MIN if soft < 0 else max(3, min(TRACKING_FD_MIN, soft - 16))

    def make(inj: Injector) -> int:
        low = inj.syscall(K.SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            return inj.syscall(K.SYS_FCNTL, low, F_DUPFD_CLOEXEC, lowest)
        finally:
            inj.syscall(K.SYS_CLOSE, low)
    try:
        return run_injected(p, make)
    except OSError as exc:
        raise LazarusError(f"cannot create a userfaultfd in PID {p.pid} for dirty tracking: "
                           f"{exc.strerror or exc}") from None


def close_tracking_fd(p: ProcDump) -> None:
    """Close the tracking fd in the (frozen) process: tracking ends."""
    fd = p.tracking_fd
    run_injected(p, lambda inj: inj.syscall(K.SYS_CLOSE, fd, check=False))
    p.tracking_fd = -1


def take_fd(pid: int, fd: int) -> int:
    pidfd = pidfd_open(pid)
    try:
        return syscall(K.SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)


# ------------------------------------------------------------ the track stage


def track_process(ctx: DumpContext, p: ProcDump) -> None:
    pid = p.pid
    fd = tracking_fd_of(ctx, pid)
    if fd > 0:
        try:
            link = os.readlink(procfs.proc(pid, "fd", str(fd)))
        except OSError:
            link = ""
        if link != UFFD_LINK:
            raise LazarusError(f"PID {pid} no longer holds the dirty-tracking userfaultfd "
                               f"(fd {fd}) of --prev: make a full dump instead")
        p.tracking_fd = fd
    elif ctx.opts.predump:
        old = find_tracking_fd(pid)
        if old >= 0:
            # A pre-dump without --prev starts over: the tracking of an
            # earlier chain would else mark pages inherited from no parent.
            p.tracking_fd = old
            close_tracking_fd(p)
            ctx.warnings.append(f"PID {pid}: ended the dirty tracking of an earlier pre-dump "
                                "(continue a chain with --prev DIR); this one starts over")
        p.tracking_fd = create_tracking_fd(p)
        p.tracking_created = True
    else:
        return    # a process new since the parent image: dumped whole
    try:
        p.uffd = take_fd(pid, p.tracking_fd)
        if p.tracking_created:
            dirty.enable(p.uffd)
    except OSError as exc:
        raise LazarusError(f"dirty tracking in PID {pid}: {exc.strerror or exc}") from None
    pagemap = dirty.open_pagemap(pid)
    try:
        for vma in p.proc.vmas:
            if vma.kind not in TRACKED_KINDS:
                continue
            try:
                # The final dump only reads: if it fails, tracking goes on
                # intact and a retry sees every write since the parent.
                p.written[vma.start] = dirty.written_ranges(pagemap, vma.start, vma.end,
                                                            rearm=ctx.opts.predump)
                p.tracking_consumed = ctx.opts.predump
                continue
            except dirty.NotTracked:
                p.written[vma.start] = None     # new (or re-made) since the last round
            if not ctx.opts.predump:
                continue
            try:
                dirty.track(p.uffd, vma.start, vma.end)
            except OSError as exc:
                # Copied whole every round instead.
                log.info("PID %d: VMA %#x-%#x not tracked: %s", pid, vma.start, vma.end,
                         exc.strerror)
    finally:
        os.close(pagemap)


def track_sync(ctx: DumpContext) -> None:
    for p in ctx.procs.values():
        if not p.proc.zombie:
            track_process(ctx, p)


def untrack_sync(ctx: DumpContext) -> None:
    """Undo of a failed pre-dump: no userfaultfd of ours stays in a process
    that did not have one, and tracking whose writes this round consumed
    (re-armed) without storing them ends, so that a later --prev of the
    parent image is refused instead of missing those writes."""
    for p in ctx.procs.values():
        if p.uffd >= 0:
            os.close(p.uffd)
            p.uffd = -1
        if not (p.tracking_created or p.tracking_consumed) or p.tracking_fd < 0:
            continue
        try:
            if p.threads:
                close_tracking_fd(p)
            else:
                # Released already: hold it again just for the close.
                if freeze_process(p):
                    try:
                        close_tracking_fd(p)
                    finally:
                        thaw_process(p)
        except (OSError, LazarusError) as exc:
            log.warning("could not close the tracking userfaultfd in PID %d: %s", p.pid, exc)


def close_our_fds(ctx: DumpContext) -> None:
    for p in ctx.procs.values():
        if p.uffd >= 0:
            os.close(p.uffd)
            p.uffd = -1


async def prev_stage(ctx: DumpContext) -> None:
    load_prev(ctx)
    return None


async def track(ctx: DumpContext) -> None:
    await ctx.tracer.call(track_sync, ctx)
    return None


async def untrack(ctx: DumpContext) -> None:
    await ctx.tracer.call(untrack_sync, ctx)



def end_tracking_sync(prev: Path) -> None:
    """Close the tracking userfaultfds that the pre-dump `prev` left in its
    processes (a migration given up before its final dump)."""
    reader = ImageReader(prev)
    for proc in reader.processes():
        if proc.tracking_fd <= 0:
            continue
        try:
            if procfs.read_stat(proc.pid).start_time != proc.start_time:
                continue
            if os.readlink(procfs.proc(proc.pid, "fd", str(proc.tracking_fd))) != UFFD_LINK:
                continue
        except OSError:
            continue      # gone, or the fd is: nothing of ours is left there
        p = ProcDump(proc.pid)
        if not freeze_process(p):
            continue
        try:
            p.tracking_fd = proc.tracking_fd
            close_tracking_fd(p)
        finally:
            thaw_process(p)
