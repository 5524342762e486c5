"""What every command does with bad input: one line naming what is wrong, exit status 2.

Exit statuses mean one thing in every command: 0 done; 1 the answer is "no" (the run does not fit, a file has
invalid items, a replay diverged); 2 bad input (an option, a size, a model, a file that cannot be read or written).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click

#: Suffixes of the images ``plot`` and ``simulate --plot`` draw (matplotlib picks the format from the suffix).
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


class InputError(click.ClickException):
    """Bad input that is not an option's syntax (a model, a size, a file's content): ``Error: ...``, exit 2."""

    exit_code = 2


def bad_input(error: Exception) -> InputError:
    """The one-line error for a typed :class:`~vramgate.errors.VramgateError` or an ``OSError`` on a named file."""
    if isinstance(error, OSError) and error.filename is not None:
        return InputError(f"{error.filename}: {error.strerror or error}")
    return InputError(str(error))


class FiniteFloat(click.FloatRange):
    """A float in a range that is a real number: ``nan`` and ``inf`` are rejected (a range check lets nan pass)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class OutputFile(click.types.StringParamType):
    """A file to write: not a directory, in a directory that exists and can be written, with an allowed suffix.

    Checked when the options are parsed, so that a command fails before it does its work, not after.
    """

    name = "file"

    def __init__(self, suffixes: tuple[str, ...] = ()) -> None:
        self.suffixes = suffixes

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(super().convert(value, param, ctx))
        if path.is_dir():
            self.fail(f"{str(path)!r} is a directory; give a file name.", param, ctx)
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            self.fail(f"{str(path)!r}: directory {str(parent)!r} does not exist.", param, ctx)
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            self.fail(f"{str(path)!r} cannot be written (permission denied).", param, ctx)
        if self.suffixes and path.suffix.lower() not in self.suffixes:
            wanted = ", ".join(self.suffixes)
            got = path.suffix or "no suffix"
            self.fail(f"{str(path)!r}: cannot draw a {got!r} file (use {wanted}).", param, ctx)
        return str(path)
