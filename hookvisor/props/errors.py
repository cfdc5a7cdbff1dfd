"""The one exception of the property registry, carrying every problem found."""

from __future__ import annotations

from collections.abc import Iterable


class PropertyError(ValueError):
    """Custom properties refused; `problems` lists each one, `str()` joins them.

    A ValueError so that callers that only want "bad input" need not know us.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("; ".join(self.problems))


class DefinitionError(PropertyError):
    """A definition (`-s KEY=VALUE`) refused; the stored value is unchanged."""


def shorten(value: str, limit: int = 60) -> str:
    """`value` as a quoted literal cut to `limit` characters, for messages.

    repr() so that control characters, newlines and NULs stay visible and a
    hostile value cannot forge extra log lines.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
