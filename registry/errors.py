"""User-facing errors: one readable line per problem (key, given, allowed, nearest match)."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable


class SpecError(Exception):
    """A problem the user can fix in a recipe, an override or an input file.

    ``lines`` holds one line per problem; the CLI prints them and exits with code 2.
    """

    def __init__(self, lines: str | Iterable[str]):
        lines = [lines] if isinstance(lines, str) else list(lines)
        # a value from a file (a key holding a newline) cannot split a problem over two lines
        self.lines = [line.replace("\r", "\\r").replace("\n", "\\n") for line in lines]
        super().__init__("\n".join(self.lines))


def unusual_characters(text: object) -> str:
    """`` (contains U+043E CYRILLIC SMALL LETTER O)`` for characters outside printable ASCII,
    or an empty string.

    A homoglyph (Cyrillic 'о' for Latin 'o') or an invisible character (zero-width space,
    right-to-left mark) makes a name look right and fail to match; the error must show why.
    """
    found = dict.fromkeys(c for c in str(text) if not (" " <= c <= "~"))
    if not found:
        return ""
    names = [f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed character')}" for c in list(found)[:3]]
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f" (contains {', '.join(names)}{more})"


def nearest(given: object, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or an empty string; names a
    look-alike or invisible character in ``given`` when there is one."""
    match = difflib.get_close_matches(str(given), list(allowed), n=1, cutoff=0.5)
    return (f" (did you mean {match[0]!r}?)" if match else "") + unusual_characters(given)


def shown(given: object) -> str:
    """``repr(given)``, with characters outside printable ASCII escaped when the value is text
    (so 'r\\u043epe' cannot pass for 'rope') and long values cut to 120 characters."""
    text = ascii(given) if isinstance(given, str) and unusual_characters(given) else repr(given)
    return text if len(text) <= 120 else f"{text[:100]}...({len(text)} characters)"


def problem(key: str, given: object, allowed: str, hint: str = "") -> str:
    """Format one problem line: ``key: given X, allowed: Y[ hint]``."""
    return f"{key}: given {shown(given)}, allowed: {allowed}{hint}"


def choice(key: str, given: object, allowed: Iterable[str]) -> str:
    """A problem line for a name that must be one of ``allowed``."""
    allowed = list(allowed)
    return problem(key, given, ", ".join(allowed), nearest(given, allowed))
