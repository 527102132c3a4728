"""Options defined once (daskgen.options): the same one-line message for a bad value from the
command line (exit 2), a job file (exit 2) and Python (ValueError); defaults in --help; job-file
keys and command-line options derived from the same definitions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import daskgen
from daskgen import options
from daskgen.cli import main
from daskgen.estimators import GaussianClassifier, GaussianMixtureClassifier
from daskgen.evaluation.heldout import evaluate
from daskgen.evaluation.ndb import ndb
from daskgen.job import DEFAULTS, SECTIONS
from daskgen.options import GROUPS, OptionError

README = Path(__file__).resolve().parent.parent / "README.md"


def bad_value(opt: options.Option):
    """A value outside ``opt``'s range or choices (None: it has neither)."""
    if opt.kind == "choice":
        return "bogus"
    if opt.kind in ("int", "number") and opt.maximum is not None:
        return opt.maximum
    if opt.kind in ("int", "number") and opt.minimum is not None:
        return opt.minimum if opt.exclusive else opt.minimum - 1
    return None


def cases():
    for group in GROUPS:
        for opt in group:
            if bad_value(opt) is not None:
                yield pytest.param(group, opt, id=f"{group.name}.{opt.name}")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    images, labels = daskgen.datasets.load_digits_dataset()
    return GaussianClassifier(scale=1 / 16).fit(images.reshape(len(images), -1)[:200], labels[:200]).model_


#: The command (its arguments before the options) and the Python call that take each group.
COMMANDS = {
    "read": ["fit", "in.csv", "--out", "m.zarr"],
    "fit": ["fit", "in.csv", "--out", "m.zarr"],
    "mixture": ["fit", "in.csv", "--out", "m.zarr"],
    "sample": ["sample", "m.zarr", "--out", "s.zarr", "--n", "5"],
    "evaluate": ["evaluate", "m.zarr", "in.csv"],
    "ndb": ["evaluate-samples", "s.zarr", "--reference", "t.csv", "--train", "t.csv"],
    "cluster": ["fit", "in.csv", "--out", "m.zarr"],
}


def python_calls(group, opt, value, model, tmp_path) -> list:
    """Calls of the Python API that take option ``opt`` (none for the cluster's)."""
    missing = str(tmp_path / "none.csv")
    kw = {opt.argument if opt.argument != "storage" else opt.name: value}
    if group.name == "read":
        return [lambda: daskgen.fit(missing, **kw)]
    if group.name == "fit":
        est = {"reg_covar", "covariance", "shrinkage", "split_every"} & {opt.name}
        return [lambda: daskgen.fit(missing, **kw), *([lambda: GaussianClassifier(**kw).fit(np.zeros((4, 2)), np.zeros(4))] if est else [])]
    if group.name == "mixture":
        name = {"components": "n_components", "seed": "random_state"}.get(opt.name, opt.name)
        calls = [lambda: GaussianMixtureClassifier(**{name: value}).fit(np.zeros((4, 2)), np.zeros(4))]
        if opt.name == "components":
            return [lambda: daskgen.fit_mixture(missing, value), *calls]
        return [lambda: daskgen.fit_mixture(missing, 2, **kw), *calls]
    if group.name == "sample":
        base = {"n": 5, **({} if opt.argument == "label" else kw)}
        n = base.pop("n")
        return [lambda: daskgen.generate(model, n, str(tmp_path / "s.zarr"), **base)]
    if group.name == "evaluate":
        return [lambda: evaluate(model, missing, **kw)]
    if group.name == "ndb":
        return [lambda: ndb(missing, missing, missing, **kw)]
    return []


@pytest.mark.parametrize(("group", "opt"), list(cases()))
def test_a_bad_value_reads_the_same_everywhere(group, opt, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    value = bad_value(opt)
    with pytest.raises(OptionError) as caught:
        opt.check(value)
    problem = caught.value.problem
    seen = []
    if opt.cli:
        result = CliRunner().invoke(main, [*COMMANDS[group.name], opt.cli_flag, str(value)])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert lines == [f"daskgen: error: {opt.cli_flag}: {problem}"], result.output
        seen.append("cli")
    section = group.section
    if opt.job and (section in SECTIONS or group.name == "read"):
        key = f"{section}.{opt.name}" if section else opt.name
        value_yaml = f"'{value}'" if isinstance(value, str) else value
        text = f"{section}: {{{opt.name}: {value_yaml}}}" if section else f"{opt.name}: {value_yaml}"
        job = tmp_path / "job.yaml"
        job.write_text(f"dataset: digits\n{text}\n")
        result = CliRunner().invoke(main, ["run", str(job), "-q"])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert lines == [f"daskgen: error: {job}: {key}: {problem}"], result.output
        seen.append("job")
    for call in python_calls(group, opt, value, model, tmp_path):
        with pytest.raises(ValueError) as err:
            call()
        assert isinstance(err.value, OptionError) and err.value.problem == problem, str(err.value)
        seen.append("python")
    assert len(seen) >= 2 or not opt.cli, seen  # every option is checked on at least two edges


COMMAND_GROUPS = {
    "fit": ["read", "fit", "mixture", "cluster"],
    "evaluate": ["evaluate", "cluster"],
    "sample": ["sample", "cluster"],
    "evaluate-samples": ["ndb", "cluster"],
    "run": ["read", "fit", "mixture", "sample", "cluster"],
}


@pytest.mark.parametrize("command", list(COMMAND_GROUPS))
def test_help_shows_every_default(command):
    text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split()).split("Options:", 1)[1]
    by_name = {g.name: g for g in GROUPS}
    shown = 0
    for name in COMMAND_GROUPS[command]:
        for opt in by_name[name]:
            if not opt.cli or opt.kind in ("flag", "pairs") or f"{opt.cli_flag} " not in text:
                continue
            after = text.split(f"{opt.cli_flag} ", 1)[1]
            own = after.split(" --", 1)[0]  # up to the next option
            assert re.search(r"\[(default: .+|required)\]", own), (command, opt.cli_flag, own)
            if opt.default is not None and command != "run":
                assert f"[default: {opt.default_text}]" in own or "[required]" in own or "[default: the" in own, own
            shown += 1
    assert shown >= 5


def test_fit_options_are_job_keys_and_flags_of_fit_and_run():
    fit_help = CliRunner().invoke(main, ["fit", "--help"]).output
    run_help = CliRunner().invoke(main, ["run", "--help"]).output
    for group in (options.GAUSSIAN_FIT, options.MIXTURE_FIT):
        for opt in group:
            if opt.job:
                assert opt.name in DEFAULTS["fit"] and DEFAULTS["fit"][opt.name] == opt.default
            if opt.cli:
                assert opt.cli_flag in fit_help
                assert opt.cli_flag in run_help
    for opt in options.READ.job_options():
        assert DEFAULTS[opt.name] == opt.default and opt.cli_flag in fit_help and opt.cli_flag in run_help
    for opt in options.SAMPLE:
        assert opt.name in DEFAULTS["sample"] and opt.cli_flag in run_help
    for opt in options.CLUSTER.job_options():
        assert DEFAULTS["cluster"][opt.name] is None and opt.cli_flag in run_help


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(options.UnknownKeyError, match=r"unknown key 'fit.max_itr' \(did you mean 'fit.max_iter'\?\)"):
        SECTIONS["fit"].check_section({"max_itr": 3}, "fit")


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    return text[start:text.index("\n### ", start + 1)]


def test_readme_tables_name_every_option():
    """The README's option tables and job-file example stay true to options.py."""
    fit = readme_section("### `daskgen fit INPUTS")
    for group in (options.READ, options.GAUSSIAN_FIT, options.MIXTURE_FIT):
        for opt in group:
            if opt.cli:
                assert f"`{opt.cli_flag}" in fit or f", `{opt.cli_flag}" in fit, opt.cli_flag
    sample = readme_section("### `daskgen sample MODEL")
    for opt in options.SAMPLE:
        assert opt.cli_flag in sample, opt.cli_flag
    cluster = readme_section("### Cluster options")
    for opt in options.CLUSTER:
        assert opt.cli_flag in cluster, opt.cli_flag
    run = readme_section("### `daskgen run")
    for key in DEFAULTS["fit"]:
        if key != "incremental":
            assert f"{key}:" in run, key  # the job-file example shows every fit key, mixtures' too
    for group in (options.READ, options.GAUSSIAN_FIT, options.MIXTURE_FIT, options.SAMPLE):
        for opt in group:
            if opt.cli and opt.job and not (group is options.MIXTURE_FIT and opt.name == "seed"):
                assert f"`{opt.cli_flag}" in run, opt.cli_flag
