"""The model store under SIGKILL: ``daskgen fit --overwrite`` killed at random moments —
while it fits, and while it writes the store — leaves at the final path the previous
model or none, never a partial one; a later fit removes what the killed ones left."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from _cluster import wait_until

import daskgen
from daskgen.datasets import write_zarr_dataset
from daskgen.errors import ModelError

KILLS = 10


def hidden(parent: Path, name: str) -> dict[str, list[str]]:
    entries = sorted(os.listdir(parent))
    return {kind: [e for e in entries if e.startswith(f".{name}.{kind}-")] for kind in ("tmp", "old")}


@pytest.mark.slow
def test_fit_killed_at_any_moment_leaves_the_previous_model_or_none(start_cluster, fashion_small, tmp_path):
    X, y = fashion_small
    cluster = start_cluster()
    data = {}
    for name, rows in (("a", slice(0, 2000)), ("b", slice(2000, 4000))):
        data[name] = str(tmp_path / f"{name}.zarr")
        write_zarr_dataset(data[name], X[rows], y[rows], chunk_rows=1000)
    models = tmp_path / "models"
    out = models / "m.zarr"
    fingerprint = {}
    for name in ("a", "b"):  # each input's model, and how long a whole fit takes here
        start = time.monotonic()
        p = cluster.daskgen("fit", data[name], "--out", out, "--overwrite")
        took = time.monotonic() - start
        assert p.returncode == 0, p.stderr
        fingerprint[name] = daskgen.load_model(str(out)).fingerprint
    assert fingerprint["a"] != fingerprint["b"]
    rng = random.Random(20260611)
    current, seen = "b", []
    for i in range(KILLS):
        new = "a" if current == "b" else "b"
        earlier = set(hidden(models, "m.zarr")["tmp"])
        proc = cluster.popen("fit", data[new], "--out", out, "--overwrite")
        try:
            if i % 2:  # somewhere while the store is written (its temporary folder exists)
                wait_until(lambda p=proc, e=earlier: set(hidden(models, "m.zarr")["tmp"]) - e or p.poll() is not None,
                           60, "the store write")
                time.sleep(rng.uniform(0, 0.5))
            else:  # anywhere in the run
                time.sleep(rng.uniform(0, 1.1 * took))
            proc.kill()
            proc.wait(timeout=30)
        finally:
            proc.kill()
        mid_write = bool(set(hidden(models, "m.zarr")["tmp"]) - earlier)
        try:
            found = daskgen.load_model(str(out)).fingerprint
        except ModelError as exc:  # between the two renames of a replacement, and only then
            assert "no such model store" in str(exc), str(exc)
            assert hidden(models, "m.zarr")["old"], "the previous model vanished"
            seen.append("none")
            continue
        assert found in (fingerprint[current], fingerprint[new]), "a model from neither run"
        outcome = "previous" if found == fingerprint[current] else "new"
        seen.append(outcome + (" (killed mid-write)" if mid_write else ""))
        current = current if outcome == "previous" else new
        assert set(os.listdir(models)) - {"m.zarr"} <= {e for v in hidden(models, "m.zarr").values() for e in v}
    left = hidden(models, "m.zarr")
    print(f"outcomes of {KILLS} kills: {seen}; left behind: {len(left['tmp'])} temporary, {len(left['old'])} old")
    assert any("mid-write" in o for o in seen)  # the kills did land while the store was written
    # the next fit publishes, and removes what the killed writers left
    p = cluster.daskgen("fit", data["a"], "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr
    assert daskgen.load_model(str(out)).fingerprint == fingerprint["a"]
    assert hidden(models, "m.zarr") == {"tmp": [], "old": []}, "folders of killed fits accumulate"
    assert np.isfinite(daskgen.load_model(str(out)).covariances).all()
