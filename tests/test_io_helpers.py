"""The helpers every reader and writer shares: labels, image shapes, publishing, locations."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

import daskgen
from daskgen.datasets import write_csv_dataset, write_zarr_dataset
from daskgen.errors import InputError
from daskgen.io.blocks import Block, CsvOptions, FrameOptions, ZarrOptions
from daskgen.io.fs import is_url, join
from daskgen.io.inputs import parse_image_shape
from daskgen.io.labels import as_labels


def test_labels_text_becomes_str_and_numbers_widen_only_when_asked():
    assert as_labels(np.array([b"a", "b"], dtype=object)).tolist() == ["a", "b"]
    assert as_labels(np.array(["x", "y"], dtype=np.dtypes.StringDType())).dtype.kind == "U"
    assert as_labels(np.array([1, 2], dtype=np.uint8)).dtype == np.uint8
    assert as_labels(np.array([1, 2], dtype=np.uint8), widen=True).dtype == np.int64
    assert as_labels(np.array([True]), widen=True).dtype == np.int64
    assert as_labels(np.array([0.5], dtype=np.float32), widen=True).dtype == np.float64


@pytest.mark.parametrize(("given", "shape"), [("28x28", (28, 28)), ("8×8", (8, 8)), ((6, 12), (6, 12)),
                                              ([4, 4], (4, 4)), ("784", (784,)), (None, None)])
def test_image_shapes(given, shape):
    assert parse_image_shape(given) == shape


@pytest.mark.parametrize("given", ["28x", "0x28", (3, -1), "axb"])
def test_bad_image_shapes(given):
    with pytest.raises(InputError, match="image shape"):
        parse_image_shape(given)


def test_image_shape_with_at_most_two_sizes():
    with pytest.raises(InputError, match="one or two positive sizes"):
        parse_image_shape("2x2x2", max_dims=2)
    assert parse_image_shape("2x2x2") == (2, 2, 2)


def test_each_format_names_its_block_and_features():
    csv = Block("csv", "f.csv", 0, 100, first=True, options=CsvOptions(("label", "a", "b"), "label"))
    assert csv.where == "f.csv (bytes 0-100)" and csv.feature(1) == "'b'"
    zarr = Block("zarr", "g.zarr", 10, 20, options=ZarrOptions("labels"))
    assert zarr.where == "g.zarr (rows 10-20)" and zarr.feature(3) == "pixel3"
    frame = Block("dataframe", "ddf", 2, 3, options=FrameOptions(("p", "q")))
    assert frame.where == "ddf (partition 2)" and frame.feature(0) == "'p'"
    assert hash(csv) == hash(Block("csv", "f.csv", 0, 100, True, CsvOptions(("label", "a", "b"), "label")))


def test_locations():
    assert is_url("s3://bucket/x") and is_url("gs:bucket") and not is_url("/tmp/x")
    assert join("s3://b/out/", "model.zarr") == "s3://b/out/model.zarr"
    assert join("out", "figures") == os.path.join("out", "figures")


@pytest.mark.parametrize("writer", ["zarr", "csv"])
def test_dataset_writers_remove_what_killed_writers_left(tmp_path, writer):
    """The dataset writers publish as the model store does: the hidden temporaries of a
    writer on this host that no longer runs are removed, and none of their own stay."""
    images, labels = np.arange(64, dtype=np.uint8).reshape(4, 4, 4), np.array([0, 0, 1, 1])
    target = tmp_path / f"d.{writer}"
    dead = 2**22 + 12345  # above Linux's largest pid_max: no process has it
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    stale = tmp_path / f".d.{writer}.tmp-{socket.gethostname()}-{dead}-0123abcd"
    stale.mkdir() if writer == "zarr" else stale.write_text("half")
    write = write_zarr_dataset if writer == "zarr" else write_csv_dataset
    write(str(target), images, labels)
    write(str(target), images, labels, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert daskgen.fit(str(target)).n_classes == 2


def test_a_zarr_chunk_of_many_blocks_is_read_in_equal_parts(tmp_path):
    """Wide rows in big chunks: a chunk of more than 8 blocks' worth (and 256 MiB as float64)
    makes equal parts, so two threads share three chunks; a small chunk stays whole."""
    from daskgen.fitting import prepare

    N = 9000  # 9,000 rows x 4,096 pixels x 8 bytes = 295 MB as float64: two parts
    path = str(tmp_path / "wide.zarr")
    write_zarr_dataset(path, np.zeros((N, 64, 64), dtype=np.uint8), np.arange(N) % 3, chunk_rows=N)
    blocks = prepare([path]).blocks
    assert [(b.start, b.stop) for b in blocks] == [(0, 4500), (4500, 9000)]
    small = str(tmp_path / "small.zarr")
    write_zarr_dataset(small, np.zeros((300, 8, 8), dtype=np.uint8), np.arange(300) % 3, chunk_rows=100)
    assert [(b.start, b.stop) for b in prepare([small], blocksize=64).blocks] == [(0, 100), (100, 200), (200, 300)]
