"""Small checks for the public boundaries: numbers, arrays and paths.

Every check takes the ``name`` of what it checks (an argument, an option such as
``--lr``, or ``"<file>: input_size"``) and raises ``ValueError("<name>: expected ...,
got ...")`` when the value is wrong, so the message says which input is wrong and what
was expected. On success it returns the value in its canonical type (``float``, ``int``,
``Path``, a float ndarray), so callers write ``lr = finite_float("lr", lr, low=0,
low_open=True)``.

The command line (`napari_prm.cli`), `napari_prm.predict`, `napari_prm.train.train`,
`napari_prm.evaluate.evaluate`, `napari_prm.retrieve_instances`, the checkpoint loader,
the dataset and proposal loaders and the exporters call them. No napari, Qt or torch here.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ._text import value_text

__all__ = [
    "Cancelled",
    "is_cancelled",
    "raise_if_cancelled",
    "boolean",
    "finite_float",
    "finite_floats",
    "integer",
    "positive_int",
    "finite_array",
    "output_folder",
    "output_file",
    "new_checkpoint",
    "unused_path",
    "path_like",
    "path_list",
    "keyword_options",
]


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def _outside(number: float, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (number < low or (low_open and number == low)):
        return True
    return high is not None and (number > high or (high_open and number == high))


class Cancelled(RuntimeError):
    """Raised when a ``cancel`` check turns true (`is_cancelled`): by `napari_prm.predict`, `PRMPredictor`,
    `napari_prm.io.export_instances` and `napari_prm.refine.samples.prepare_samples` (one class, also
    ``napari_prm.predict.Cancelled``)."""


def is_cancelled(cancel) -> bool:
    """Whether ``cancel`` says stop: None (never), a callable returning True, or a
    ``threading.Event`` that is set. The one reading of every ``cancel`` argument
    (`napari_prm.predict`, `PRMPredictor`, `predict_many`, `calibrate_model`, `train`,
    `refine`): an Event given to ``predict`` failed as "'Event' object is not callable".
    """
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def raise_if_cancelled(cancel, *message) -> None:
    """Raise `Cancelled` (with ``message``) when ``cancel`` says stop (`is_cancelled`): the one
    check between the steps of `PRMPredictor`, `napari_prm.io.export_instances` and refine's
    sample preparation."""
    if is_cancelled(cancel):
        raise Cancelled(*message)


def boolean(name: str, value) -> bool:
    """``value`` as a bool: True or False (NumPy's too); anything else, a string ``"no"`` read
    as true, is refused naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name}: expected True or False, got {value!r}")


def finite_float(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False,
                 optional: bool = False) -> float | None:
    """``value`` as a finite float within the bounds (open or closed); None passes when optional.

    Examples
    --------
    >>> finite_float("iou_threshold", 0.5, low=0, high=1, low_open=True)
    0.5
    >>> finite_float("lr", float("nan"), low=0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: lr: expected a finite number > 0, got nan
    """
    if value is None and optional:
        return None
    expected = f"a finite number{_range_text(low, high, low_open, high_open)}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or _outside(number, low, high, low_open, high_open):
        raise ValueError(f"{name}: expected {expected}, got {number!r}")
    return number


def finite_floats(name: str, values, *, length: int | None = None, low: float | None = None,
                  high: float | None = None, low_open: bool = False, high_open: bool = False,
                  unique: bool = False) -> tuple[float, ...]:
    """A non-empty sequence of finite floats within the bounds, of ``length`` when given.

    A mapping's values are checked (and named by their keys: ``balance[3]``).
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name}: expected a sequence of numbers, got {values!r}")
    if isinstance(values, Mapping):
        return tuple(finite_float(f"{name}[{key}]", value, low=low, high=high, low_open=low_open,
                                  high_open=high_open) for key, value in values.items())
    values = list(np.asarray(values, dtype=object).reshape(-1)) if isinstance(values, np.ndarray) \
        else list(values)
    if length is not None and len(values) != length:
        raise ValueError(f"{name}: expected {length} numbers, got {len(values)}: {values!r}")
    if not values:
        raise ValueError(f"{name}: expected at least one number, got none")
    numbers_ = tuple(finite_float(f"{name}[{i}]", v, low=low, high=high, low_open=low_open,
                                  high_open=high_open) for i, v in enumerate(values))
    if unique and len(set(numbers_)) != len(numbers_):
        raise ValueError(f"{name}: expected distinct numbers, got {list(numbers_)}")
    return numbers_


def integer(name: str, value, *, low: int | None = None, high: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` as an int within ``[low, high]``; integral floats (``2.0``) are accepted."""
    if value is None and optional:
        return None
    expected = f"an integer{_range_text(low, high, False, False)}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    else:
        as_float = float(value)
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise ValueError(f"{name}: expected {expected}, got {value!r}")
        number = int(as_float)
    if _outside(number, low, high, False, False):
        raise ValueError(f"{name}: expected {expected}, got {number}")
    return number


def positive_int(name: str, value, *, optional: bool = False) -> int | None:
    """``value`` as an int >= 1 (None passes when optional)."""
    return integer(name, value, low=1, optional=optional)


def input_size(name: str, value, *, square: bool = True, optional: bool = False) -> tuple[int, int] | None:
    """``value`` as an ``(height, width)`` of positive ints: the one check of an input size.

    A single int is a square when ``square`` is true; None passes when ``optional``.
    """
    if value is None and optional:
        return None
    if square and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value, value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        expected = "(height, width)" + (" or an int" if square else "") + (" or None" if optional else "")
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    height, width = (positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    return height, width


def finite_array(name: str, array, *, ndim: int | None = None) -> np.ndarray:
    """``array`` as a numeric ndarray without NaN or infinity (of ``ndim`` dimensions when given)."""
    array = np.asarray(array)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {array.shape}")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.inexact) and array.size and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite "
                         f"value(s) in an array of shape {array.shape}")
    return array


def path_like(name: str, value) -> Path:
    """``value`` (a str or path-like) as a Path."""
    if isinstance(value, (str, os.PathLike)) and str(value) != "":
        return Path(value)
    raise ValueError(f"{name}: expected a file path, got {value_text(value)}")


def path_list(paths) -> list:
    """One path or a sequence of paths as a list: one path is one input.

    The one reading of every public argument that takes "a path or several" (`collect_images`,
    `label_stack`, `unreadable_images`, `evaluate_exports`, ...): a str given alone was read as
    the paths of its characters (``"cat.tif"`` as ``c``, ``a``, ``t``, ...) and a ``Path`` as not
    iterable.

    Parameters
    ----------
    paths : path-like or iterable of path-like
        One path (a str or ``os.PathLike``), or any iterable of them (a list, a tuple, a
        generator).

    Returns
    -------
    list
        ``[paths]`` for one path, else ``list(paths)``; the items as given (not made Paths).

    Examples
    --------
    >>> path_list("cat.tif")
    ['cat.tif']
    >>> path_list(("a.png", "b.png"))
    ['a.png', 'b.png']
    """
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def keyword_options(name: str, options, allowed: Iterable[str]) -> dict:
    """``options`` (None or a mapping of keyword arguments) as a dict whose keys are all in ``allowed``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{name}: expected a dict of keyword arguments, got {type(options).__name__}")
    allowed = sorted(allowed)
    unknown = sorted(str(key) for key in options if key not in allowed)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; expected some of {allowed}")
    return dict(options)


@contextlib.contextmanager
def _os_errors(name: str, path: Path):
    """Asking the file system about ``path`` raised for a name it cannot hold (``File name
    too long``): a ValueError naming the argument instead of a traceback."""
    try:
        yield
    except OSError as error:
        raise ValueError(f"{name}: cannot use {path}: {error.strerror or error}") from error


def output_folder(name: str, path: str | os.PathLike) -> Path:
    """A folder to write into: it may not exist yet, but neither it nor a folder above it
    may be an existing file."""
    path = path_like(name, path)
    with _os_errors(name, path):
        if path.exists() and not path.is_dir():
            raise ValueError(f"{name}: expected a folder, got {path}, which is an existing file")
        ancestor = next((folder for folder in path.parents if folder.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise ValueError(f"{name}: cannot create folder {path}: {ancestor} is a file")
    return path


def output_file(name: str, path: str | os.PathLike, *, parent_must_exist: bool = True,
                suffixes: Iterable[str] | None = None) -> Path:
    """A file to write: not an existing folder, in an existing folder (when asked), with
    one of ``suffixes`` (when given)."""
    path = path_like(name, path)
    with _os_errors(name, path):
        if path.is_dir():
            raise ValueError(f"{name}: expected a file, got {path}, which is a folder")
        ancestor = next((folder for folder in path.parents if folder.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise ValueError(f"{name}: cannot write {path}: {ancestor} is a file, not a folder")
    if parent_must_exist and not path.parent.is_dir():
        raise ValueError(f"{name}: cannot write {path}: its folder {path.parent} does not exist")
    if suffixes is not None:
        suffixes = tuple(suffixes)
        if path.suffix.lower() not in suffixes:
            raise ValueError(f"{name}: expected a file ending in {' or '.join(suffixes)}, got {path}")
    return path


def new_checkpoint(name: str, path: str | os.PathLike, *, overwrite: bool, resume=None,
                   options: tuple[str, str] = ("resume=True", "overwrite=True")) -> None:
    """Refuse to replace an existing checkpoint that a training run does not continue.

    ``train`` and ``refine`` write their checkpoint after every epoch: a new run on an
    existing file replaced a 10-epoch model after one epoch. The file at ``path`` may be
    replaced only with ``overwrite``, or when ``resume`` (True: ``path`` itself, or the
    checkpoint a run continues) is that same file. ``options`` name the resume and
    overwrite switches in the caller's terms (``("--resume", "--overwrite")`` on the
    command line). Raises ``FileExistsError`` naming the file and how to proceed.
    """
    path = Path(path)
    if overwrite or not path.exists():
        return
    resume_option, overwrite_option = options
    if resume is True or (resume and same_file(resume, path)):
        return
    if resume:
        raise FileExistsError(f"{name} {path} exists and is not the checkpoint {resume_option} continues ({resume}): "
                              f"pass {overwrite_option} to replace it, or choose another path")
    raise FileExistsError(f"{name} {path} exists: pass {resume_option} to continue it, {overwrite_option} to "
                          "replace it, or choose another path")


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file (compared as absolute paths when one is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).absolute() == Path(b).absolute()


def unused_path(path: str | os.PathLike) -> Path:
    """``path`` when nothing exists there, else the first of ``<stem>-2<suffix>``,
    ``<stem>-3<suffix>``, ... that is free (a stem already ending in ``-<number>`` counts on
    from it: ``model-2.pt`` becomes ``model-3.pt``)."""
    path = Path(path)
    if not path.exists():
        return path
    stem, _, number = path.stem.rpartition("-")
    start = int(number) + 1 if stem and number.isdigit() else 2
    stem = stem if stem and number.isdigit() else path.stem
    while True:
        candidate = path.with_name(f"{stem}-{start}{path.suffix}")
        if not candidate.exists():
            return candidate
        start += 1
