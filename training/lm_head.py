"""Score only the supervised positions through the LM head, on any device.

TRL's ``SFTTrainer`` already swaps the model's forward for a fused LM head
(``trl.trainer.utils.add_fused_lm_head``) that never materialises the full logits, but off
Triton devices (CPU) it still projects *every* position through the head and masks the
result. With Gemma's 262k-token vocabulary the head is most of the compute, and with
``train_on_inputs: false`` only the answer tokens (a fraction of each row) carry loss.

:func:`add_compact_lm_head` wraps that forward once more: for ``fused_lm_head=True`` it
runs the backbone, gathers the hidden states whose next-token label is not ``-100`` and
projects only those, returning the same ``FusedCausalLMOutput`` TRL's ``compute_loss``
reads. Every other call (generation, eval logits) goes to the wrapped forward unchanged.

Under sharding the head's weight is read outside the head's own forward, so:
FSDP2 hands it over as a DTensor, gathered here (as TRL's head does); FSDP1 keeps the root
unit's parameters (the tied embedding/head among them) whole through the root forward, in
which this runs; DeepSpeed ZeRO-3 leaves it an empty partition that only the module's own
hooks fill, and autograd would keep that partition for the backward, so there the compact
head is switched off (:func:`compact_head_unsupported`) and TRL's gathering head is used.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from trl.trainer.utils import FusedCausalLMOutput


def compact_head_unsupported() -> str | None:
    """Why the compact head cannot run in this process's configuration, or None."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return (
            "compact_lm_head is off: DeepSpeed ZeRO-3 partitions lm_head.weight outside the "
            "head's own forward; TRL's fused LM head, which gathers it, is used instead"
        )
    return None


def add_compact_lm_head(model) -> None:
    """Patch ``model`` (the transformers CausalLM, not the PEFT wrapper) in place.

    Call after ``SFTTrainer.__init__`` (which installs TRL's fused head first).
    """
    wrapped_forward = model.forward
    text_config = model.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)

    @functools.wraps(type(model).forward)
    def _forward(self, *args, fused_lm_head=False, labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or kwargs.get("shift_labels") is not None:
            return wrapped_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != -100
        weight = self.get_output_embeddings().weight
        if isinstance(weight, DTensor):  # FSDP2 shard: a gathered, plain copy (frozen weight)
            weight = weight.full_tensor()
        logits = F.linear(hidden[mask], weight)  # (n_supervised, vocab) instead of (B*T, vocab)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logits = logits.float()
        log_z = torch.logsumexp(logits, dim=-1)
        picked = targets[mask]
        token_log_probs = logits.gather(-1, picked.unsqueeze(-1)).squeeze(-1) - log_z
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = log_z - (probs * logits).sum(-1)
            is_top1 = (logits.argmax(-1) == picked).to(logits.dtype)
        # masked_scatter keeps an all-masked micro-batch connected to the graph (zero loss).
        log_probs = token_log_probs.new_zeros(mask.shape).masked_scatter(mask, token_log_probs)
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denom,
            log_probs=log_probs,
            entropy=torch.zeros_like(log_probs).masked_scatter(mask, entropy),
            is_top1=torch.zeros_like(log_probs).masked_scatter(mask, is_top1),
            label_mask=mask,
        )

    model.forward = types.MethodType(_forward, model)
