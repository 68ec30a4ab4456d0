"""Compressed input decompressed as a stream of bounded blocks, under a cap on its decompressed size.

A 1.5 MB gzip file can hold 1.5 GB; a zstd file far more. Every decompressor here is asked for at
most :data:`OUT_BYTES` at a time (zlib, bz2 and lzma take a ``max_length``). zstandard's has none,
so it is fed :data:`ZSTD_IN_BYTES` of compressed input at a time: a zstd block of at most 128 KiB
takes at least 4 bytes, so one call yields at most ~32 MiB.

The cap bounds the time a file may cost (memory is bounded by streaming and the line cap): the
least of ``--max-decompressed-bytes`` and :data:`MAX_RATIO` times the file's compressed size,
the ratio applying only past :data:`RATIO_FLOOR` (a small file is cheap to read whatever its
ratio). Real JSONL compresses 5-50:1, repetitive logs up to a few hundred; deflate cannot pass
~1032:1, so the ratio stops zstd, xz and bz2 bombs, and the byte cap any stream.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import zstandard

from batchnlp.errors import InputError

OUT_BYTES = 1 << 20
IN_BYTES = 1 << 16
ZSTD_IN_BYTES = 1 << 10
MAX_RATIO = 1000
RATIO_FLOOR = 4 << 30
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 << 30


class DecompressionCapPassed(Exception):
    """The stream decompressed past its cap; the message says which cap and how to raise it."""


def decompression_cap(compressed_size: int, max_bytes: int) -> int:
    """Most bytes a file of ``compressed_size`` may decompress to."""
    return min(max_bytes, max(RATIO_FLOOR, MAX_RATIO * compressed_size))


class _Wrapped:
    """A decompressor of one member or frame with bz2's and lzma's interface: ``eof``, ``unused_data``,
    ``needs_input`` and ``decompress(data, max_length)``."""

    def __init__(self, decompressor: Any) -> None:
        self._d = decompressor

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


class _Zlib(_Wrapped):
    """zlib's, for gzip: input it could not take yet waits in its ``unconsumed_tail``."""

    def __init__(self) -> None:
        super().__init__(zlib.decompressobj(wbits=31))

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._d.decompress(self._d.unconsumed_tail + data, max_length)


class _Zstd(_Wrapped):
    """zstandard's, which takes no ``max_length``: bounded by the little input it is fed at once."""

    needs_input = True

    def __init__(self) -> None:
        super().__init__(zstandard.ZstdDecompressor().decompressobj())

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._d.decompress(data)


DECODERS: dict[str, tuple[Callable[[], Any], int]] = {
    ".gz": (_Zlib, IN_BYTES),
    ".zst": (_Zstd, ZSTD_IN_BYTES),
    ".bz2": (bz2.BZ2Decompressor, IN_BYTES),
    ".xz": (lzma.LZMADecompressor, IN_BYTES),
}
ERRORS = (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


class Decompressed:
    """The decompressed blocks of a compressed file object (iterate once), with the bytes read so far.

    A truncated or corrupt stream is an :class:`InputError` naming ``where``; passing ``cap`` raises
    :class:`DecompressionCapPassed` once, the blocks within it having been handed over.
    """

    def __init__(self, handle: Any, suffix: str, cap: int, where: str) -> None:
        self.handle, self.cap, self.where = handle, cap, where
        self.make, self.read_size = DECODERS[suffix]
        self.compressed = 0
        self.decompressed = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for block in self._blocks():
                self.decompressed += len(block)
                if self.decompressed > self.cap:
                    raise DecompressionCapPassed(
                        f"{self.where} decompresses to more than {self.cap:,} bytes (its compressed size times "
                        f"{MAX_RATIO}, at least {RATIO_FLOOR:,}, or --max-decompressed-bytes if less): refused "
                        "as a likely decompression bomb, the rest of the file unread (raise "
                        "--max-decompressed-bytes if it is genuine)"
                    )
                yield block
        except ERRORS as e:
            raise InputError(f"{self.where} is not a readable compressed file (truncated or corrupt?): {e}") from e

    def _blocks(self) -> Iterator[bytes]:
        """Members (gzip), frames (zstd) or streams (bz2, xz) one after another, as their tools read them."""
        decoder = self.make()
        while data := self.handle.read(self.read_size):
            self.compressed += len(data)
            while True:
                if decoder.eof:  # the next member starts here, if anything follows
                    data = decoder.unused_data + data
                    if not data:
                        break
                    decoder = self.make()
                if not data and decoder.needs_input:
                    break
                if block := decoder.decompress(data, OUT_BYTES):
                    yield block
                data = b""
        if not decoder.eof:
            raise EOFError("the compressed stream ends inside a member")
