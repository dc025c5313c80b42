"""Training-side subcommands: ``models prepare|list``."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list and prepare base models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    prepare = models_sub.add_parser("prepare", help="build a plain HF checkpoint of a base model")
    prepare.add_argument("name", help="base model name, e.g. gemma-3-270m")
    prepare.add_argument("--force", action="store_true", help="rebuild even if prepared")
    prepare.set_defaults(func=_prepare)

    listing = models_sub.add_parser("list", help="list preparable base models")
    listing.set_defaults(func=_list)


def _prepare(args: argparse.Namespace) -> int:
    from training.prepare import prepare_base_model

    prepare_base_model(args.name, force=args.force, progress=lambda line: print(line, flush=True))
    return 0


def _list(args: argparse.Namespace) -> int:
    from training.base_models import PREPARED_MARKER, base_models

    for name, spec in base_models().items():
        state = "prepared" if (spec.prepared_dir / PREPARED_MARKER).is_file() else "not prepared"
        print(f"{name:20} {state:13} {spec.description}")
    return 0
