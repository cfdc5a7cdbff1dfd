"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import re
from typing import Any, NoReturn

from hookvisor.config import Settings, load_settings

CONFIG_HELP = ("TOML config file (default: $HOOKVISOR_CONFIG, else "
               "/etc/hookvisor/hookvisor.toml if present)")
STATE_DIR_HELP = ("state dir: records, property definitions (default: $HOOKVISOR_STATE_DIR, "
                  "else the config file's state_dir, else /var/lib/hookvisor)")


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

    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
    parser.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                        help=STATE_DIR_HELP)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is False or default is argparse.SUPPRESS
                or action.option_strings == [] or action.nargs == 0):
            return text
        if default is None or default == []:
            # Not set: no filter, no value, nothing written; said so all the same.
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (`hookvisor X: message`) and exit 2, as every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        # Unknown arguments would otherwise travel up to the top-level parser
        # and be reported with its multi-line usage.
        namespace, extras = super().parse_known_args(*args, **kwargs)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


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
