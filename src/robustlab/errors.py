"""The one exception type for mistakes a user can fix, and the note for renamed spellings."""

from __future__ import annotations

import sys
from typing import Any


class UserError(Exception):
    """Bad input from a user: the CLI prints the message on one line and exits with status 2."""


def deprecated(old: str, new: str) -> None:
    """One line on stderr: an old spelling still works, for one release."""
    sys.stderr.write(f"robustlab: note: {old} is deprecated; use {new}\n")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # default of a renamed keyword: "not given"


def renamed(where: str, old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of a renamed keyword argument: `new_value`, or, when the caller still used the
    old keyword (`old_value` is not `UNSET`), that value with a one-line deprecation note.

        def f(*, n_test: int = 10, n: int = UNSET):
            n_test = renamed("f", "n", n, "n_test", n_test)
    """
    if old_value is UNSET:
        return new_value
    deprecated(f"{where}({old}=…)", f"{new}=")
    return old_value
