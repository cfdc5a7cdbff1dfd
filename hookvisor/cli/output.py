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
        if self.rich:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""))
        else:
            print(text, file=self.stream)

    def table(self, title: str | None, columns: Sequence[str], rows: list[list[str]],
              styles: list[str | None] | None = None, keep: Sequence[str] = ()) -> None:
        if self.rich:
            from rich.table import Table

            table = Table(title=title, title_justify="left", show_lines=False,
                          box=None, pad_edge=False, header_style="bold")
            for column in columns:
                if column in keep:
                    table.add_column(column, no_wrap=True, overflow="ignore")
                else:
                    table.add_column(column, no_wrap=True, overflow="ellipsis")
            for i, row in enumerate(rows):
                table.add_row(*row, style=(styles[i] if styles else None))
            self.console.print(table)
            return
        if title:
            print(title, file=self.stream)
        # A value's own newlines would break "one record per line".
        rows = [[cell.replace("\n", " ") for cell in row] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        for row in [list(columns), *rows]:
            cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
            print("  ".join(cells).rstrip(), file=self.stream)

    def block(self, label: str, text: str, diff: bool = False) -> None:
        if not text:
            return
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
