"""``accelerate launch`` entry of test_training_ddp: ``tuneserve train`` plus a record of
every file this rank creates, writes, renames or removes under ``$DDP_PROBE_ROOT``.

Python's audit hooks see each such call (open for writing, mkdir, rename, remove,
rmtree); the list is written at exit to ``$DDP_PROBE_OUT/rank-N.json`` (outside the root).
"""

from __future__ import annotations

import atexit
import json
import os
import sys

ROOT = os.path.realpath(os.environ["DDP_PROBE_ROOT"])
RANK = int(os.environ.get("RANK", "0"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes: list[list[str]] = []


def _path(value) -> str | None:
    if isinstance(value, (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(value))
        return path if path == ROOT or path.startswith(ROOT + os.sep) else None
    return None


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else False
        if writing or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            targets = [path]
        else:
            return
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
        targets = [args[0]]
    elif event == "os.rename":
        targets = [args[0], args[1]]
    else:
        return
    for target in targets:
        path = _path(target)
        if path is not None:
            writes.append([event, path])


def _dump() -> None:
    out = os.path.join(os.environ["DDP_PROBE_OUT"], f"rank-{RANK}.json")
    with open(out, "w") as fh:
        json.dump(writes, fh)


sys.addaudithook(_hook)
atexit.register(_dump)

if __name__ == "__main__":
    from tuneserve.cli import main

    sys.exit(main(sys.argv[1:]))
