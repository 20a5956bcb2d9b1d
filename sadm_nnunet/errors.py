"""The project's one error convention.

Library code (everything outside `sadm_nnunet/commands`) raises `InputError` for bad input from the user: a file, a
folder, a setting or a value that is not what it must be. The message names the file (or setting), the value found
and the value expected, in one line. Commands turn it into a one-line exit with `one_line_errors`; library code
never raises `SystemExit` itself.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class InputError(ValueError):
    """Bad input from the user: the message names the file or setting, the value found and the value expected."""


def one_line_errors(prog: str) -> Callable[[F], F]:
    """Decorates a command's `main`: an `InputError` ends the command with `PROG: error: MESSAGE` and exit status 1
    instead of a traceback."""

    def decorate(main: F) -> F:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except InputError as e:
                raise SystemExit(f"{prog}: error: {e}") from None

        return wrapper  # type: ignore[return-value]

    return decorate
