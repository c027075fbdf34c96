"""Dirty-page tracking without soft-dirty bits: userfaultfd write-protect in
ASYNC mode (the kernel resolves the write fault itself and only marks the
pte written) plus PAGEMAP_SCAN on /proc/PID/pagemap, which reports the pages
written since they were last write-protected and re-protects them in the
same call (kernel 6.7+).

Layouts from include/uapi/linux/fs.h and userfaultfd.h (x86-64)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Iterator
from ctypes import c_uint64

from core.kernel import uffd

PAGEMAP_SCAN = 0xC0606610          # _IOWR('f', 16, struct pm_scan_arg)
UFFDIO_WRITEPROTECT = 0xC018AA06   # _IOWR(0xAA, 0x06, struct uffdio_writeprotect)

PM_SCAN_WP_MATCHING = 1 << 0       # write-protect the pages reported
PM_SCAN_CHECK_WPASYNC = 1 << 1     # EPERM if a VMA of the range is not uffd-wp-async

PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5

UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
WP_FEATURES = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0

# A pte marker (write-protect of a pte never filled, or zapped) reads in
# /proc/PID/pagemap as swapped, with this swap type in the low frame bits
# (visible to root only, which lazarus is): it holds no page.
SWP_TYPE_MASK = 0x1F                # pagemap frame bits of a swap entry: type, then offset
SWP_PTE_MARKER = 0x1F               # the swap type the kernel gives pte markers

SCAN_VEC = 512                      # page_region entries per ioctl call


class PmScanArg(ctypes.Structure):
    _fields_ = [("size", c_uint64), ("flags", c_uint64), ("start", c_uint64),
                ("end", c_uint64), ("walk_end", c_uint64), ("vec", c_uint64),
                ("vec_len", c_uint64), ("max_pages", c_uint64),
                ("category_inverted", c_uint64), ("category_mask", c_uint64),
                ("category_anyof_mask", c_uint64), ("return_mask", c_uint64)]


class PageRegion(ctypes.Structure):
    _fields_ = [("start", c_uint64), ("end", c_uint64), ("categories", c_uint64)]


class UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("range", uffd.UffdioRange), ("mode", c_uint64)]


assert ctypes.sizeof(PmScanArg) == 96 and ctypes.sizeof(PageRegion) == 24
assert ctypes.sizeof(UffdioWriteprotect) == 24


class NotTracked(Exception):
    """The range holds a VMA that is not registered for async write-protect
    (new since the last round, or re-created): every page of it is fresh."""


def scan(pagemap_fd: int, start: int, end: int, category_mask: int, *,
         write_protect: bool = False, check_wpasync: bool = False,
         anyof_mask: int = 0) -> Iterator[tuple[int, int]]:
    """(start, end) ranges of [start, end) whose pages have every bit of
    category_mask (and one of anyof_mask if given); with write_protect they
    are write-protected again in the same walk."""
    vec = (PageRegion * SCAN_VEC)()
    flags = (PM_SCAN_WP_MATCHING if write_protect else 0) | \
        (PM_SCAN_CHECK_WPASYNC if check_wpasync else 0)
    pos = start
    while pos < end:
        arg = PmScanArg(size=ctypes.sizeof(PmScanArg), flags=flags, start=pos, end=end,
                        vec=ctypes.addressof(vec), vec_len=SCAN_VEC,
                        category_mask=category_mask, category_anyof_mask=anyof_mask,
                        return_mask=category_mask | anyof_mask)
        try:
            n = fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)
        except OSError as exc:
            if exc.errno == errno.EPERM and check_wpasync:
                raise NotTracked(f"{pos:#x}-{end:#x}") from None
            raise
        for i in range(n):
            yield int(vec[i].start), int(vec[i].end)
        if arg.walk_end <= pos:     # no progress: the kernel says it is done
            break
        pos = int(arg.walk_end)


def written_ranges(pagemap_fd: int, start: int, end: int,
                   rearm: bool = True) -> list[tuple[int, int]]:
    """Ranges written since the last round; with rearm they are write-protected
    again at once (the 'get and clear' of dirty tracking). NotTracked for a
    VMA that is not registered."""
    return list(scan(pagemap_fd, start, end, PAGE_IS_WRITTEN, write_protect=rearm,
                     check_wpasync=True))


def zero_page_ranges(pagemap_fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Ranges mapping the shared zero page: read, never written, all zeros."""
    return list(scan(pagemap_fd, start, end, PAGE_IS_PFNZERO))


def enable(uffd_fd: int) -> None:
    """UFFDIO_API with async write-protect; OSError if the kernel lacks it."""
    granted = uffd.api(uffd_fd, WP_FEATURES)
    if granted & WP_FEATURES != WP_FEATURES:
        raise OSError(errno.ENOTSUP, "userfaultfd write-protect async is not supported")


def track(uffd_fd: int, start: int, end: int) -> None:
    """Register [start, end) for async write-protect and protect every page
    of it (unpopulated ones too), so the next write marks it written."""
    arg = uffd.UffdioRegister(uffd.UffdioRange(start, end - start), UFFDIO_REGISTER_MODE_WP, 0)
    fcntl.ioctl(uffd_fd, uffd.UFFDIO_REGISTER, arg)
    wp = UffdioWriteprotect(uffd.UffdioRange(start, end - start), UFFDIO_WRITEPROTECT_MODE_WP)
    fcntl.ioctl(uffd_fd, UFFDIO_WRITEPROTECT, wp)


def open_pagemap(pid: int) -> int:
    return os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)


def probe() -> None:
    """Arm tracking on one page of our own, write it, and see the scan report
    it: OSError/RuntimeError if this kernel cannot track dirty pages."""
    import mmap

    from core.kernel import constants as K
    from core.kernel.libc import syscall

    page = mmap.mmap(-1, mmap.PAGESIZE)
    buf = (ctypes.c_char * mmap.PAGESIZE).from_buffer(page)
    addr = ctypes.addressof(buf)
    fd = syscall(K.SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    pagemap = open_pagemap(os.getpid())
    try:
        enable(fd)
        track(fd, addr, addr + mmap.PAGESIZE)
        if written_ranges(pagemap, addr, addr + mmap.PAGESIZE):
            raise RuntimeError("PAGEMAP_SCAN reports an untouched page as written")
        page[0] = 1
        if written_ranges(pagemap, addr, addr + mmap.PAGESIZE) != [(addr, addr + mmap.PAGESIZE)]:
            raise RuntimeError("PAGEMAP_SCAN does not see a write")
    finally:
        os.close(pagemap)
        os.close(fd)
        del buf
        page.close()
