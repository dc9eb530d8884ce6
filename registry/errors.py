"""User-facing errors: one readable line per problem (key, given, allowed, nearest match)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecError(Exception):
    """A problem the user can fix in a recipe, an override or an input file.

    ``lines`` holds one line per problem; the CLI prints them and exits with code 2.
    """

    def __init__(self, lines: str | Iterable[str]):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


def nearest(given: object, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or an empty string."""
    match = difflib.get_close_matches(str(given), list(allowed), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def problem(key: str, given: object, allowed: str, hint: str = "") -> str:
    """Format one problem line: ``key: given X, allowed: Y[ hint]``."""
    return f"{key}: given {given!r}, allowed: {allowed}{hint}"


def choice(key: str, given: object, allowed: Iterable[str]) -> str:
    """A problem line for a name that must be one of ``allowed``."""
    allowed = list(allowed)
    return problem(key, given, ", ".join(allowed), nearest(given, allowed))
