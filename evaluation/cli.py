"""Evaluation subcommands: ``eval run|history|schedule``.

Exit codes: 0 ok; 1 a regression against the previous run of the suite; 2 bad input
(one readable line, via UserError).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from tuneserve.errors import UserError

EXIT_REGRESSION = 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="evaluate base vs adapters, history, schedules")
    sub = ev.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    run = sub.add_parser(
        "run",
        help="run a suite against an OpenAI-compatible server and write reports",
        description="Exit 0: ok; 1: a metric regressed against the previous run of the "
        "suite by more than its margin; 2: bad input.",
    )
    _add_run_args(run)
    run.set_defaults(func=_run)

    hist = sub.add_parser("history", help="list stored runs and metric trends")
    hist.add_argument("--suite", help="only this suite")
    hist.add_argument("--limit", type=int, default=10, help="runs to show (default 10)")
    hist.add_argument(
        "--metrics", default="exact_match,chrf", help="comma-separated metrics to show"
    )
    hist.set_defaults(func=_history)

    sched = sub.add_parser("schedule", help="run a suite on a cron expression (standalone)")
    _add_run_args(sched)
    sched.add_argument("--cron", required=True, help="cron expression, e.g. '0 3 * * *'")
    sched.add_argument("--max-runs", type=int, help="stop after N runs (default: forever)")
    sched.set_defaults(func=_schedule)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="built-in suite name (docker-commands, hotel) or a YAML path")
    p.add_argument(
        "--models",
        required=True,
        help="baseline first, then candidates: 'base,my-adapter' or 'label=model_id,...'; "
        "'base' is the server's base model",
    )
    p.add_argument(
        "--server",
        default=os.environ.get("TUNESERVE_EVAL_SERVER", "http://127.0.0.1:8000/v1"),
        help="OpenAI-compatible base URL (default http://127.0.0.1:8000/v1)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TUNESERVE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        help="API key (default $TUNESERVE_API_KEY or $OPENAI_API_KEY)",
    )
    p.add_argument("--dataset", type=Path, help="dataset file instead of the suite's")
    p.add_argument(
        "--adapter-dir",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="adapter folder (with tuneserve.json) for a model label or id; repeatable",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N held-out examples")
    p.add_argument("--concurrency", type=int, help="requests in flight (suite default)")
    p.add_argument("--judge-model", help="judge model id ('base' = the base), enables the judge")
    p.add_argument("--no-judge", action="store_true", help="skip the suite's judge")
    p.add_argument("--no-perplexity", action="store_true", help="skip reference NLL")
    p.add_argument("--output-dir", type=Path, help="reports root (default $TUNESERVE_HOME/reports)")
    p.add_argument("--no-history", action="store_true", help="do not store this run")
    rows = p.add_mutually_exclusive_group()
    rows.add_argument("--allow-contamination", action="store_true",
                      help="score rows an adapter trained on (refused by default); the report "
                      "says so")
    rows.add_argument("--exclude-trained-rows", action="store_true",
                      help="drop rows an adapter trained on and score the rest")


def _suite_from_args(args: argparse.Namespace):
    from evaluation.suite import load_suite

    overrides: dict = {}
    if args.limit is not None:
        if args.limit <= 0:
            raise UserError("--limit must be positive")
        overrides["dataset"] = {"limit": args.limit}
    if args.concurrency is not None:
        overrides["concurrency"] = args.concurrency
    if args.no_perplexity:
        overrides["perplexity"] = False
    if args.no_judge:
        overrides["judge"] = None
    elif args.judge_model:
        overrides["judge"] = {"model": args.judge_model}
    return load_suite(args.suite, overrides)


def _options(args: argparse.Namespace):
    from evaluation.runner import RunOptions

    adapter_dirs = {}
    for item in args.adapter_dir:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter-dir wants NAME=DIR, got {item!r}")
        if not Path(path).is_dir():
            raise UserError(f"--adapter-dir {name}: no such folder {path}")
        adapter_dirs[name] = Path(path)
    if args.dataset is not None and not args.dataset.is_file():
        raise UserError(f"--dataset: no such file {args.dataset}")
    return RunOptions(
        server=args.server.rstrip("/"),
        api_key=args.api_key,
        dataset=args.dataset,
        adapter_dirs=adapter_dirs,
        contamination="allow" if args.allow_contamination
        else "exclude" if args.exclude_trained_rows else "refuse",
    )


def _quiet_http_logs() -> None:
    # One INFO line per request from the HTTP client would bury the summary table.
    for name in ("httpx", "httpx2", "openai", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_once(args: argparse.Namespace) -> int:
    from evaluation.pipeline import run_and_report

    _quiet_http_logs()
    from evaluation.report import headline, summary_table

    suite = _suite_from_args(args)
    result = run_and_report(
        suite,
        args.models,
        _options(args),
        output_root=args.output_dir,
        store=not args.no_history,
    )
    record = result.record
    header, rows = summary_table(record)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    for line in headline(record):
        print(line)
    for note in record.get("notes", []):
        print(f"note: {note}")
    print(f"report: {result.paths['html']}")
    if result.regressed:
        for reg in record["regression"]["regressions"]:
            print(f"REGRESSION: {reg['description']}")
        return EXIT_REGRESSION
    return 0


def _run(args: argparse.Namespace) -> int:
    return _run_once(args)


def _history(args: argparse.Namespace) -> int:
    from evaluation.history import History

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    runs = list(reversed(History().runs(args.suite, limit=args.limit)))
    if not runs:
        print("no evaluation runs stored" + (f" for suite {args.suite}" if args.suite else ""))
        return 0
    previous: dict[tuple[str, str, str], float] = {}
    for run in runs:
        flag = "  REGRESSION" if run.regressed else ""
        print(f"#{run.id}  {run.started_at}  {run.suite}{flag}")
        for label, values in run.metrics.items():
            cells = []
            for metric in metrics:
                if metric not in values:
                    continue
                value = values[metric]
                before = previous.get((run.suite, label, metric))
                trend = ""
                if before is not None:
                    trend = " ↑" if value > before else " ↓" if value < before else " ="
                cells.append(f"{metric}={value:.4g}{trend}")
                previous[(run.suite, label, metric)] = value
            print(f"    {label:20} " + "  ".join(cells))
    return 0


def _schedule(args: argparse.Namespace) -> int:
    import asyncio
    from types import SimpleNamespace

    from evaluation.scheduler import EvalScheduler, validate_cron

    validate_cron(args.cron)
    _suite_from_args(args)  # fail now on a bad suite, not at 3 am
    entry = SimpleNamespace(cron=args.cron, label=f"[{args.cron}]")

    async def runner(_: object) -> int:
        return await asyncio.to_thread(_run_once, args)

    codes = asyncio.run(EvalScheduler([entry], runner, max_runs=args.max_runs).run())
    return max(codes, default=0)
