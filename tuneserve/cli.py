"""The one console script, ``tuneserve``: subcommands contributed by each package.

Each package (training, service, evaluation, ui) owns a ``cli.py`` with
``add_commands(subparsers)``; a command's handler is ``func(args) -> int`` and imports its
heavy libraries lazily so ``tuneserve --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from tuneserve import __version__
from tuneserve.errors import UserError

# Packages that contribute subcommands, in the order --help lists them.
COMMAND_MODULES = (
    "training.cli",
    "service.cli",
    "evaluation.cli",
    "ui.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneserve",
        description="Fine-tune, serve and evaluate LoRA adapters of small language models.",
    )
    parser.add_argument("--version", action="version", version=f"tuneserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real missing dependency, not an absent package
                raise
            continue
        module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
