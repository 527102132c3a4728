"""Every user option, defined once: its name, type, default, range or choices and help.

An option group (:data:`READ`, :data:`GAUSSIAN_FIT`, :data:`MIXTURE_FIT`, :data:`SAMPLE`,
:data:`EVALUATE`, :data:`NDB`, :data:`CLUSTER`, :data:`PLAN`) is a :class:`Group` of :class:`Option`
objects (frozen dataclasses); an option two groups share (:data:`SPLIT_EVERY`) is one
object. Three edges derive from them, so a bad value reads the same wherever it is given:

- the command line: :meth:`Group.click` decorates a command with the group's options
  (``--split-every``, its default shown in ``--help``); a bad value is one line on
  stderr and exit code 2;
- job files: :mod:`daskgen.job` takes the keys of each section from the groups and
  checks their values with :meth:`Option.check`;
- the Python API (:func:`daskgen.fit`, :func:`daskgen.fit_mixture`, :func:`daskgen.generate`,
  :func:`daskgen.evaluation.heldout.evaluate`, :func:`daskgen.evaluation.ndb.ndb`, the file readers
  and the estimators' ``fit``) calls :meth:`Group.check`.

A bad value raises :class:`OptionError` (a ``ValueError``), whose message is
``"NAME: PROBLEM"``: the name as the edge spells it (``--split-every``, ``fit.split_every``,
``split_every``) and the same problem text (``must be at least 2, got 1``).

This module imports neither click nor dask at import time.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from .errors import InputError

__all__ = [
    "CLUSTER", "EVALUATE", "GAUSSIAN_FIT", "MIXTURE_FIT", "NDB", "PLAN", "READ", "SAMPLE", "SPLIT_EVERY",
    "Group", "Option", "OptionError", "suggest",
]


class OptionError(InputError):
    """An option's value is wrong. ``option`` names it, ``problem`` says what is wrong;
    ``str(error)`` is ``"option: problem"``."""

    def __init__(self, option: str, problem: str):
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")


def type_name(v: Any) -> str:
    """The YAML-ish name of a value's type (integer, number, string, mapping, ...)."""
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return kinds.get(type(v), type(v).__name__)


def describe(v: Any) -> str:
    """A value as an error message shows it: its repr (cut at 40 characters) and its type."""
    text = repr(v)
    return (text if len(text) <= 40 else text[:37] + "...") + f" ({type_name(v)})"


def suggest(key: str, known: tuple[str, ...] | list[str], prefix: str = "") -> str:
    """`` (did you mean 'prefix.key'?)`` for the closest known key, else the known keys."""
    close = difflib.get_close_matches(key.replace("-", "_"), list(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix + close[0]!r}?)"
    return f" (known keys: {', '.join(prefix + k for k in known)})"


def _is_int(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _number(v: Any) -> float:
    """A float from a number or a numeric string ("1e-4" and "1/255" too: YAML reads both as strings)."""
    if isinstance(v, bool) or (not isinstance(v, (int, float, str)) and not _is_real(v)):
        raise ValueError
    try:
        x = float(Fraction(v.strip())) if isinstance(v, str) else float(v)
    except (ValueError, ZeroDivisionError):
        raise ValueError from None
    return x


def _is_real(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


# ---------------------------------------------------------------------------- one option
@dataclass(frozen=True)
class Option:
    """One option: its Python and job-file name, value type, default, bounds or choices, help.

    ``kind`` is one of ``int``, ``number`` (a float; numeric strings and fractions
    accepted), ``choice``, ``text``, ``size`` (bytes: an int or a string such as
    32MiB), ``shape`` (HxW), ``label`` (a class value), ``flag`` (true/false) or
    ``pairs`` (repeatable KEY=VALUE on the command line). ``auto``: the string
    ``"auto"`` (or None) is also accepted, meaning a default decided from the data
    (``auto_help`` says how). ``optional``: None is a value (``default_help`` says
    what it means). ``minimum`` is inclusive unless ``exclusive``.
    """

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False
    auto: bool = False
    default_help: str | None = None  # how --help shows a None default
    flag: str | None = None  # the command-line flag (default: --name-with-dashes)
    short: str | None = None
    dest: str | None = None  # the command function's argument (default: name)
    envvar: str | None = None
    cli: bool = True  # offered on the command line
    job: bool = True  # accepted in job files

    # -- names ----------------------------------------------------------------
    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def argument(self) -> str:
        return self.dest or self.name

    @property
    def default_text(self) -> str:
        """The default as ``--help`` and README show it."""
        if self.default is None:
            return self.default_help or "none"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, int):
            return f"{self.default:,}" if self.default >= 10_000 else str(self.default)
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    @property
    def accepts(self) -> str:
        """What values are valid, in words (the README's table)."""
        if self.kind == "choice":
            return " \\| ".join(self.choices)
        rng = self._range_text()
        words = {"int": "integer", "number": "number", "text": "string", "size": "size (e.g. 32MiB)",
                 "shape": "HxW", "label": "a class", "flag": "true/false", "pairs": "KEY=VALUE"}[self.kind]
        text = f"{words} {rng}".strip()
        if self.auto:
            text = f"auto \\| {text}"
        return text

    def _range_text(self) -> str:
        if self.minimum is None and self.maximum is None:
            return ""
        if self.maximum is None:
            if self.exclusive and self.minimum == 0:
                return "> 0"
            return f"{'>' if self.exclusive else '>='} {self.minimum:g}"
        return f"in {'(' if self.exclusive else '['}{self.minimum:g}, {self.maximum:g})"

    # -- checking -------------------------------------------------------------
    def check(self, value: Any, name: str | None = None) -> Any:
        """``value`` checked and normalised (numeric strings to numbers, ``"auto"`` lower-cased).

        Raises :class:`OptionError` named ``name`` (default: the option's name).
        """
        try:
            return self._check(value)
        except _Problem as exc:
            raise OptionError(name or self.name, str(exc)) from None

    def parse(self, text: str, name: str | None = None) -> Any:
        """A command-line string as a value, then :meth:`check` ed."""
        value: Any = text
        if self.kind == "int" and not (self.auto and text.strip().lower() == "auto"):
            try:
                value = int(text)
            except ValueError:
                pass  # _check reports it
        return self.check(value, name)

    def _check(self, v: Any) -> Any:
        if v is None and (self.optional or self.auto):
            return None if self.optional else "auto"
        if self.auto and isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        kind = self.kind
        if kind == "int":
            if not _is_int(v):
                raise _Problem(f"expected {'auto or ' if self.auto else ''}an integer, got {describe(v)}")
            self._in_range(int(v), v)
            return int(v)
        if kind == "number":
            try:
                x = _number(v)
            except ValueError:
                raise _Problem(f"expected {'auto or ' if self.auto else ''}a number, got {describe(v)}") from None
            if not math.isfinite(x):
                raise _Problem(f"expected a finite number, got {describe(v)}")
            self._in_range(x, v)
            return x
        if kind == "choice":
            if v not in self.choices:
                raise _Problem(f"expected one of {', '.join(self.choices)}, got {describe(v)}")
            return v
        if kind == "text":
            if not isinstance(v, str) or not v.strip():
                raise _Problem(f"expected a non-empty string, got {describe(v)}")
            return v
        if kind == "flag":
            if not isinstance(v, bool):
                raise _Problem(f"expected true or false, got {describe(v)}")
            return v
        if kind == "size":
            return _size(v)
        if kind == "shape":
            return _shape(v)
        if kind == "label":
            if (isinstance(v, (int, float, str)) and not isinstance(v, bool)) or _is_real(v):
                return v
            raise _Problem(f"expected a class label (a number or a string), got {describe(v)}")
        if kind == "pairs":
            if isinstance(v, Mapping):
                return dict(v)
            raise _Problem(f"expected a mapping of KEY: VALUE, got {describe(v)}")
        raise AssertionError(kind)  # pragma: no cover - a kind this module does not define

    def _in_range(self, x: float, shown: Any) -> None:
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            if not ((x > lo if self.exclusive else x >= lo) and x < hi):
                raise _Problem(f"must lie in {'(' if self.exclusive else '['}{lo:g}, {hi:g}), got {shown}")
        elif lo is not None and self.exclusive and not x > lo:
            raise _Problem(f"must be {'positive' if lo == 0 else f'> {lo:g}'}, got {shown}")
        elif lo is not None and x < lo:
            if self.kind == "int":
                raise _Problem(f"must be at least {lo:g}, got {shown}")
            raise _Problem(f"must be >= {lo:g}, got {shown}")


class _Problem(Exception):
    """What is wrong with a value; :meth:`Option.check` adds the option's name."""


def _size(v: Any) -> int | str:
    from dask.utils import parse_bytes

    if isinstance(v, bool) or (not isinstance(v, (str,)) and not _is_int(v)):
        raise _Problem(f"expected a size such as 32MiB, got {describe(v)}")
    try:
        if int(parse_bytes(v)) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise _Problem(f"expected a positive size such as 32MiB, got {describe(v)}") from None
    return v


def _shape(v: Any) -> str | tuple[int, ...]:
    if isinstance(v, (list, tuple)) and 1 <= len(v) <= 2 and all(_is_int(s) and s > 0 for s in v):
        return type(v)(int(s) for s in v)  # a job file's list stays a list
    if isinstance(v, str):
        parts = v.lower().replace("×", "x").split("x")
        if 1 <= len(parts) <= 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
            return v
    raise _Problem(f"expected HxW such as 28x28 or [28, 28], got {describe(v)}")


def to_bytes(size: int | str | None) -> int | None:
    """A checked ``size`` option's value in bytes (None stays None)."""
    from dask.utils import parse_bytes

    return None if size is None else int(parse_bytes(size))


# ---------------------------------------------------------------------------- a group
@dataclass(frozen=True)
class Group:
    """A group of options: a job-file section (``section``, or top-level keys if None) and
    a decorator of the commands that take them."""

    name: str
    options: tuple[Option, ...]
    section: str | None = None

    def __iter__(self) -> Iterator[Option]:
        return iter(self.options)

    def __getitem__(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(o.name == name for o in self.options)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def job_options(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.job)

    def defaults(self, job: bool = False) -> dict[str, Any]:
        """Every option's default (``job``: only those job files accept)."""
        return {o.name: o.default for o in self.options if o.job or not job}

    def with_defaults(self, **defaults: Any) -> Group:
        """This group with other defaults (e.g. the seed of a job's samples is 0, not fresh)."""
        unknown = set(defaults) - set(self.names)
        if unknown:
            raise KeyError(", ".join(sorted(unknown)))
        return replace(self, options=tuple(replace(o, default=defaults[o.name]) if o.name in defaults else o
                                           for o in self.options))

    def check(self, names: Mapping[str, str] | None = None, **values: Any) -> dict[str, Any]:
        """Check the given values of this group's options (Python API): returns them normalised.

        ``names`` maps an option to the name the caller knows it by (an estimator's
        ``n_components`` for ``components``), for the message.
        """
        names = names or {}
        out = {}
        for key, value in values.items():
            out[key] = self[key].check(value, names.get(key, key))
        return out

    def check_section(self, value: Any, where: str) -> dict[str, Any]:
        """Check a job file's mapping for this group. Raises :class:`OptionError` named
        ``where.key`` (an unknown key: ``where`` alone, with the closest known key)."""
        known = tuple(o.name for o in self.job_options())
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise OptionError(where, f"expected a mapping of {', '.join(known)}; got {describe(value)}")
        out = {}
        for key, v in value.items():
            key = str(key)
            if key not in known:
                raise UnknownKeyError(f"{where}.{key}", suggest(key, known, prefix=f"{where}."))
            out[key] = self[key].check(v, f"{where}.{key}")
        return out

    # -- the command line ---------------------------------------------------
    def click(self, *, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (),
              overrides: bool = False, required: tuple[str, ...] = (),
              help: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None,
              shown: Mapping[str, str] | None = None) -> Callable:
        """A decorator adding this group's command-line options to a click command.

        ``overrides``: the options default to None and their help says the default is
        the job's (``daskgen run``). ``help``, ``defaults`` and ``shown`` replace an
        option's help text, default or default as ``--help`` shows it for this command;
        ``required`` options have no default.
        """
        chosen = [o for o in self.options if o.cli and (only is None or o.name in only) and o.name not in exclude]
        if only is not None:  # keep the order the caller asked for
            chosen.sort(key=lambda o: only.index(o.name))

        def decorate(func: Callable) -> Callable:
            for opt in reversed(chosen):
                func = click_option(opt, overrides=overrides, required=opt.name in required,
                                    help=(help or {}).get(opt.name),
                                    default=(defaults or {}).get(opt.name, opt.default),
                                    shown=(shown or {}).get(opt.name))(func)
            return func

        return decorate


class UnknownKeyError(InputError):
    """A job file's key no option has: ``args`` are the key and the suggestion."""

    def __init__(self, key: str, hint: str):
        self.key, self.hint = key, hint
        super().__init__(f"unknown key {key!r}{hint}")


# ---------------------------------------------------------------------------- click
def click_option(opt: Option, *, overrides: bool = False, required: bool = False, help: str | None = None,
                 default: Any = None, shown: str | None = None) -> Callable:
    """The click option of ``opt`` (see :meth:`Group.click`)."""
    import click

    shown = shown or replace(opt, default=default).default_text
    text = help or opt.help
    names = [opt.cli_flag, *([opt.short] if opt.short else [])]
    decls = [*names, opt.argument] if opt.argument != opt.cli_flag.lstrip("-").replace("-", "_") else names
    if opt.kind == "flag":
        return click.option(*decls, is_flag=True, default=False if overrides else bool(default), help=text)
    if opt.kind == "pairs":
        return click.option(*decls, multiple=True, metavar="KEY=VALUE", type=_pairs_param(opt), help=text)
    kwargs: dict[str, Any] = {"type": _option_param(opt)}
    if opt.envvar:
        kwargs["envvar"] = opt.envvar
    if required:
        kwargs["required"] = True
    elif overrides:
        text += f"  [default: the job's, else {shown}]"
    else:
        kwargs["default"] = default
        text += f"  [default: {shown}]"
    kwargs["help"] = text
    return click.option(*decls, **kwargs)


def _bad_parameter(opt: Option, problem: str) -> Exception:
    """click's BadParameter, shown as daskgen shows every bad value: one line, exit code 2."""
    import click

    class OneLine(click.BadParameter):
        def show(self, file: Any = None) -> None:
            click.echo(f"daskgen: error: {opt.cli_flag}: {self.message}", err=True)

    return OneLine(problem)


def _option_type():
    import click

    class OptionType(click.ParamType):
        """Converts a command-line string with :meth:`Option.parse`."""

        def __init__(self, opt: Option):
            self.opt = opt
            self.name = opt.kind

        def get_metavar(self, param: Any, ctx: Any = None) -> str | None:
            if self.opt.kind == "choice":
                return "[" + "|".join(self.opt.choices) + "]"
            name = {"int": "INTEGER", "number": "FLOAT", "size": "SIZE", "shape": "HxW"}.get(self.opt.kind, "TEXT")
            return f"auto|{name}" if self.opt.auto else name

        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            if value is None or not isinstance(value, str):
                return value  # a default, already valid
            try:
                return self.opt.parse(value)
            except OptionError as exc:
                raise _bad_parameter(self.opt, exc.problem) from None

        def shell_complete(self, ctx: Any, param: Any, incomplete: str) -> list:
            from click.shell_completion import CompletionItem

            return [CompletionItem(c) for c in self.opt.choices if c.startswith(incomplete)]

    return OptionType


def _option_param(opt: Option):
    """The click type of ``opt`` (its class made on first use, so click loads with the CLI only)."""
    return _option_type()(opt)


def _pairs_param(opt: Option):
    """The click type of a ``pairs`` option: one KEY=VALUE (VALUE parsed as JSON when it is)."""
    import json

    import click

    class PairsType(click.ParamType):
        name = "pairs"

        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, tuple):
                return value
            key, sep, text = str(value).partition("=")
            if not sep or not key:
                raise _bad_parameter(opt, f"expected KEY=VALUE, got {value!r}")
            try:
                return key, json.loads(text)
            except ValueError:
                return key, text

    return PairsType()


def pairs(items: tuple[tuple[str, Any], ...] | None) -> dict[str, Any]:
    """The dict of a ``pairs`` option's command-line values."""
    return dict(items or ())


# ---------------------------------------------------------------------------- the definitions
#: Fan-in of every tree reduction (fit, EM, evaluate, NDB).
SPLIT_EVERY = Option("split_every", "int", 8, "Fan-in of the tree reduction.", minimum=2)

#: How the inputs are read (top-level keys of a job file).
READ = Group("read", (
    Option("label_column", "text", "label", "Name of the label column (CSV/Parquet) or labels array (Zarr)."),
    Option("format", "choice", None, "Input format.", choices=("csv", "parquet", "zarr"), optional=True,
           default_help="from the file names", dest="fmt"),
    Option("blocksize", "size", "32MiB", "Bytes of input per read task.", optional=True),
    Option("image_shape", "shape", None, "Image shape HxW.", optional=True,
           default_help="from Zarr, or square when D is a perfect square"),
    Option("scale", "number", "auto", "Multiply pixels by this (a number or a fraction such as 1/255); "
           "auto: 1/255 for integer pixels, 1 for floats.", minimum=0, exclusive=True, auto=True),
    Option("storage_options", "pairs", None, "fsspec storage option (repeatable).", flag="--storage-option",
           dest="storage", optional=True, default_help="none", job=False),
))

REG_COVAR = Option(
    "reg_covar", "number", "auto",
    "Added to each covariance's diagonal, model units squared; auto: scale^2/12 (the dequantization noise's "
    "variance) for integer pixels, else 0; mixtures at least 1e-6; 0.1 in logit space.", minimum=0, auto=True)

#: One Gaussian per class (the ``fit`` section of a job file, with :data:`MIXTURE_FIT`).
GAUSSIAN_FIT = Group("fit", (
    Option("covariance", "choice", "full", "full: a D x D covariance per class (pixels correlate); "
           "diag: per-pixel variances only; ppca: W W^T + sigma^2 I with W of q columns (probabilistic "
           "PCA); fa: W W^T + diag(psi) (factor analysis, psi floored at reg_covar).",
           choices=("full", "diag", "ppca", "fa")),
    REG_COVAR,
    Option("rank", "int", None, "ppca/fa: q, the columns of each class's loadings W.", minimum=1, optional=True,
           default_help="16 with ppca/fa"),
    Option("oversampling", "int", 10, "ppca/fa: extra columns of the randomized sketch (its width is rank + "
           "oversampling).", minimum=0),
    Option("power_iterations", "int", 2, "ppca/fa: passes over the data beyond the two the sketch needs, each "
           "sharpening the top eigenpairs.", minimum=0),
    Option("shrinkage", "choice", "none", "Oracle Approximating Shrinkage of each covariance (one Gaussian per "
           "class).", choices=("none", "oas")),
    SPLIT_EVERY,
    Option("transform", "choice", "none", "logit: model logit(lambda + (1 - 2 lambda) x~) of the dequantized pixels "
           "x~ = (x + u)/256 in [0, 1].", choices=("none", "logit")),
    Option("logit_lambda", "number", None, "lambda of the logit transform.", minimum=0, maximum=0.5, optional=True,
           default_help="1e-6"),
    Option("tiles", "int", None, "Keep each class's D x D statistic and Cholesky factor as T x T tiles spread "
           "over the workers (full covariances no single worker should hold).", minimum=1, optional=True,
           default_help="none: a class's statistic whole on one worker"),
), section="fit")

#: A mixture per class, fitted by EM (``components`` > 1).
MIXTURE_FIT = Group("mixture", (
    Option("components", "int", 1, "Gaussians per class: more than 1 fits a mixture per class by EM.", minimum=1),
    Option("max_iter", "int", 100, "EM: most iterations (passes over the data).", minimum=1),
    Option("tol", "number", 1e-3, "EM: stop when the mean log-likelihood per row changes by less.", minimum=0),
    Option("init", "choice", "kmeans++", "EM: initial centres from a sample of each class (k-means++ then "
           "k-means, or random rows).", choices=("kmeans++", "random")),
    Option("seed", "int", 0, "EM: seed of the initial sample and centres; logit: of the dequantization noise.",
           minimum=0),
    Option("prior_rows", "number", 0.0, "EM: weight, in rows, of a prior pulling each component's covariance "
           "toward its class's (0: maximum likelihood).", minimum=0),
    Option("init_sample", "int", 10_000, "EM: rows per class the initialisation looks at.", minimum=1, cli=False),
), section="fit")

#: Drawing samples into a store (the ``sample`` section of a job file).
SAMPLE = Group("sample", (
    Option("n", "int", 10_000, "Number of samples.", minimum=1),
    Option("seed", "int", None, "Random seed.", minimum=0, optional=True,
           default_help="a new one, recorded; a resumed store keeps its own"),
    Option("chunk_size", "int", 10_000, "Rows per output chunk and task.", minimum=1),
    Option("dtype", "choice", "float32", "float32/float64: model units; uint8: clipped and rounded to pixel "
           "units.", choices=("float32", "float64", "uint8")),
    Option("class", "label", None, "Sample this class only.", optional=True, dest="label",
           default_help="classes drawn from the prior p(y)"),
), section="sample")

#: Scoring held-out data.
EVALUATE = Group("evaluate", (
    Option("dequantize", "choice", "auto", "Add uniform noise of one pixel unit to integer pixels for the "
           "log-likelihood (auto: when they are integers).", choices=("auto", "yes", "no")),
    Option("seed", "int", 0, "Seed of the dequantization noise.", minimum=0),
    SPLIT_EVERY,
))

#: NDB of generated samples (``daskgen evaluate-samples``).
NDB = Group("ndb", (
    Option("bins", "int", 100, "Number of k-means bins k.", minimum=2),
    Option("alpha", "number", 0.05, "Significance level of each bin's two-proportion z-test.", minimum=0,
           exclusive=True, maximum=1),
    Option("seed", "int", 0, "Seed of the k-means++ initial centres.", minimum=0),
    Option("max_iter", "int", 100, "Most Lloyd iterations of the k-means.", minimum=1),
    SPLIT_EVERY,
))

#: Where the work runs (the ``cluster`` section of a job file).
CLUSTER = Group("cluster", (
    Option("scheduler", "text", None, "Address of a running Dask scheduler (tcp://host:8786).", optional=True,
           envvar="DASK_SCHEDULER_ADDRESS", default_help="none: start a local cluster"),
    Option("scheduler_file", "text", None, "Scheduler file of a running Dask cluster.", optional=True,
           default_help="none"),
    Option("workers", "int", None, "Start a local cluster of N worker processes.", minimum=1, optional=True,
           default_help="one worker, a thread per core"),
    Option("threads_per_worker", "int", None, "Threads per local worker.", minimum=1, optional=True,
           default_help="auto"),
    Option("memory_limit", "size", None, "Memory limit per local worker, e.g. 2GiB.", optional=True, auto=True,
           default_help="auto"),
    Option("quiet", "flag", False, "No progress bars or dashboard link.", short="-q", job=False),
), section="cluster")

#: The memory plan (``daskgen.planning``) of fit, sample, evaluate and run.
PLAN = Group("plan", (
    Option("dry_run", "flag", False, "Print the memory plan (peak per worker and on the client, per stage) and exit, "
           "reading only the inputs' headers and metadata: exit code 0 when it fits, 2 when it does not.", job=False),
    Option("ignore_plan", "flag", False, "Run even when the memory plan says a stage will not fit (the plan is an "
           "estimate, at or above the measured peaks): a warning instead of the refusal; workers may then be killed.",
           job=False),
))

#: Every group, for the README's tables and the tests.
GROUPS: tuple[Group, ...] = (READ, GAUSSIAN_FIT, MIXTURE_FIT, SAMPLE, EVALUATE, NDB, CLUSTER, PLAN)
