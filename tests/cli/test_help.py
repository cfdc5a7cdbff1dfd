"""Every option that takes a value says its default in --help (issue 12, point 10)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from hookvisor.cli.main import build_parser


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def test_every_valued_option_shows_its_default() -> None:
    missing = []
    for parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.help is None:
                continue
            if action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings)}")
    assert missing == []
