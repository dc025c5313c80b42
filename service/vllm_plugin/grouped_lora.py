"""Grouped multi-LoRA ops for vLLM's CPU backend (a drop-in ``PunicaWrapperCPU``).

Why this exists: vLLM 0.32's CPU ops (``vllm/lora/ops/torch_ops/lora_ops.py``) gather
``lora_w[indices]`` for every token. That has two faults we cannot live with:

- **Wrong answers.** Rows without an adapter carry index -1, and ``lora_w[-1]`` is the
  *last* slot; when every slot holds an adapter, base rows of a mixed batch silently run
  through the last slot's adapter (upstream vllm-project/vllm#48421).
- **Slow adapters.** The gather copies a ``[tokens, max_lora_rank, hidden]`` block per
  slice per layer per step (≈45 MB per token at rank 16), padded to ``max_lora_rank``.

This wrapper keeps vLLM's metadata (it subclasses ``PunicaWrapperCPU``) and replaces the
arithmetic: tokens are grouped by adapter slot once per step, each active slot runs one
shrink and one expand matmul over its own rows (a slice, when its rows are contiguous as
in prefill, else an index gather), trimmed to the slot's real rank; rows with no adapter
are never touched. The per-slot rank is measured once when a slot is (re)activated
(``forget_slot``), not per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU


@dataclass(frozen=True)
class RowGroup:
    """The rows of one batch that run through one adapter slot."""

    slot: int
    rows: slice | torch.Tensor  # a slice when contiguous (no gather, no scatter)
    count: int


def group_rows(indices: torch.Tensor) -> list[RowGroup]:
    """Group the positions of ``indices`` (slot per row, -1 = no adapter) by slot."""
    if indices.numel() == 0:
        return []
    # One small host sync per step: which slots are present at all.
    slots = torch.unique(indices).tolist()
    groups = []
    for slot in slots:
        if slot < 0:
            continue
        positions = torch.nonzero(indices == slot, as_tuple=False).squeeze(1)
        first, last, count = int(positions[0]), int(positions[-1]), positions.numel()
        rows: slice | torch.Tensor = (
            slice(first, last + 1) if last - first + 1 == count else positions
        )
        groups.append(RowGroup(slot, rows, count))
    return groups


def effective_rank(rank_rows: torch.Tensor) -> int:
    """The real rank of one slot, given its weights with the rank as dim 0 (A as stored,
    B transposed): rows past the last non-zero one are padding up to ``max_lora_rank``,
    and dropping them is exact (they contribute exactly zero)."""
    nonzero = torch.nonzero(rank_rows.abs().amax(dim=-1) > 0, as_tuple=False)
    return int(nonzero[-1]) + 1 if nonzero.numel() else 0


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """``PunicaWrapperCPU`` whose ops group rows by adapter slot (see module docstring)."""

    #: Shown in the worker log and on ``/health``; the plugin checks for it.
    lora_path_name = "tuneserve-grouped"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._token_groups: list[RowGroup] = []
        self._sampler_groups: list[RowGroup] | None = None
        # (id of a stacked A tensor, slot) -> effective rank; cleared per slot on activation.
        self._rank_cache: dict[tuple[int, int], int] = {}

    # --- state -----------------------------------------------------------------------

    def update_metadata(self, *args: Any, **kwargs: Any) -> None:
        super().update_metadata(*args, **kwargs)
        self._token_groups = group_rows(self.token_lora_indices)
        self._sampler_groups = None  # per-request rows, grouped on first use (logits)

    def forget_slot(self, slot: int) -> None:
        """Called when an adapter is written into ``slot``: its ranks are measured anew."""
        self._rank_cache = {k: v for k, v in self._rank_cache.items() if k[1] != slot}

    def _groups_for_sampler(self) -> list[RowGroup]:
        if self._sampler_groups is None:
            self._sampler_groups = group_rows(self.sampler_indices)
        return self._sampler_groups

    # --- per-slot weights --------------------------------------------------------------

    def _rank(self, stacked: torch.Tensor, slot: int, *, rank_dim_last: bool) -> int:
        """The slot's real rank, measured once per activation (cached by tensor and slot)."""
        key = (id(stacked), slot)
        rank = self._rank_cache.get(key)
        if rank is None:
            weights = stacked[slot].reshape(-1, stacked.shape[-1])
            rank = effective_rank(weights.t() if rank_dim_last else weights)
            self._rank_cache[key] = rank
        return rank

    @staticmethod
    def _slot_a(lora_a: torch.Tensor, slot: int, rank: int) -> torch.Tensor:
        """A of one slot, trimmed to ``rank``: ``[rank, in]``, a view (no copy)."""
        return lora_a[slot].reshape(-1, lora_a.shape[-1])[:rank]

    @staticmethod
    def _slot_b(lora_b: torch.Tensor, slot: int, rank: int, size: int) -> torch.Tensor:
        """B of one slot, trimmed to ``rank``: ``[size, rank]``, a strided view (no copy)."""
        return lora_b[slot].reshape(-1, lora_b.shape[-1])[:size, :rank]

    @staticmethod
    def _add_rows(out: torch.Tensor, group: RowGroup, cols: slice, value: torch.Tensor) -> None:
        value = value.to(out.dtype)
        if isinstance(group.rows, slice):
            out[group.rows, cols] += value
        else:
            out[:, cols].index_add_(0, group.rows, value)

    def _lora_delta(self, x: torch.Tensor, group: RowGroup, lora_a: torch.Tensor,
                    lora_b: torch.Tensor, size: int, scale: float) -> torch.Tensor | None:
        """``scale * x[rows] @ A^T @ B^T`` for one group (float32 in between, as vLLM's
        own ops keep their shrink buffer), or None when the slot holds no weights here."""
        rank = self._rank(lora_a, group.slot, rank_dim_last=False)
        if rank == 0:
            return None
        a = self._slot_a(lora_a, group.slot, rank)
        b = self._slot_b(lora_b, group.slot, rank, size)
        shrunk = x[group.rows].to(torch.float32) @ a.t().to(torch.float32)
        if scale != 1.0:
            shrunk = shrunk * scale
        return shrunk.to(b.dtype) @ b.t()

    # --- the PunicaWrapper interface ---------------------------------------------------

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices,
                        *, buffer=None, **kwargs):  # type: ignore[override]
        """``y[:, slice_i] += x @ A_i^T @ B_i^T`` per row's adapter; base rows untouched."""
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        y_2d = y.view(-1, y.shape[-1])
        if kwargs.get("add_inputs", True) is False:
            y_2d.zero_()
        x = x.view(-1, x.shape[-1])
        offset = 0
        for lora_a, lora_b, size in zip(lora_a_stacked, lora_b_stacked, output_slices,
                                        strict=True):
            for group in self._token_groups:
                delta = self._lora_delta(x, group, lora_a, lora_b, size, scale)
                if delta is not None:
                    self._add_rows(y_2d, group, slice(offset, offset + size), delta)
            offset += size

    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs):  # type: ignore[override]
        """``y[i][rows, :r] = scale * x[rows] @ A_i^T``; base rows of ``y`` keep their zeros
        (vLLM's own op overwrites them with the last slot's product)."""
        x = x.view(-1, x.shape[-1])
        for index, lora_a in enumerate(lora_a_stacked):
            out = y[index].view(-1, y[index].shape[-1])
            for group in self._token_groups:
                rank = self._rank(lora_a, group.slot, rank_dim_last=False)
                if rank == 0:
                    continue
                a = self._slot_a(lora_a, group.slot, rank)
                shrunk = (x[group.rows].to(torch.float32) @ a.t().to(torch.float32)) * scale
                out[group.rows, :rank] = shrunk.to(out.dtype)

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0,
                   add_inputs=True, **kwargs):  # type: ignore[override]
        """``y[rows, slice_i] += x[i][rows, :r] @ B_i^T``; base rows untouched."""
        y_2d = y.view(-1, y.shape[-1])
        if not add_inputs:
            y_2d.zero_()
        offset = offset_start
        for index, lora_b in enumerate(lora_b_stacked):
            size = output_slices[index]
            buffer = x[index].view(-1, x[index].shape[-1])
            for group in self._token_groups:
                rank = self._rank(lora_b, group.slot, rank_dim_last=True)
                if rank == 0:
                    continue
                b = self._slot_b(lora_b, group.slot, rank, size)
                expanded = buffer[group.rows, :rank].to(b.dtype) @ b.t()
                self._add_rows(y_2d, group, slice(offset, offset + size), expanded)
            offset += size

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True,
                           **kwargs):  # type: ignore[override]
        """``y[rows] += x[rows] @ B^T``: x already holds each row's embedding-A lookup."""
        y_2d = y.view(-1, y.shape[-1])
        if not add_inputs:
            y_2d.zero_()
        size = y_2d.shape[-1]
        for group in self._token_groups:
            rank = self._rank(lora_b_stacked, group.slot, rank_dim_last=True)
            if rank == 0:
                continue
            b = self._slot_b(lora_b_stacked, group.slot, rank, size)
            self._add_rows(y_2d, group, slice(0, size), x[group.rows, :rank].to(b.dtype) @ b.t())

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None,
                        **kwargs):  # type: ignore[override]
        """LM-head LoRA: the same product over the sampled rows (one per request)."""
        y_2d = y.view(-1, y.shape[-1])
        x = x.view(-1, x.shape[-1])
        size = min(y_2d.shape[-1], lora_b_stacked.shape[-2])
        for group in self._groups_for_sampler():
            delta = self._lora_delta(x, group, lora_a_stacked, lora_b_stacked, size, scale)
            if delta is not None:
                self._add_rows(y_2d, group, slice(0, size), delta)
