"""Lines of a byte stream, none held longer than a cap: a hostile file (one 1 GB line, a gzip bomb
whose second line decompresses to gigabytes) costs a bounded amount of memory and never a crash.

``readline`` and ``split`` hold a whole line however long it is; :func:`bounded_lines` keeps at
most ``limit`` bytes of a line, then only counts the rest of it, and hands it over as an
:class:`Unreadable` (its length and first :data:`KEPT_BYTES`, what a quarantine keeps of it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

BLOCK_BYTES = 1 << 20  # read at a time from a plain file
KEPT_BYTES = 4096  # of a line past the cap (or the cap, if less): what the quarantine keeps, with its length


@dataclass(frozen=True)
class Unreadable:
    """A stretch of input set aside without being held whole: a line past ``--max-line-bytes``, or
    the rest of a file past its decompression cap. It is a bad line like any other."""

    reason: str
    kept: bytes  # a bounded prefix, in place of the line's bytes
    size: int  # bytes of the stream it spans, its newline included


Line = bytes | Unreadable  # a line with its newline (the last one may have none), or one set aside


def size_of(line: Line) -> int:
    """Bytes of the stream ``line`` spans."""
    return line.size if isinstance(line, Unreadable) else len(line)


def blocks_of(handle: Any, most: int | None = None) -> Iterator[bytes]:
    """A file object's bytes from where it stands, a block at a time, ``most`` of them if given."""
    left = most
    while block := handle.read(BLOCK_BYTES if left is None else min(BLOCK_BYTES, left)):
        yield block
        if left is not None:
            left -= len(block)


def bounded_lines(blocks: Iterable[bytes], limit: int) -> Iterator[Line]:
    """Every line of ``blocks``, each one longer than ``limit`` bytes (its newline aside) as an
    :class:`Unreadable`: at most ``limit`` bytes of a line are ever held, plus one block."""
    keep = min(KEPT_BYTES, limit)
    held: list[bytes] = []  # the current line's pieces, while it is within the limit
    length = 0  # bytes of the current line so far, newline aside
    kept: bytes | None = None  # once past the limit: its first KEPT_BYTES, the rest only counted
    for block in blocks:
        *ends, rest = block.split(b"\n")
        for piece in ends:
            length += len(piece)
            if kept is None and length <= limit:
                yield b"".join((*held, piece, b"\n"))
            else:
                yield overlong(kept if kept is not None else b"".join((*held, piece))[:keep], length, 1, limit)
            held, length, kept = [], 0, None
        length += len(rest)
        if kept is None and length > limit:
            kept, held = b"".join((*held, rest))[:keep], []
        elif kept is None and rest:
            held.append(rest)
    if kept is not None:
        yield overlong(kept, length, 0, limit)
    elif held:
        yield b"".join(held)


def overlong(kept: bytes, length: int, newline: int, limit: int) -> Unreadable:
    """A line of ``length`` bytes (``newline`` after it) past the ``limit``."""
    return Unreadable(
        f"the line is {length:,} bytes, more than --max-line-bytes ({limit:,}): set aside unread, "
        f"its first {len(kept):,} bytes kept (raise --max-line-bytes if such lines are genuine)",
        kept,
        length + newline,
    )


def end_of_line(handle: Any) -> int:
    """The offset just past the next newline from where ``handle`` stands (its end if none),
    scanning in blocks: a line of any length costs one block of memory."""
    position = handle.tell()
    for block in blocks_of(handle):
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)
    return position
