"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import re
from typing import Any

from hookvisor.config import Settings, load_settings


class UsageError(Exception):
    """Bad arguments found after parsing; exits 2 with the message.

    Defined here, not in main.py, so that `python -m hookvisor.cli.main` (which
    loads main.py a second time as __main__) still catches the same class.
    """


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from --config, the environment, --state-dir and the given flags."""
    merged = {"state_dir": getattr(args, "state_dir", None), **overrides}
    return load_settings(getattr(args, "config", None), merged)


def parse_assignment(text: str, what: str, form: str = "NAME=VALUE") -> tuple[str, str]:
    """'NAME=VALUE' -> (NAME, VALUE); raises UsageError naming the option and its `form`."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"{what}: expected {form}, got {text!r}")
    return name, value


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Let --config/--state-dir also follow the subcommand (`hookvisor config -g X --state-dir D`).

    SUPPRESS keeps a subparser from overwriting a value given before the subcommand.
    """
    from pathlib import Path

    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="TOML config file")
    parser.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                        help="state dir (or HOOKVISOR_STATE_DIR)")


# C0 (but tab), DEL, C1 and the Unicode line separators: what moves a
# terminal's cursor, retitles it (OSC), or splits a log line.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def visible(text: str, newlines: bool = False) -> str:
    """`text` with control characters as `\\xNN` (newlines kept if `newlines`):
    what a hook or a client wrote, safe to print to a terminal or a log line."""
    pattern = _CONTROL_BUT_NEWLINE if newlines else _CONTROL
    return pattern.sub(_escape, text) if pattern.search(text) else text
