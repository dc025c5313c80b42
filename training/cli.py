"""Training-side subcommands: ``models prepare|list``, ``train``, ``export``."""

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

    train = subparsers.add_parser("train", help="train a LoRA/QLoRA adapter from a YAML config")
    train.add_argument(
        "config", help="training config (YAML), e.g. training/configs/docker-lora.yaml"
    )
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set max_steps=10",
    )
    train.add_argument(
        "--log-file", help="JSON-lines progress log (default <output_dir>/<name>.train.jsonl)"
    )
    train.set_defaults(func=_train)

    export = subparsers.add_parser("export", help="export an adapter (merged into its base model)")
    export.add_argument("name", help="adapter name (under $TUNESERVE_HOME/adapters) or folder")
    export.add_argument(
        "--merge",
        metavar="OUT",
        required=True,
        help="write the base model with the adapter merged in, as safetensors, to OUT",
    )
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    export.set_defaults(func=_export)


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


def _train(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from training.config import load_config
    from training.sft import TrainingCancelled, train

    config = load_config(args.config, args.overrides)
    for note in config.notes:  # keys accepted but meaningless here: one line each
        print(f"warning: {note}", file=sys.stderr)
    try:
        path = train(config, log_file=Path(args.log_file) if args.log_file else None)
    except TrainingCancelled as exc:
        print(f"training cancelled ({exc}); no adapter written", file=sys.stderr)
        return 130
    from training.manifest import read_manifest

    manifest = read_manifest(path)
    metrics = manifest.get("metrics", {})
    eval_part = f", eval_loss {metrics['eval_loss']:.4f}" if metrics.get("eval_loss") else ""
    print(
        f"adapter {config.name} written to {path} ({manifest.get('steps')} steps, "
        f"train_loss {metrics.get('train_loss', float('nan')):.4f}{eval_part}, "
        f"{manifest.get('tokens_per_s')} tokens/s, {manifest.get('train_seconds')} s)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.export import export_merged

    out = export_merged(args.name, Path(args.merge), force=args.force)
    print(f"merged model written to {out}")
    return 0
