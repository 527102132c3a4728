"""The fit of 6 million rows on 2 workers limited to 2 GiB each (tests/reliability/load_fit.py).

Minutes long and 4.7 GB of disk: it runs only with DASKGEN_LOAD_TEST=1
(DASKGEN_LOAD_ROWS changes the row count).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cluster import clean_env

SCRIPT = Path(__file__).with_name("load_fit.py")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DASKGEN_LOAD_TEST") != "1", reason="set DASKGEN_LOAD_TEST=1 (minutes, 4.7 GB of disk)")
def test_six_million_rows_on_two_2gib_workers(tmp_path):
    rows = int(os.environ.get("DASKGEN_LOAD_ROWS", 6_000_000))
    p = subprocess.run([sys.executable, str(SCRIPT), "--rows", str(rows), "--workdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=3600, env=clean_env())
    summary = json.loads(p.stdout)
    print(json.dumps(summary, indent=2))
    assert p.returncode == 0 and summary["passed"], summary
    assert summary["rows_fitted"] == rows
    assert summary["worker_counts_seen"] == [2] and summary["worker_pids_unchanged"]
    assert max(summary["peak_worker_rss_bytes"].values()) < 0.8 * 2 * 2**30  # below distributed's pause threshold
    assert not (tmp_path / "tiled.zarr").exists()
