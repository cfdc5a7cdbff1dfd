"""What every command prints through: rich on a terminal, plain lines when piped.

Piped (or redirected) output is for scripts and `grep`: one record per line,
every value whole, no colour. On a terminal a table fits the terminal's width:
the columns named `keep` (ids an operator copies) are never cut or wrapped,
the others are cut with an ellipsis rather than folded into many lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from hookvisor.cli.common import visible

# A hook run's outcome as `hooks run` and `hooks history` colour it.
OUTCOME_STYLE = {
    "ok": "green",
    "skipped": "dim",
    "failed": "bold red",
    "timeout": "bold red",
    "invalid-output": "bold red",
}


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Out:
    """rich on a terminal, plain text otherwise (pipes, files, tests)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.rich = is_terminal(self.stream)
        self.console: Any = None
        if self.rich:
            from rich.console import Console

            self.console = Console(file=self.stream, highlight=False)

    def line(self, text: str = "", style: str | None = None) -> None:
        # What hooks and other clients wrote: no escape reaches the terminal.
        text = visible(text)
        if self.rich:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""))
        else:
            print(text, file=self.stream)

    def table(self, title: str | None, columns: Sequence[str], rows: list[list[str]],
              styles: list[str | None] | None = None, keep: Sequence[str] = ()) -> None:
        # A value's own newlines and escapes would break "one record per line"
        # or drive the terminal: shown as \xNN.
        rows = [[visible(cell) for cell in row] for row in rows]
        if self.rich:
            self._fitted(title, columns, rows, styles, keep)
            return
        if title:
            print(title, file=self.stream)
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        for row in [list(columns), *rows]:
            cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
            print("  ".join(cells).rstrip(), file=self.stream)

    def _fitted(self, title: str | None, columns: Sequence[str], rows: list[list[str]],
                styles: list[str | None] | None, keep: Sequence[str]) -> None:
        """Aligned columns fitted to the terminal, one line per row: the `keep`
        columns whole, the others share what is left, cut with an ellipsis.

        (rich's Table squeezes no_wrap columns to nothing when a long cell
        wants the width; this never drops a column.)
        """
        from rich.text import Text

        natural = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
        width = self.console.width
        gap = 2 if sum(natural) + 2 * (len(columns) - 1) <= width else 1
        fixed = sum(natural[i] for i, c in enumerate(columns) if c in keep)
        flex = [i for i, c in enumerate(columns) if c not in keep]
        room = width - fixed - gap * (len(columns) - 1)
        widths = list(natural)
        # Flexible columns in their order, each leaving 3 for every one after it.
        for n, i in enumerate(flex):
            later = len(flex) - n - 1
            widths[i] = max(3, min(natural[i], room - 3 * later))
            room -= widths[i]

        def fit(text: str, w: int) -> str:
            return text if len(text) <= w else text[:max(0, w - 1)] + "…"

        if title:
            self.console.print(Text(title, style="bold"), soft_wrap=True)
        lines = [list(columns), *rows]
        for n, row in enumerate(lines):
            cells = [fit(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(row)]
            style = "bold" if n == 0 else (styles[n - 1] if styles else None) or ""
            self.console.print(Text((" " * gap).join(cells).rstrip(), style=style),
                               soft_wrap=True)

    def block(self, label: str, text: str, diff: bool = False) -> None:
        if not text:
            return
        text = visible(text, newlines=True)
        if self.rich:
            from rich.syntax import Syntax
            from rich.text import Text

            self.console.print(Text(f"  {label}:", style="bold"))
            if diff:
                self.console.print(Syntax(text.rstrip("\n"), "diff", theme="ansi_dark",
                                          background_color="default", word_wrap=True))
            else:
                self.console.print(Text(indent(text)))
            return
        print(f"  {label}:", file=self.stream)
        print(indent(text), file=self.stream)

    @contextmanager
    def spinner(self, what: str) -> Iterator[None]:
        """A spinner naming what is under way, on a terminal only (stderr)."""
        err = sys.stderr
        if not is_terminal(err) or os.environ.get("HOOKVISOR_NO_SPINNER"):
            yield
            return
        from rich.console import Console

        with Console(file=err).status(what, spinner="dots"):
            yield


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


def spinner(what: str) -> Any:
    """A spinner on stderr while a call is in flight (nothing when stderr is not a tty)."""
    return Out(sys.stderr).spinner(what)
