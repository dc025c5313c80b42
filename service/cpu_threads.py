"""Which CPUs vLLM's compute threads bind to (``VLLM_CPU_OMP_THREADS_BIND``), by default.

vLLM's ``auto`` binding reserves one core per worker for its engine-core process (whose
scheduler loop spins) and binds compute to the rest. On a 2-CPU machine that leaves compute
one core: `bench/lora_bench.py --arms settings` measured binding compute to both CPUs at
1.25-1.6x the tokens/s of ``auto`` there, for base and adapter requests alike (BENCHMARKS.md,
"compilation and thread binding"). Larger machines keep vLLM's ``auto`` (one reserved core
is a small share of them; not measured here).
"""

from __future__ import annotations

import os

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
#: Up to this many CPUs, compute binds to all of them (the measured case: 2).
ALL_CPUS_UP_TO = 2


def default_threads_bind(cpus: set[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for a process allowed on ``cpus``: every one of them on
    a small machine, else vLLM's ``auto``."""
    if 1 < len(cpus) <= ALL_CPUS_UP_TO:
        return ",".join(str(c) for c in sorted(cpus))
    return "auto"


def apply_threads_bind(setting: str | None) -> str:
    """Set the binding for the engine processes about to start and return it: an explicit
    ``VLLM_CPU_OMP_THREADS_BIND`` in the environment wins, then ``setting``
    (``TUNESERVE_CPU_THREADS_BIND``), then :func:`default_threads_bind`."""
    if BIND_ENV not in os.environ:
        os.environ[BIND_ENV] = setting or default_threads_bind(os.sched_getaffinity(0))
    return os.environ[BIND_ENV]
