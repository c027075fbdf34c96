"""Where lazy pages come from: the local image, or a page server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from core.images import ImageReader, PageStoreReader, pb


class PageSource(Protocol):
    name: str
    bytes_fetched: int

    async def get_pages(self, vaddr: int, nr_pages: int) -> bytes:
        """Image pages [vaddr, vaddr + nr_pages pages), zeros for holes."""
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
        self._pages: PageStoreReader = reader.page_reader(proc)
        self.bytes_fetched = 0

    async def get_pages(self, vaddr: int, nr_pages: int) -> bytes:
        data = self._pages.read_range(vaddr, nr_pages)
        self.bytes_fetched += len(data)
        return data

    async def stream(self) -> AsyncIterator[tuple[int, bytes]]:
        for vaddr, data in self._pages.iter_blocks():
            self.bytes_fetched += len(data)
            yield vaddr, data

    async def close(self) -> None:
        self._pages.close()
