"""The replicas test's training command: takes an exclusive lock on the job's run folder
for the whole run, so two workers training one job at the same time (what exactly-once
across replicas rules out) leave a ``CONCURRENT-<job>`` file in ``$REPLICAS_REPORT_DIR``;
then trains with the fake trainer (tests/unit/jobs_fake_trainer.py) when
``$REPLICAS_FAKE_TRAINER`` names an existing file, else with the real ``tuneserve train``."""

from __future__ import annotations

import fcntl
import os
import runpy
import sys
from pathlib import Path

FAKE = Path(__file__).resolve().parents[1] / "unit" / "jobs_fake_trainer.py"


def main() -> None:
    config = Path(next(a for a in sys.argv[1:] if not a.startswith("--")))
    lock = os.open(config.parent / "trainer.lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        report = Path(os.environ["REPLICAS_REPORT_DIR"])
        (report / f"CONCURRENT-{config.parent.name}").write_text(" ".join(sys.argv))
        sys.exit(3)
    os.set_inheritable(lock, True)  # held by the trainer below until it exits or is killed
    switch = os.environ.get("REPLICAS_FAKE_TRAINER")
    if switch and Path(switch).exists():
        sys.argv = [str(FAKE), *sys.argv[1:]]
        runpy.run_path(str(FAKE), run_name="__main__")
        return
    os.execv(sys.executable, [sys.executable, "-m", "tuneserve.cli", "train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
