"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
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
