"""Small helpers shared by the tests."""

from __future__ import annotations


def write_csv(path, X, y, label_column="label", label_position=0, names=None):
    """A CSV with the label column at ``label_position`` (full float precision)."""
    import pandas as pd

    names = names or [f"pixel{i}" for i in range(X.shape[1])]
    df = pd.DataFrame(X, columns=names)
    df.insert(label_position, label_column, y)
    df.to_csv(path, index=False)
    return str(path)


def store_bytes(path) -> dict[str, bytes]:
    """Every file of a store, by relative path: equal dicts mean byte-identical stores."""
    from pathlib import Path

    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_cli(*args):
    """``daskgen ARGS --quiet`` through click, in this process."""
    from click.testing import CliRunner

    from daskgen.cli import main

    return CliRunner().invoke(main, [*map(str, args), "--quiet"])


def assert_one_line_error(result, *needles: str) -> str:
    """Exit 2 and exactly one line, ``daskgen: error: ...`` holding every needle; returns it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exc_info)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("daskgen: error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
