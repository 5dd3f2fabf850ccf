"""Numbers in sentences for the user: ``counted(1, "line")`` is "1 line", ``counted(2, "line")``
"2 lines"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and the noun, singular for exactly one."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def agreeing(count: int, singular: str, plural: str) -> str:
    """The verb (or any word) that agrees with ``count``: ``agreeing(1, "names", "name")``."""
    return singular if count == 1 else plural
