"""`hookvisor` console script: one argparse tree, one module per command group.

Each command module exposes `register(subparsers)`; the handler it sets with
`set_defaults(func=...)` gets the parsed args and returns the exit status.
Usage errors exit 2 with one line; no command ever ends in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hookvisor.cli.common import CONFIG_HELP, STATE_DIR_HELP, OneLineParser, UsageError
from hookvisor.config import ConfigError

# Command groups, each in hookvisor/cli/<module>.py.
COMMAND_MODULES = ("hooks_cmd", "config_cmd", "vm_cmd", "net_cmd", "serve_cmd", "pki_cmd")


__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="hookvisor", description="Per-host VM agent with a VDSM-compatible hook engine."
    )
    parser.add_argument("--version", action="version", version=f"hookvisor {_version()}")
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.add_argument("--state-dir", type=Path, help=STATE_DIR_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hookvisor.cli.{name}")
        except ModuleNotFoundError as e:
            # A command group not written yet must not break the others.
            if e.name == f"hookvisor.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from hookvisor import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        status: int = args.func(args)
        sys.stdout.flush()
    except (UsageError, ConfigError) as e:
        print(f"hookvisor: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `hookvisor ... | head`: the reader has what it wanted. Point stdout at
        # /dev/null so that the interpreter's own flush at exit stays quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
