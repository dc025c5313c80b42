"""The multi-LoRA ops alone: time of one forward step's LoRA work on Gemma 3 270M shapes.

18 layers x (qkv, o, gate_up, down) ``add_lora_linear`` calls, as vLLM makes them, with
every slot holding an adapter (ranks 8/16 under ``max_lora_rank`` 16) and the rows spread
over the slots plus base rows. Compares vLLM 0.32's ``PunicaWrapperCPU`` with tuneserve's
wrapper (``--paths``); prints ms per step for each token count.

    .venv/bin/python bench/lora_ops_bench.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAYERS = 18
LINEARS = [(640, (1024, 256, 256)), (1024, (640,)), (640, (2048, 2048)), (2048, (640,))]
LORA_IDS = (11, 12, 13, 14)


def stacked(max_rank: int, ranks: tuple[int, ...]):
    layers = []
    for _ in range(LAYERS):
        for in_size, slices in LINEARS:
            a_all, b_all = [], []
            for out in slices:
                a = torch.zeros(len(ranks), 1, max_rank, in_size)
                b = torch.zeros(len(ranks), 1, out, max_rank)
                for slot, rank in enumerate(ranks):
                    a[slot, 0, :rank] = torch.randn(rank, in_size) * 0.05
                    b[slot, 0, :, :rank] = torch.randn(out, rank) * 0.05
                a_all.append(a)
                b_all.append(b)
            layers.append((in_size, slices, tuple(a_all), tuple(b_all)))
    return layers


def make_wrapper(path: str):
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from service.vllm_plugin.grouped_lora import GroupedPunicaWrapperCPU

    cls = {"vllm": PunicaWrapperCPU, "tuneserve": GroupedPunicaWrapperCPU}[path]
    return cls(max_num_batched_tokens=8192, max_batches=256, device="cpu")


def new_step(wrapper, row_slots: list[int], prefill: bool) -> None:
    """What vLLM does before every forward: the batch's LoRA mapping."""
    from vllm.lora.layers.utils import LoRAMapping

    ids = [LORA_IDS[s] if s >= 0 else 0 for s in row_slots]
    wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=prefill), list(LORA_IDS),
                            len(LORA_IDS) + 1, 262144)


def step_ms(path: str, layers, tokens: int, repeats: int) -> float:
    prefill = tokens > 64
    row_slots = [(i % (len(LORA_IDS) + 1)) - 1 for i in range(tokens)]  # -1 = base row
    if prefill:
        row_slots = sorted(row_slots)
    inputs = {in_size: torch.randn(tokens, in_size) for in_size, _ in LINEARS}
    outputs = {sum(s): torch.zeros(tokens, sum(s)) for _, s in LINEARS}
    wrapper = make_wrapper(path)  # one per engine, as in vLLM
    times = []
    for _ in range(repeats + 1):  # the first step measures the slots' ranks: not timed
        started = time.perf_counter()
        new_step(wrapper, row_slots, prefill)
        for in_size, slices, a, b in layers:
            wrapper.add_lora_linear(outputs[sum(slices)], inputs[in_size], a, b, 1.0, slices)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32, 128, 512])
    parser.add_argument("--paths", nargs="+", default=["vllm", "tuneserve"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = stacked(16, (8, 16, 8, 16))
    print("| tokens | " + " | ".join(f"{p} ms/step" for p in args.paths) + " |")
    print("|---:|" + "---:|" * len(args.paths))
    for tokens in args.tokens:
        row = [f"{step_ms(p, layers, tokens, args.repeats):.1f}" for p in args.paths]
        print(f"| {tokens} | " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
