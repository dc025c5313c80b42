"""The grouped CPU LoRA ops against a plain per-row reference loop (float32 tolerance).

Shapes are the real Gemma 3 270M layers (hidden 640, q 1024, k/v 256, MLP 2048); slots are
allocated at ``max_lora_rank`` 64 while the adapters are rank 8 and 16, and every slot
holds an adapter, so a base row that picked up any slot's weights would show.
"""

from __future__ import annotations

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from service.vllm_plugin.grouped_lora import GroupedPunicaWrapperCPU, effective_rank, group_rows

HIDDEN = 640
# (input size, output slices) of each LoRA'd linear in a Gemma 3 270M layer.
GEMMA_LINEARS = {
    "qkv_proj": (HIDDEN, (1024, 256, 256)),
    "o_proj": (1024, (HIDDEN,)),
    "gate_up_proj": (HIDDEN, (2048, 2048)),
    "down_proj": (2048, (HIDDEN,)),
}
MAX_RANK = 64
SLOT_RANKS = (8, 16, 8)  # three slots, all filled; ranks below MAX_RANK
LORA_IDS = (11, 12, 13)  # vLLM adapter ids held by slots 0, 1, 2


def _stacked(in_size: int, slices: tuple[int, ...], seed: int):
    """vLLM's stacked layout: A ``[slots, 1, max_rank, in]``, B ``[slots, 1, out, max_rank]``,
    each slot's adapter written into the top-left corner, the rest zero padding."""
    gen = torch.Generator().manual_seed(seed)
    a_stacked, b_stacked = [], []
    for out in slices:
        a = torch.zeros(len(SLOT_RANKS), 1, MAX_RANK, in_size)
        b = torch.zeros(len(SLOT_RANKS), 1, out, MAX_RANK)
        for slot, rank in enumerate(SLOT_RANKS):
            a[slot, 0, :rank] = torch.randn(rank, in_size, generator=gen) * 0.05
            b[slot, 0, :, :rank] = torch.randn(out, rank, generator=gen) * 0.05
        a_stacked.append(a)
        b_stacked.append(b)
    return tuple(a_stacked), tuple(b_stacked)


def _reference(y, x, a_stacked, b_stacked, slices, row_slots, scale):
    """One row at a time, no adapter for slot -1: what the ops must compute."""
    y = y.clone()
    for row, slot in enumerate(row_slots):
        if slot < 0:
            continue
        offset = 0
        for a, b, size in zip(a_stacked, b_stacked, slices, strict=True):
            y[row, offset:offset + size] += (x[row] @ a[slot, 0].t() * scale) @ b[slot, 0].t()
            offset += size
    return y


def _row_slots(num_tokens: int, seed: int, *, prefill: bool) -> list[int]:
    """Slots per row, base rows (-1) mixed in; prefill keeps each request's rows together."""
    gen = torch.Generator().manual_seed(seed)
    choices = [-1, 0, 1, 2]
    if not prefill:
        return [choices[int(i)] for i in torch.randint(0, 4, (num_tokens,), generator=gen)]
    slots, row = [], 0
    while row < num_tokens:
        length = min(num_tokens - row, int(torch.randint(1, max(2, num_tokens // 3), (1,),
                                                         generator=gen)))
        slots += [choices[len(slots) % 4]] * length
        row += length
    return slots


def _wrapper(cls, row_slots: list[int], *, prefill: bool):
    wrapper = cls(max_num_batched_tokens=4096, max_batches=256, device="cpu")
    ids = [LORA_IDS[s] if s >= 0 else 0 for s in row_slots]
    wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=prefill), list(LORA_IDS),
                            len(LORA_IDS) + 1, 262144)
    return wrapper


@pytest.mark.parametrize("layer", sorted(GEMMA_LINEARS))
@pytest.mark.parametrize("num_tokens", [1, 8, 64, 2048])
@pytest.mark.parametrize("prefill", [False, True])
def test_lora_linear_matches_reference(layer, num_tokens, prefill):
    in_size, slices = GEMMA_LINEARS[layer]
    a_stacked, b_stacked = _stacked(in_size, slices, seed=num_tokens)
    row_slots = _row_slots(num_tokens, seed=num_tokens + 1, prefill=prefill)
    x = torch.randn(num_tokens, in_size)
    y = torch.randn(num_tokens, sum(slices))
    expected = _reference(y, x, a_stacked, b_stacked, slices, row_slots, scale=0.5)

    wrapper = _wrapper(GroupedPunicaWrapperCPU, row_slots, prefill=prefill)
    got = y.clone()
    wrapper.add_lora_linear(got, x, a_stacked, b_stacked, 0.5, slices)

    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    base_rows = [row for row, slot in enumerate(row_slots) if slot < 0]
    assert torch.equal(got[base_rows], y[base_rows]), "base rows must be left untouched"


def test_shrink_then_expand_matches_reference():
    """The two-call path (vLLM's column-parallel layers) gives the same product."""
    in_size, slices = GEMMA_LINEARS["qkv_proj"]
    a_stacked, b_stacked = _stacked(in_size, slices, seed=3)
    row_slots = _row_slots(64, seed=4, prefill=False)
    x, y = torch.randn(64, in_size), torch.randn(64, sum(slices))
    expected = _reference(y, x, a_stacked, b_stacked, slices, row_slots, scale=1.0)

    wrapper = _wrapper(GroupedPunicaWrapperCPU, row_slots, prefill=False)
    buffers = torch.zeros(len(slices), 64, MAX_RANK)
    wrapper.add_shrink(buffers, x, a_stacked, 1.0)
    got = y.clone()
    wrapper.add_expand(got, buffers, b_stacked, slices, offset_start=0, add_input=True)

    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_logits_lora_uses_per_request_rows():
    vocab = 4096  # the real 262k head is too big for a unit test; the op is the same
    a = torch.zeros(3, 1, MAX_RANK, HIDDEN)
    b = torch.zeros(3, 1, vocab, MAX_RANK)
    for slot, rank in enumerate(SLOT_RANKS):
        a[slot, 0, :rank] = torch.randn(rank, HIDDEN) * 0.05
        b[slot, 0, :, :rank] = torch.randn(vocab, rank) * 0.05
    row_slots = [-1, 2, 0, -1, 1, 2, -1, 0]
    x, y = torch.randn(8, HIDDEN), torch.randn(8, vocab)
    expected = _reference(y, x, (a,), (b,), (vocab,), row_slots, scale=1.0)

    wrapper = _wrapper(GroupedPunicaWrapperCPU, row_slots, prefill=False)
    got = y.clone()
    wrapper.add_lora_logits(got, x, a, b, 1.0)

    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_vllm_own_cpu_ops_leak_the_last_slot_into_base_rows():
    """Why the plugin exists: with every slot full, vLLM 0.32's CPU ops give base rows the
    last slot's adapter. If vLLM fixes this, the plugin's reason to exist is gone."""
    in_size, slices = GEMMA_LINEARS["o_proj"]
    a_stacked, b_stacked = _stacked(in_size, slices, seed=5)
    row_slots = [-1, 0, -1, 1, 2, -1, -1, 0]
    x, y = torch.randn(8, in_size), torch.zeros(8, sum(slices))
    expected = _reference(y, x, a_stacked, b_stacked, slices, row_slots, scale=1.0)

    wrapper = _wrapper(PunicaWrapperCPU, row_slots, prefill=False)
    got = y.clone()
    wrapper.add_lora_linear(got, x, a_stacked, b_stacked, 1.0, slices)

    base_rows = [row for row, slot in enumerate(row_slots) if slot < 0]
    assert not torch.allclose(got[base_rows], expected[base_rows])
    as_last_slot = _reference(y, x, a_stacked, b_stacked, slices, [2] * 8, scale=1.0)
    torch.testing.assert_close(got[base_rows], as_last_slot[base_rows], rtol=1e-4, atol=1e-4)


def test_slot_rank_is_measured_again_after_activation():
    """A slot re-filled with a higher-rank adapter must not keep the old, trimmed rank."""
    in_size, slices = GEMMA_LINEARS["o_proj"]
    a_stacked, b_stacked = _stacked(in_size, slices, seed=6)
    row_slots = [0, 0, -1, 0]
    x, y = torch.randn(4, in_size), torch.zeros(4, sum(slices))
    wrapper = _wrapper(GroupedPunicaWrapperCPU, row_slots, prefill=False)
    wrapper.add_lora_linear(y.clone(), x, a_stacked, b_stacked, 1.0, slices)  # caches rank 8

    a_stacked[0][0, 0, :32] = torch.randn(32, in_size) * 0.05  # slot 0 now holds rank 32
    b_stacked[0][0, 0, :, :32] = torch.randn(slices[0], 32) * 0.05
    wrapper.forget_slot(0)
    got = y.clone()
    wrapper.add_lora_linear(got, x, a_stacked, b_stacked, 1.0, slices)

    expected = _reference(y, x, a_stacked, b_stacked, slices, row_slots, scale=1.0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_group_rows_uses_slices_for_contiguous_rows():
    groups = group_rows(torch.tensor([1, 1, 1, -1, 0, 2, 0]))
    by_slot = {g.slot: g for g in groups}
    assert set(by_slot) == {0, 1, 2}
    assert by_slot[1].rows == slice(0, 3)
    assert torch.equal(by_slot[0].rows, torch.tensor([4, 6]))
    assert by_slot[2].rows == slice(5, 6)


def test_effective_rank_ignores_padding():
    a = torch.zeros(64, 10)
    a[:12] = 1.0
    assert effective_rank(a) == 12
    assert effective_rank(torch.zeros(64, 10)) == 0
