"""Where INPUT and OUTPUT really are, so that a run never writes over what it reads.

A run writes its parts and control files into OUTPUT and clears its own earlier ones there
(:mod:`batchnlp.ledger.ownership`): an OUTPUT that is INPUT, or lies inside it, or holds it, would mix
labels into the data or data into the labels. The two are compared as places, not as strings:
``file://``, relative paths, ``..``, symlinks and trailing slashes are resolved on local disk;
on S3 the bucket and key prefix (``s3a://`` is ``s3://``). A glob INPUT overlaps OUTPUT when
its pattern could match a file inside OUTPUT, or a folder holding it.

Some destinations are refused whatever they hold: a filesystem root, ``$HOME`` or a folder
above it (a run would list the whole disk before finding what is not its own), and for
``--overwrite`` a bucket's root.

:func:`problems` is called where a :class:`~batchnlp.spec.JobSpec` is validated, so every command
that builds one (run, shards, commit, incremental, backfill) refuses the same places before
anything is read or written.
"""

from __future__ import annotations

import os
import posixpath
from fnmatch import fnmatchcase

from batchnlp.io.storage import GLOB_CHARS
from batchnlp.util.redaction import redact_url

LOCAL = "file"
S3_SCHEMES = ("s3", "s3a")
PLACEHOLDER = "-"  # a spec's input when the command reads none (commit: the stored plan holds it)


def place(url: str) -> tuple[str, list[str]]:
    """``(store, components)`` of ``url``: the store (``file``, ``s3``, or another scheme) and the
    normalised path components (an S3 URL's first is its bucket), a glob's pattern components kept."""
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme in (LOCAL, "local"):
        return LOCAL, _local(rest if separator else url)
    if scheme in S3_SCHEMES:
        return "s3", _components(rest)
    return f"{scheme}://", _components(rest.split("?", 1)[0])  # a presigned URL's query is no part of the place


def _local(path: str) -> list[str]:
    """The real path's components: relative paths, ``..`` and symlinks resolved up to the first glob component."""
    raw = path.split("/")
    literal = next((i for i, c in enumerate(raw) if GLOB_CHARS.search(c)), len(raw))
    base = "/".join(raw[:literal]) or ("/" if path.startswith("/") else ".")
    return _components(os.path.realpath(base)) + [c for c in raw[literal:] if c not in ("", ".")]


def _components(path: str) -> list[str]:
    return [c for c in posixpath.normpath("/" + path).split("/") if c]


def overlap(input_url: str, output_url: str) -> bool:
    """Whether ``input_url`` (a path, prefix or glob) and ``output_url`` share a file: equal, nested either
    way, or a glob that could match inside OUTPUT or a folder holding it."""
    (input_store, pattern), (output_store, path) = place(input_url), place(output_url)
    if input_store != output_store:
        return False
    for wanted, there in zip(pattern, path, strict=False):  # the shorter one ends the comparison
        if wanted == "**":
            return True
        if not fnmatchcase(there, wanted):
            return False
    return True


def problems(input_url: str, output_url: str, named: tuple[str | None, str | None], mode: str) -> list[str]:
    """What is wrong with reading ``input_url`` and writing ``output_url`` (in write ``mode``), in words.

    ``named``: the input's and the output's table format where that table is a name in a catalog
    (an Iceberg table), not a place (None: files, or a table at a path): two are the same table
    when their formats and names are.
    """
    found = []
    shown = f"input {redact_url(input_url)} and output {redact_url(output_url)}"
    if any(named):
        if named[0] == named[1] and input_url == output_url:
            found.append(f"{shown} are the same table: label it into another table")
    elif input_url != PLACEHOLDER and overlap(input_url, output_url):
        found.append(
            f"{shown} overlap (the same place, or one inside the other): a run writes and clears its files "
            "in OUTPUT, so OUTPUT must lie outside INPUT; choose another OUTPUT"
        )
    if named[1] is None:
        found += refused_destination(output_url, mode)
    return found


def cache_problems(cache_url: str, input_url: str, output_url: str, named: tuple[str | None, str | None]) -> list[str]:
    """A label cache must be a place of its own: neither inside INPUT or OUTPUT nor holding them."""
    found = []
    for what, url, table in (("input", input_url, named[0]), ("output", output_url, named[1])):
        if table is None and url != PLACEHOLDER and (overlap(url, cache_url) or overlap(cache_url, url)):
            found.append(
                f"label cache {redact_url(cache_url)} and {what} {redact_url(url)} overlap: the cache keeps its own "
                "files under its folder, and a run's output or input may hold none of them; give the cache a "
                "folder of its own, e.g. s3://lake/label-cache/"
            )
    return found


def refused_destination(output_url: str, mode: str) -> list[str]:
    """A filesystem root, $HOME or a folder above it; with --overwrite, a bucket's root too."""
    store, path = place(output_url)
    if store == LOCAL:
        home = place(os.path.expanduser("~"))[1]
        if path == home[: len(path)]:
            what = (
                "the filesystem root" if not path else "your home directory" if path == home else "a folder above $HOME"
            )
            return [
                f"output {output_url} is {what}: give each run a folder of its own, e.g. {output_url.rstrip('/')}/runs"
            ]
    elif store == "s3" and len(path) == 1 and mode == "overwrite":
        return [
            f"--overwrite of a bucket's root ({redact_url(output_url)}) is refused: "
            "write runs to a prefix, e.g. s3://BUCKET/labels/"
        ]
    return []
