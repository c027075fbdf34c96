"""Where lazy pages come from: the local image, or a page server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from core.images import ImageReader, pb
from core.images.store import PageReader
from pageserver.client import PageClient, PageServerError, PageSink, RemoteError

T = TypeVar("T")

log = logging.getLogger("lazarus.lazy")

FIRST_RETRY_DELAY = 0.05


class PageSource(Protocol):
    name: str
    bytes_fetched: int     # page bytes delivered to the daemon

    @property
    def wire_bytes(self) -> int:
        """Bytes received over the network (0 for a local image)."""
        ...

    async def get_pages(self, vaddr: int, nr_pages: int) -> bytes:
        """Image pages [vaddr, vaddr + nr_pages pages), zeros for holes."""
        ...

    async def get_pages_into(self, vaddr: int, nr_pages: int, sink: PageSink) -> None:
        """The same pages handed to sink part by part as they come, without
        being gathered (PageSink: valid only during the call; holes may be
        left out)."""
        ...

    def stream(self) -> AsyncIterator[tuple[int, bytes]]:
        """Every stored block, in the order the source finds cheapest."""
        ...

    async def close(self) -> None:
        ...


class LocalPageSource:
    """Pages read from the local image directory (no TCP)."""

    name = "local image"

    def __init__(self, reader: ImageReader, proc: pb.ProcessImage) -> None:
        self._pages: PageReader = reader.page_reader(proc)
        self.bytes_fetched = 0

    @property
    def wire_bytes(self) -> int:
        return 0

    async def get_pages(self, vaddr: int, nr_pages: int) -> bytes:
        data = self._pages.read_range(vaddr, nr_pages)
        self.bytes_fetched += len(data)
        return data

    async def get_pages_into(self, vaddr: int, nr_pages: int, sink: PageSink) -> None:
        into = getattr(self._pages, "read_range_into", None)
        if into is None:    # a chain: gathered
            data = self._pages.read_range(vaddr, nr_pages)
            self.bytes_fetched += len(data)
            sink(vaddr, data, 0, len(data))
            return
        self.bytes_fetched += into(vaddr, nr_pages, sink)

    async def stream(self) -> AsyncIterator[tuple[int, bytes]]:
        for vaddr, data in self._pages.iter_blocks():
            self.bytes_fetched += len(data)
            yield vaddr, data

    async def close(self) -> None:
        self._pages.close()


class RemotePageSource:
    """Pages from a page server. A lost connection is re-made, and requests
    retried, for up to `lazy_timeout` seconds; past that the loss is final."""

    def __init__(self, host: str, port: int, image: str, pid: int, *,
                 token: str | None = None, tls_ca: str | None = None,
                 lazy_timeout: float = 30.0, client: PageClient | None = None,
                 restore_id: str = "") -> None:
        self.host, self.port, self.image, self.pid = host, port, image, pid
        self.token, self.tls_ca = token, tls_ca
        self.lazy_timeout = lazy_timeout
        self.restore_id = restore_id
        self.name = f"page server {f'[{host}]' if ':' in host else host}:{port}"
        self.bytes_fetched = 0
        self._client = client
        self._lock = asyncio.Lock()
        self._wire_done = 0     # bytes received on connections already closed

    @property
    def wire_bytes(self) -> int:
        return self._wire_done + (self._client.bytes_received if self._client else 0)

    async def _get_client(self) -> PageClient:
        async with self._lock:
            if self._client is None:
                self._client = await PageClient.connect(
                    self.host, self.port, token=self.token, tls_ca=self.tls_ca,
                    timeout=min(10.0, self.lazy_timeout), restore=self.restore_id)
            return self._client

    async def _drop(self, client: PageClient) -> None:
        async with self._lock:
            if self._client is client:
                self._client = None
                self._wire_done += client.bytes_received
        try:
            await client.close()
        except (PageServerError, OSError):
            pass

    async def _with_retries(self, call: Callable[[PageClient], Awaitable[T]]) -> T:
        """``call`` on a connection, reconnecting on loss for up to
        lazy_timeout (a part handed out before a loss comes again: the daemon
        copies only pages still owed, so that is harmless)."""
        deadline: float | None = None
        delay = FIRST_RETRY_DELAY
        while True:
            client: PageClient | None = None
            try:
                client = await self._get_client()
                async with asyncio.timeout(self.lazy_timeout):
                    return await call(client)
            except RemoteError:
                raise   # the server answered: retrying will not change its mind
            except (PageServerError, OSError, TimeoutError) as exc:
                if client is not None:
                    await self._drop(client)
                now = time.monotonic()
                deadline = deadline or now + self.lazy_timeout
                if now >= deadline:
                    raise LazySourceLost(
                        f"lost {self.name} for {self.lazy_timeout:g} s ({exc})") from None
                if delay == FIRST_RETRY_DELAY:
                    log.warning("%s: %s; retrying for up to %g s", self.name, exc,
                                self.lazy_timeout)
                await asyncio.sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, 1.0)

    async def get_pages(self, vaddr: int, nr_pages: int) -> bytes:
        data = await self._with_retries(
            lambda c: c.get_pages(self.image, self.pid, vaddr, nr_pages))
        self.bytes_fetched += len(data)
        return data

    async def get_pages_into(self, vaddr: int, nr_pages: int, sink: PageSink) -> None:
        await self._with_retries(
            lambda c: c.get_pages_into(self.image, self.pid, vaddr, nr_pages, sink))
        self.bytes_fetched += nr_pages * 4096

    async def stream(self) -> AsyncIterator[tuple[int, bytes]]:
        client = await self._get_client()
        async for vaddr, data in client.stream_pages(self.image, self.pid):
            self.bytes_fetched += len(data)
            yield vaddr, data

    async def close(self) -> None:
        if self._client is not None:
            await self._drop(self._client)


class LazySourceLost(Exception):
    """The page source stayed unreachable past the lazy timeout."""
