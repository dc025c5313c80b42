"""Which process of a multi-process run (``accelerate launch``, torchrun, DeepSpeed) this is.

Every rank runs the same ``train()``; only the main one (global rank 0) writes the event
log, the adapter and its manifest, and removes checkpoints, while the others wait at a
barrier. Read from the launcher's environment so it is known before the Trainer (which
starts the process group) exists; a plain ``tuneserve train`` is rank 0 of 1.
"""

from __future__ import annotations

import os

# The variables accelerate's own state reads for the global rank (torchrun sets RANK;
# mpirun-launched CPU runs set one of the MPI ones).
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def process_rank() -> int:
    for name in _RANK_VARS:
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0


def is_main_process() -> bool:
    return process_rank() == 0


def wait_for_everyone() -> None:
    """A barrier across the run's processes; a no-op in a single-process run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
