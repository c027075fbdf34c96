"""The lazy-pages daemon: serves the restored process's page faults from a
PageSource through userfaultfd, pushes every other page in the background,
follows the process's REMOVE/UNMAP/REMAP events, and ends when every page
the image holds is in (or the process is gone).

Everything runs on the event loop thread: uffd ioctls take ctypes structs
that must not be shared between threads, and faults must be served while
the restorer's tracer thread is still injecting syscalls (the kernel touches
the rseq area during restore).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from core import procfs
from core.images.workingset import PageBuffer
from core.kernel import uffd
from lazy.regions import PAGE, Region, RegionMap
from lazy.source import LazySourceLost, PageSource

log = logging.getLogger("lazarus.lazy")

DEFAULT_FAULT_AROUND = 64     # pages fetched per fault
PUSH_CHUNK_MIN = 16           # pages per request when pushing leftovers; doubles up to MAX
PUSH_CHUNK_MAX = 1024
EAGAIN_RETRIES = 1000
RETRY_SECONDS = 5.0           # ... and for at least this long before giving up
# Read-ahead for sequential faults, as the kernel does for files: the window
# doubles on every fault that continues the stream, up to read_ahead pages
# (default below). It is requested in chunks aligned to RA_CHUNK_PAGES in the
# region (whole image blocks, usually: no partial reads), at most
# RA_DEPTH in flight: a fault waits for its own chunk only, and a deeper queue
# only makes the page server buffer (fresh memory, slower) what it cannot send.
DEFAULT_READ_AHEAD = 4096     # 16 MiB
RA_CHUNK_PAGES = 128          # 512 KiB per request
RA_DEPTH = 8                  # 4 MiB in flight


class LazyError(Exception):
    """The daemon could not deliver pages; the restored process was killed."""


@dataclass
class LazyStats:
    started: float = field(default_factory=time.monotonic)
    resumed_at: float | None = None
    finished_at: float | None = None
    faults: int = 0
    pages_faulted: int = 0
    pages_pushed: int = 0
    pages_readahead: int = 0        # copied ahead of sequential faults
    zero_pages: int = 0
    events: int = 0
    pages_prefetched: int = 0       # the recorded working set, copied before the release
    prefetch_seconds: float = 0.0

    fault_latencies: list[float] = field(default_factory=list)
    process_gone: bool = False      # ended before every page was in

    def latency(self, q: float) -> float | None:
        """Quantile q of fault service time (seconds), None without faults."""
        if not self.fault_latencies:
            return None
        ordered = sorted(self.fault_latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @classmethod
    def merge(cls, many: list[LazyStats]) -> LazyStats:
        """Several processes' daemons as one: sums, and the last page of all."""
        out = cls()
        if not many:
            return out
        out.started = min(s.started for s in many)
        resumed = [s.resumed_at for s in many if s.resumed_at is not None]
        finished = [s.finished_at for s in many if s.finished_at is not None]
        out.resumed_at = min(resumed) if resumed else None
        out.finished_at = max(finished) if finished else None
        for s in many:
            out.faults += s.faults
            out.pages_faulted += s.pages_faulted
            out.pages_pushed += s.pages_pushed
            out.pages_readahead += s.pages_readahead
            out.zero_pages += s.zero_pages
            out.events += s.events
            out.pages_prefetched += s.pages_prefetched
            out.prefetch_seconds = max(out.prefetch_seconds, s.prefetch_seconds)
            out.fault_latencies += s.fault_latencies
        out.process_gone = all(s.process_gone for s in many)
        return out

    @property
    def time_to_last_page(self) -> float | None:
        if self.finished_at is None or self.resumed_at is None:
            return None
        return self.finished_at - self.resumed_at

    def as_dict(self) -> dict[str, object]:
        last = self.time_to_last_page
        return {"faults": self.faults, "pages_faulted": self.pages_faulted,
                "pages_pushed": self.pages_pushed, "pages_readahead": self.pages_readahead,
                "zero_pages": self.zero_pages,
                "events": self.events, "pages_prefetched": self.pages_prefetched,
                "prefetch_seconds": self.prefetch_seconds, "time_to_last_page": last,
                "fault_latency_p50": self.latency(0.5), "fault_latency_p99": self.latency(0.99)}


def _addr(data: PageBuffer) -> int:
    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    # A copy-on-write file mapping (a working set's pages): writable, so ctypes
    # can take its address; the kernel reads the pages straight from the cache.
    return ctypes.addressof(ctypes.c_char.from_buffer(data))


def _buf_addr(data: bytes | memoryview) -> int:
    """Address of bytes, or of a writable buffer (a view of a receive buffer)."""
    if isinstance(data, bytes):
        return _addr(data)
    return ctypes.addressof(ctypes.c_char.from_buffer(data))


@dataclass(eq=False)
class _Chunk:
    """A read-ahead request in flight: process addresses [start, end) as they
    were when it was issued; `done` resolves once its pages are copied (or it
    failed: a fault waiting on it then checks its page and fetches it itself)."""
    start: int
    end: int
    done: asyncio.Future[None]


@dataclass(eq=False)
class _Stream:
    """Read-ahead state of one region (as the kernel keeps one per open file,
    so that faults elsewhere, e.g. an interpreter's heap, do not break a scan):
    the page of its last fault, the end of what it has requested and where it
    wants its requests to reach (process addresses), its window in pages, and
    its requests in flight. Only a guess of what comes next: every copy still
    goes by the pending bits, whatever the stream says."""
    region: Region
    window: int
    last: int = -1
    end: int = -1
    target: int = -1
    chunks: list[_Chunk] = field(default_factory=list)

    def chunk_at(self, page: int) -> _Chunk | None:
        for chunk in self.chunks:
            if chunk.start <= page < chunk.end:
                return chunk
        return None


class LazyDaemon:
    def __init__(self, uffd_fd: int, pid: int, regions: RegionMap, fault_source: PageSource,
                 push_source: PageSource | None = None,
                 fault_around: int = DEFAULT_FAULT_AROUND, push_delay: float = 0.0,
                 stall_timeout: float = 30.0,
                 on_fork: Callable[[LazyDaemon], None] | None = None,
                 read_ahead: int = DEFAULT_READ_AHEAD) -> None:
        self.fd = uffd_fd
        self.pid = pid
        self.regions = regions
        self.fault_source = fault_source
        self.push_source = push_source or fault_source
        self.fault_around = max(1, fault_around)
        self.push_delay = push_delay
        self.stall_timeout = stall_timeout
        self.stats = LazyStats()
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gone = False
        self._closed = False
        # A child forked while pages are still lazy gets a daemon of its own;
        # whoever runs the daemons is told through on_fork.
        self.on_fork = on_fork
        self._known_children: set[int] = set()
        # --record-working-set: (image vaddr, nr_pages) of each fault that
        # brought pages in, in order, until record_window s after the resume.
        self.recording: list[tuple[int, int]] | None = None
        self.record_window = 0.0
        # Read-ahead (0: off): one stream per region, by id(region).
        self.read_ahead = max(0, read_ahead)
        self._streams: dict[int, _Stream] = {}

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start reading the uffd; call before REGISTER can see a fault."""
        self._known_children = set(procfs.children(self.pid)) if self.pid else set()
        self._loop.add_reader(self.fd, self._on_readable)

    def start_push(self) -> None:
        """The process runs: push every remaining page in the background."""
        self.stats.resumed_at = time.monotonic()
        self._spawn(self._push_all())

    async def wait(self) -> LazyStats:
        """Until every page is in or the process is gone; raises LazyError on failure."""
        try:
            await self._done
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.fd)
        for task in list(self._tasks):
            task.cancel()
        os.close(self.fd)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._done.done():
            return
        if not self._gone:
            # Never let the process read a missing page as zeros: end it.
            try:
                if self.pid:
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            what = str(exc) if isinstance(exc, LazySourceLost) else \
                f"lazy pages from {self.fault_source.name} failed ({exc})"
            msg = f"{what}: killed restored process {self.pid}"
            self._done.set_exception(LazyError(msg))
        else:
            self._done.set_result(None)

    def _finish(self) -> None:
        if not self._done.done():
            self.stats.finished_at = time.monotonic()
            self._done.set_result(None)

    def process_gone(self) -> None:
        """The process ended first: done, but no 'last page' time to report."""
        self._gone = True
        self.stats.process_gone = True
        if not self._done.done():
            self._done.set_result(None)

    # -- events ------------------------------------------------------------

    def _on_readable(self) -> None:
        for msg in uffd.read_messages(self.fd):
            if msg.event == uffd.UFFD_EVENT_PAGEFAULT:
                self.stats.faults += 1
                self._spawn(self._serve_fault(msg.b & ~(PAGE - 1), time.perf_counter()))
            elif msg.event in (uffd.UFFD_EVENT_REMOVE, uffd.UFFD_EVENT_UNMAP):
                self.stats.events += 1
                self.regions.drop_range(msg.a, msg.b)
                # A stream whose memory changed under it starts afresh.
                for key, st in list(self._streams.items()):
                    if msg.a < max(st.end, st.target) and msg.b > st.last:
                        del self._streams[key]
            elif msg.event == uffd.UFFD_EVENT_REMAP:
                self.stats.events += 1
                self.regions.remap(msg.a, msg.b, msg.c)
                self._streams.clear()  # addresses moved: start the guesses afresh
            elif msg.event == uffd.UFFD_EVENT_FORK:
                self.stats.events += 1
                self._on_fork(msg.a & 0xFFFFFFFF)
            else:
                log.warning("unexpected userfaultfd event %#x", msg.event)
        self._check_complete()

    def _on_fork(self, child_fd: int) -> None:
        """The child's memory is the parent's as it is now: the same pages are
        still owed to it, through the uffd the kernel made for it."""
        child_pid = 0
        try:
            now = set(procfs.children(self.pid))
            new = sorted(now - self._known_children)
            self._known_children = now
            child_pid = new[0] if new else 0
        except OSError:
            pass
        child = LazyDaemon(child_fd, child_pid, self.regions.copy(), self.fault_source,
                           self.push_source, self.fault_around, 0.0, self.stall_timeout,
                           self.on_fork, self.read_ahead)
        child.start()
        child.start_push()
        if self.on_fork is not None:
            self.on_fork(child)

    def _check_complete(self) -> None:
        if self.regions.pending_pages == 0 and self.stats.resumed_at is not None:
            self._finish()

    # -- filling -----------------------------------------------------------

    def _copy_run(self, region: Region, index: int, base: int,
                  count: int) -> tuple[int, bool]:
        """Copy `count` pages from address `base` to page `index` of region.
        Returns (pages now in, retry) where retry asks to try again later (EAGAIN)."""
        dst = region.start + index * PAGE
        done = 0
        single = False     # page by page, after a run met a mapping's end (ENOENT)
        while done < count:
            length = PAGE if single else (count - done) * PAGE
            res = uffd.copy(self.fd, dst + done * PAGE, base + done * PAGE, length)
            if res > 0:
                n = res // PAGE
                self.regions.mark_done(region, index + done, n)
                done += n
            elif res == -errno.EEXIST:
                # Already present (a racing copy, or a page the process wrote): skip it.
                self.regions.mark_done(region, index + done, 1)
                done += 1
            elif res == -errno.EAGAIN:
                return done, True
            elif res == -errno.ENOENT and self.pid and procfs.is_alive(self.pid):
                # The process lives but no registered mapping holds the whole
                # range: a run across the end of one (split by the process),
                # or a page whose unmap (or move) event is not read yet (seen
                # under load, with read-ahead in flight). Page by page; a page
                # that still has none waits, as for EAGAIN, for the event that
                # says where it went: never marked in without a copy.
                if not single and count - done > 1:
                    single = True
                    continue
                return done, True
            elif res in (-errno.ESRCH, -errno.ENOENT):
                self.process_gone()
                return done, False
            else:
                raise OSError(-res, f"UFFDIO_COPY at {dst:#x}: {os.strerror(-res)}")
        return done, False

    async def _fill(self, region: Region, index: int, data: PageBuffer, first: int,
                    count: int) -> int:
        """Copy the still-pending pages among data's pages [first, first+count)
        (page `first` of data belongs at page `index` of region). Returns pages copied."""
        copied = 0
        deadline = time.monotonic() + RETRY_SECONDS
        tries = 0
        while tries < EAGAIN_RETRIES or time.monotonic() < deadline:
            tries += 1
            if self._closed or self._gone or index >= len(region.pending):
                return copied
            retry = False
            start = region.start + index * PAGE
            base = _addr(data)
            for i, n in self.regions.pending_runs(region, start, count):
                off = (first + i - index) * PAGE
                got, retry = self._copy_run(region, i, base + off, n)
                copied += got
                if retry:
                    break
            if not retry:
                return copied
            # Let the pending event be read, then try again (a process that
            # has not sent it yet may need a moment: bounded in time too).
            await asyncio.sleep(0 if tries < EAGAIN_RETRIES else 0.001)
        raise LazyError(f"userfaultfd copy at {region.start + index * PAGE:#x} kept failing")

    async def _serve_fault(self, page: int, t0: float) -> None:
        region = self.regions.find(page)
        index = region.page_index(page) if region is not None else 0
        if region is None or not region.pending[index]:
            # Not owed by the image (a hole, a removed page, grown memory):
            # zeros are the right content, or the page is in already.
            res = uffd.zeropage(self.fd, page, PAGE)
            if res == -errno.EEXIST or res == -errno.EAGAIN:
                uffd.wake(self.fd, page, PAGE)
            elif res > 0:
                self.stats.zero_pages += 1
            self._record_fault(t0)
            return
        # While recording, one page per fault: pages brought around a fault
        # would be used without faulting, and the recording would miss them;
        # read-ahead would hide them the same way, so it is off too.
        recording = self.recording is not None and self._recording_open()
        if recording or not self.read_ahead:
            around = 1 if recording else self.fault_around
            await self._serve_window(region, index, page, around, recording, t0)
            return
        await self._serve_sequential(region, index, page, t0)

    async def _serve_window(self, region: Region, index: int, page: int, around: int,
                            recording: bool, t0: float) -> None:
        """The fault's own window: `around` pages from the faulting one."""
        count = min(around, len(region.pending) - index)
        src = region.src + index * PAGE
        data = await self.fault_source.get_pages(src, count)
        if region.start + index * PAGE != page or index >= len(region.pending):
            uffd.wake(self.fd, page, PAGE)   # remapped while we fetched: let it fault again
            return
        copied = await self._fill(region, index, data, 0, count)
        self.stats.pages_faulted += copied
        if copied and recording and self.recording is not None:
            self.recording.append((src, count))
        if region.pending[index]:
            uffd.wake(self.fd, page, PAGE)
        self._record_fault(t0)
        self._check_complete()

    # -- read-ahead --------------------------------------------------------

    def _stream(self, region: Region) -> _Stream:
        st = self._streams.get(id(region))
        if st is None or st.region is not region:
            st = self._streams[id(region)] = _Stream(region, self.fault_around)
        return st

    async def _serve_sequential(self, region: Region, index: int, page: int,
                                t0: float) -> None:
        """A fault with read-ahead on: a fault that continues its region's
        stream (in a chunk in flight, or at or just past the end of what was
        requested) doubles the window and requests what lies beyond, up to a
        window ahead of it; any other fault restarts the stream with the
        default window (its requests in flight go on)."""
        st = self._stream(region)
        chunk = st.chunk_at(page)
        sequential = chunk is not None or st.last < page < st.end + self.fault_around * PAGE
        if sequential:
            st.window = min(st.window * 2, max(self.read_ahead, self.fault_around))
            st.last = max(st.last, page)
        else:
            st.window, st.last, st.end, st.target = self.fault_around, page, -1, -1
        if chunk is None:
            # Nothing in flight holds the page: its own window first (sent
            # first, so it leads the queue), then the read-ahead behind it.
            count = min(self.fault_around, len(region.pending) - index)
            st.end = max(st.end, page + count * PAGE)
            if sequential:
                self._ra_issue(st, page + st.window * PAGE)
            await self._serve_window(region, index, page, count, False, t0)
            return
        self._ra_issue(st, page + st.window * PAGE)
        await chunk.done
        now = self.regions.find(page)
        if now is not None and now.pending[now.page_index(page)]:
            # The chunk did not bring it (it failed, or the page moved): as
            # any other fault, without touching the stream again.
            await self._serve_window(now, now.page_index(page), page, self.fault_around,
                                     False, t0)
            return
        uffd.wake(self.fd, page, PAGE)   # the copy woke it, unless the page was dropped
        self._record_fault(t0)

    def _ra_issue(self, st: _Stream, target: int) -> None:
        """Let the stream's requests reach `target` (not past its region)."""
        st.target = max(st.target, min(target, st.region.end))
        self._ra_pump(st)

    def _ra_pump(self, st: _Stream) -> None:
        """Request the stream's pages still owed, from its end towards its
        target, one chunk per task, while fewer than RA_DEPTH are in flight."""
        region = st.region
        while len(st.chunks) < RA_DEPTH and st.end < st.target and \
                self._streams.get(id(region)) is st and not (self._closed or self._gone):
            i = region.page_index(max(st.end, region.start))
            stop = min((i // RA_CHUNK_PAGES + 1) * RA_CHUNK_PAGES,
                       region.page_index(st.target), len(region.pending))
            if stop <= i:
                break
            st.end = region.start + stop * PAGE
            runs = self.regions.pending_runs(region, region.start + i * PAGE, stop - i)
            if not runs:
                continue
            # One request from the first to the last page still owed: what
            # is in already between them is skipped by the fill.
            lo, hi = runs[0][0], runs[-1][0] + runs[-1][1]
            chunk = _Chunk(region.start + lo * PAGE, region.start + hi * PAGE,
                           self._loop.create_future())
            st.chunks.append(chunk)
            self._spawn(self._ra_fetch(st, chunk, region.src + lo * PAGE, hi - lo))

    async def _ra_fetch(self, st: _Stream, chunk: _Chunk, src: int, count: int) -> None:
        later: list[tuple[int, bytes]] = []
        errors: list[Exception] = []

        def sink(vaddr: int, data: bytes | memoryview, offset: int, nbytes: int) -> None:
            # Straight from the source's buffer into the process, as the
            # parts arrive; what EAGAIN leaves is copied out and done below.
            # An error here is ours, not the source's: kept, raised below.
            if errors:
                return
            try:
                if not self._fill_now(vaddr, _buf_addr(data) + offset, nbytes):
                    later.append((vaddr, bytes(memoryview(data)[offset : offset + nbytes])))
            except Exception as exc:
                errors.append(exc)

        try:
            await self.fault_source.get_pages_into(src, count, sink)
            if errors:
                raise errors[0]
            for vaddr, data in later:
                self.stats.pages_readahead += await self._fill_image_block(vaddr, data)
        finally:
            if chunk in st.chunks:
                st.chunks.remove(chunk)
            if not chunk.done.done():
                chunk.done.set_result(None)
        self._check_complete()
        self._ra_pump(st)

    def start_recording(self, window: float) -> None:
        """Record the faults from now until `window` s after the resume."""
        self.recording = []
        self.record_window = window

    def _recording_open(self) -> bool:
        resumed = self.stats.resumed_at
        return resumed is None or time.monotonic() - resumed < self.record_window

    async def prefetch(self, runs: list[tuple[int, int, PageBuffer, int]], t0: float) -> int:
        """Copy image pages before the process runs: each run is (image vaddr,
        nr_pages, buffer, index of its first page in the buffer), one
        UFFDIO_COPY each. t0: when the prefetch began to hold the restore up.
        Returns pages copied."""
        copied = 0
        bases: dict[int, int] = {}
        for vaddr, n, data, first in runs:
            region = self.regions.find(vaddr)
            if region is not None and region.src == region.start and \
                    vaddr + n * PAGE <= region.end:
                # Nothing has moved yet (the process has not run): straight in,
                # one ioctl when the whole run is still owed (the usual case).
                index = region.page_index(vaddr)
                if region.pending.count(1, index, index + n) == n:
                    base = bases.get(id(data)) or bases.setdefault(id(data), _addr(data))
                    res = uffd.copy(self.fd, vaddr, base + first * PAGE, n * PAGE)
                    if res == n * PAGE:
                        self.regions.mark_done(region, index, n)
                        copied += n
                        continue
                    if res > 0:
                        self.regions.mark_done(region, index, res // PAGE)
                        copied += res // PAGE
                copied += await self._fill(region, index, data, first, n)
            else:
                copied += await self._fill_image_block(
                    vaddr, data[first * PAGE : (first + n) * PAGE])
        self.stats.pages_prefetched += copied
        self.stats.prefetch_seconds += time.monotonic() - t0
        self._check_complete()
        return copied

    def _record_fault(self, t0: float) -> None:
        self.stats.fault_latencies.append(time.perf_counter() - t0)

    async def _push_all(self) -> None:
        if self.push_delay:
            await asyncio.sleep(self.push_delay)
        stream = aiter(self.push_source.stream())
        try:
            while True:
                # A stalled stream must not hold the daemon forever.
                async with asyncio.timeout(self.stall_timeout):
                    item = await anext(stream, None)
                if item is None or self._closed or self._gone:
                    break
                await self._push_block(*item)
                self._check_complete()
                await asyncio.sleep(0)   # faults first
        except Exception as exc:  # the stream is an optimisation: page requests still work
            log.warning("bulk page stream from %s broke (%s): going on page by page",
                        self.push_source.name, exc)
        # Leftovers: pages skipped by EAGAIN, or moved by mremap while streaming.
        chunk = PUSH_CHUNK_MIN
        while self.regions.pending_pages and not (self._closed or self._gone):
            for region in self.regions:
                for i, n in self.regions.pending_runs(region, region.start, len(region.pending)):
                    n = min(n, chunk)
                    data = await self.fault_source.get_pages(region.src + i * PAGE, n)
                    self.stats.pages_pushed += await self._fill(region, i, data, 0, n)
                    chunk = min(chunk * 2, PUSH_CHUNK_MAX)
                    break
            self._check_complete()
            await asyncio.sleep(0)
        self._check_complete()

    async def _push_block(self, vaddr: int, data: bytes) -> None:
        self.stats.pages_pushed += await self._fill_image_block(vaddr, data)

    def _fill_now(self, vaddr: int, base: int, nbytes: int) -> bool:
        """Copy the owed pages of image range [vaddr, vaddr + nbytes), held at
        address `base`, wherever they live now (by image address, as
        _fill_image_block; counted as read ahead). False if EAGAIN left some
        for later (the layout is changing: the event must be read first)."""
        if self._closed or self._gone:
            return True
        end = vaddr + nbytes
        region = self.regions.find(vaddr)
        if region is not None and region.src == region.start and end <= region.end:
            # Where the image put it (nothing moved): no walk over every region.
            regions: Iterable[Region] = (region,)
        else:
            regions = self.regions
        for region in regions:
            src_end = region.src + len(region.pending) * PAGE
            lo, hi = max(vaddr, region.src), min(end, src_end)
            if lo >= hi:
                continue
            index = (lo - region.src) // PAGE
            for i, n in self.regions.pending_runs(region, region.start + index * PAGE,
                                                  (hi - lo) // PAGE):
                got, retry = self._copy_run(region, i,
                                            base + (region.src + i * PAGE - vaddr), n)
                self.stats.pages_readahead += got
                if retry:
                    return False
        return True

    async def _fill_image_block(self, vaddr: int, data: bytes) -> int:
        """A block in image addresses: copy the parts of it still owed, wherever
        they live now. Returns pages copied."""
        npages = len(data) // PAGE
        end = vaddr + npages * PAGE
        copied = 0
        for region in self.regions:
            src_end = region.src + len(region.pending) * PAGE
            lo, hi = max(vaddr, region.src), min(end, src_end)
            if lo >= hi:
                continue
            index = (lo - region.src) // PAGE
            first = (lo - vaddr) // PAGE
            copied += await self._fill(region, index, data, first, (hi - lo) // PAGE)
        return copied
