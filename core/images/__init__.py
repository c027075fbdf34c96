"""On-disk image format: inventory, per-process images and pages files."""

from . import lazarus_pb2 as pb
from .pagestore import (
    FORMAT_VERSION,
    PAGE_SIZE,
    ImageError,
    PageStoreAppender,
    PageStoreReader,
    PageStoreWriter,
)
from .store import ImageReader, ImageWriter, describe_image, format_description

__all__ = [
    "FORMAT_VERSION",
    "PAGE_SIZE",
    "ImageError",
    "ImageReader",
    "ImageWriter",
    "PageStoreAppender",
    "PageStoreReader",
    "PageStoreWriter",
    "describe_image",
    "format_description",
    "pb",
]
