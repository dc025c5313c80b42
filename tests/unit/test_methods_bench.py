"""bench/methods_bench.py's pure parts: the CPU-budget stop and the per-method configs."""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml
from transformers import Trainer, TrainingArguments

from bench.methods_bench import METHODS, CpuBudget, method_config, paired_record
from training.config import load_config


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.w(x).squeeze(-1), y)}


def test_cpu_budget_stops_a_real_trainer(tmp_path):
    """A transformers Trainer set for 50 steps stops at the step where the (fake, one
    second per reading) CPU clock passes the budget."""
    ticks = itertools.count()
    budget = CpuBudget(3.0, clock=lambda: float(next(ticks)))
    rows = [{"x": torch.randn(2), "y": torch.tensor(1.0)} for _ in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=50, per_device_train_batch_size=2,
                             save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True, logging_steps=100)
    trainer = Trainer(model=_Tiny(), args=args, train_dataset=rows, callbacks=[budget])
    trainer.train()
    # Begin reads 0; steps read 1, 2, 3: the third step reaches 3 s and stops the run.
    assert trainer.state.global_step == 3
    assert budget.steps == 3 and budget.used_s == 3.0


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_config_validates(method, tmp_path):
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(method_config(method, tmp_path / "adapters")))
    config = load_config(path)
    keys, lr = METHODS[method]
    assert config.adapter == keys["adapter"] and config.learning_rate == lr
    assert config.name == method and config.adapter_path == tmp_path / "adapters" / method
    assert config.use_dora == (method == "dora") and config.use_rslora == (method == "rslora")
    assert (config.micro_batch_size, config.sequence_len, config.seed) == (8, 128, 42)


def test_paired_record_matches_rows_by_content():
    def ex(i, ref, label, text):
        return {"index": i, "messages": [{"role": "user", "content": ref}], "reference": ref,
                "outputs": {label: {"text": text}}}

    base = {"models": [{"label": "base"}],
            "examples": [ex(0, "a", "base", "A"), ex(1, "b", "base", "B")]}
    cand = {"models": [{"label": "m"}], "examples": [ex(0, "b", "m", "b!")]}
    record = paired_record(base, cand)
    assert [m["label"] for m in record["models"]] == ["base", "m"]
    assert record["examples"][0]["outputs"] == {"base": {"text": "B"}, "m": {"text": "b!"}}
    cand["examples"].append(ex(1, "c", "m", "c"))
    with pytest.raises(SystemExit, match="not asked of the base"):
        paired_record(base, cand)
