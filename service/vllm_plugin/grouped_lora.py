"""Grouped multi-LoRA ops for vLLM's CPU backend (a drop-in ``PunicaWrapperCPU``).

Why this exists: vLLM 0.32's CPU ops (``vllm/lora/ops/torch_ops/lora_ops.py``) gather
``lora_w[indices]`` for every token. That has two faults we cannot live with:

- **Wrong answers.** Rows without an adapter carry index -1, and ``lora_w[-1]`` is the
  *last* slot; when every slot holds an adapter, base rows of a mixed batch silently run
  through the last slot's adapter (upstream vllm-project/vllm#48421).
- **Slow adapters.** The gather copies a ``[tokens, max_lora_rank, hidden]`` block per
  slice per layer per step (≈45 MB per token at rank 16), padded to ``max_lora_rank``.

This wrapper keeps vLLM's metadata (it subclasses ``PunicaWrapperCPU``) and replaces the
arithmetic. Rows are grouped by adapter slot once per step; rows with no adapter get
nothing added. Each slot is trimmed to its real rank, measured when the slot is
(re)activated (``forget_slot``), so padding to ``max_lora_rank`` costs nothing. Two paths,
chosen by row count (``DENSE_MAX_ROWS``, measured in ``bench/lora_ops_bench.py``):

- **dense** (decode-sized steps): each layer's adapters are packed once
  (:func:`pack_slots`); one shrink matmul over all slots, a per-step slot mask, one
  ``addmm_`` per output slice: few ops, as such steps are op-overhead bound;
- **grouped** (prefill): one shrink/expand matmul pair per slot over its own rows (a
  slice when they are contiguous, else a gather and ``index_add_``), as FLOPs dominate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.library import Library
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
from vllm.utils.torch_utils import direct_register_custom_op


@dataclass(frozen=True)
class RowGroup:
    """The rows of one batch that run through one adapter slot."""

    slot: int
    rows: slice | torch.Tensor  # a slice when contiguous (no gather, no scatter)


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
        groups.append(RowGroup(slot, rows))
    return groups


def effective_rank(rank_rows: torch.Tensor) -> int:
    """The real rank of one slot, given its weights with the rank as dim 0 (A as stored,
    B transposed): rows past the last non-zero one are padding up to ``max_lora_rank``,
    and dropping them is exact (they contribute exactly zero)."""
    nonzero = torch.nonzero(rank_rows.abs().amax(dim=-1) > 0, as_tuple=False)
    return int(nonzero[-1]) + 1 if nonzero.numel() else 0


#: Up to this many rows a linear layer's LoRA runs as one masked dense product over all
#: slots (a decode step: few rows, op overhead dominates); above it, one matmul pair per
#: slot over its own rows (prefill: FLOPs dominate). Measured: bench/lora_ops_bench.py.
DENSE_MAX_ROWS = 64


@dataclass(frozen=True)
class PackedLoRA:
    """One LoRA'd linear layer's adapters, packed when a slot is (re)filled, for the dense
    path: every slot side by side, each trimmed to its real rank (R columns in all).

    ``a`` ``[slices * R, in]`` holds, slice after slice, the A rows of every slot, so one
    matmul shrinks all slices; ``b[i]`` ``[R, size_i]`` is slice i's B rows, so each slice
    expands with one ``addmm_`` into its own output columns.
    """

    a: torch.Tensor
    b: tuple[torch.Tensor, ...]
    layout: tuple[int, ...]  # slot of each of the R columns


def pack_slots(lora_a_stacked, lora_b_stacked, output_slices) -> PackedLoRA | None:
    """Pack vLLM's stacked ``A [slots, 1, max_rank, in]`` / ``B [slots, 1, out, max_rank]``
    (one pair per output slice) into a :class:`PackedLoRA`, or None when no slot has
    weights. Float32, whatever the model's dtype (vLLM's own ops keep a float32 buffer)."""
    num_slots, in_size = lora_a_stacked[0].shape[0], lora_a_stacked[0].shape[-1]
    ranks = {slot: max(effective_rank(a[slot].reshape(-1, in_size)) for a in lora_a_stacked)
             for slot in range(num_slots)}
    ranks = {slot: rank for slot, rank in ranks.items() if rank}
    if not ranks:
        return None
    a_rows, b_slices = [], []
    for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
        a_rows += [a[slot].reshape(-1, in_size)[:rank] for slot, rank in ranks.items()]
        b_slices.append(torch.cat([b[slot].reshape(-1, b.shape[-1])[:size, :rank].t()
                                   for slot, rank in ranks.items()]).float().contiguous())
    layout = tuple(slot for slot, rank in ranks.items() for _ in range(rank))
    return PackedLoRA(torch.cat(a_rows).float().contiguous(), tuple(b_slices), layout)


_WRAPPERS: list[GroupedPunicaWrapperCPU] = []  # this process's wrappers (usually one)


def _grouped_lora_linear(y: torch.Tensor, x: torch.Tensor, lora_a: list[torch.Tensor],
                         lora_b: list[torch.Tensor], scale: float, output_slices: list[int],
                         wrapper_id: int) -> None:
    _WRAPPERS[wrapper_id]._lora_linear_eager(y, x, lora_a, lora_b, scale, output_slices)


def _grouped_lora_embedding(y: torch.Tensor, x: torch.Tensor, lora_b: torch.Tensor,
                            wrapper_id: int) -> None:
    _WRAPPERS[wrapper_id]._lora_embedding_eager(y, x, lora_b)


def _nothing(*args: Any) -> None:
    return None


# vLLM's registration helper: much less per-call overhead than torch.library.custom_op.
# The ops are only what a compiled graph calls; eager code calls the methods directly.
_LIBRARY = Library("tuneserve", "FRAGMENT")
direct_register_custom_op("grouped_lora_linear", _grouped_lora_linear, mutates_args=["y"],
                          fake_impl=_nothing, target_lib=_LIBRARY, dispatch_key="CPU")
direct_register_custom_op("grouped_lora_embedding", _grouped_lora_embedding,
                          mutates_args=["y"], fake_impl=_nothing, target_lib=_LIBRARY,
                          dispatch_key="CPU")


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
        # id of a layer's first stacked A -> its packed adapters (None: no weights yet).
        self._packs: dict[int, PackedLoRA | None] = {}
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}  # per step, by pack layout
        self._op_id = len(_WRAPPERS)  # how the custom ops find this wrapper
        _WRAPPERS.append(self)

    # --- state -----------------------------------------------------------------------

    def update_metadata(self, *args: Any, **kwargs: Any) -> None:
        super().update_metadata(*args, **kwargs)
        self._token_groups = group_rows(self.token_lora_indices)
        self._sampler_groups = None  # per-request rows, grouped on first use (logits)
        self._masks = {}

    def forget_slot(self, slot: int) -> None:
        """Called when an adapter is written into ``slot``: its ranks are measured anew
        and the layers' packs are rebuilt on their next use."""
        self._rank_cache = {k: v for k, v in self._rank_cache.items() if k[1] != slot}
        self._packs.clear()

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

    # The two calls made inside the model's forward go through opaque custom ops, so a
    # compiled forward (torch.compile traces it once) never bakes one step's grouping in.

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices,
                        *, buffer=None, **kwargs):  # type: ignore[override]
        """``y[:, slice_i] += x @ A_i^T @ B_i^T`` per row's adapter; base rows untouched."""
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        y_2d = y.view(-1, y.shape[-1])
        if kwargs.get("add_inputs", True) is False:
            y_2d.zero_()
        args = (y_2d, x.view(-1, x.shape[-1]), list(lora_a_stacked), list(lora_b_stacked),
                float(scale), list(output_slices))
        if torch.compiler.is_compiling():
            torch.ops.tuneserve.grouped_lora_linear(*args, self._op_id)
        else:
            self._lora_linear_eager(*args)

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True,
                           **kwargs):  # type: ignore[override]
        """``y[rows] += x[rows] @ B^T``: x already holds each row's embedding-A lookup."""
        y_2d = y.view(-1, y.shape[-1])
        if not add_inputs:
            y_2d.zero_()
        if torch.compiler.is_compiling():
            torch.ops.tuneserve.grouped_lora_embedding(y_2d, x, lora_b_stacked, self._op_id)
        else:
            self._lora_embedding_eager(y_2d, x, lora_b_stacked)

    def _lora_linear_eager(self, y_2d: torch.Tensor, x: torch.Tensor,
                           lora_a_stacked: list[torch.Tensor], lora_b_stacked: list[torch.Tensor],
                           scale: float, output_slices: list[int]) -> None:
        if not self._token_groups:
            return  # no row has an adapter
        if x.shape[0] <= DENSE_MAX_ROWS:
            self._lora_linear_dense(y_2d, x, lora_a_stacked, lora_b_stacked, scale,
                                    output_slices)
            return
        offset = 0
        for lora_a, lora_b, size in zip(lora_a_stacked, lora_b_stacked, output_slices,
                                        strict=True):
            for group in self._token_groups:
                delta = self._lora_delta(x, group, lora_a, lora_b, size, scale)
                if delta is not None:
                    self._add_rows(y_2d, group, slice(offset, offset + size), delta)
            offset += size

    def _lora_linear_dense(self, y_2d, x, lora_a_stacked, lora_b_stacked, scale,
                           output_slices) -> None:
        """All slots in one shrink matmul; a mask zeroes each row's columns of other slots
        (all of a base row's, so base rows get exactly +0); one ``addmm_`` per slice."""
        key = id(lora_a_stacked[0])
        if key not in self._packs:
            self._packs[key] = pack_slots(lora_a_stacked, lora_b_stacked, output_slices)
        pack = self._packs[key]
        if pack is None:
            return
        rows, rank_total = x.shape[0], len(pack.layout)
        shrunk = x.float() @ pack.a.t()
        shrunk.view(rows, -1, rank_total).mul_(self._mask(pack, rows).unsqueeze(1))
        offset = 0
        for index, (b, size) in enumerate(zip(pack.b, output_slices, strict=True)):
            part = shrunk[:, index * rank_total:(index + 1) * rank_total]
            out = y_2d[:, offset:offset + size]
            if out.dtype == torch.float32:
                out.addmm_(part, b, alpha=scale)
            else:
                out += (torch.mm(part, b) * scale).to(out.dtype)
            offset += size

    def _mask(self, pack: PackedLoRA, rows: int) -> torch.Tensor:
        """``[rows, R]``: 1 where the row's slot owns the column. One per layout per step."""
        mask = self._masks.get(pack.layout)
        if mask is None:
            column_slots = torch.tensor(pack.layout, device=pack.a.device)
            indices = self.token_lora_indices[:rows]
            mask = (indices[:, None] == column_slots[None, :]).float()
            self._masks[pack.layout] = mask
        return mask

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

    def _lora_embedding_eager(self, y_2d: torch.Tensor, x: torch.Tensor,
                              lora_b_stacked: torch.Tensor) -> None:
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
