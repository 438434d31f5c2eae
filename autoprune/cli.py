"""The ``autoprune`` command: parse, call the library, print.

Each subcommand lives in ``autoprune/commands/<name>.py`` (``-`` spelled ``_``) and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from autoprune.errors import AutopruneError
from autoprune.version import __version__

COMMANDS = ["models", "methods", "flops", "show", "search", "pretrain", "retrain", "finetune", "eval", "export", "latency-table"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune", description="Channel pruning as architecture search under a compute budget."
    )
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"autoprune.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
