"""A Parquet dataset as a sorted list of files, cut into pieces for parallel profiling.

The dataset is a file, a directory or a glob, on the local disk or behind any fsspec
URL (`s3://`, `gs://`, `memory://`, ...). A directory means every `.parquet` or `.pq`
file below it, except those with a name part starting with `_` or `.`: the
`_SUCCESS`, `_metadata`, `.crc` files and `_temporary/` directories writers leave.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .readers import ReaderError, _import_pyarrow

__all__ = ["PIECES_PER_SLOT", "ParquetDataset", "ParquetPiece"]

# Pieces wanted per worker thread: with fewer, one slow piece leaves a worker idle.
PIECES_PER_SLOT = 2
_SUFFIXES = (".parquet", ".pq")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class ParquetPiece:
    """One profiling task: a whole file, or a contiguous range of its row groups."""

    path: str
    row_groups: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ParquetDataset:
    url: str
    files: tuple[str, ...]
    # The fsspec filesystem of remote files; None for local files, which are read
    # exactly as `skew-sidecar profile FILE` reads them.
    filesystem: Any = None

    @classmethod
    def find(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> ParquetDataset:
        """List the dataset's files (metadata only: no file is opened)."""
        fsspec = _import_fsspec()
        try:
            fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
            files = _list_files(fs, path)
        except FileNotFoundError:
            raise ReaderError(
                f"{url}: not a readable Parquet dataset: no such file or directory"
            ) from None
        except (OSError, ValueError, ImportError) as exc:
            # ImportError: fsspec names the package a protocol needs (s3fs for s3://).
            raise ReaderError(f"{url}: not a readable Parquet dataset: {exc}") from None
        if not files:
            raise ReaderError(
                f"{url}: not a readable Parquet dataset: no {' or '.join(_SUFFIXES)} files in it"
            )
        local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
        return cls(url, tuple(files), None if local else fs)

    def pieces(self, slots: int) -> list[ParquetPiece]:
        """One piece per file, in file order, when there are at least `PIECES_PER_SLOT`
        files per worker thread; otherwise each file is cut into contiguous ranges of
        row groups (reading its footer) to make about that many pieces."""
        wanted = PIECES_PER_SLOT * max(slots, 1)
        if len(self.files) >= wanted:
            return [ParquetPiece(path) for path in self.files]
        per_file = -(-wanted // len(self.files))
        pieces = []
        for path in self.files:
            groups = self._row_group_count(path)
            n = min(per_file, groups)
            if n <= 1:
                pieces.append(ParquetPiece(path))
                continue
            bounds = [groups * i // n for i in range(n + 1)]
            pieces.extend(
                ParquetPiece(path, tuple(range(start, stop))) for start, stop in pairwise(bounds)
            )
        return pieces

    def _row_group_count(self, path: str) -> int:
        pa, pq = _import_pyarrow()
        try:
            if self.filesystem is None:
                return int(pq.read_metadata(path).num_row_groups)
            with self.filesystem.open(path) as file:
                return int(pq.read_metadata(file).num_row_groups)
        except (pa.ArrowException, OSError) as exc:
            raise ReaderError(f"{path}: not a readable Parquet file: {exc}") from None


def _list_files(fs: Any, path: str) -> list[str]:
    if _GLOB_CHARACTERS.isdisjoint(path):
        matches = {path: fs.info(path)}
        named = True  # a file named outright is read whatever its name
    else:
        matches = fs.glob(path, detail=True)
        named = False
    files: set[str] = set()
    for match, info in matches.items():
        if info["type"] == "directory":
            files.update(
                found for found in fs.find(match) if _is_data_file(posixpath.relpath(found, match))
            )
        elif named or _is_data_file(posixpath.basename(match)):
            files.add(match)
    return sorted(files)


def _is_data_file(relative: str) -> bool:
    parts = relative.split("/")
    return parts[-1].lower().endswith(_SUFFIXES) and not any(
        part.startswith(("_", ".")) for part in parts
    )


def _import_fsspec() -> Any:
    try:
        import fsspec
        import fsspec.implementations.local
    except ImportError:
        raise ReaderError("the Dask engine needs dask: pip install 'skew-sidecar[dask]'") from None
    return fsspec
