"""Every training method on the tiny model: PEFT's own layers are there, the trainable
parameters are the ones PEFT reports, training changes the model's outputs, and the
manifest records the method for the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from service.adapters.checks import BaseModelShape, check_adapter
from training.config import config_from_dict
from training.manifest import read_manifest
from training.sft import train
from tuneserve.errors import UserError

ROWS = [
    ("List all running containers.", "docker ps"),
    ("Show every container, stopped ones too.", "docker ps -a"),
    ("List the images.", "docker images"),
    ("Stop the container named web.", "docker stop web"),
    ("Run nginx in the background on port 8080.", "docker run -d -p 8080:80 nginx"),
    ("Show exited containers.", "docker ps -a --filter status=exited"),
]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"{q} ({i})", "completion": a} for i in range(2) for q, a in ROWS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_config(tiny_model_dir, data_file, tmp_path, **overrides):
    raw = {
        "base_model": str(tiny_model_dir),
        "name": "m",
        "output_dir": str(tmp_path / "adapters"),
        "datasets": [{"path": str(data_file)}],
        "max_steps": 4,
        "micro_batch_size": 4,
        "learning_rate": 5e-2,
        "logging_steps": 1,
        "sequence_len": 96,
    }
    raw.update(overrides)
    return config_from_dict(raw)


class ModelProbe(TrainerCallback):
    """The model and optimiser the trainer trains, seen when training begins."""

    def on_train_begin(self, args, state, control, *, model, optimizer, **kwargs):
        self.model, self.optimizer = model, optimizer
        self.requires_grad = {n for n, p in model.named_parameters() if p.requires_grad}
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.peft_count = (
            model.get_nb_trainable_parameters() if hasattr(model, "get_nb_trainable_parameters")
            else None
        )


def _method_modules(model, method: str) -> list:
    """The modules that make ``method`` what it is (PEFT's own classes)."""
    from peft.tuners.adalora import AdaLoraLayer
    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.lora import LoraLayer
    from peft.tuners.prefix_tuning import PrefixEncoder
    from peft.tuners.prompt_tuning import PromptEmbedding
    from peft.tuners.vera import VeraLayer

    kinds = {
        "lora_fa": LoraLayer,
        "vera": VeraLayer,
        "adalora": AdaLoraLayer,
        "ia3": IA3Layer,
        "prompt_tuning": PromptEmbedding,
        "prefix_tuning": PrefixEncoder,
    }
    return [m for m in model.modules() if isinstance(m, kinds[method])]


def _logits(model, tokenizer):
    ids = tokenizer("<bos>List the images.", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[:, -1]


def _load_trained(adapter: Path, tiny_model_dir: Path, method: str):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if method == "full":  # a whole checkpoint, loadable on its own
        return AutoModelForCausalLM.from_pretrained(adapter, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter)  # plain PEFT, no tuneserve code


PEFT_METHODS = {
    "lora_fa": {},
    "vera": {"vera": {"r": 32}},
    "adalora": {"adalora": {"init_r": 6, "target_r": 2}},
    "ia3": {},
    "prompt_tuning": {"prompt_tuning": {"num_virtual_tokens": 4}},
    "prefix_tuning": {"prefix_tuning": {"num_virtual_tokens": 4}},
    "full": {"learning_rate": 1e-3},
}


@pytest.mark.parametrize("method", list(PEFT_METHODS))
def test_each_method_trains_its_peft_layers(tiny_model_dir, data_file, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = make_config(tiny_model_dir, data_file, tmp_path, adapter=method,
                         **PEFT_METHODS[method])
    probe = ModelProbe()
    adapter = train(config, callbacks=[probe], progress_bar=False)
    model = probe.model
    manifest = read_manifest(adapter)
    total = sum(p.numel() for p in model.parameters())

    if method == "full":
        assert probe.peft_count is None and not hasattr(model, "peft_config")
        assert probe.trainable == total  # every weight trains
        assert manifest["kind"] == "full"
    else:
        assert _method_modules(model, method), f"no {method} modules in the trained model"
        # PEFT's count is the count of what the trainer actually trains.
        assert probe.peft_count[0] == probe.trainable
        assert 0 < probe.trainable < total / 2
        assert manifest["kind"] == "adapter"
    assert manifest["trainable_parameters"] == probe.trainable
    assert manifest["method"] == method and manifest["training"] == "sft"
    assert manifest["servable_by_vllm"] is (method == "lora_fa")

    if method == "lora_fa":  # A frozen, PEFT's LoRA-FA optimiser projects B's gradient
        from peft.optimizers.lorafa import LoraFAOptimizer

        inner = getattr(probe.optimizer, "optimizer", probe.optimizer)  # accelerate wraps it
        assert isinstance(inner, LoraFAOptimizer)
        assert not [n for n in probe.requires_grad if "lora_A" in n]
        assert [n for n in probe.requires_grad if "lora_B" in n]
    if method == "adalora":  # the rank budget was reallocated (update_and_allocate ran)
        adapter_config = json.loads((adapter / "adapter_config.json").read_text())
        assert adapter_config["rank_pattern"], "AdaLoRA never reallocated its ranks"

    # The server's adapter check routes LoRA-FA (plain LoRA weights) to vLLM, the other
    # methods (full fine-tunes too) to the transformers+PEFT engine.
    shape = BaseModelShape.from_checkpoint(str(tiny_model_dir), tiny_model_dir)
    info = check_adapter(adapter, shape, max_rank=16)
    assert (info.method, info.engine) == (method, "vllm" if method == "lora_fa" else "peft")

    # The compact LM head is switched off, with a log line, where it does not apply.
    log = (tmp_path / "adapters" / "m.train.jsonl").read_text()
    assert ("compact LM head off" in log) is (method in ("prompt_tuning", "prefix_tuning"))

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trained = _load_trained(adapter, tiny_model_dir, method)
    assert not torch.allclose(_logits(base, tokenizer), _logits(trained, tokenizer), atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"adapter": "vera", "vera": {"r": 0}}, "vera.r"),
        ({"adapter": "vera", "vera": {"rank": 4}}, "unknown key 'vera.rank'"),
        ({"adapter": "lora", "vera": {"r": 8}}, "vera options are for adapter: vera"),
        ({"adapter": "adalora", "adalora": {"init_r": 2, "target_r": 4}}, "target_r 4 is larger"),
        ({"adapter": "ia3", "use_dora": True}, "use_dora applies to LoRA adapters"),
        ({"adapter": "ia3", "lora_r": 4}, "lora_r applies to LoRA adapters, not adapter: ia3"),
        ({"adapter": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 0}},
         "prompt_tuning.num_virtual_tokens"),
        ({"adapter": "lora_fa", "optimizer": "sgd"}, "lora_fa builds its own optimiser"),
        ({"adapter": "full", "loraplus_lr_ratio": 4}, "loraplus_lr_ratio applies to LoRA"),
        ({"adapter": "dreambooth"}, "adapter"),
        ({"rl": "kto"}, "rl"),
        ({"rl_beta": 0.2}, "rl_beta needs rl"),
        ({"rl": "dpo", "sample_packing": True}, "sample_packing is for SFT"),
    ],
)
def test_bad_method_options_are_refused_by_name(tiny_model_dir, data_file, tmp_path, overrides,
                                                message):
    with pytest.raises(UserError, match="invalid training config") as info:
        make_config(tiny_model_dir, data_file, tmp_path, **overrides)
    assert message in str(info.value)


WRONG = "I am not sure, sorry."


def _write_pairs(path: Path, fmt: str) -> Path:
    rows = []
    for i in range(2):
        for question, command in ROWS:
            question = f"{question} ({i})"
            if fmt == "openai_dpo":
                rows.append({
                    "input": {"messages": [{"role": "user", "content": question}]},
                    "preferred_output": [{"role": "assistant", "content": command}],
                    "non_preferred_output": [{"role": "assistant", "content": WRONG}],
                })
            else:
                rows.append({"prompt": [{"role": "user", "content": question}],
                             "chosen": [{"role": "assistant", "content": command}],
                             "rejected": [{"role": "assistant", "content": WRONG}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class LogProbe(TrainerCallback):
    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _answer_logprob(model, tokenizer, question: str, answer: str) -> float:
    """log p(answer | question) under the chat template, summed over the answer's tokens."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                           tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer + "<end_of_turn>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    picked = logits.log_softmax(-1).gather(-1, torch.tensor(answer_ids).unsqueeze(-1))
    return picked.sum().item()


@pytest.mark.parametrize(
    ("rl", "fmt", "beta"),
    # ORPO's reward is beta x the mean token log-prob (DPO's a sum): a larger beta puts its
    # margins on DPO's scale.
    [("dpo", "openai_dpo", 0.1), ("orpo", "preference", 1.0)],
    ids=["dpo", "orpo"],
)
def test_preference_training_grows_the_chosen_rejected_margin(
    tiny_model_dir, tmp_path, rl, fmt, beta
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = _write_pairs(tmp_path / "pairs.jsonl", fmt)
    config = make_config(tiny_model_dir, pairs, tmp_path, rl=rl, rl_beta=beta, max_steps=8,
                         learning_rate=5e-3, val_set_size=2,
                         micro_batch_size=10)  # every step sees every pair: no batch noise
    probe = LogProbe()
    adapter = train(config, callbacks=[probe], progress_bar=False)
    margins = [log["rewards/margins"] for log in probe.logs if "rewards/margins" in log]
    assert len(margins) >= 8, probe.logs
    # TRL's own metric: the chosen-minus-rejected reward margin grows over training.
    assert margins[-1] > margins[0] + 0.5, margins
    assert sum(margins[-3:]) / 3 > sum(margins[:3]) / 3, margins
    manifest = read_manifest(adapter)
    assert manifest["training"] == rl and manifest["method"] == "lora"
    assert manifest["datasets"][0]["type"] == fmt
    # The held-out pairs are written as prompt + preferred answer, for the evaluation.
    held = [json.loads(x) for x in (adapter / "held_out.jsonl").read_text().splitlines()]
    assert len(held) == 2 and all(r["messages"][-1]["content"] != WRONG for r in held)

    # Independently of TRL: log p(chosen) - log p(rejected) rose from the base's.
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    question, command = ROWS[0][0] + " (0)", ROWS[0][1]

    def margin(model):
        return (_answer_logprob(model, tokenizer, question, command)
                - _answer_logprob(model, tokenizer, question, WRONG))

    before = margin(base)
    after = margin(PeftModel.from_pretrained(base, adapter))
    assert after > before + 0.5, (before, after)


def test_preference_rows_and_methods_must_match(tiny_model_dir, data_file, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", "preference")
    with pytest.raises(UserError, match="holds preference pairs .*rl: dpo or rl: orpo"):
        train(make_config(tiny_model_dir, pairs, tmp_path), progress_bar=False)
    with pytest.raises(UserError, match="rl: dpo trains on preference pairs; .* prompt_completion"):
        train(make_config(tiny_model_dir, data_file, tmp_path, rl="dpo"), progress_bar=False)


def test_orpo_alpha_is_axolotls_name_for_rl_beta(tiny_model_dir, data_file, tmp_path):
    config = make_config(tiny_model_dir, data_file, tmp_path, rl="orpo", orpo_alpha=0.3)
    assert (config.rl, config.rl_beta) == ("orpo", 0.3)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, "missing key(s) 'rejected'"),
        ({"prompt": "q", "chosen": "a", "rejected": "a"}, "are the same answer"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
         "'chosen' must be one assistant message"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "score": 1}, "'score'"),
        ({"input": {"messages": [{"role": "user", "content": "q"}], "tools": [{}]},
          "preferred_output": [{"role": "assistant", "content": "a"}],
          "non_preferred_output": [{"role": "assistant", "content": "b"}]}, "input.tools"),
        ({"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []},
         "'input.messages' must be a non-empty message list"),
    ],
)
def test_bad_preference_rows_are_refused_by_name(record, message):
    from training.formats import detect, to_row

    with pytest.raises(ValueError) as info:
        to_row(record, detect(record))
    assert message in str(info.value)


def test_both_preference_formats_give_the_same_row():
    from training.formats import detect, to_row

    openai_row = {"input": {"messages": [{"role": "user", "content": "q"}]},
                  "preferred_output": [{"role": "assistant", "content": "a"}],
                  "non_preferred_output": [{"role": "assistant", "content": "b"}]}
    trl_row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert (detect(openai_row), detect(trl_row)) == ("openai_dpo", "preference")
    assert to_row(openai_row, "openai_dpo") == to_row(trl_row, "preference") == {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
