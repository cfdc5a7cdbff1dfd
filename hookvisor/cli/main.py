"""`hookvisor` console script: one argparse tree, one module per command group.

Each command module exposes `register(subparsers)`; the handler it sets with
`set_defaults(func=...)` gets the parsed args and returns the exit status.
Usage errors exit 2 with one line; no command ever ends in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from hookvisor.cli.common import UsageError
from hookvisor.config import ConfigError

# Command groups, each in hookvisor/cli/<module>.py.
COMMAND_MODULES = ("hooks_cmd", "config_cmd", "vm_cmd", "net_cmd", "serve_cmd", "pki_cmd")


__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookvisor", description="Per-host VM agent with a VDSM-compatible hook engine."
    )
    parser.add_argument("--config", type=Path, help="TOML config file "
                        "(default /etc/hookvisor/hookvisor.toml if present)")
    parser.add_argument("--state-dir", type=Path, help="state dir (records, properties); "
                        "or HOOKVISOR_STATE_DIR")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except (UsageError, ConfigError) as e:
        print(f"hookvisor: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
