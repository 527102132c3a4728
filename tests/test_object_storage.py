"""Object storage: fit from CSV and Zarr in a bucket, generate into a bucket, resume there.

The bucket lives in moto's S3-compatible server, started on 127.0.0.1 by the test. daskgen
runs as a real subprocess (as a scheduled job would), reaching the server either through
``--storage-option`` or, as on Kubernetes, through the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import store_bytes

pytest.importorskip("s3fs")
pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server", reason="needs moto[server]")

BIN = Path(sys.executable).parent
BUCKET = "daskgen-test"
KEY, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"
SCALE = 1 / 16  # the digits' pixels are 0..16


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on 127.0.0.1 with one empty bucket."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
        ).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def options(s3):
    """fsspec storage options for the server (what ``--storage-option`` passes)."""
    return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": s3, "region_name": REGION}}


@pytest.fixture(scope="module")
def fs(options):
    import s3fs

    # no listing cache: the subprocesses change the bucket behind this instance's back
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)


@pytest.fixture(scope="module")
def digits():
    from daskgen.datasets import load_digits_dataset

    return load_digits_dataset()


@pytest.fixture(scope="module")
def bucket_data(digits, options):
    """The digits uploaded twice: a Kaggle-style CSV and a Zarr dataset."""
    from daskgen.datasets import write_csv_dataset, write_zarr_dataset

    images, labels = digits
    csv = write_csv_dataset(f"s3://{BUCKET}/input/train.csv", images, labels, storage_options=options)
    zarr_url = write_zarr_dataset(f"s3://{BUCKET}/input/train.zarr", images, labels, chunk_rows=400, storage_options=options)
    return {"csv": csv, "zarr": zarr_url}


def _env(endpoint: str | None = None) -> dict[str, str]:
    """The subprocess environment: no AWS settings of the machine's own; with ``endpoint``,
    credentials and endpoint in the standard variables (what a Kubernetes Secret provides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASK_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    if endpoint:
        env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL=endpoint)
    return env


def _storage_flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flags += ["--storage-option", f"{key}={json.dumps(value) if isinstance(value, dict) else value}"]
    return flags


def _daskgen(*args, env: dict, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "daskgen"), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
        stdin=subprocess.DEVNULL, cwd=cwd,
    )


def _cli(*args) -> tuple[int, str]:
    """``daskgen ARGS`` in this process (for the commands that fail before any work)."""
    from click.testing import CliRunner

    from daskgen.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    text = result.output
    try:
        text += result.stderr  # click < 8.2 keeps stderr apart
    except ValueError:
        pass
    return result.exit_code, text


def _expected_means(digits) -> np.ndarray:
    images, labels = digits
    X = images.reshape(len(images), -1).astype(np.float64) * SCALE
    return np.stack([X[labels == k].mean(axis=0) for k in range(10)])


# ---------------------------------------------------------------------------- fit
@pytest.fixture(scope="module")
def csv_model(s3, options, bucket_data):
    """Fitted from the CSV in the bucket, reaching it through --storage-option only."""
    out = f"s3://{BUCKET}/models/from-csv.zarr"
    ran = _daskgen("fit", bucket_data["csv"], "--out", out, "--scale", SCALE, "-q", *_storage_flags(options), env=_env())
    assert ran.returncode == 0, ran.stderr
    return out


@pytest.fixture(scope="module")
def zarr_model(s3, bucket_data):
    """Fitted from the Zarr dataset in the bucket, with credentials from the environment."""
    out = f"s3://{BUCKET}/models/from-zarr.zarr"
    ran = _daskgen("fit", bucket_data["zarr"], "--out", out, "--scale", SCALE, "-q", env=_env(s3))
    assert ran.returncode == 0, ran.stderr
    return out


def test_fit_from_csv_in_a_bucket(csv_model, options, digits, fs):
    from daskgen.io.store import read_model

    model = read_model(csv_model, options)
    assert model.n_classes == 10
    np.testing.assert_array_equal(model.counts, np.bincount(digits[1]))
    np.testing.assert_allclose(model.means, _expected_means(digits), rtol=1e-10, atol=1e-12)
    assert model.image_shape == (8, 8)
    # the model records the input it read, as the object store describes it
    assert [f["path"] for f in model.inputs] == [f"s3://{BUCKET}/input/train.csv"]
    assert model.inputs[0]["size"] == fs.info(f"{BUCKET}/input/train.csv")["size"]


def test_fit_from_zarr_in_a_bucket_equals_the_csv_fit(zarr_model, csv_model, options):
    from daskgen.io.store import read_model

    a, b = read_model(zarr_model, options), read_model(csv_model, options)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-8, atol=1e-12)


def test_an_existing_model_in_a_bucket_is_not_replaced(csv_model, options, bucket_data):
    code, output = _cli("fit", bucket_data["csv"], "--out", csv_model, "--scale", SCALE, "-q", *_storage_flags(options))
    assert code == 2 and "already exists" in output, output


def test_a_model_store_without_its_completion_mark_is_refused(csv_model, options, fs, tmp_path):
    """On object storage nothing is renamed into place: the model's `complete` attribute is
    written last, and a store without it (a fit that died while writing) is never used."""
    import zarr

    from daskgen.io.readers import open_zarr_group

    half = f"s3://{BUCKET}/models/half-written.zarr"
    fs.copy(csv_model.removeprefix("s3://"), half.removeprefix("s3://"), recursive=True)
    group = open_zarr_group(half, options, mode="r+")
    for marked in (False, None):  # `complete: false`, then no `complete` key at all
        meta = dict(group.attrs["daskgen"])
        if marked is None:
            del meta["complete"]
        else:
            meta["complete"] = marked
        group.attrs["daskgen"] = meta
        assert zarr.open_group(half, mode="r", storage_options=options).attrs["daskgen"].get("complete") is marked
        code, output = _cli("sample", half, "--n", 10, "--out", tmp_path / f"s-{marked}.zarr", "-q",
                            *_storage_flags(options))
        assert code == 2 and "incomplete model store" in output, output
        assert not (tmp_path / f"s-{marked}.zarr").exists()


# ---------------------------------------------------------------------------- generate, resume
N, CHUNK, SEED = 2000, 100, 11
N_CHUNKS = N // CHUNK


def _store_bytes(fs, url: str) -> dict[str, bytes]:
    """Every object of a store in the bucket, by key relative to the store."""
    root = url.removeprefix("s3://").rstrip("/")
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def _done_markers(fs, url: str) -> int:
    try:
        return len(fs.ls(url.removeprefix("s3://") + "/done/c"))
    except FileNotFoundError:
        return 0


def _interrupt_generation(fs, url: str, args: list, env: dict, options: dict) -> str:
    """Start `daskgen sample` and SIGKILL it once a few chunks are marked done.
    Returns how it was interrupted (should the run outpace the polling, the same state is
    made by hand: chunks deleted, their markers removed, the store marked incomplete)."""
    proc = subprocess.Popen(
        [str(BIN / "daskgen"), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline and _done_markers(fs, url) < 2:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        finished = proc.wait(timeout=30) == 0
    if not finished:
        return "killed"
    from daskgen.io.readers import open_zarr_group

    root = url.removeprefix("s3://")
    for i in (1, 7, N_CHUNKS - 1):
        fs.rm([f"{root}/done/c/{i}", f"{root}/images/c/{i}/0/0", f"{root}/labels/c/{i}"])
    group = open_zarr_group(url, options, mode="r+")
    group.attrs["daskgen"] = {**group.attrs["daskgen"], "complete": False}
    return "simulated"


def test_generation_into_a_bucket_resumes_and_matches_a_local_run(s3, zarr_model, options, fs, tmp_path):
    out = f"s3://{BUCKET}/samples/digits.zarr"
    args = ["sample", zarr_model, "--n", N, "--chunk-size", CHUNK, "--seed", SEED, "--out", out, "-q"]
    how = _interrupt_generation(fs, out, args, _env(s3), options)

    # An interrupted store is incomplete: it is not used as an input.
    done = _done_markers(fs, out)
    assert 0 < done < N_CHUNKS, (how, done)
    code, output = _cli("fit", out, "--out", tmp_path / "m.zarr", "-q", *_storage_flags(options))
    assert code == 2 and "incomplete" in output, output

    # The rerun writes only the missing chunks.
    resumed = _daskgen(*args[:-1], env=_env(s3))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: wrote {N_CHUNKS - done} of {N_CHUNKS} chunks" in resumed.stderr, resumed.stderr
    assert _done_markers(fs, out) == N_CHUNKS

    # ... and the store ends byte for byte as a clean, uninterrupted local run writes it
    # (here with the Python API on Dask's local scheduler: the bytes depend on nothing else).
    from daskgen.distributed.generation import generate
    from daskgen.io.store import read_model

    local = tmp_path / "local.zarr"
    generate(read_model(zarr_model, options), N, str(local), seed=SEED, chunk_size=CHUNK)
    remote_objects, local_files = _store_bytes(fs, out), store_bytes(local)
    assert sorted(remote_objects) == sorted(local_files)
    different = [k for k in local_files if remote_objects[k] != local_files[k]]
    assert not different, different
    import zarr

    group = zarr.open_group(out, mode="r", storage_options=options)
    assert group.attrs["daskgen"]["complete"] is True
    assert group["images"].shape == (N, 8, 8)


def test_run_job_reads_its_inputs_from_a_bucket(s3, bucket_data, tmp_path):
    """`daskgen run` with a job whose input is an s3:// URL (credentials from the environment)."""
    import yaml

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "inputs": bucket_data["zarr"], "out": str(tmp_path / "run"), "scale": SCALE,
        "sample": {"n": 500, "seed": 1, "chunk_size": 250}, "plot": False,
    }))
    ran = _daskgen("run", job, "-q", env=_env(s3), cwd=tmp_path, timeout=180)
    if ran.returncode != 0 and "No such command 'run'" in ran.stderr:
        pytest.skip("daskgen run is not available")
    assert ran.returncode == 0, ran.stderr
    report = json.loads((tmp_path / "run" / "run-report.json").read_text())
    assert report["status"] == "done"
    assert report["config"]["inputs"] == [bucket_data["zarr"]]


def test_run_job_writes_its_outputs_to_a_bucket(s3, bucket_data, fs, tmp_path):
    """A cluster job's outputs go to object storage (the job runner and the workers share no
    disk): `out: s3://...` holds the model, the samples and the report, and a rerun resumes."""
    import yaml

    out = f"s3://{BUCKET}/runs/job"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "inputs": bucket_data["zarr"], "out": out, "scale": SCALE,
        "sample": {"n": 500, "seed": 1, "chunk_size": 250}, "plot": False,
    }))
    ran = _daskgen("run", job, "-q", env=_env(s3), cwd=tmp_path, timeout=180)
    assert ran.returncode == 0, ran.stderr
    report = json.loads(fs.cat_file(f"{BUCKET}/runs/job/run-report.json"))
    assert report["status"] == "done"
    assert fs.exists(f"{BUCKET}/runs/job/model.zarr/zarr.json") and fs.exists(f"{BUCKET}/runs/job/samples.zarr/zarr.json")
    again = _daskgen("run", job, "-q", env=_env(s3), cwd=tmp_path, timeout=180)
    assert again.returncode == 0, again.stderr
    stages = json.loads(fs.cat_file(f"{BUCKET}/runs/job/run-report.json"))["stages"]
    assert stages["fit"]["skipped"] and stages["sample"]["skipped"], stages
