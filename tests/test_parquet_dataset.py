from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidecar.parquet_dataset import PIECES_PER_SLOT, ParquetDataset, ParquetPiece
from sidecar.readers import ReaderError


def _write(path: Path, rows: int = 10, row_group_size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": pa.array(range(rows), pa.int64())})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture
def spark_output(tmp_path: Path) -> Path:
    """A directory as Spark and Hive writers leave it."""
    folder = tmp_path / "train"
    for name in ["b=2/part-1.parquet", "b=1/part-3.PARQUET", "part-0.pq", "b=1/part-2.parquet"]:
        _write(folder / name)
    for name in ["_SUCCESS", "_metadata", ".part-0.pq.crc", "notes.txt"]:
        (folder / name).write_bytes(b"")
    _write(folder / "_temporary/0/part-9.parquet")
    _write(folder / ".hidden/part-8.parquet")
    return folder


def test_a_directory_is_its_parquet_files_below_it_sorted(spark_output: Path) -> None:
    dataset = ParquetDataset.find(str(spark_output))
    names = ["b=1/part-2.parquet", "b=1/part-3.PARQUET", "b=2/part-1.parquet", "part-0.pq"]
    assert dataset.files == tuple(str(spark_output / name) for name in names)
    assert dataset.filesystem is None  # local files: read as the single process reads them


def test_a_glob_is_its_matching_parquet_files(spark_output: Path) -> None:
    dataset = ParquetDataset.find(f"{spark_output}/b=*/*")
    names = ["b=1/part-2.parquet", "b=1/part-3.PARQUET", "b=2/part-1.parquet"]
    assert dataset.files == tuple(str(spark_output / name) for name in names)


def test_a_file_named_outright_is_read_whatever_its_name(tmp_path: Path) -> None:
    _write(tmp_path / "export.bin")
    assert ParquetDataset.find(str(tmp_path / "export.bin")).files == (
        str(tmp_path / "export.bin"),
    )


@pytest.fixture
def memory() -> Iterator[fsspec.AbstractFileSystem]:
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/dataset-test"):
        fs.rm("/dataset-test", recursive=True)


def test_a_remote_dataset_keeps_its_filesystem(
    memory: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    _write(tmp_path / "p.parquet")
    for name in ["train/part-1.parquet", "train/part-0.parquet", "train/_SUCCESS"]:
        memory.pipe(f"/dataset-test/{name}", (tmp_path / "p.parquet").read_bytes())
    dataset = ParquetDataset.find("memory://dataset-test/train")
    assert dataset.files == (
        "/dataset-test/train/part-0.parquet",
        "/dataset-test/train/part-1.parquet",
    )
    assert dataset.filesystem is memory


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("no/such/dir", "no/such/dir: not a readable Parquet dataset: no such file or directory"),
        ("empty", "empty: not a readable Parquet dataset: no .parquet or .pq files in it"),
        ("empty/*.parquet", "not a readable Parquet dataset: no .parquet or .pq files in it"),
        ("nosuchprotocol://bucket/train", "nosuchprotocol://bucket/train: not a readable"),
    ],
)
def test_a_dataset_without_parquet_files_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, message: str
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReaderError, match=message):
        ParquetDataset.find(where)


def test_enough_files_are_one_piece_each_without_reading_them(tmp_path: Path) -> None:
    files = [tmp_path / f"part-{i}.parquet" for i in range(2 * PIECES_PER_SLOT)]
    for path in files:
        path.write_bytes(b"not parquet: never opened")
    dataset = ParquetDataset.find(str(tmp_path))
    assert dataset.pieces(2) == [ParquetPiece(str(path)) for path in files]


def test_few_files_are_cut_into_ranges_of_row_groups(tmp_path: Path) -> None:
    _write(tmp_path / "a.parquet", rows=100, row_group_size=10)  # 10 row groups
    _write(tmp_path / "b.parquet", rows=10, row_group_size=10)  # 1 row group
    pieces = ParquetDataset.find(str(tmp_path)).pieces(2)  # 4 wanted: 2 per file
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    assert pieces == [
        ParquetPiece(a, (0, 1, 2, 3, 4)),
        ParquetPiece(a, (5, 6, 7, 8, 9)),
        ParquetPiece(b),
    ]


def test_one_file_is_cut_into_at_most_one_piece_per_row_group(tmp_path: Path) -> None:
    _write(tmp_path / "a.parquet", rows=30, row_group_size=10)
    pieces = ParquetDataset.find(str(tmp_path / "a.parquet")).pieces(8)
    groups = [piece.row_groups for piece in pieces]
    assert groups == [(0,), (1,), (2,)]


def test_a_damaged_file_is_named_when_it_must_be_cut(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    dataset = ParquetDataset.find(str(tmp_path))
    with pytest.raises(ReaderError, match=r"bad\.parquet: not a readable Parquet file"):
        dataset.pieces(1)
