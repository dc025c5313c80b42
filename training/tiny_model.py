"""A tiny random Gemma 3 model with a small byte-level BPE tokenizer.

Same architecture family and chat template as the real base, a few layers and a
~500-token vocabulary, so unit tests (and fine-tuning-job tests) train and serve in
seconds. Built from configs only: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from training.base_models import CHAT_TEMPLATES_DIR

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
_CORPUS = [
    "docker run -d -p 8080:80 nginx",
    "docker ps -a --filter status=exited",
    "docker images --format '{{.Repository}}:{{.Tag}}'",
    "Show me all running containers. List the images. Stop the container named web.",
    "The quick brown fox jumps over the lazy dog.",
    "user model system assistant hello world answer question",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes) that prepends <bos>, like Gemma's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    bos_id = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.chat_template = (CHAT_TEMPLATES_DIR / "gemma.jinja").read_text()
    return fast


def build_tiny_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Gemma3ForCausalLM + tokenizer to ``out_dir``; return it."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        dtype="float32",
    )
    model = Gemma3ForCausalLM(config)
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<end_of_turn>"),
    ]
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
