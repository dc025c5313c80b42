"""Signal and stop a subprocess started with ``start_new_session=True`` together with
everything it started (the training worker, a scheduled evaluation)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group ``pid`` leads; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop_group(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace_s``, and reap the process."""
    if process.returncode is not None:
        return
    signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        signal_group(process.pid, signal.SIGKILL)
        await process.wait()
