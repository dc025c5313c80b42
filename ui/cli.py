"""``tuneserve ui --server URL``: run the Gradio app on its own against any server (fixed
at start: the page has no field to change it)."""

from __future__ import annotations

import argparse
import os


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    ui = subparsers.add_parser(
        "ui", help="run the web UI against a tuneserve server (it also runs at /ui in serve)"
    )
    ui.add_argument(
        "--server",
        default=os.environ.get("TUNESERVE_SERVER_URL", "http://127.0.0.1:8000"),
        help="the tuneserve server URL (default $TUNESERVE_SERVER_URL or http://127.0.0.1:8000)",
    )
    ui.add_argument(
        "--api-key",
        default=os.environ.get("TUNESERVE_API_KEY"),
        help="log every visitor of the UI in with this key, kept in the UI process and never "
        "sent to the page (default $TUNESERVE_API_KEY; without it, the page asks for a key)",
    )
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=7860, help="port to bind (default 7860)")
    ui.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tuneserve.errors import UserError
    from ui.app import build_ui

    if not args.server.startswith(("http://", "https://")):
        raise UserError(f"--server must be an http(s) URL, got {args.server!r}")
    demo = build_ui(args.server, args.api_key)
    print(f"tuneserve UI for {args.server} on http://{args.host}:{args.port}", flush=True)  # noqa: T201
    try:
        demo.launch(server_name=args.host, server_port=args.port, footer_links=[], quiet=True)
    except OSError as exc:
        raise UserError(f"cannot start the UI on {args.host}:{args.port}: {exc}") from None
    return 0
